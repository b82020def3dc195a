"""``train.py``'s command line before Hydra sees it: Hydra's own composition errors in our style.

Hydra refuses a bad override (``model.latentdim=3``, a typo without ``+``; ``logger=csvx``, an
option that does not exist; a syntax error) with a multi-line message of its own and exit 1, before
any code of ours runs. :func:`prepare_overrides` composes the config first (~0.3 s, no torch), with
Hydra's public compose API, and turns each such refusal into the one ``error:`` line, with the
closest name and exit 2, that :mod:`vae.train.config` gives for everything else. It also reads
``<group>=null`` as "none of this group" (``logger=null``), which Hydra itself cannot parse for a
config group. And it sends a resumed run into its own directory (:mod:`vae.train.resume`).
"""

from __future__ import annotations

import difflib
import itertools
import re
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError

from vae.errors import ConfigError
from vae.rules import refuse_unknown
from vae.train.resume import resume_in_place
from vae.train.shell import override as shell_override

#: flags that take no value, after which the overrides are still ours to check
_PLAIN_FLAGS = ("-m", "--multirun", "--resolve")
#: flags whose value is the next argument
_VALUE_FLAGS = ("-c", "--cfg", "-p", "--package", "--info")


def _null_groups(argv: Sequence[str], groups: set[str]) -> list[str]:
    """``<group>=null`` → ``~<group>`` (drop the group's default), for each config group."""
    out = []
    for arg in argv:
        key, eq, value = arg.partition("=")
        out.append(f"~{key}" if eq and key in groups and value.strip() == "null" else arg)
    return out


def _overrides(argv: Sequence[str]) -> list[str] | None:
    """The overrides of ``argv``; None where a flag asks Hydra for something else (``--help``,
    ``--config-name``, shell completion, ...): then Hydra alone handles the command line."""
    overrides, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _VALUE_FLAGS:
            skip = True
        elif arg.startswith("-") and arg not in _PLAIN_FLAGS:
            return None
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def sweep_jobs(overrides: list[str]) -> list[list[str]]:
    """The override lists of a sweep's jobs, as Hydra's basic sweeper expands them (public API
    only): the product of each key's values, a later override of a key replacing an earlier one.
    A sweep over an interval has no list of jobs: none (its sweeper reports what it cannot run)."""
    values: dict[str, list[str]] = {}
    for override in OverridesParser.create().parse_overrides(overrides):
        key = override.get_key_element()
        if not override.is_sweep_override():
            values[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            values[key] = [f"{key}={v}" for v in override.sweep_string_iterator()]
        else:
            return []
    return [list(job) for job in itertools.product(*values.values())]


def _jobs(overrides: list[str]) -> Iterator[list[str]]:
    """The override lists of the jobs a sweep (``a=1,2``) expands to; each override string is
    checked in at least one job, which keeps a long sweep to a few compositions."""
    OverridesParser.create().parse_overrides(overrides)  # a grammar error is the user's line
    seen: set[str] = set()
    for job in sweep_jobs(overrides) or [[o for o in overrides if "(" not in o]]:
        if not set(job) <= seen:
            seen |= set(job)
            yield list(job)


def _unknown_key(key: str, others: list[str], config_name: str) -> ConfigError:
    """The refusal of ``key`` (no such key), with the closest name in its section."""
    parent, _, leaf = key.rpartition(".")
    try:
        cfg = compose(config_name, overrides=others, return_hydra_config=parent.startswith("hydra"))
        node = OmegaConf.select(cfg, parent) if parent else cfg
    except Exception:  # another override is wrong too: say what is known about this one
        node = None
    # the keys a user sets (not Hydra's _target_ and the like)
    known = [k for k in node if not str(k).startswith("_")] if isinstance(node, DictConfig) else []
    try:
        refuse_unknown(f"{parent}." if parent else "", [leaf], known)
    except ConfigError as err:
        return err
    return ConfigError(f"{key}: cannot be set")  # unreachable: leaf is not in the section


def _missing_option(err: MissingConfigException) -> ConfigError:
    """``logger=csvx`` → no such option, the closest one, and the group's options."""
    found = re.search(r"Could not find '([^']+)/([^'/]+)'", str(err))
    if not found or not err.options:
        return ConfigError(str(err).strip().splitlines()[0])
    group, option = found[1], found[2]
    options = sorted(err.options)
    close = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    hint = f"did you mean {group}={close[0]}? " if close else ""
    return ConfigError(
        f"{group}={option}: no such option; {hint}the {group} options are {', '.join(options)}"
    )


def _quoting(text: str) -> str:
    """How to quote an override whose value Hydra's grammar refuses unquoted (a path with a
    non-ASCII letter, a ``~`` or a ``=``), as the shell needs it; else nothing."""
    key, eq, value = text.partition("=")
    if not eq or not re.fullmatch(r"[+~]?[\w.@/-]+", key) or value[:1] in ("'", '"', "["):
        return ""
    quoted = shell_override(key, value)
    try:
        OverridesParser.create().parse_overrides([quoted])
    except OverrideParseException:
        return ""
    return f"; quote the value for Hydra, inside the shell's quotes: {shlex.quote(quoted)}"


def _check(overrides: list[str], config_name: str) -> DictConfig | None:
    """Compose ``config_name`` with ``overrides``; a :class:`ConfigError` for the first refusal.
    The composed config when there is one job (no sweep)."""
    for override in overrides:  # one at a time, to name the one that does not parse
        try:
            OverridesParser.create().parse_overrides([override])
        except OverrideParseException as err:
            reason = str(err).strip().splitlines()[0]
            raise ConfigError(
                f"{override}: cannot be parsed ({reason}){_quoting(override)}"
            ) from None
    composed = []
    for job in _jobs(overrides):
        try:
            composed.append(compose(config_name, overrides=job))
        except MissingConfigException as err:
            raise _missing_option(err) from None
        except ConfigCompositionException as err:
            message = str(err).strip()
            bad = re.match(r"Could not override '([^']+)'", message)
            if bad and isinstance(err.__cause__, (ConfigAttributeError, ConfigKeyError)):
                others = [o for o in job if o.lstrip("+~").split("=", 1)[0] != bad[1]]
                raise _unknown_key(bad[1], others, config_name) from None
            raise ConfigError(" ".join(message.split("\n")[:2])) from None
    return composed[0] if len(composed) == 1 else None


def prepare_overrides(argv: Sequence[str], *, config_dir: Path, config_name: str) -> list[str]:
    """``argv`` with ``<group>=null`` read as ``~<group>``, after composing the config it asks
    for; a refusal is a :class:`ConfigError` whose message is the one line to print."""
    argv = _null_groups(argv, {p.name for p in config_dir.iterdir() if p.is_dir()})
    overrides = _overrides(argv)
    if overrides is None:
        return argv
    with initialize_config_dir(config_dir=str(config_dir.absolute()), version_base="1.3"):
        cfg = _check(overrides, config_name)
    multirun = any(a in ("-m", "--multirun") for a in argv)
    if cfg is None or multirun or any(o.startswith("hydra.run.dir=") for o in overrides):
        return argv  # a sweep, or a run directory the user chose: Hydra's as asked
    return resume_in_place(argv, cfg)
