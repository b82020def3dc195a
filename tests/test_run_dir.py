"""The run directory under attack while a run uses it: deleted mid-run (one line, exit 2), and two
sweeps into one sweep directory (the second refused by the run lock). Real ``python train.py``
subprocesses."""

from __future__ import annotations

import re
import shutil
import signal
from pathlib import Path

import pytest
from conftest import RESUME_RUN
from test_preemption import _train_py, _wait_for_step

pytestmark = pytest.mark.usefixtures("mnist_root")


def test_the_run_directory_deleted_mid_run_is_one_line(tmp_path: Path) -> None:
    """``rm -rf <run>`` while it trains used to end in TensorBoard's writer-thread traceback and the
    main thread's ``FileNotFoundError`` (exit 1)."""
    run_dir, marker = tmp_path / "run", tmp_path / "step"
    args = [*RESUME_RUN, "test=false", f"hydra.run.dir={run_dir}"]
    args += ["+callbacks.mark._target_=test_preemption.Marker", f"+callbacks.mark.path={marker}"]
    proc = _train_py(*args)
    _wait_for_step(marker, proc, 3)
    shutil.rmtree(run_dir)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert re.fullmatch(
        rf"error: {re.escape(str(run_dir))}: the run directory was (deleted|replaced \(deleted, "
        r"then made again\)) while the run was writing to it \(.+\); what it held is lost: start "
        r"a new run, or resume from a copy of its checkpoints with ckpt_path=<file>",
        err.splitlines()[-1],
    ), err[-3000:]


def test_a_second_sweep_into_the_same_sweep_directory_is_refused(tmp_path: Path) -> None:
    """Two ``-m`` sweeps at once into one ``hydra.sweep.dir``: the second's first job names the
    first sweep's live job (the run lock, one per run directory) and nothing of it runs."""
    sweep, marker = tmp_path / "sweep", tmp_path / "step"
    args = ["-m", *RESUME_RUN, "test=false", "model.latent_dim=2,3", f"hydra.sweep.dir={sweep}"]
    first = _train_py(
        *args, "+callbacks.mark._target_=test_preemption.Marker", f"+callbacks.mark.path={marker}"
    )
    try:
        _wait_for_step(marker, first, 1)
        second = _train_py(*args)
        _, err = second.communicate(timeout=300)
        assert second.returncode == 2, err[-3000:]
        assert err.splitlines()[-1] == (
            f"error: run directory {str(sweep / '0_mnist_mlp-z2')!r} is in use by another run "
            f"(PID {first.pid}); wait for it to end, or choose another one with hydra.run.dir=<dir>"
        ), err[-3000:]
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=300)
    assert first.returncode == 143  # undisturbed, and it stops as asked
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0_mnist_mlp-z2"]
