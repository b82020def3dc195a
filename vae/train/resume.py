"""Where a resumed run goes: into the run directory its checkpoint belongs to.

Hydra picks a run's directory before any code of ours runs (a new timestamp each time), so
``train.py`` decides it first, from the command line (:func:`resume_in_place`):

* ``ckpt_path=<run>/checkpoints/<file>.ckpt`` of one of our runs (a folder with Hydra's
  ``.hydra/config.yaml``) resumes in ``<run>``: the checkpoint's location names its run;
* ``ckpt_path=last`` resumes the newest *unfinished* run of the *same configuration* under
  ``<paths.log_dir>/<task_name>/`` (``runs/`` and ``multiruns/``), so a requeued job needs one fixed
  command. Unfinished: it has ``checkpoints/last.ckpt`` and its ``metrics.json`` is missing or
  counts fewer epochs than ``trainer.max_epochs``; a run another process holds (its ``.lock``)
  is not a candidate. Same configuration: Hydra's composed config (``.hydra/config.yaml``) equals
  this command's, but for the keys a resume may change (:data:`MAY_DIFFER`). With none, a new run
  starts, and the unfinished runs of other configurations are listed with the command that
  resumes each.

Pure Python (no torch): it runs before Hydra, on every ``python train.py``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vae.train.shell import override

#: keys a resumed run may set differently: the checkpoint itself, and the time budget of one
#: invocation (a requeued job may get another)
MAY_DIFFER = ("ckpt_path", "trainer.max_time")


def _flat(cfg: DictConfig | dict) -> dict[str, Any]:
    """``{dotted key: value}`` of an unresolved config, without :data:`MAY_DIFFER`."""
    container = OmegaConf.to_container(OmegaConf.create(cfg), resolve=False)
    out: dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            out[prefix[:-1]] = node

    walk(container, "")
    return {k: v for k, v in out.items() if k not in MAY_DIFFER}


def _differences(cfg: DictConfig, run_dir: Path) -> list[str]:
    """The keys whose values differ between ``cfg`` and the run's composed config."""
    theirs = _flat(OmegaConf.load(run_dir / ".hydra" / "config.yaml"))
    ours = _flat(cfg)
    return sorted(k for k in ours.keys() | theirs.keys() if ours.get(k) != theirs.get(k))


def _in_use(run_dir: Path) -> bool:
    """Whether a live run holds ``run_dir``'s lock (``vae.train.run.run_lock``)."""
    lock = run_dir / ".lock"
    if not lock.is_file():
        return False
    with open(lock) as f:
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(f, fcntl.LOCK_UN)
    return False


def _unfinished(run_dir: Path) -> bool:
    if not (run_dir / "checkpoints" / "last.ckpt").is_file():
        return False
    if not (run_dir / ".hydra" / "config.yaml").is_file() or _in_use(run_dir):
        return False
    try:
        epochs = json.loads((run_dir / "metrics.json").read_text())["epochs"]
        max_epochs = OmegaConf.load(run_dir / ".hydra" / "config.yaml").trainer.max_epochs
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return True  # no (readable) metrics.json: it never got to the end
    with contextlib.suppress(TypeError):
        return int(epochs) < int(max_epochs)
    return True


def unfinished_runs(log_dir: Path) -> list[Path]:
    """The unfinished runs under ``log_dir`` (``runs/*`` and ``multiruns/*/*``), newest first
    (by the time of their ``last.ckpt``)."""
    dirs = [*log_dir.glob("runs/*"), *log_dir.glob("multiruns/*/*")]
    found = [d for d in dirs if d.is_dir() and _unfinished(d)]
    return sorted(found, key=lambda d: (d / "checkpoints" / "last.ckpt").stat().st_mtime)[::-1]


def run_dir_of(ckpt: Path) -> Path | None:
    """The run directory a checkpoint file belongs to (``<run>/checkpoints/<file>``), if it is
    one of ours."""
    run = ckpt.parent.parent
    if ckpt.parent.name == "checkpoints" and (run / ".hydra" / "config.yaml").is_file():
        return run
    return None


def _say(message: str) -> None:
    print(message, file=sys.stderr)


def _replace(argv: Sequence[str], key: str, value: str) -> list[str]:
    return [f"{key}={value}" if a.split("=", 1)[0] == key else a for a in argv]


def resume_in_place(argv: Sequence[str], cfg: DictConfig) -> list[str]:
    """``argv`` with ``hydra.run.dir=<the run to resume>`` added where ``ckpt_path`` names one
    (see the module's docstring); ``ckpt_path=last`` without a run to resume becomes a new run."""
    value = cfg.get("ckpt_path")
    if value is None:
        return list(argv)
    if value != "last":
        run = run_dir_of(Path(str(value)).expanduser().absolute())
        return [*argv, override("hydra.run.dir", run)] if run is not None else list(argv)
    where = Path(str(cfg.paths.log_dir)).expanduser().absolute() / str(cfg.task_name)
    candidates = unfinished_runs(where)
    same = [d for d in candidates if not _differences(cfg, d)]
    if same:
        _say(
            f"ckpt_path=last: resuming {same[0]} (the newest unfinished run of this configuration)"
        )
        return [*argv, override("hydra.run.dir", same[0])]
    _say(f"ckpt_path=last: no unfinished run of this configuration under {where}; a new run starts")
    for d in candidates:
        keys = ", ".join(_differences(cfg, d)[:4])
        again = shlex.quote(override("ckpt_path", d / "checkpoints" / "last.ckpt"))
        _say(f"  unfinished, other settings ({keys}): {again}")
    return _replace(argv, "ckpt_path", "null")
