"""The typed hyper-parameters of a model: :class:`ModelConfig`, :class:`OptimConfig`, :class:`EvalConfig`.

Each field is declared once, with its default and its rule (the values allowed), as nanoGPT's
``GPTConfig``, and so is each option list (the networks and likelihoods read theirs from here). The
command line gets these defaults through Hydra's ConfigStore (:func:`vae.train.config.register_defaults`):
``configs/`` lists only what differs. :class:`vae.train.module.VAEModule` takes these or plain
mappings and stores them in the checkpoint as dicts; :mod:`vae.train.config` checks the composed
config with the same rules. Pure Python: importing it loads no torch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from vae.errors import ConfigError
from vae.rules import (
    Rule,
    boolean,
    check,
    int_at_least,
    int_list,
    number_at_least,
    number_in,
    one_of,
    plain,
    refuse_unknown,
)

C = TypeVar("C")
#: ``optim.scheduler``'s values
SCHEDULERS = ("none", "cosine", "burda")

ARCHITECTURES = ("mlp", "conv")
#: normalisation of the MLP hidden layers (``model.norm``)
NORMS = ("none", "layer")
#: ``model.activation`` → the ``torch.nn`` class it names
ACTIVATIONS = {
    "relu": "ReLU",
    "gelu": "GELU",
    "silu": "SiLU",
    "elu": "ELU",
    "tanh": "Tanh",
    "leaky_relu": "LeakyReLU",
}
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")


def _field(default: Any, rule: Rule, *, network: bool = False) -> Any:
    """A field with its rule; ``network``: the key describes the network, not the objective."""
    meta = {"rule": rule, "network": network}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the network (:data:`NETWORK_KEYS`) and the objective recon + β_t · KL, with
    β_t = ``beta`` · min(1, step / ``kl_warmup_steps``) and ``free_bits`` nats per latent dimension;
    or, with ``iw_train_samples`` = k > 1, the importance-weighted bound with k samples (the IWAE,
    Burda et al. 2015), which has no separate KL term to weight: β = 1, no warm-up, no free bits."""

    architecture: str = _field("mlp", one_of(ARCHITECTURES), network=True)
    latent_dim: int = _field(2, int_at_least(1), network=True)
    hidden_dims: list[int] = _field([512, 256], int_list(), network=True)  # noqa: RUF009
    channels: list[int] = _field([32, 64], int_list(), network=True)  # noqa: RUF009 (conv only)
    activation: str = _field("relu", one_of(tuple(ACTIVATIONS)), network=True)
    norm: str = _field("layer", one_of(NORMS), network=True)
    init_output_bias: bool = _field(True, boolean())
    logvar_bound: float = _field(10.0, number_at_least(0, strict=True), network=True)
    likelihood: str = _field("bernoulli", one_of(LIKELIHOODS), network=True)
    gaussian_std: float = _field(1.0, number_at_least(0, strict=True), network=True)
    learn_std: bool = _field(False, boolean(), network=True)
    beta: float = _field(1.0, number_at_least(0))
    kl_warmup_steps: int = _field(0, int_at_least(0))
    free_bits: float = _field(0.0, number_at_least(0))
    iw_train_samples: int = _field(1, int_at_least(1))

    def __post_init__(self) -> None:
        if self.iw_train_samples == 1:
            return
        changed = [
            f"model.{key}={getattr(self, key)}"
            for key, plain_value in (("beta", 1.0), ("kl_warmup_steps", 0), ("free_bits", 0.0))
            if getattr(self, key) != plain_value
        ]
        if changed:
            raise ConfigError(
                f"model.iw_train_samples={self.iw_train_samples} trains the importance-weighted "
                f"bound, which has no KL term to weight, but {', '.join(changed)} is set: use "
                "model.beta=1 model.kl_warmup_steps=0 model.free_bits=0, or model.iw_train_samples=1"
            )


@dataclass(frozen=True)
class OptimConfig:
    """``optim``: Adam(W) at ``lr`` (with ``eps`` in its denominator), cosine-annealed per step to
    ``lr · min_lr_ratio``, constant, or ``burda``: stage i = 0, 1, … lasts 3^i epochs at
    lr · 10^(−i/7) (Burda et al. 2015, §5)."""

    optimizer: str = _field("adam", one_of(("adam", "adamw")))
    lr: float = _field(3.0e-3, number_at_least(0, strict=True))
    weight_decay: float = _field(0.0, number_at_least(0))
    # none | cosine (per step, down to lr · min_lr_ratio) | burda (stage i = 0, 1, … lasts 3^i
    # epochs at lr · 10^(−i/7), Burda et al. 2015; 8 stages = 3280 epochs)
    scheduler: str = _field("cosine", one_of(SCHEDULERS))
    # the cosine schedule's floor, a fraction of lr: above 1 it would climb instead of decay
    min_lr_ratio: float = _field(0.0, number_in(0, 1))
    eps: float = _field(1.0e-8, number_at_least(0, strict=True))  # Adam's ε


@dataclass(frozen=True)
class EvalConfig:
    """``eval``: the seed of the evaluation noise, ``iw_samples`` per test image for the
    importance-weighted bound, ``iw_chunk`` samples decoded per pass."""

    seed: int = _field(0, int_at_least(0))
    iw_samples: int = _field(100, int_at_least(1))
    iw_chunk: int = _field(10, int_at_least(1))


#: config section → its typed definition
SECTIONS: dict[str, type] = {"model": ModelConfig, "optim": OptimConfig, "eval": EvalConfig}
#: keys of ``model`` that describe the network (the rest describe the objective)
NETWORK_KEYS = tuple(f.name for f in dataclasses.fields(ModelConfig) if f.metadata["network"])


def rules(section: str) -> dict[str, Rule]:
    """``{"<section>.<key>": rule}`` for every field of that section."""
    return {
        f"{section}.{f.name}": f.metadata["rule"] for f in dataclasses.fields(SECTIONS[section])
    }


def coerce(cls: type[C], value: C | Mapping[str, Any] | None, *, section: str) -> C:
    """``value`` as a ``cls``: an instance as is, a mapping's keys over the defaults (``None``: the
    defaults). An unknown key or a value its rule refuses is a :class:`ConfigError`."""
    if isinstance(value, cls):
        return value
    given = dict(value or {})
    refuse_unknown(f"{section}.", given, [f.name for f in dataclasses.fields(cls)])
    for f in dataclasses.fields(cls):
        if f.name in given:
            given[f.name] = check(f"{section}.{f.name}", plain(given[f.name]), f.metadata["rule"])
    return cls(**given)


def as_dict(config: Any) -> dict[str, Any]:
    """The plain dict of a config dataclass (lists stay lists): what the checkpoint stores."""
    return dataclasses.asdict(config)
