"""A run directory deleted (or moved, or replaced) while the run writes into it: one line.

``rm -rf`` of a run's folder mid-run used to end in two tracebacks (TensorBoard's writer thread,
then the main thread's ``FileNotFoundError``), exit 1; or, since our writer makes the folders it
needs, in a recreated half-empty directory. :func:`run_dir_gone_is_one_line` remembers which
directory (device and inode) the run started in; an exception while that directory is no longer
at its path becomes one :class:`~vae.errors.RunDirectoryGone` line (exit 2), whatever raised it.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from vae.errors import RunDirectoryGone
from vae.train.diskspace import quiet_tensorboard


def _identity(directory: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(directory)
    except OSError:
        return None
    return st.st_dev, st.st_ino


@contextlib.contextmanager
def run_dir_gone_is_one_line(directory: str | os.PathLike[str]) -> Iterator[None]:
    """Within the block, an ``Exception`` raised after ``directory`` (existing when the block
    starts) was deleted, moved or replaced becomes a :class:`RunDirectoryGone` naming it; TensorBoard's
    writer thread, which fails first, is silenced then. Anything else passes through."""
    path = Path(directory).absolute()
    started = _identity(path)
    if started is None:  # nothing to watch (train() creates it)
        yield
        return

    def gone() -> bool:
        return _identity(path) != started

    try:
        with quiet_tensorboard(lambda _: gone()):
            yield
    except Exception as err:
        if not gone():
            raise
        what = "deleted" if _identity(path) is None else "replaced (deleted, then made again)"
        raise RunDirectoryGone(
            f"{path}: the run directory was {what} while the run was writing to it ("
            f"{type(err).__name__}: {' '.join(str(err).split())[:200]}); what it held is lost: "
            "start a new run, or resume from a copy of its checkpoints with ckpt_path=<file>"
        ) from None
