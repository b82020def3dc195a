"""The errors a user can cause, in one place: the command lines print each as one ``error: …`` line
and exit 2 (``docs/errors.md`` lists what the user sees, and the fix).

Every other module raises these; none of them defines its own user-facing error class.
"""

from __future__ import annotations


class UserError(Exception):
    """An error caused by the user's input (config, data, paths, checkpoints): one line, exit 2."""


class ConfigError(UserError, ValueError):
    """A config value that is not allowed: the message names the key, the value and what is allowed."""


class DatasetError(UserError, RuntimeError):
    """Data missing, corrupt or inconsistent; the message says which file and how to fix it."""


class CheckpointError(UserError, ValueError):
    """A file that is not a loadable checkpoint of :class:`vae.train.module.VAEModule`, or one that would
    run code when loaded (refused before anything in it runs)."""


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; raised before anything is checkpointed."""


class RunInterrupted(Exception):
    """A run stopped by SIGTERM / SIGINT after saving a resumable checkpoint (not a user error:
    the command line prints how to resume and exits with ``exit_code``, 128 + the signal's number)."""

    def __init__(self, message: str, *, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class DiskFullError(UserError):
    """A write failed for lack of space (ENOSPC) or quota (EDQUOT); the message names the file, its
    file system, the space needed and free, and what was kept (:mod:`vae.train.diskspace` builds it)."""


class RunDirectoryGone(UserError, OSError):
    """The run directory was deleted, moved or replaced while the run was writing to it."""


class ExplorerError(UserError, ValueError):
    """The explorer page cannot be built for this model or target (one line for the user)."""
