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


# ---- crafted fields: the whole structure is checked against what train.py writes ---------------
def _craft(raw: dict[str, Any], case: str) -> None:
    """Change a real checkpoint ``raw`` in place as an attacker (or a broken tool) would."""
    hp, weights = raw["hyper_parameters"], raw["state_dict"]
    first = next(iter(weights))
    if case == "instantiator":
        hp["_instantiator"] = "lightning.pytorch.cli.instantiate_module"
    elif case == "datamodule_extra_key":
        raw["datamodule_hyper_parameters"]["transform"] = "os.system"
    elif case == "model_target":
        hp["model"]["_target_"] = "os.system"
    elif case == "bad_value":
        hp["model"]["latent_dim"] = -1
    elif case == "image_shape":
        hp["image_shape"] = [1, 28]
    elif case == "state_dict_list":
        raw["state_dict"] = list(weights.values())
    elif case == "missing_weight":
        del weights["vae.decoder.net.6.bias"]
    elif case == "extra_weight":
        weights["vae.backdoor.weight"] = torch.zeros(3)
    elif case == "wrong_shape":
        weights[first] = weights[first][:-1]
    elif case == "wrong_dtype":
        weights[first] = weights[first].to(torch.int64)
    elif case == "not_a_tensor":
        weights[first] = 3
    elif case == "latent_dim_disagrees":
        hp["model"]["latent_dim"] = 4


#: each crafted case → the end of its message (after "<file>: not a checkpoint train.py wrote: ")
CRAFTED = {
    "instantiator": "hyper_parameters._instantiator: no such key; the hyper_parameters keys are "
    "evaluation, image_shape, model, optim",
    "datamodule_extra_key": "datamodule_hyper_parameters.transform: no such key; the "
    "datamodule_hyper_parameters keys are batch_size, binarize, cache_dir, channels, dataset, "
    "device_resident, download, eval_batch_size, image_size, num_workers, pin_memory, root, seed, "
    "test_size, val_size",
    "model_target": "hyper_parameters.model._target_: no such key; the hyper_parameters.model "
    "keys are activation, architecture, beta, channels, free_bits, gaussian_std, hidden_dims, "
    "init_output_bias, iw_train_samples, kl_warmup_steps, latent_dim, learn_std, likelihood, "
    "logvar_bound, norm",
    "bad_value": "hyper_parameters.model.latent_dim=-1: expected an integer ≥ 1",
    "image_shape": "hyper_parameters.image_shape=[1, 28]: expected (channels, height, width), "
    "three integers ≥ 1",
    "state_dict_list": "state_dict: a list, not a mapping of names to tensors",
    "missing_weight": "state_dict: no 'vae.decoder.net.6.bias', which the model its "
    "hyper_parameters.model describes (latent_dim 2) needs",
    "extra_weight": "state_dict['vae.backdoor.weight']: the model its hyper_parameters.model "
    "describes (latent_dim 2) has no such weight",
    "wrong_shape": "state_dict['vae.encoder.body.0.weight']: shape (511, 784), but the model its "
    "hyper_parameters.model describes (latent_dim 2) needs (512, 784)",
    "wrong_dtype": "state_dict['vae.encoder.body.0.weight']: dtype torch.int64, but the model its "
    "hyper_parameters.model describes (latent_dim 2) needs torch.float32",
    "not_a_tensor": "state_dict['vae.encoder.body.0.weight']: a int, not a tensor",
    "latent_dim_disagrees": "state_dict['vae.encoder.head.proj.weight']: shape (4, 256), but the "
    "model its hyper_parameters.model describes (latent_dim 4) needs (8, 256)",
}


def _crafted_message(path: Path, case: str) -> str:
    return (
        f"{path}: not a checkpoint train.py wrote: {CRAFTED[case]}; pass a checkpoint written by "
        "train.py, such as logs/train/runs/<run>/checkpoints/last.ckpt"
    )


@pytest.fixture
def crafted(trained_checkpoint: Path, tmp_path: Path) -> Any:
    def make(case: str) -> Path:
        raw = torch.load(trained_checkpoint, map_location="cpu", weights_only=True)
        _craft(raw, case)
        path = tmp_path / f"{case}.ckpt"
        torch.save(raw, path)
        return path

    return make


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_a_crafted_field_is_refused_by_the_one_loader_and_each_command(
    case: str, crafted: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from vae.viz import explore, figures

    path = crafted(case)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(err.value) == _crafted_message(path, case)
    with pytest.raises(CheckpointError):
        VAEModule.load_from_checkpoint(path)
    out = tmp_path / "out"
    for main in (explore.main, figures.main):  # both command lines, in-process
        assert main([str(path), "--out", str(out / "x.html" if main is explore.main else out)]) == 2
        assert capsys.readouterr().err.splitlines() == [f"error: {_crafted_message(path, case)}"]
    assert not out.exists()


def test_crafted_checkpoints_through_the_real_command_lines(crafted: Any, tmp_path: Path) -> None:
    """train.py (refused before Hydra makes the run directory), vae.visualize and vae.explore as
    subprocesses: one line, exit 2, nothing written."""
    path = crafted("instantiator")
    proc = _run(
        str(ROOT / "train.py"), f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}", cwd=ROOT
    )
    assert proc.returncode == 2, proc.stderr
    label = f"ckpt_path={str(path)!r}"
    assert proc.stderr.splitlines() == [
        f"error: {_crafted_message(path, 'instantiator')}".replace(
            f"error: {path}:", f"error: {label}:", 1
        )
    ]
    assert not (tmp_path / "run").exists()
    for case, module in (
        ("latent_dim_disagrees", "vae.visualize"),
        ("model_target", "vae.explore"),
    ):
        path = crafted(case)
        out = tmp_path / ("figs" if module == "vae.visualize" else "page.html")
        proc = _run("-m", module, str(path), "--out", str(out), cwd=ROOT)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.splitlines() == [f"error: {_crafted_message(path, case)}"]
        assert not out.exists()


def test_a_device_or_a_pipe_is_named_for_what_it_is(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"^/dev/null: a character device, not a file; "):
        load_checkpoint("/dev/null")
    fifo = tmp_path / "pipe.ckpt"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError, match=r": a named pipe, not a file; "):  # not opened
        load_checkpoint(fifo)


@pytest.mark.parametrize(
    "model",
    [
        SMALL,
        {"architecture": "conv", "latent_dim": 3, "channels": [4, 8], "hidden_dims": [16]},
        {"likelihood": "gaussian", "learn_std": True, "norm": "none", "hidden_dims": [8, 8]},
    ],
)
def test_the_loader_expects_exactly_the_weights_the_module_has(model: dict, tmp_path: Path) -> None:
    """The loader derives the expected weights from the network alone (vae.* of build_vae): true
    only while VAEModule keeps no other persistent state, which this checks."""
    module = VAEModule(model=model)
    path = tmp_path / "m.ckpt"
    torch.save(
        _plain_checkpoint()
        | {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()},
        path,
    )
    loaded = VAEModule.load_from_checkpoint(path)
    assert loaded.state_dict().keys() == module.state_dict().keys()
    for name, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
