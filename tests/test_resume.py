"""A resumed run continues in its own run directory: ``ckpt_path=<its checkpoint>`` and the one fixed
command of a requeued job, ``ckpt_path=last`` (real ``python train.py`` subprocesses, SIGTERM as a
scheduler sends it)."""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import RESUME_RUN, ROOT
from omegaconf import OmegaConf
from test_preemption import _train_py, _wait_for_step

from vae.train.resume import resume_in_place, unfinished_runs

pytestmark = pytest.mark.usefixtures("mnist_root")


def _interrupted(args: list[str], marker: Path, at: int = 3) -> str:
    """Start ``train.py args``, SIGTERM it after step ``at``; its stderr (it must exit 143)."""
    proc = _train_py(
        *args, "+callbacks.mark._target_=test_preemption.Marker", f"+callbacks.mark.path={marker}"
    )
    _wait_for_step(marker, proc, at)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    return err


def _runs(log_dir: Path) -> list[Path]:
    return sorted((log_dir / "train" / "runs").iterdir())


def test_ckpt_path_last_is_one_fixed_command_for_a_requeued_job(tmp_path: Path) -> None:
    log_dir, marker = tmp_path / "logs", tmp_path / "step"
    # the job's command, the same every time it is (re)queued
    command = [*RESUME_RUN, "test=false", f"paths.log_dir={log_dir}", "ckpt_path=last"]
    command += ["+callbacks.mark._target_=test_preemption.Marker", f"+callbacks.mark.path={marker}"]
    first = _train_py(*command)
    _wait_for_step(marker, first, 3)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 143, err[-3000:]
    assert "ckpt_path=last: no unfinished run of this configuration" in err
    (run,) = _runs(log_dir)
    assert unfinished_runs(log_dir / "train") == [run]

    second = _train_py(*command)
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    assert f"ckpt_path=last: resuming {run} " in err
    assert _runs(log_dir) == [run]  # no new run directory
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == 24  # 3 epochs × 8 steps: the run is complete
    assert summary["resumed_from"] == str(run / "checkpoints" / "last.ckpt")
    assert unfinished_runs(log_dir / "train") == []


def test_a_checkpoint_path_resumes_in_the_run_directory_it_belongs_to(tmp_path: Path) -> None:
    log_dir, marker = tmp_path / "logs", tmp_path / "step"
    args = [*RESUME_RUN, "test=false", f"paths.log_dir={log_dir}"]
    _interrupted(args, marker)
    (run,) = _runs(log_dir)
    ckpt = run / "checkpoints" / "last.ckpt"
    done = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args, "data.download=false", f"ckpt_path={ckpt}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert _runs(log_dir) == [run]
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["global_step"] == 24
    assert summary["resumed_from"] == str(ckpt)
    events = list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(events) >= 2  # both invocations wrote into the run's one TensorBoard folder


def _fake_run(root: Path, name: str, *, latent_dim: int, epochs: int | None) -> Path:
    """A run directory as train.py leaves it: Hydra's config, a last.ckpt, maybe metrics.json."""
    run = root / "train" / "runs" / name
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    cfg = {"task_name": "train", "ckpt_path": None, "model": {"latent_dim": latent_dim}}
    cfg |= {"trainer": {"max_epochs": 3}, "paths": {"log_dir": str(root)}}
    OmegaConf.save(cfg, run / ".hydra" / "config.yaml")
    if epochs is not None:
        (run / "metrics.json").write_text(json.dumps({"epochs": epochs}))
    return run


def test_ckpt_path_last_lists_the_unfinished_runs_of_other_configurations(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = _fake_run(tmp_path, "2026-12-01_10-00-00_mnist_mlp-z3", latent_dim=3, epochs=1)
    _fake_run(tmp_path, "2026-12-01_11-00-00_mnist_mlp-z2", latent_dim=2, epochs=3)  # finished
    cfg = OmegaConf.create(
        {"task_name": "train", "ckpt_path": "last", "model": {"latent_dim": 2}}
        | {
            "trainer": {"max_epochs": 3, "max_time": "00:01:00:00"},
            "paths": {"log_dir": str(tmp_path)},
        }
    )
    argv = ["model.latent_dim=2", "ckpt_path=last"]
    assert resume_in_place(argv, cfg) == ["model.latent_dim=2", "ckpt_path=null"]
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("ckpt_path=last: no unfinished run of this configuration under ")
    assert err[1:] == [
        "  unfinished, other settings (model.latent_dim): "
        f"ckpt_path={other / 'checkpoints' / 'last.ckpt'}"
    ]
    # the same configuration, unfinished: resumed there (max_time may differ: a budget per job)
    mine = _fake_run(tmp_path, "2026-12-01_12-00-00_mnist_mlp-z2", latent_dim=2, epochs=None)
    assert resume_in_place(argv, cfg) == [*argv, f"hydra.run.dir={mine}"]


def _hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (hidden ones included), by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


#: resumes that are refused, each with a piece of its one line (``<last>``: the checkpoint's path)
REFUSED = [
    (["ckpt_path=last", "trainer.max_epochs=4"], "error: trainer.max_epochs=4 plans 32 steps"),
    (["ckpt_path=last", "model.latent_dim=5"], "was trained with model.latent_dim=2"),
    (["ckpt_path=<last>", "seed=3"], "was trained with data.seed=0"),
    (["ckpt_path=<last>", "optim.lr=0.1"], "was trained with optim.lr=0.003"),
]


@pytest.mark.slow
def test_a_refused_resume_leaves_the_run_directory_byte_identical(tmp_path: Path) -> None:
    """Issue 23 §4: a refused resume used to add ``config.1.yaml``, a TensorBoard file and a
    ``train.log`` line, and to rewrite ``.hydra/`` (whose config ``ckpt_path=last`` compares):
    every check now runs in the Hydra callback, before Hydra writes anything."""
    run_dir = tmp_path / "run"
    args = [*RESUME_RUN, "trainer.max_epochs=1", "test=false", f"hydra.run.dir={run_dir}"]
    first = _train_py(*args)
    assert first.wait(timeout=300) == 0, first.stderr.read()[-3000:]
    before = _hashes(run_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    for refused, says in REFUSED:
        again = _train_py(*args, *(a.replace("<last>", str(last)) for a in refused))
        _, err = again.communicate(timeout=300)
        assert again.returncode == 2, err[-3000:]
        assert len(err.splitlines()) == 1, err[-3000:]
        assert err.startswith("error: "), err
        assert says in err, err
        assert _hashes(run_dir) == before, refused
