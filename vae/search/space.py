"""The search space: Hydra's sweep grammar (``choice``, ``interval``, ``range``, ``tag(log, ...)``)
read as Optuna distributions, and each trial's parameters written back as Hydra overrides.

The space is the sweeper's ``params`` with the sweeps of the command line on top
(``'model.latent_dim=choice(2,4,8)'`` adds a dimension); the command line's plain overrides
(``trainer.max_epochs=5``) go to every trial unchanged. Categorical choices that Optuna cannot
store (lists such as ``[512,256]``) are stored as their override text, which is also what the
dashboard shows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, Override, RangeSweep
from hydra.errors import OverrideParseException
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

from vae.errors import ConfigError

#: corner combinations validated up front before one key at a time is used instead
MAX_CORNER_COMBINATIONS = 64


def override_text(value: Any) -> str:
    """``value`` as Hydra's override grammar writes it (``[512,256]``, ``'a b'``, ``null``)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, Mapping):
        return "{" + ",".join(f"{k}:{override_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Sequence):
        return "[" + ",".join(override_text(v) for v in value) + "]"
    raise TypeError(f"no override text for {value!r}")


def _stored(value: Any) -> Any:
    """A choice as Optuna stores it: scalars as they are, lists and dicts as their override text."""
    scalar = value is None or isinstance(value, (bool, int, float, str))
    return value if scalar else override_text(value)


@dataclass(frozen=True)
class Dimension:
    """One searched key: ``key`` as typed (``+`` kept), its Optuna ``distribution``, and the values
    whose configs are validated before the first trial (every choice, both ends of a range)."""

    key: str
    distribution: BaseDistribution
    corners: tuple[Any, ...]
    #: stored choices that are override text already (lists, dicts), used as they are
    texts: frozenset[str] = frozenset()

    @property
    def name(self) -> str:
        return self.key.lstrip("+~")

    def override(self, value: Any) -> str:
        """The override that sets this key to the trial's ``value`` (as Optuna stored it)."""
        text = value if isinstance(value, str) and value in self.texts else override_text(value)
        return f"{self.key}={text}"


def _dimension(override: Override) -> Dimension:
    sweep, key = override.value(), override.get_key_element()
    tags = getattr(sweep, "tags", set())
    if isinstance(sweep, ChoiceSweep):
        choices = tuple(_stored(v) for v in sweep.list)
        texts = frozenset(s for s, v in zip(choices, sweep.list, strict=True) if s is not v)
        return Dimension(key, CategoricalDistribution(choices), choices, texts)
    if isinstance(sweep, RangeSweep):
        values = list(override.sweep_iterator())
        if not values:
            raise ConfigError(f"{key}={override.input_line.split('=', 1)[1]}: an empty range")
        whole = all(isinstance(v, int) for v in (sweep.start, sweep.step))
        kind = IntDistribution if whole else FloatDistribution
        dist = kind(values[0], values[-1], step=sweep.step)
        return Dimension(key, dist, (values[0], values[-1]))
    if isinstance(sweep, IntervalSweep):
        # interval() gives float ends: int(...) tagged, else as they are
        kind, cast = (IntDistribution, int) if "int" in tags else (FloatDistribution, float)
        low, high = cast(sweep.start), cast(sweep.end)
        try:
            dist = kind(low, high, log="log" in tags)
        except ValueError as err:
            raise ConfigError(f"{override.input_line}: {err}") from None
        return Dimension(key, dist, (low, high))
    raise ConfigError(f"{override.input_line}: not a sweep (choice, range or interval)")


@dataclass(frozen=True)
class SearchSpace:
    """The searched dimensions and the overrides every trial gets."""

    dimensions: tuple[Dimension, ...]
    fixed: tuple[str, ...]

    @classmethod
    def parse(cls, params: Mapping[str, str], arguments: Sequence[str]) -> SearchSpace:
        """``params`` (``hydra.sweeper.params``: key → sweep) and the command line's overrides."""
        parser = OverridesParser.create()
        configured = []
        for key, value in params.items():
            try:
                configured += parser.parse_overrides([f"{key}={value}"])
            except OverrideParseException as err:
                why = " ".join(str(err).split())
                raise ConfigError(f"hydra.sweeper.params.{key}={value!r}: {why}") from None
        dims: dict[str, Dimension] = {}
        fixed: list[str] = []
        for override in [*configured, *parser.parse_overrides(list(arguments))]:
            if override.is_sweep_override():
                dim = _dimension(override)
                dims[dim.name] = dim  # the command line's sweep of a key replaces the config's
            else:
                dims.pop(override.key_or_group.lstrip("+~"), None)  # a fixed value wins too
                fixed.append(override.input_line)
        return cls(tuple(dims.values()), tuple(fixed))

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        return {d.name: d.distribution for d in self.dimensions}

    def overrides(self, params: Mapping[str, Any]) -> list[str]:
        """A trial's override list: the fixed overrides, then its sampled values."""
        return [*self.fixed, *(d.override(params[d.name]) for d in self.dimensions)]

    def corner_jobs(self) -> list[list[str]]:
        """The override lists whose configs are checked before the first trial: every
        combination of the dimensions' corners, or each corner alone (the others at their
        first) when there are more than :data:`MAX_CORNER_COMBINATIONS`."""
        corners = [d.corners for d in self.dimensions]
        if math.prod(len(c) for c in corners) <= MAX_CORNER_COMBINATIONS:
            names = [d.name for d in self.dimensions]
            combos = [dict(zip(names, c, strict=True)) for c in itertools.product(*corners)]
        else:
            first = {d.name: d.corners[0] for d in self.dimensions}
            combos = [first | {d.name: v} for d in self.dimensions for v in d.corners]
        return [self.overrides(c) for c in combos]
