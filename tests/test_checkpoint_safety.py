"""Loading a checkpoint never runs code from it (issue: checkpoints are data, not code).

A planted checkpoint whose pickle calls ``os.system`` goes through every way the project loads a
file: ``python train.py ckpt_path=FILE``, ``python -m vae.visualize FILE`` and ``python -m
vae.viz.explore FILE`` (real subprocesses), ``VAEModule.load_from_checkpoint`` and a Trainer's restore
(``AtomicCheckpointIO``). Each refuses it with one line and the payload's marker file is never
created. Real checkpoints hold only plain data and still load.
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import ROOT

from vae.core.config import as_dict
from vae.errors import CheckpointError, UserError
from vae.train.checkpointing import AtomicCheckpointIO, load_checkpoint
from vae.train.module import VAEModule

SMALL = {"hidden_dims": [16], "latent_dim": 2}


class _Payload:
    """Unpickling this calls ``os.system``: the attack a shared checkpoint can carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def _plain_checkpoint() -> dict[str, Any]:
    """What a vae checkpoint looks like (Lightning's keys, a small model's weights)."""
    module = VAEModule(model=SMALL)
    return {
        "epoch": 0,
        "global_step": 0,
        "state_dict": module.state_dict(),
        "hyper_parameters": dict(module.hparams),
        "hparams_name": "kwargs",
    }


@pytest.fixture
def planted(tmp_path: Path) -> tuple[Path, Path]:
    """(a checkpoint that runs ``touch <marker>`` if unpickled unsafely, the marker's path)."""
    marker = tmp_path / "payload_ran"
    ckpt = _plain_checkpoint() | {"extra": _Payload(marker)}
    path = tmp_path / "shared.ckpt"
    torch.save(ckpt, path)
    return path, marker


REFUSED = (
    "refused to load: it contains Python objects (posix.system); "
    "only checkpoints written by train.py are accepted"
)


def test_the_payload_is_real(planted: tuple[Path, Path]) -> None:
    """The control: an unsafe load of the planted file does run the payload."""
    path, marker = planted
    torch.load(path, weights_only=False)  # what the project used to do
    assert marker.exists()


def test_load_checkpoint_refuses_the_payload(planted: tuple[Path, Path]) -> None:
    path, marker = planted
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == f"{path}: {REFUSED}"
    assert isinstance(err.value, UserError)
    assert not marker.exists()


def test_load_from_checkpoint_refuses_the_payload(planted: tuple[Path, Path]) -> None:
    path, marker = planted
    with pytest.raises(CheckpointError, match="refused to load"):
        VAEModule.load_from_checkpoint(path)
    assert not marker.exists()


def test_trainer_restore_refuses_the_payload(planted: tuple[Path, Path]) -> None:
    """The path a Trainer's ``fit(ckpt_path=...)`` reads through."""
    path, marker = planted
    with pytest.raises(CheckpointError, match="refused to load"):
        AtomicCheckpointIO().load_checkpoint(path, weights_only=True)
    assert not marker.exists()


def test_a_legacy_pickle_is_refused_unread(tmp_path: Path) -> None:
    """A plain pickle (not torch.save's zip archive) is refused before anything reads it."""
    marker = tmp_path / "payload_ran"
    path = tmp_path / "old.ckpt"
    path.write_bytes(pickle.dumps({"state_dict": {}, "x": _Payload(marker)}))
    with pytest.raises(CheckpointError, match=r"not a readable checkpoint \(it is not a zip"):
        load_checkpoint(path)
    assert not marker.exists()


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    return subprocess.run(
        [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def test_train_py_refuses_the_payload(planted: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = planted
    proc = _run(
        str(ROOT / "train.py"),
        f"ckpt_path={path}",
        f"hydra.run.dir={tmp_path / 'run'}",
        "data.download=false",
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: ckpt_path={str(path)!r}: {REFUSED}"]
    assert not marker.exists()
    assert not (tmp_path / "run").exists()  # refused before Hydra makes the run directory


def test_visualize_refuses_the_payload(planted: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = planted
    proc = _run("-m", "vae.visualize", str(path), "--out", str(tmp_path / "out"), cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {path}: {REFUSED}"]
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_explore_refuses_the_payload(planted: tuple[Path, Path], tmp_path: Path) -> None:
    """``python -m vae.explore FILE`` (the third command that reads a shared checkpoint)."""
    path, marker = planted
    out = tmp_path / "page.html"
    proc = _run("-m", "vae.explore", str(path), "--out", str(out), cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.splitlines() == [f"error: {path}: {REFUSED}"]
    assert not marker.exists()
    assert not out.exists()


# ---- our own checkpoints: plain data, loadable ---------------------------------------------------
PLAIN = (dict, list, tuple, str, int, float, bool, type(None), torch.Tensor)


def _non_plain(obj: Any, where: str = "") -> list[str]:
    """Paths inside ``obj`` to anything that is not a tensor, number, string or container."""
    if isinstance(obj, dict):
        return [
            p for k, v in obj.items() for p in _non_plain(k, where) + _non_plain(v, f"{where}/{k}")
        ]
    if isinstance(obj, (list, tuple)):
        return [p for i, v in enumerate(obj) for p in _non_plain(v, f"{where}[{i}]")]
    return [] if isinstance(obj, PLAIN) else [f"{where}: {type(obj).__name__}"]


def test_a_real_checkpoint_is_plain_data_and_loads(trained_checkpoint: Path) -> None:
    raw = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
    assert _non_plain(raw) == []
    assert {"state_dict", "optimizer_states", "lr_schedulers", "rng_states"} <= set(raw)
    assert load_checkpoint(trained_checkpoint).keys() == raw.keys()
    model = VAEModule.load_from_checkpoint(trained_checkpoint, map_location="cpu")
    for name, value in model.state_dict().items():
        assert torch.equal(value, raw["state_dict"][name]), name
    assert as_dict(model.model_config) == raw["hyper_parameters"]["model"]


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """``last.ckpt`` of a tiny real run (8 steps, with the cosine schedule and the RNG states)."""
    import contextlib
    import io

    from conftest import TINY, compose_config

    from vae.train.run import run_cli

    run_dir = tmp_path_factory.mktemp("safe") / "run"
    cfg = compose_config([*TINY, "test=false", "~callbacks.visualize"], output_dir=run_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        run_cli(cfg)
    return run_dir / "checkpoints" / "last.ckpt"
