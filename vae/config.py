"""Checks on the composed Hydra config, run before anything is built or trained.

Each problem raises :class:`~vae.errors.ConfigError` with one line naming the key, the value and
what is allowed, e.g. ``model.latent_dim=0: expected an integer ≥ 1``. Every key has one rule,
declared beside what it configures: the ``model`` / ``optim`` / ``eval`` fields in
:mod:`vae.hparams`, the ``data`` keys in :data:`vae.data.DATA_RULES` (checked when the data module
is built, right after this), the few top-level and ``trainer`` keys below. docs/errors.md lists
what the user sees.
"""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf

from vae import hparams
from vae.errors import ConfigError, UserError
from vae.rules import Rule, boolean, check, int_at_least, one_of

__all__ = ["RULES", "ConfigError", "UserError", "validate_config"]

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")

#: key → rule for the keys outside model / optim / eval / data; absent keys are skipped
RULES: dict[str, Rule] = {
    "seed": int_at_least(0),
    "test": boolean(),
    "compile": boolean(),
    **hparams.rules("model"),
    **hparams.rules("optim"),
    **hparams.rules("eval"),
    "trainer.max_epochs": int_at_least(1),
    "trainer.accelerator": one_of(ACCELERATORS),
}

_MISSING = object()


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first key whose value is not allowed."""
    for key, rule in RULES.items():
        value = OmegaConf.select(cfg, key, default=_MISSING)
        if value is not _MISSING:
            check(key, value, rule)
