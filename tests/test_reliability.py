"""A run survives a crash (exact resume) and a second process (DDP metrics equal one process's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import RESUME_METRICS, RESUME_RUN, ROOT, TINY, compose_config, run_metrics, train_py

from vae.train.data import MNISTDataModule
from vae.train.module import VAEModule
from vae.train.run import train

pytestmark = pytest.mark.usefixtures("mnist_root")


class CrashAt(L.Callback):
    """Raise in the middle of a training epoch, after ``step`` optimiser steps (a simulated crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"simulated crash at step {trainer.global_step}")


def test_resume_after_a_crash_gives_the_same_final_metrics(uninterrupted, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    crash = (
        "+callbacks.crash._target_=test_reliability.CrashAt",
        "+callbacks.crash.step=20",  # the middle of epoch 3 (steps 17..24)
    )
    with pytest.raises(RuntimeError, match="simulated crash at step 20"):
        train(compose_config([*RESUME_RUN, *crash], output_dir=run_dir))
    last = run_dir / "checkpoints" / "last.ckpt"
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 16
    train(compose_config([*RESUME_RUN, f"ckpt_path={last}"], output_dir=run_dir))
    resumed = run_metrics(run_dir)
    for key in RESUME_METRICS:
        # bit-exact on CPU: weights, optimiser, schedule, RNG states and data order all restored
        assert resumed[key] == uninterrupted[key], (key, resumed[key], uninterrupted[key])


@pytest.mark.slow
def test_kill_9_in_the_middle_of_an_epoch_then_resume(uninterrupted, tmp_path: Path) -> None:
    """The real thing: a subprocess killed with SIGKILL, restarted with ckpt_path=.../last.ckpt."""
    run_dir = tmp_path / "run"
    cmd, env, last = _slowed_run(tmp_path, run_dir)
    _start_and_kill_9(cmd, env, last, after=8)
    resumed = _resume_to_the_end(cmd, env, last, run_dir)
    for key in RESUME_METRICS:
        assert abs(resumed[key] - uninterrupted[key]) <= 1e-4, (
            key,
            resumed[key],
            uninterrupted[key],
        )


def _slowed_run(tmp_path: Path, run_dir: Path) -> tuple[list[str], dict[str, str], Path]:
    """The ``train.py`` command of the resume runs into ``run_dir``, its environment and its
    ``last.ckpt``; each step slowed down so a kill lands inside an epoch, not after the run."""
    cmd = [sys.executable, str(ROOT / "train.py"), *RESUME_RUN, "data.download=false"]
    cmd += [f"paths.output_dir={run_dir}", f"hydra.run.dir={tmp_path / 'hydra'}"]
    cmd += ["+callbacks.slow._target_=test_reliability.Sleep", "+callbacks.slow.seconds=0.2"]
    env = os.environ | {"PYTHONPATH": str(ROOT / "tests")}
    return cmd, env, run_dir / "checkpoints" / "last.ckpt"


def _resume_to_the_end(cmd: list[str], env: dict[str, str], last: Path, run_dir: Path) -> dict:
    """Resume the killed run from ``last`` (without the slowing callback) to its end: its metrics."""
    assert not (run_dir / "metrics.json").exists()
    resume = [*cmd[:-2], f"ckpt_path={last}"]
    done = subprocess.run(resume, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return run_metrics(run_dir)


def _start_and_kill_9(cmd: list[str], env: dict[str, str], last: Path, after: int) -> None:
    """Start ``cmd``; once ``last`` holds step ``after`` or later, ``kill -9`` it a few steps on."""
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if last.exists() and torch.load(last, weights_only=True)["global_step"] >= after:
            break
        time.sleep(0.2)
    time.sleep(0.7)  # a few steps into the next epoch
    assert proc.poll() is None, f"finished before the kill: {proc.stderr.read().decode()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL


@pytest.mark.slow
def test_kill_9_twice_then_resume_equals_an_uninterrupted_run(
    uninterrupted, tmp_path: Path
) -> None:
    """Issue 23 §5: ``kill -9`` in epoch 2, the resumed run ``kill -9``-ed in epoch 3, resumed
    again: the final metrics equal an uninterrupted run's to the last bit (each resume starts from
    the epoch-end ``last.ckpt``: weights, optimiser, schedule, RNG states, data order)."""
    run_dir = tmp_path / "run"
    cmd, env, last = _slowed_run(tmp_path, run_dir)
    _start_and_kill_9(cmd, env, last, after=8)
    assert torch.load(last, weights_only=True)["global_step"] == 8
    _start_and_kill_9([*cmd, f"ckpt_path={last}"], env, last, after=16)
    assert torch.load(last, weights_only=True)["global_step"] == 16
    resumed = _resume_to_the_end(cmd, env, last, run_dir)
    for key in RESUME_METRICS:
        assert resumed[key] == uninterrupted[key], (key, resumed[key], uninterrupted[key])


class Sleep(L.Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args) -> None:
        time.sleep(self.seconds)


def test_ddp_metrics_equal_a_single_process_evaluation(tmp_path: Path) -> None:
    """trainer=ddp_cpu (2 processes, gloo): reduced metrics = one process evaluating the checkpoint.

    1001 validation images in batches of 300 split 501 / 500 between the ranks, so a sampler that
    pads (repeats an image) or a reduction that weights batches instead of images would show.
    """
    run_dir = tmp_path / "ddp"
    overrides = [
        *TINY,
        "trainer=ddp_cpu",
        "trainer.limit_val_batches=null",
        "trainer.limit_test_batches=null",
        "data.val_size=1001",
        "data.eval_batch_size=300",
        "callbacks.visualize.projector_points=100",
        "data.download=false",
        f"paths.output_dir={run_dir}",
        f"hydra.run.dir={tmp_path / 'hydra'}",  # Hydra's own files: not in the repository's logs/
    ]
    done = train_py(*overrides)
    assert done.returncode == 0, done.stderr[-3000:]
    logged = run_metrics(run_dir)
    assert logged["val/num_images"] == 1001
    assert logged["test/num_images"] == 10_000

    # one process, the same checkpoint and data, no distributed anything
    model = VAEModule.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu"
    )
    cfg = compose_config(overrides[:-1])
    dm = MNISTDataModule(**{k: v for k, v in cfg.data.items() if k != "_target_"})
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False)
    single = trainer.validate(model, datamodule=dm, verbose=False)[0]
    single |= trainer.test(model, datamodule=dm, verbose=False)[0]
    assert single["val/num_images"] == 1001
    for key in ("val/loss", "val/kl", "val/recon", "test/loss", "test/kl", "test/recon"):
        assert abs(logged[key] - single[key]) < 0.1, (key, logged[key], single[key])
        # the evaluation noise is a function of the image, so the two agree far more closely
        assert logged[key] == pytest.approx(single[key], rel=1e-5), key

    # only rank 0 wrote: TensorBoard event files from one process (fit, test and the final hparams
    # each open one: events.out.tfevents.<time>.<host>.<pid>.<n>), one set of figures
    events = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert events
    assert len({p.name.split(".")[-2] for p in events}) == 1, events
    assert sorted(p.name for p in run_dir.glob("*.png")) == [
        "interpolation.png",
        "latent_space.png",
        "manifold.png",
        "reconstructions.png",
        "samples.png",
    ]
