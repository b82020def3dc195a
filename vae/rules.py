"""Rules for config values: a predicate and the words that describe what it allows.

A rule is ``(ok, allowed)``: ``ok(value)`` says whether ``value`` is allowed, ``allowed`` completes
the sentence "expected …" in the one-line error. Each config key has exactly one rule, declared
beside the thing it configures (:mod:`vae.core.config` for ``model`` / ``optim`` / ``eval``,
:data:`vae.train.data_config.DATA_RULES` for ``data``); :func:`check` applies one.
"""

from __future__ import annotations

import difflib
import math
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from vae.errors import ConfigError

Rule = tuple[Callable[[Any], bool], str]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def int_at_least(low: int) -> Rule:
    return (lambda v: _is_int(v) and v >= low), f"an integer ≥ {low}"


def int_in(low: int, high: int) -> Rule:
    return (lambda v: _is_int(v) and low <= v <= high), f"an integer in [{low}, {high}]"


def number_at_least(low: float, *, strict: bool = False) -> Rule:
    if strict:
        return (lambda v: _is_number(v) and v > low), f"a finite number > {low:g}"
    return (lambda v: _is_number(v) and v >= low), f"a finite number ≥ {low:g}"


def number_in(low: float, high: float) -> Rule:
    return (lambda v: _is_number(v) and low <= v <= high), f"a number in [{low:g}, {high:g}]"


def one_of(options: Sequence[Any]) -> Rule:
    return (lambda v: v in options), "one of " + ", ".join(str(o) for o in options)


def boolean() -> Rule:
    return (lambda v: isinstance(v, bool)), "true or false"


def int_list() -> Rule:
    def ok(v: Any) -> bool:
        # a ListConfig is a Sequence, not a list
        return (
            isinstance(v, Sequence)
            and not isinstance(v, str)
            and len(v) > 0
            and all(_is_int(x) and x >= 1 for x in v)
        )

    return ok, "a non-empty list of integers ≥ 1, e.g. [512,256]"


def path(*, optional: bool = False) -> Rule:
    def ok(v: Any) -> bool:
        return (optional and v is None) or (
            isinstance(v, (str, os.PathLike)) and bool(os.fspath(v))
        )

    return ok, "a non-empty path"


def plain(value: Any) -> Any:
    """A sequence (a tuple, OmegaConf's ``ListConfig``) as a list; anything else as it is."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def check(key: str, value: Any, rule: Rule) -> Any:
    """``value`` if ``rule`` allows it, else :class:`ConfigError` ``key=value: expected …``."""
    ok, allowed = rule
    if not ok(value):
        raise ConfigError(f"{key}={plain(value)!r}: expected {allowed}")
    return value


def refuse_unknown(section: str, keys: Iterable[str], known: Iterable[str]) -> None:
    """:class:`ConfigError` for the first of ``keys`` that is not ``known``, with the closest known
    name; ``section`` is the keys' prefix (``"model."``, or ``""`` for the top level)."""
    known = sorted(set(known))
    for key in keys:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1, cutoff=0.5)
            hint = f"did you mean {section}{close[0]}? " if close else ""
            where = f"the {section.rstrip('.')} keys" if section else "the top-level keys"
            raise ConfigError(f"{section}{key}: no such key; {hint}{where} are {', '.join(known)}")


def optional(rule: Rule) -> Rule:
    """``rule``, or ``null``."""
    ok, allowed = rule
    return (lambda v: v is None or ok(v)), f"null or {allowed}"


def batch_limit(*, allow_zero: bool) -> Rule:
    """Lightning's ``limit_*_batches``: null (all), a count, or a fraction of the batches."""
    low = 0 if allow_zero else 1

    def ok(v: Any) -> bool:
        if v is None or (_is_int(v) and v >= low):
            return True
        return isinstance(v, float) and (v >= 0.0 if allow_zero else v > 0.0) and v <= 1.0

    frac = "[0, 1]" if allow_zero else "(0, 1]"
    return ok, f"null (all), an integer ≥ {low} (batches) or a fraction in {frac}"


def positive_int_arg(text: str) -> int:
    """An ``argparse`` type for the command lines' counts: an integer ≥ 1, else argparse's error."""
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer ≥ 1, got {text!r}")
    return value
