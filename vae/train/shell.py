"""The commands we print for the user to copy (``resume with: python train.py ...``): each value
quoted twice, for Hydra's override grammar and then for the shell.

Hydra parses ``key=value`` itself: a path with a non-ASCII letter, a ``~``, a ``=``, a quote or
a ``,`` (a sweep!) is refused or misread unless it is quoted inside the override
(``hydra.run.dir='/tmp/bäse'``); the shell then needs the whole override quoted once more
(``shlex.quote``). Pure Python (no torch): :mod:`vae.train.cli` uses it before Hydra runs.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

#: what Hydra reads as a plain string without quotes (ASCII only: its lexer refuses other letters)
_PLAIN = re.compile(r"[A-Za-z0-9_./:@+%-]+")


def hydra_quote(value: object) -> str:
    """``value`` as Hydra's override grammar reads it back unchanged: as it is when plain, else in
    double quotes (single quotes if it holds a double quote; that quote inside as ``\\'``,
    backslashes before a quote or the closing quote doubled, ``${`` as ``\\${`` so OmegaConf does
    not interpolate it). Double quotes read best inside the shell's single quotes."""
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    q = "'" if '"' in text else '"'
    text = re.sub(r"(\\*)\$\{", r"\1\1\\${", text)
    text = re.sub(rf"(\\*)({q}|$)", lambda m: m[1] * 2 + ("\\" + q if m[2] else ""), text)
    return f"{q}{text}{q}"


def override(key: str, value: object) -> str:
    """``key=value`` for Hydra (the value quoted where it must be)."""
    return f"{key}={hydra_quote(value)}"


def command(head: str, args: Iterable[str]) -> str:
    """``head`` and the overrides ``args``, each quoted for a POSIX shell: what the user pastes."""
    return " ".join([head, *(shlex.quote(a) for a in args)])
