"""SIGTERM / SIGINT leave a checkpoint of the current step and a non-zero exit; one run per directory.

Real subprocesses for the signals (a scheduler sends SIGTERM to the process, a user's Ctrl-C is
SIGINT), the 2-process DDP run and the lock; the exact-resume check runs in-process, where a
callback sends the signal at a known step.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import RESUME_METRICS, RESUME_RUN, ROOT, compose_config, run_metrics

from vae.errors import ConfigError, RunInterrupted
from vae.train.run import run_cli, train
from vae.train.shell import hydra_quote

pytestmark = pytest.mark.usefixtures("mnist_root")

LINE = re.compile(
    r"^interrupted at step (\d+) \((SIGTERM|SIGINT)\); resume with: (python train\.py .*)$"
)


class SignalAt(L.Callback):
    """Send ``signum`` to this process after ``step`` optimiser steps (what a scheduler does)."""

    def __init__(self, step: int, signum: int = signal.SIGTERM) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)


class Marker(L.Callback):
    """Write the step to ``path`` after each batch and sleep: lets a test signal mid-epoch."""

    def __init__(self, path: str, seconds: float = 0.2) -> None:
        self.path, self.seconds = Path(path), seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.path.write_text(str(trainer.global_step))
        time.sleep(self.seconds)


class SignalInTest(L.Callback):
    """Send ``signum`` to this process after the first test batch."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        self.signum = signum

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dl_idx=0) -> None:
        if batch_idx == 0:
            os.kill(os.getpid(), self.signum)


class SignalInValidation(L.Callback):
    """Send ``signum`` to this process after the first batch of the validation of ``epoch``."""

    def __init__(self, epoch: int, signum: int = signal.SIGTERM) -> None:
        self.epoch, self.signum = epoch, signum

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, idx, dl_idx=0) -> None:
        if idx == 0 and not trainer.sanity_checking and trainer.current_epoch == self.epoch:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize("step", [3, 24])
def test_a_signal_in_the_first_epoch_or_before_the_last_validation_resumes_exactly(
    step: int, uninterrupted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two Lightning-side traps of a signal (issue 23 round three, case a). Step 24 is the last
    batch of the last epoch: Lightning used to stop the validation that follows at its first
    batch and save there; the resumed run then skipped it (no ``val/*`` in ``metrics.json``, no
    best checkpoint of that epoch). Step 3 is before the checkpoint callback ever saved: the
    resumed run used to write ``last-v1.ckpt`` beside the ``last.ckpt`` it resumed from."""
    run_dir = tmp_path / "run"
    cb = ("+callbacks.sig._target_=test_preemption.SignalAt", f"+callbacks.sig.step={step}")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(compose_config([*RESUME_RUN, *cb], output_dir=run_dir))
    assert exc.value.code == 143
    assert LINE.match(capsys.readouterr().err.splitlines()[-1]).group(1) == str(step)
    checkpoints = run_dir / "checkpoints"
    if step == 24:  # the last validation ran to its end before the run stopped
        assert (checkpoints / "best-epoch002.ckpt").is_file()
    train(
        compose_config([*RESUME_RUN, f"ckpt_path={checkpoints / 'last.ckpt'}"], output_dir=run_dir)
    )
    assert not list(checkpoints.glob("last-v*.ckpt"))
    resumed = run_metrics(run_dir)
    for key in RESUME_METRICS:
        assert resumed[key] == uninterrupted[key], (key, resumed[key], uninterrupted[key])


def test_a_signal_in_the_last_validation_of_a_real_run_in_a_quoted_path(tmp_path: Path) -> None:
    """SIGTERM during the last validation (``test=false``: nothing follows it) used to end the
    run with exit 0 as if nothing had happened; a run directory whose path has a space, a
    non-ASCII letter and a quote used to print a command Hydra could not parse. Now: 143, the
    validation finished (its best checkpoint saved), and the printed line, pasted into a shell,
    ends the run with every metric."""
    run_dir = tmp_path / "bä se" / "it's"
    args = [*RESUME_RUN, "trainer.max_epochs=2", "test=false"]
    args += [f"hydra.run.dir={hydra_quote(run_dir)}", "+callbacks.sig.epoch=1"]
    proc = _train_py(*args, "+callbacks.sig._target_=test_preemption.SignalInValidation")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    match = LINE.match(err.splitlines()[-1])
    assert match, err[-3000:]
    assert (run_dir / "checkpoints" / "best-epoch001.ckpt").is_file()
    assert not (run_dir / "metrics.json").exists()
    pasted = match.group(3).replace("python", shlex.quote(sys.executable), 1)
    env = os.environ | {"PYTHONPATH": str(ROOT / "tests")}
    done = subprocess.run(
        ["bash", "-c", pasted], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 16  # nothing trained again
    assert "val/loss" in summary["metrics"]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "best-epoch001.ckpt",
        "last.ckpt",
    ]


def test_a_signal_during_the_test_stops_it_and_the_printed_command_only_tests(
    uninterrupted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Issue 23 §4: the test used to run to its end (42 s with eval.iw_samples=300) while a
    scheduler waited to SIGKILL. Now it stops after the batch in flight, exits 143, and the command
    it prints resumes from the trained checkpoint: nothing is trained again, and the test numbers
    equal an uninterrupted run's."""
    run_dir = tmp_path / "run"
    cfg = compose_config(
        [
            *RESUME_RUN,
            "trainer.limit_test_batches=4",
            "+callbacks.sig._target_=test_preemption.SignalInTest",
        ],
        output_dir=run_dir,
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(cfg)
    assert exc.value.code == 143
    match = LINE.match(capsys.readouterr().err.splitlines()[-1])
    assert match, "no resume line"
    assert match.group(1) == "24"  # all of training (3 epochs × 8 steps), none lost
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={last}" in match.group(3)
    assert not (run_dir / "metrics.json").exists()  # an interrupted run reports no result
    before = last.read_bytes()

    # the printed command, as the command line would run it (in-process, run_cli knows no
    # Hydra overrides, so the command carries only ckpt_path, the data root and the directory)
    train(compose_config([*RESUME_RUN, f"ckpt_path={last}"], output_dir=run_dir))
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["global_step"] == 24  # nothing trained again
    assert last.read_bytes() == before
    for key in RESUME_METRICS:  # val/* too: the resumed run validates the trained model again
        assert summary["metrics"][key] == uninterrupted[key], key


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_mid_epoch_saves_that_step_and_the_resume_is_exact(
    signum: int, code: int, uninterrupted, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir = tmp_path / "run"
    cb = ("+callbacks.sig._target_=test_preemption.SignalAt", "+callbacks.sig.step=12")
    cfg = compose_config(
        [*RESUME_RUN, *cb, f"+callbacks.sig.signum={int(signum)}"], output_dir=run_dir
    )
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(cfg)
    assert exc.value.code == code
    lines = capsys.readouterr().err.splitlines()
    match = LINE.match(lines[-1])
    assert match, lines[-1]
    assert match.group(1) == "12"  # the middle of epoch 2 (steps 8..15): nothing trained is lost
    last = run_dir / "checkpoints" / "last.ckpt"
    assert f"ckpt_path={last}" in match.group(3)
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 12
    assert not (run_dir / "metrics.json").exists()  # an interrupted run reports no result

    train(compose_config([*RESUME_RUN, f"ckpt_path={last}"], output_dir=run_dir))
    resumed = run_metrics(run_dir)
    for key in RESUME_METRICS:
        # bit-exact on CPU: the rest of epoch 2 is the same batches with the same random numbers
        assert resumed[key] == uninterrupted[key], (key, resumed[key], uninterrupted[key])


def _train_py(
    *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None, **kwargs
) -> subprocess.Popen:
    env = (dict(os.environ) if env is None else env) | {"PYTHONPATH": str(ROOT / "tests")}
    cmd = [sys.executable, str(ROOT / "train.py"), *args, "data.download=false"]
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


def _wait_for_step(marker: Path, proc: subprocess.Popen, step: int, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        text = marker.read_text().strip() if marker.exists() else ""
        if text.isdigit() and int(text) >= step:
            return
        time.sleep(0.05)
    pytest.fail(f"no step {step} before the end: {proc.communicate()[1][-2000:]}")


class SignalTwice(L.Callback):
    """SIGTERM after ``step`` steps, and again while the checkpoint of that step is being saved
    (a scheduler, or an impatient user, that signals twice)."""

    def __init__(self, step: int) -> None:
        self.step, self.sent = step, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step and self.sent == 0:
            self.sent = 1
            os.kill(os.getpid(), signal.SIGTERM)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self.sent == 1 and trainer.global_step == self.step:
            self.sent = 2
            os.kill(os.getpid(), signal.SIGTERM)  # the state is being gathered for the save


def test_a_second_sigterm_while_saving_changes_nothing(tmp_path: Path) -> None:
    """Issue 23 §5, SIGTERM twice: the second one, during the save the first one asked for, is
    absorbed (the handler only sets a flag): one line, exit 143, a complete checkpoint of the step
    the first signal stopped at, no temporary file."""
    run_dir = tmp_path / "run"
    args = [*RESUME_RUN, "test=false", f"hydra.run.dir={run_dir}"]
    proc = _train_py(
        *args, "+callbacks.twice._target_=test_preemption.SignalTwice", "+callbacks.twice.step=5"
    )
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    interrupted = [line for line in err.splitlines() if line.startswith("interrupted at")]
    assert len(interrupted) == 1, err[-3000:]
    assert LINE.match(interrupted[0]).group(1) == "5"
    checkpoints = run_dir / "checkpoints"
    assert [p.name for p in checkpoints.iterdir()] == ["last.ckpt"]  # no temporary file
    assert torch.load(checkpoints / "last.ckpt", weights_only=True)["global_step"] == 5


@pytest.mark.parametrize("trainer", ["cpu", "ddp_cpu"])
def test_sigterm_to_a_real_run_exits_143_with_one_line(trainer: str, tmp_path: Path) -> None:
    """What SLURM / Kubernetes do before preemption; under DDP too (2 gloo processes).

    The single-process run starts in another working directory with a relative ``VAE_DATA_DIR``;
    the printed command resumes it from the repository root in a shell without that variable.
    """
    run_dir, marker = tmp_path / "run", tmp_path / "step"
    args = [*RESUME_RUN, f"trainer={trainer}", "test=false", f"hydra.run.dir={run_dir}"]
    args += ["+callbacks.mark._target_=test_preemption.Marker", f"+callbacks.mark.path={marker}"]
    data = Path(os.environ.get("VAE_DATA_DIR", ROOT / "data")).absolute()
    elsewhere = os.environ | {"VAE_DATA_DIR": os.path.relpath(data, tmp_path)}
    proc = _train_py(*args, cwd=tmp_path, env=elsewhere) if trainer == "cpu" else _train_py(*args)
    _wait_for_step(marker, proc, 10)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    interrupted = [line for line in err.splitlines() if line.startswith("interrupted at")]
    assert len(interrupted) == 1, err[-3000:]  # one line, from rank 0 only
    match = LINE.match(interrupted[0])
    assert match, interrupted[0]
    step = int(match.group(1))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step
    if trainer == "cpu":  # the printed command resumes the run, in its own directory
        resume = shlex.split(match.group(3))[2:]
        roots = [Path(a.split("=", 1)[1]) for a in resume if a.startswith("data.root=")]
        assert len(roots) == 1, resume
        assert roots[0].is_absolute(), resume  # the root the run read, from any directory
        assert roots[0].resolve() == data.resolve(), resume
        without = {k: v for k, v in os.environ.items() if k != "VAE_DATA_DIR"}
        done = subprocess.run(
            [sys.executable, str(ROOT / "train.py"), *resume],
            cwd=ROOT,
            env=without | {"PYTHONPATH": str(ROOT / "tests")},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert json.loads((run_dir / "metrics.json").read_text())["global_step"] == 24


def test_ckpt_path_last_starts_then_resumes(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """A requeued job can use one fixed command: ``hydra.run.dir=<dir> ckpt_path=last``."""
    run_dir = tmp_path / "run"
    cfg = compose_config(
        [*RESUME_RUN, "trainer.max_epochs=1", "test=false", "ckpt_path=last"], output_dir=run_dir
    )
    train(cfg)
    assert "ckpt_path=last: no " in capsys.readouterr().err
    first = json.loads((run_dir / "metrics.json").read_text())
    assert first["global_step"] == 8
    again = compose_config(
        [*RESUME_RUN, "test=false", "trainer.max_epochs=1", "ckpt_path=last"], output_dir=run_dir
    )
    train(again)
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from"] == str(
        run_dir / "checkpoints" / "last.ckpt"
    )


def test_a_second_live_run_into_the_same_directory_is_refused(tmp_path: Path) -> None:
    run_dir, marker = tmp_path / "run", tmp_path / "step"
    args = [*RESUME_RUN, "test=false", f"hydra.run.dir={run_dir}"]
    first = _train_py(
        *args, "+callbacks.mark._target_=test_preemption.Marker", f"+callbacks.mark.path={marker}"
    )
    try:
        _wait_for_step(marker, first, 1)
        second = _train_py(*args)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2
        assert err.splitlines()[-1] == (
            f"error: run directory {str(run_dir)!r} is in use by another run (PID {first.pid}); "
            "wait for it to end, or choose another one with hydra.run.dir=<dir>"
        )
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=120)
    assert first.returncode == 143  # the first run was not disturbed, and stops as asked


def test_the_lock_is_released_after_a_run_and_after_an_error(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    with pytest.raises(RunInterrupted):
        train(
            compose_config(
                [
                    *RESUME_RUN,
                    "+callbacks.sig._target_=test_preemption.SignalAt",
                    "+callbacks.sig.step=3",
                ],
                output_dir=run_dir,
            )
        )
    assert not (run_dir / ".lock").exists()  # an interrupted run removes it too
    with pytest.raises(ConfigError, match=r"was trained with data\.seed=0"):
        train(
            compose_config(
                [*RESUME_RUN, "seed=1", f"ckpt_path={run_dir}/checkpoints/last.ckpt"],
                output_dir=run_dir,
            )
        )
    train(
        compose_config(
            [*RESUME_RUN, "test=false", f"ckpt_path={run_dir}/checkpoints/last.ckpt"],
            output_dir=run_dir,
        )
    )
    assert not (run_dir / ".lock").exists()  # removed at the end: the run directory is clean
