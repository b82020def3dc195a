"""The error boundary every command shares (``train.py`` and its Hydra callback, the search, the
two viewers): what the user can fix is one ``error: <message>`` line on stderr and exit 2
(``docs/errors.md`` lists them); anything else is a bug and keeps its traceback.

A full disk is decided here, once: a writer that knew the file and its size (a checkpoint,
through :mod:`vae.train.files`) already raised its :class:`~vae.errors.DiskFullError`; any other
exception whose cause/context chain holds a disk-full ``OSError`` (TensorBoard's event file, a
figure written by a library) becomes one, against the command's :class:`Writes`. No torch is
imported (``train.py`` composes its config under this boundary before loading the training stack).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import sys
from collections.abc import Iterator

from omegaconf.errors import GrammarParseError, InterpolationResolutionError, MissingMandatoryValue
from omegaconf.errors import ValidationError as OmegaConfValidationError

from vae.errors import UserError
from vae.train.diskspace import disk_full_error, disk_full_in_chain, is_disk_full, quiet_tensorboard

#: what OmegaConf raises for a value the user wrote (an interpolation that does not resolve, a
#: ``???`` left unset, a value of the wrong type for its node): the user's to fix, not a bug
_USER_CONFIG_ERRORS = (
    InterpolationResolutionError,
    MissingMandatoryValue,
    OmegaConfValidationError,
    GrammarParseError,
)
#: where Lightning's ``MisconfigurationException`` lives (looked up only once Lightning is loaded)
_LIGHTNING_ERRORS = "lightning.fabric.utilities.exceptions"


@dataclasses.dataclass(frozen=True)
class Writes:
    """What a command writes, for a full disk that no writer reported itself: the ``OSError``'s
    file, else ``directory``, with ``what``, ``kept`` and ``fix`` as in
    :func:`~vae.train.diskspace.disk_full_error`."""

    directory: str | os.PathLike[str]
    what: str
    kept: str
    fix: str


def error_line(
    err: Exception,
    *,
    context: str = "",
    writes: Writes | None = None,
    also: tuple[type[Exception], ...] = (),
) -> str | None:
    """The ``error: <context><message>`` line for ``err`` when the user can fix it, else None.

    A :class:`UserError` (or an ``also`` error) is its message; with ``writes``, any other
    exception caused by a full disk is the :class:`DiskFullError` of the first one in its chain;
    a value OmegaConf or Lightning refuses is its key and first line."""
    found = None if writes is None or isinstance(err, UserError) else disk_full_in_chain(err)
    if found is not None and is_disk_full(found):
        found = disk_full_error(
            found.filename or writes.directory,
            reason=found.strerror or str(found),
            what=writes.what,
            kept=writes.kept,
            fix=writes.fix,
        )
    if isinstance(found or err, (UserError, *also)):
        return f"error: {context}{found or err}"
    lightning = sys.modules.get(_LIGHTNING_ERRORS)  # not loaded: nothing of it was raised
    refused = (lightning.MisconfigurationException,) if lightning else ()
    if not isinstance(err, (*_USER_CONFIG_ERRORS, *refused)):
        return None
    key = getattr(err, "full_key", None)
    where = f"{key}: " if key else ""
    reason = " ".join(str(err).splitlines()[0].split()) if str(err) else type(err).__name__
    return f"error: {context}{where}{reason}"


@contextlib.contextmanager
def user_error_exits(context: str = "", *, writes: Writes | None = None) -> Iterator[None]:
    """The error boundary of a command: in the block (or the decorated function) an error the
    user can fix is :func:`error_line`'s line on stderr and exit 2; anything else keeps its
    traceback. With ``writes``, TensorBoard's writer thread prints no copy of a full disk."""
    try:
        with quiet_tensorboard(is_disk_full) if writes else contextlib.nullcontext():
            yield
    except Exception as err:
        line = error_line(err, context=context, writes=writes)
        if line is None:
            raise
        print(line, file=sys.stderr)
        sys.exit(2)
