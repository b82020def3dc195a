"""Checkpoints: read only as data, written so that a crash never leaves a broken one.

- :func:`load_checkpoint` is the one way the project reads a checkpoint (the resume check, a
  Trainer's ``ckpt_path`` restore through :class:`AtomicCheckpointIO`, ``VAEModule.load_from_checkpoint``
  and the command lines): ``torch.load(weights_only=True)``, so a file that holds Python objects is
  refused before anything in it runs, and a file that is not a checkpoint of this model is a
  :class:`~vae.errors.CheckpointError`, one line naming the file, the problem and the fix.
- :func:`load_checkpoint` also checks the whole structure against what train.py writes (the
  hyper-parameters' keys and values, the data module's keys, the weights' names, shapes and dtypes
  against the network the stored config builds), so a crafted or mismatched field is one line,
  never a constructor's or ``load_state_dict``'s traceback.
- :class:`AtomicCheckpointIO` writes each checkpoint with the one writer,
  :func:`vae.train.files.write_atomic` (an exclusive temporary file in the same folder, fsync,
  ``os.replace``), so a ``kill -9`` during a save leaves the previous checkpoint intact, never a
  truncated one. A full disk is a
  :class:`~vae.errors.DiskFullError` (one line: the file, its file system, the space needed and
  free), with the temporary file removed. :func:`remove_stale_temp_files` deletes the temporary
  files a killed save left behind (call it at the start of a run, once the run is the only writer).
- :func:`rng_states` / :func:`set_rng_states`: the random-number generators that training draws from
  (torch CPU and CUDA, Python, NumPy), saved with every checkpoint as tensors, numbers and tuples (so
  the checkpoint stays loadable as data) and restored on resume.
- :func:`check_resumable`: a ``ckpt_path`` written with a different network or optimiser than the
  config describes is a :class:`~vae.errors.ConfigError` before anything is trained.
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import random
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from vae.core.config import NETWORK_KEYS, EvalConfig, ModelConfig, OptimConfig, coerce
from vae.core.networks import build_vae
from vae.errors import CheckpointError, ConfigError
from vae.rules import check, int_list, plain, refuse_unknown
from vae.train.data_config import DATA_RULES
from vae.train.files import TEMP_FILE, write_atomic
from vae.train.guards import check_schedule

#: how to fix a checkpoint that cannot be used (the end of each message)
CKPT_HINT = (
    "pass a checkpoint written by train.py, such as logs/train/runs/<run>/checkpoints/last.ckpt"
)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save has written zip archives since torch 1.6
#: data-module arguments a resumed run must share with its checkpoint: they define the split
SPLIT_KEYS = ("dataset", "seed", "val_size")
#: the sections of ``hyper_parameters`` (VAEModule's arguments) → their typed definitions; the
#: fourth argument is ``image_shape``
_HPARAM_SECTIONS = {"model": ModelConfig, "optim": OptimConfig, "evaluation": EvalConfig}
#: the end of check_resumable's message for a mismatch in each section: why it matters, the fix
_RESUME_FIX = {
    "model": "; resume with the same model settings (the run's config.yaml has them)",
    "data": ": a different split would put images the model trained on into validation; resume "
    "with the same seed and data settings (the run's config.yaml has them), or start a new run",
    "optim": ", which a resumed run would not apply (it restores the checkpoint's optimizer and "
    "schedule); resume with the same optim settings (the run's config.yaml has them), or start a "
    "new run",
}


def load_checkpoint(
    path: str | os.PathLike[str], *, name: str | None = None, map_location: Any = "cpu"
) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict, read with ``torch.load(weights_only=True)``.

    Raises :class:`CheckpointError` (one line: ``<name>: <problem>; <how to fix>``, ``name``
    defaulting to the path) when the file is missing, not a ``torch.save`` archive, truncated or
    corrupt, holds Python objects beyond tensors, numbers, strings and containers (refused: loading
    them would run code from the file), or is not a checkpoint of :class:`vae.train.module.VAEModule`.
    """
    path = Path(path)
    label = name or str(path)
    what = _not_a_file(path)
    if what is not None:
        raise CheckpointError(f"{label}: {what}; {CKPT_HINT}")
    try:
        with path.open("rb") as f:
            magic = f.read(len(_ZIP_MAGIC))
    except OSError as err:
        raise CheckpointError(f"{label}: cannot read ({err.strerror}); {CKPT_HINT}") from None
    if magic != _ZIP_MAGIC:
        what = "the file is empty" if not magic else "it is not a zip archive"
        raise CheckpointError(
            f"{label}: not a readable checkpoint ({what}): the file is truncated, corrupt or not "
            f"written by torch.save; {CKPT_HINT}"
        )
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:  # weights_only refused a global: nothing of it ran
        found = re.search(r"GLOBAL (\S+)", str(err))
        objects = found.group(1) if found else "objects the safe loader does not accept"
        raise CheckpointError(
            f"{label}: refused to load: it contains Python objects ({objects}); only "
            "checkpoints written by train.py are accepted"
        ) from None
    except Exception as err:  # a truncated archive, a corrupt record...
        raise CheckpointError(
            f"{label}: not a readable checkpoint ({type(err).__name__}: {_first_sentence(err)}): "
            f"the file is truncated, corrupt or not written by torch.save; {CKPT_HINT}"
        ) from None
    hparams = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    model = hparams.get("model") if isinstance(hparams, Mapping) else None
    if not isinstance(model, Mapping) or "state_dict" not in ckpt:
        raise CheckpointError(
            f"{label}: not a checkpoint of vae.train.module.VAEModule ({_describe(ckpt)}); {CKPT_HINT}"
        )
    try:
        _check_fields(ckpt)
        _check_weights(ckpt)
    except ConfigError as err:
        raise CheckpointError(
            f"{label}: not a checkpoint train.py wrote: {err}; {CKPT_HINT}"
        ) from None
    return ckpt


def _not_a_file(path: Path) -> str | None:
    """What ``path`` is when it is not a regular file (None when it is one): a FIFO or a device
    would block or stream forever, so only a regular file is opened."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return f"cannot read ({err.strerror})"
    if stat.S_ISREG(mode):
        return None
    kinds = (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISFIFO, "a named pipe"),
        (stat.S_ISSOCK, "a socket"),
    )
    return next((f"{text}, not a file" for test, text in kinds if test(mode)), "not a regular file")


def _check_fields(ckpt: Mapping[str, Any]) -> None:
    """The hyper-parameters as train.py writes them: the sections of :class:`VAEModule`'s
    arguments, each key known and its value allowed by its rule, and the data module's arguments
    likewise; anything else is a :class:`ConfigError` naming the field. Why: Lightning passes
    these to constructors (``_instantiator`` would pick the class, an extra data key becomes a
    ``TypeError``), and a refused value reads like a command-line mistake unless named here."""
    hparams = ckpt["hyper_parameters"]
    refuse_unknown("hyper_parameters.", hparams, [*_HPARAM_SECTIONS, "image_shape"])
    for key, cls in _HPARAM_SECTIONS.items():
        section = hparams.get(key)
        if section is not None and not isinstance(section, Mapping):
            raise ConfigError(f"hyper_parameters.{key}: a {type(section).__name__}, not a mapping")
        coerce(cls, section, section=f"hyper_parameters.{key}")
    shape = hparams.get("image_shape")  # train.py always writes it
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3 and int_list()[0](shape)):
        raise ConfigError(
            f"hyper_parameters.image_shape={plain(shape)!r}: expected (channels, height, width), "
            "three integers ≥ 1"
        )
    data = ckpt.get("datamodule_hyper_parameters")
    if data is None:
        return
    if not isinstance(data, Mapping):
        raise ConfigError(f"datamodule_hyper_parameters: a {type(data).__name__}, not a mapping")
    refuse_unknown("datamodule_hyper_parameters.", data, DATA_RULES)
    for key, value in data.items():
        check(f"datamodule_hyper_parameters.{key}", value, DATA_RULES[key])


def _check_weights(ckpt: Mapping[str, Any]) -> None:
    """``state_dict``: a mapping of names to tensors with exactly the names, shapes and kinds of
    dtype of the model that the stored config builds (built on the meta device: no memory, so a
    config asking for a huge network costs nothing); a :class:`ConfigError` for the first
    mismatch, instead of ``load_state_dict``'s traceback."""
    weights = ckpt["state_dict"]
    if not isinstance(weights, Mapping):
        raise ConfigError(
            f"state_dict: a {type(weights).__name__}, not a mapping of names to tensors"
        )
    hparams = ckpt["hyper_parameters"]
    model = coerce(ModelConfig, hparams["model"], section="hyper_parameters.model")
    with torch.device("meta"):
        vae = build_vae(config=model, image_shape=tuple(hparams["image_shape"]))
    # VAEModule's weights are its network's, under "vae." (its metrics keep no persistent state;
    # tests/test_checkpoint_safety.py checks that this stays so)
    expected = {f"vae.{k}": v for k, v in vae.state_dict().items()}
    network = f"the model its hyper_parameters.model describes (latent_dim {model.latent_dim})"
    for key, value in weights.items():
        if key not in expected:
            raise ConfigError(f"state_dict[{key!r}]: {network} has no such weight")
        if not isinstance(value, torch.Tensor):
            raise ConfigError(f"state_dict[{key!r}]: a {type(value).__name__}, not a tensor")
        want = expected[key]
        if tuple(value.shape) != tuple(want.shape):
            raise ConfigError(
                f"state_dict[{key!r}]: shape {tuple(value.shape)}, but {network} needs "
                f"{tuple(want.shape)}"
            )
        if value.is_floating_point() != want.is_floating_point() or value.is_complex():
            raise ConfigError(
                f"state_dict[{key!r}]: dtype {value.dtype}, but {network} needs {want.dtype}"
            )
    missing = [k for k in expected if k not in weights]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ConfigError(f"state_dict: no {missing[0]!r}{more}, which {network} needs")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Saves with :func:`~vae.train.files.write_atomic`; loads with :func:`load_checkpoint`.

    Why not Lightning's default: it stages the file in the system temp dir and moves it (a copy
    across file systems) without fsync, and it unpickles arbitrary objects unless told not to.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        """On any failure the temp file is removed and ``path`` is untouched; a full disk (ENOSPC or
        EDQUOT, at mkdir, create, write, fsync or close) is a :class:`~vae.errors.DiskFullError`
        naming ``path``, its file system, the bytes the checkpoint needs and the space free."""
        if storage_options is not None:
            raise TypeError(
                f"{type(self).__name__} takes no storage_options, got {storage_options!r}"
            )
        # serialised in memory first: torch.save's zip writer reports a failed file write as
        # "RuntimeError: unexpected pos", whereas plain writes keep the OSError and its errno
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        target = Path(path)
        write_atomic(
            target,
            buffer.getbuffer(),
            what="the checkpoint",
            kept=f"the checkpoints already in {target.parent} are intact (the partial file was "
            "removed)",
            fix="or write the run elsewhere with paths.log_dir=<dir>",
        )

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Any = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        # weights_only is always true here, whatever the caller asks
        return load_checkpoint(path, map_location=map_location or "cpu")


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary checkpoint files (``.<name>.ckpt.<random>.tmp``) in ``directory``.

    A save killed between writing its temp file and renaming it (``kill -9``, a power cut) leaves
    one behind, as big as a checkpoint. Call this at the start of a run, once the run holds its run
    directory (no other process can be saving there). Returns the paths removed, sorted; a missing
    ``directory`` is no error. Only regular files whose name matches the pattern are touched.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for entry in sorted(directory.iterdir()):
        found = TEMP_FILE.fullmatch(entry.name)
        ours = found is not None and found["name"].endswith(".ckpt")
        if ours and entry.is_file() and not entry.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    return removed


def rng_states() -> dict[str, Any]:
    """The state of every generator training draws from (torch CPU/CUDA, ``random``, NumPy)."""
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
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


def check_resumable(
    ckpt_path: str | os.PathLike[str],
    model_cfg: Mapping[str, Any],
    optim_cfg: Mapping[str, Any] | None = None,
    *,
    data: Mapping[str, Any] | None = None,
    trainer_cfg: Mapping[str, Any] | None = None,
) -> None:
    """Raise unless ``ckpt_path`` is a checkpoint of the network in ``model_cfg``.

    ``model_cfg`` is the plain ``model`` config (lists as lists). Only the network keys
    (:data:`~vae.core.config.NETWORK_KEYS`) are compared: the objective (β, warm-up, free bits) may
    change between the two runs. With ``optim_cfg`` (the plain ``optim`` config) every optimiser
    key must match too: resuming restores the optimiser's and the scheduler's state, learning rate
    and weight decay included, so a changed value would silently not take effect (while the new
    checkpoint's hyper-parameters claimed it had). With ``data`` (the data module's arguments) the
    keys that define the split must match (:data:`SPLIT_KEYS`): another seed or validation size
    would put images the model trained on into validation. A file that is no such checkpoint is a
    :class:`CheckpointError`, a mismatch a :class:`ConfigError`; each message is one line naming
    ``ckpt_path``, what is wrong and how to fix it. With ``trainer_cfg`` (the ``trainer`` keys
    of :func:`vae.train.guards.check_schedule`) a cosine schedule that would not end where the
    checkpoint's does is refused too.
    """
    label = f"ckpt_path={str(ckpt_path)!r}"
    ckpt = load_checkpoint(ckpt_path, name=label)
    hparams = ckpt["hyper_parameters"]
    sections = (  # (section, its saved values, the config's, the keys that must match)
        ("model", hparams["model"], model_cfg, NETWORK_KEYS),
        ("data", ckpt.get("datamodule_hyper_parameters"), data, SPLIT_KEYS),
        ("optim", hparams.get("optim"), optim_cfg, optim_cfg),
    )
    for section, saved, given, keys in sections:
        if given is None or not isinstance(saved, Mapping):
            continue
        for key in keys:
            if key in saved and key in given and plain(saved[key]) != plain(given[key]):
                also = " (data.seed follows seed)" if f"{section}.{key}" == "data.seed" else ""
                raise ConfigError(
                    f"{label} was trained with {section}.{key}={plain(saved[key])!r} but the config "
                    f"says {section}.{key}={plain(given[key])!r}{also}{_RESUME_FIX[section]}"
                )
    if trainer_cfg is not None:
        check_schedule(ckpt, dict(trainer_cfg), (data or {}).get("batch_size"))


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
