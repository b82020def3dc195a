"""Checks on the composed Hydra config, run before anything is built, created or trained.

Every problem raises :class:`~vae.errors.ConfigError` with one line naming the key, the value and
what is allowed, e.g. ``model.latent_dim=0: expected an integer ≥ 1``. Each key has one rule,
declared beside what it configures: the ``model`` / ``optim`` / ``eval`` fields in
:mod:`vae.core.config`, the ``data`` keys in :data:`vae.train.data.DATA_RULES` (the data module applies the
same rules when it is built), the figure options in :class:`vae.viz.figures.FigureOptions`, the few
top-level, ``paths`` and ``trainer`` keys below. A key that does not exist (``+model.latnet_dim=3``)
is refused with the closest valid name: the keys of a section are its dataclass's fields, or the
arguments of the class its ``_target_`` names. ``vae.train.run.CheckRunDir`` runs these checks before
Hydra creates the run directory, for every job of a sweep before the first one starts.
docs/errors.md lists what the user sees.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae.core import config as hparams
from vae.errors import ConfigError, UserError
from vae.rules import (
    Rule,
    batch_limit,
    boolean,
    check,
    int_at_least,
    number_at_least,
    one_of,
    optional,
    path,
    refuse_unknown,
)

__all__ = ["RULES", "ConfigError", "UserError", "validate_config"]

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = (
    "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine",
)  # fmt: skip
#: the top-level keys of configs/train.yaml (``hydra`` is Hydra's own)
TOP_LEVEL = (
    "task_name", "seed", "ckpt_path", "test", "compile", "optim", "eval", "data", "model",
    "trainer", "callbacks", "logger", "paths", "hydra",
)  # fmt: skip

#: key → rule; absent keys are skipped
RULES: dict[str, Rule] = {
    "seed": int_at_least(0),
    "test": boolean(),
    "compile": boolean(),
    "ckpt_path": (
        lambda v: v is None or (isinstance(v, str) and bool(v)),
        "null (a new run), last (the run directory's checkpoints/last.ckpt) or a checkpoint's path",
    ),
    "paths.log_dir": path(),
    **hparams.rules("model"),
    **hparams.rules("optim"),
    **hparams.rules("eval"),
    "trainer.max_epochs": int_at_least(1),
    "trainer.accelerator": one_of(ACCELERATORS),
    "trainer.precision": one_of(PRECISIONS),
    "trainer.gradient_clip_val": optional(number_at_least(0)),
    "trainer.limit_train_batches": batch_limit(allow_zero=False),
    "trainer.limit_val_batches": batch_limit(allow_zero=True),
    "trainer.limit_test_batches": batch_limit(allow_zero=False),
}

_MISSING = object()


def _select(cfg: DictConfig, key: str) -> Any:
    """The value at ``key``, or ``_MISSING`` if absent or not resolvable yet (``${hydra:...}``
    before Hydra's run directory exists)."""
    try:
        return OmegaConf.select(cfg, key, default=_MISSING)
    except OmegaConfBaseException:
        return _MISSING


def _target_rules(target: str) -> dict[str, Rule]:
    """The rules the class ``target`` declares for its keys (its ``CONFIG_RULES``; {} if none or
    not found): the data module and the figure callback say what their keys allow themselves."""
    try:
        return dict(getattr(get_class(target), "CONFIG_RULES", {}))
    except Exception:  # hydra reports a target it cannot import itself
        return {}


def _arguments(target: str) -> set[str] | None:
    """The keyword arguments the class ``target`` takes (None: it takes any, or is not found);
    a class with ``CONFIG_RULES`` takes those keys too."""
    try:
        params = inspect.signature(get_class(target).__init__).parameters.values()
    except Exception:  # hydra reports a target it cannot import itself
        return None
    names = {p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)} - {"self"}
    declared = set(_target_rules(target))
    if any(p.kind == p.VAR_KEYWORD for p in params) and not declared:
        return None
    return names | declared


def _targeted_nodes(cfg: DictConfig) -> list[tuple[str, DictConfig]]:
    """``(prefix, node)`` of each section that names a class: data, trainer, each callback and logger."""
    nodes = [("data.", cfg.get("data")), ("trainer.", cfg.get("trainer"))]
    for group in ("callbacks", "logger"):
        if isinstance(cfg.get(group), DictConfig):
            nodes += [(f"{group}.{name}.", node) for name, node in cfg[group].items()]
    return [(p, n) for p, n in nodes if isinstance(n, DictConfig) and "_target_" in n]


def _check_keys(cfg: DictConfig) -> None:
    refuse_unknown("", cfg.keys(), TOP_LEVEL)
    for section, cls in hparams.SECTIONS.items():
        if isinstance(cfg.get(section), DictConfig):
            known = [f.name for f in dataclasses.fields(cls)]
            refuse_unknown(f"{section}.", cfg[section].keys(), known)
    for section, node in _targeted_nodes(cfg):
        known = _arguments(str(node._target_))
        if known is not None:
            refuse_unknown(section, [k for k in node if k != "_target_"], known)


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first unknown key or value that is not allowed."""
    _check_keys(cfg)
    rules = dict(RULES)
    for section, node in _targeted_nodes(cfg):
        rules |= {section + key: rule for key, rule in _target_rules(str(node._target_)).items()}
    for key, rule in rules.items():
        value = _select(cfg, key)
        if value is not _MISSING:
            check(key, value, rule)
    # the rules that join keys (e.g. model.iw_train_samples with model.beta) live in the typed
    # sections: building them checks those too, before Hydra makes a run directory
    for section, cls in hparams.SECTIONS.items():
        if isinstance(cfg.get(section), DictConfig):
            hparams.coerce(cls, OmegaConf.to_container(cfg[section], resolve=True), section=section)
