"""``callbacks.visualize``'s figure options (:class:`FigureOptions`): every default and rule written
once. Pure Python: importing it loads neither torch nor matplotlib, so :mod:`vae.train.config` stores
the defaults in Hydra's ConfigStore and ``configs/callbacks/default.yaml`` lists only the callback's
own keys; the figures (:mod:`vae.viz.figures`) and ``python -m vae.visualize``'s flags read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from vae.rules import Rule, int_at_least, one_of, optional, positive_int_arg

__all__ = ["PROJECTIONS", "FigureOptions"]

PROJECTIONS = ("pca", "axes")


def _field(default: Any, rule: Rule, *, help: str, **flag: Any) -> Any:
    """A :class:`FigureOptions` field: its rule, its flag's help and argparse arguments (``flag``,
    by default ``type=positive_int_arg``)."""
    flag = flag or {"type": positive_int_arg}
    return field(default=default, metadata={"rule": rule, "help": help, "flag": flag})


@dataclass(frozen=True)
class FigureOptions:
    """What :func:`vae.viz.figures.render_figures` draws: each option's default, rule and flag,
    declared once. Hydra gets the defaults from the ConfigStore (``callbacks.visualize.*``,
    :func:`vae.train.config.register_defaults`), :func:`vae.train.config.validate_config` and
    :class:`vae.viz.callbacks.LatentVisualizer` the rules, ``python -m vae.visualize`` the flags."""

    grid_size: int = _field(20, int_at_least(1), help="manifold.png is n × n decoded images")
    max_points: int | None = _field(
        None,
        optional(int_at_least(1)),
        help="test points in the scatter plot (default: every test image)",
    )
    n_samples: int = _field(64, int_at_least(1), help="images decoded from z ~ N(0, I)")
    n_reconstructions: int = _field(32, int_at_least(1), help="test images and reconstructions")
    interpolation_steps: int = _field(10, int_at_least(2), help="images per interpolation row")
    projection: str = _field(
        "pca",
        one_of(PROJECTIONS),
        help="latent_dim > 2: the plane shown, pca (first two principal axes) or axes (the first "
        "two latent coordinates)",
        choices=PROJECTIONS,
    )
    seed: int = _field(0, int_at_least(0), help="seed of the samples and the picks", type=int)
