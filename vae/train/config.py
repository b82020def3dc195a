"""Checks on the composed Hydra config, run before anything is built, created or trained.

Every problem raises :class:`~vae.errors.ConfigError` with one line naming the key, the value and
what is allowed, e.g. ``model.latent_dim=0: expected an integer ≥ 1``. Each key has one rule,
declared beside what it configures: the ``model`` / ``optim`` / ``eval`` fields in
:mod:`vae.core.config`, the ``data`` keys in :class:`vae.train.data_config.DataConfig` (the data
module applies the same rules when it is built), the figure options in
:class:`vae.train.figure_config.FigureOptions`, the few top-level, ``paths`` and ``trainer`` keys below. A
key that does not exist (``+model.latnet_dim=3``) is refused with the closest valid name: the keys
of a section are its dataclass's fields, or the arguments of the class its ``_target_`` names.
``vae.train.run.CheckRunDir`` runs these checks before Hydra creates the run directory, for every
job of a sweep before the first one starts.
docs/errors.md lists what the user sees.
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_class
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from vae.core import config as hparams
from vae.errors import ConfigError, UserError
from vae.rules import (
    Rule,
    batch_limit,
    boolean,
    check,
    int_at_least,
    int_in,
    number_at_least,
    one_of,
    optional,
    path,
    plain,
    refuse_unknown,
)
from vae.train.data_config import DataConfig
from vae.train.figure_config import FigureOptions

__all__ = ["DEFAULTS", "RULES", "ConfigError", "UserError", "register_defaults", "validate_config"]

#: the names under which Hydra finds the dataclasses' defaults: the first entry of
#: configs/train.yaml's defaults list, and the first of configs/callbacks/default.yaml's
DEFAULTS, FIGURE_DEFAULTS = "vae_defaults", "vae_figure_defaults"


def register_defaults() -> None:
    """Store the ``model`` / ``optim`` / ``eval`` defaults of :mod:`vae.core.config` and the
    ``data`` defaults of :class:`vae.train.data_config.DataConfig` in Hydra's ConfigStore as
    :data:`DEFAULTS`, and the figure options of :class:`vae.train.figure_config.FigureOptions` as
    :data:`FIGURE_DEFAULTS` (``callbacks.visualize`` includes them), so the YAML lists only what
    differs. Plain (untyped) nodes: a wrong value reaches :func:`validate_config`'s one line, not an
    OmegaConf type error. Runs on import."""
    node = {section: hparams.as_dict(cls()) for section, cls in hparams.SECTIONS.items()}
    node["data"] = dataclasses.asdict(DataConfig())
    ConfigStore.instance().store(name=DEFAULTS, node=node)
    ConfigStore.instance().store(name=FIGURE_DEFAULTS, node=dataclasses.asdict(FigureOptions()))


register_defaults()

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = (
    "auto", "64-true", "32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "transformer-engine",
)  # fmt: skip
#: the top-level keys of configs/train.yaml (``hydra`` is Hydra's own)
TOP_LEVEL = (
    "task_name", "seed", "ckpt_path", "test", "compile", "optim", "eval", "data", "model",
    "trainer", "callbacks", "logger", "paths", "hydra",
)  # fmt: skip

#: key → rule; absent keys are skipped
RULES: dict[str, Rule] = {
    "seed": int_in(0, 2**32 - 1),  # what Lightning's seed_everything (NumPy's seed) accepts
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


def _check_interpolations(node: DictConfig | ListConfig, prefix: str = "") -> None:
    """Every ``${...}`` of the user's config resolves: an unset environment variable or a key that
    does not exist is named here, not met as a traceback where the value is first used. Hydra's
    own (``${hydra:...}``, and what leads to it) resolve only once the run starts, and are skipped."""
    keys = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for key in keys:
        name = f"{prefix}{key}"
        if name == "hydra":
            continue
        if OmegaConf.is_interpolation(node, key):
            try:
                node[key]
            except OmegaConfBaseException as err:
                if "HydraConfig was not set" in str(err):
                    continue
                raw = node._get_node(key)._value()
                reason = str(err).splitlines()[0].rstrip(".")
                raise ConfigError(
                    f"{name}={raw!r}: cannot be resolved ({reason}); set what it refers to, or give "
                    f"the value itself ({name}=<value>)"
                ) from None
            continue
        child = node._get_node(key)
        if isinstance(child, (DictConfig, ListConfig)) and not child._is_missing():
            _check_interpolations(child, f"{name}.")


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first unknown key or value that is not allowed."""
    _check_keys(cfg)
    _check_interpolations(cfg)
    rules = dict(RULES)
    for section, node in _targeted_nodes(cfg):
        rules |= {section + key: rule for key, rule in _target_rules(str(node._target_)).items()}
    for key, rule in rules.items():
        value = _select(cfg, key)
        if value is _MISSING:
            continue
        try:
            check(key, value, rule)
        except ConfigError as err:
            source = _interpolation(cfg, key)
            if source is None:
                raise
            # the value came from elsewhere (VAE_DATA_DIR=''): say where, the key alone misleads
            head = f"{key}={plain(value)!r}"
            raise ConfigError(f"{head} (from {source}){str(err)[len(head) :]}") from None

    # sections: building them checks those too, before Hydra makes a run directory
    for section, cls in hparams.SECTIONS.items():
        if isinstance(cfg.get(section), DictConfig):
            hparams.coerce(cls, OmegaConf.to_container(cfg[section], resolve=True), section=section)


def _interpolation(cfg: DictConfig, key: str) -> str | None:
    """The ``${...}`` that ``key``'s value comes from (None: typed as a value)."""
    parent_key, _, leaf = key.rpartition(".")
    parent = _select(cfg, parent_key) if parent_key else cfg
    if not isinstance(parent, DictConfig) or leaf not in parent:
        return None
    return parent._get_node(leaf)._value() if OmegaConf.is_interpolation(parent, leaf) else None
