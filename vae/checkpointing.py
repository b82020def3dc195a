"""Checkpoints that survive a crash, and that are checked before a run resumes from them.

- :class:`AtomicCheckpointIO` writes each checkpoint to a temporary file in the same folder, fsyncs it
  and renames it over the target (``os.replace`` is atomic on POSIX), so a ``kill -9`` during a save
  leaves the previous checkpoint intact, never a truncated one.
- :func:`rng_states` / :func:`set_rng_states`: the random-number generators that training draws from
  (torch CPU and CUDA, Python, NumPy), saved with every checkpoint so a resumed run draws the same
  numbers as an uninterrupted one.
- :func:`check_resumable`: a ``ckpt_path`` that does not exist, is not a checkpoint of this model,
  or was written with a different network than the config describes is a :class:`ConfigError`
  before anything is trained.
"""

from __future__ import annotations

import contextlib
import os
import random
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae.config import ConfigError


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary sibling file, ``fsync``, then ``os.replace`` onto the target."""

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise


def rng_states() -> dict[str, Any]:
    """The state of every generator training draws from (torch CPU/CUDA, ``random``, NumPy)."""
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
    }
    # NumPy's legacy global state (what libraries draw from), with its key array as a tensor so the
    # checkpoint still loads with torch.load(weights_only=True)
    kind, key, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002
    states["numpy"] = (kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (missing entries are left alone)."""
    if "torch" in states:
        torch.set_rng_state(states["torch"])
    if "python" in states:
        random.setstate(states["python"])
    if "numpy" in states:
        kind, key, pos, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


#: how to fix a ``ckpt_path`` that cannot be resumed from (the end of each message)
_CKPT_HINT = (
    "pass a checkpoint written by train.py, such as logs/train/runs/<run>/checkpoints/last.ckpt"
)


def check_resumable(
    ckpt_path: str | os.PathLike[str],
    model_cfg: Mapping[str, Any],
    optim_cfg: Mapping[str, Any] | None = None,
) -> None:
    """Raise :class:`ConfigError` unless ``ckpt_path`` is a checkpoint of the network in ``model_cfg``.

    ``model_cfg`` is the plain ``model`` config (lists as lists). Only the network keys are
    compared: the objective (β, warm-up, free bits) may change between the two runs. With
    ``optim_cfg`` (the plain ``optim`` config) every optimiser key must match too: resuming restores
    the optimiser's and the scheduler's state, learning rate and weight decay included, so a changed
    value would silently not take effect (while the new checkpoint's hyper-parameters claimed it
    had). Every message is one line naming ``ckpt_path``, what is wrong and how to fix it.
    """
    path = Path(ckpt_path)
    if not path.is_file():
        what = "a directory, not a file" if path.is_dir() else "no such file"
        raise ConfigError(f"ckpt_path={str(path)!r}: {what}; {_CKPT_HINT}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a truncated file, another format, a pickle error...
        raise ConfigError(
            f"ckpt_path={str(path)!r}: not a readable checkpoint ({type(err).__name__}: "
            f"{_first_sentence(err)}): the file is truncated, corrupt or not written by "
            f"torch.save; {_CKPT_HINT}"
        ) from None
    saved = ckpt.get("hyper_parameters", {}).get("model") if isinstance(ckpt, dict) else None
    if not isinstance(saved, Mapping) or "state_dict" not in ckpt:
        raise ConfigError(
            f"ckpt_path={str(path)!r}: not a checkpoint of vae.module.VAEModule "
            f"({_describe(ckpt)}); {_CKPT_HINT}"
        )
    from vae.module import NETWORK_KEYS

    for key in NETWORK_KEYS:
        if key in saved and key in model_cfg and _plain(saved[key]) != _plain(model_cfg[key]):
            raise ConfigError(
                f"ckpt_path={str(path)!r} was trained with model.{key}={_plain(saved[key])!r} but the "
                f"config says model.{key}={_plain(model_cfg[key])!r}; resume with the same model "
                "settings (the run's config.yaml has them)"
            )
    saved_optim = ckpt.get("hyper_parameters", {}).get("optim")
    if optim_cfg is None or not isinstance(saved_optim, Mapping):
        return
    for key, value in optim_cfg.items():
        if key in saved_optim and _plain(saved_optim[key]) != _plain(value):
            raise ConfigError(
                f"ckpt_path={str(path)!r} was trained with optim.{key}={_plain(saved_optim[key])!r} "
                f"but the config says optim.{key}={_plain(value)!r}, which a resumed run would not "
                "apply (it restores the checkpoint's optimizer and schedule); resume with the "
                "same optim settings (the run's config.yaml has them), or start a new run"
            )


def _first_sentence(err: BaseException, limit: int = 160) -> str:
    """The first sentence of ``err``'s message on one line (torch's can run to several lines)."""
    text = " ".join(str(err).split()) or "no message"
    head = text.split(". ", 1)[0].rstrip(".")
    return head if len(head) <= limit else head[: limit - 1] + "…"


def _describe(obj: Any) -> str:
    """What a loaded file holds, for the "not a checkpoint of this model" message."""
    if not isinstance(obj, dict):
        return f"it holds a {type(obj).__name__}"
    if "state_dict" in obj:
        return "a Lightning checkpoint of another model: its hyper_parameters have no model config"
    keys = [str(k) for k in list(obj)[:5]]
    more = ", …" if len(obj) > 5 else ""
    return f"it holds a dict with keys {', '.join(keys)}{more}, no state_dict"


def _plain(value: Any) -> Any:
    return list(value) if isinstance(value, (list, tuple)) else value
