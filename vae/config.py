"""Checks on the composed Hydra config, run before anything is built or trained.

Each problem raises :class:`ConfigError` with one line naming the key, the value and what is allowed,
e.g. ``model.latent_dim=0: expected an integer ≥ 1``. The data keys are checked here too (with the
options :mod:`vae.data` defines), before Hydra instantiates :class:`vae.data.MNISTDataModule`: the
module checks them again, but an error raised inside ``instantiate`` reaches the user wrapped in
Hydra's ``InstantiationException``, not as one line. docs/errors.md lists what the user sees.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vae.likelihoods import LIKELIHOODS
from vae.model import ACTIVATIONS, ARCHITECTURES, NORMS


class UserError(Exception):
    """An error caused by the user's input (config, data, paths): printed as one line by the CLI."""


class ConfigError(UserError, ValueError):
    """A config value that is not allowed."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def int_at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and v >= low), f"an integer ≥ {low}"


def number_at_least(low: float, *, strict: bool = False) -> tuple[Callable[[Any], bool], str]:
    if strict:
        return (lambda v: _is_number(v) and v > low), f"a finite number > {low:g}"
    return (lambda v: _is_number(v) and v >= low), f"a finite number ≥ {low:g}"


def int_in(low: int, high: int) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_int(v) and low <= v <= high), f"an integer in [{low}, {high}]"


def one_of(options: Sequence[Any]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: v in options), "one of " + ", ".join(str(o) for o in options)


def boolean() -> tuple[Callable[[Any], bool], str]:
    return (lambda v: isinstance(v, bool)), "true or false"


def int_list() -> tuple[Callable[[Any], bool], str]:
    def ok(v: Any) -> bool:
        return (
            isinstance(v, (list, tuple, ListConfig))
            and len(v) > 0
            and all(_is_int(x) and x >= 1 for x in v)
        )

    return ok, "a non-empty list of integers ≥ 1, e.g. [512,256]"


#: key → (predicate, description of the allowed values); keys absent from the config are skipped
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "seed": int_at_least(0),
    "test": boolean(),
    "compile": boolean(),
    "model.architecture": one_of(ARCHITECTURES),
    "model.latent_dim": int_at_least(1),
    "model.hidden_dims": int_list(),
    "model.channels": int_list(),
    "model.activation": one_of(tuple(ACTIVATIONS)),
    "model.norm": one_of(NORMS),
    "model.init_output_bias": boolean(),
    "model.logvar_bound": number_at_least(0, strict=True),
    "model.likelihood": one_of(LIKELIHOODS),
    "model.gaussian_std": number_at_least(0, strict=True),
    "model.learn_std": boolean(),
    "model.beta": number_at_least(0),
    "model.kl_warmup_steps": int_at_least(0),
    "model.free_bits": number_at_least(0),
    "optim.optimizer": one_of(("adam", "adamw")),
    "optim.lr": number_at_least(0, strict=True),
    "optim.weight_decay": number_at_least(0),
    "optim.scheduler": one_of(("none", "cosine")),
    "optim.min_lr_ratio": number_at_least(0),
    "eval.iw_samples": int_at_least(1),
    "eval.iw_chunk": int_at_least(1),
    "trainer.max_epochs": int_at_least(1),
    "trainer.accelerator": one_of(("auto", "cpu", "gpu", "cuda", "mps")),
}


def data_rules() -> dict[str, tuple[Callable[[Any], bool], str]]:
    """The rules for the ``data`` keys, the same as :class:`vae.data.MNISTDataModule` applies."""
    from vae.data import BINARIZE_MODES, DATASETS, MNISTDataModule  # here: vae.data imports us

    path = (
        lambda v: v is None or (isinstance(v, (str, os.PathLike)) and bool(os.fspath(v))),
        "a non-empty path",
    )
    return {
        "data.dataset": one_of(DATASETS),
        "data.root": path,
        "data.batch_size": int_at_least(1),
        "data.eval_batch_size": int_at_least(1),
        "data.val_size": int_in(0, MNISTDataModule.NUM_TRAIN - 1),
        "data.seed": int_in(0, 2**63 - 1),
        "data.binarize": one_of(BINARIZE_MODES),
        "data.download": boolean(),
        "data.num_workers": int_at_least(0),
        "data.pin_memory": boolean(),
        "data.device_resident": boolean(),
    }


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`ConfigError` for the first key whose value is not allowed."""
    for key, (ok, allowed) in (RULES | data_rules()).items():
        value = OmegaConf.select(cfg, key, default="__missing__")
        if isinstance(value, str) and value == "__missing__":
            continue
        if not ok(value):
            shown = OmegaConf.to_yaml(value).strip() if isinstance(value, (ListConfig,)) else value
            raise ConfigError(f"{key}={shown!r}: expected {allowed}")
