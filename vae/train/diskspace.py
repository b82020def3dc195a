"""A full disk is the user's to fix, not a crash: one line naming the file, its file system and the
space it needs, instead of a traceback.

A write can run out of space (``ENOSPC``, or ``EDQUOT`` for a quota) wherever a command writes:

- a checkpoint: :class:`vae.train.checkpointing.AtomicCheckpointIO` serialises it in memory and writes the
  bytes itself, so the error arrives as an ``OSError`` with its errno (``torch.save`` straight into
  a file turns it into ``RuntimeError: … unexpected pos …``), and raises :func:`disk_full_error`
  with the checkpoint's size;
- TensorBoard's event file: written by a background thread (tensorboard's ``EventFileWriter``),
  whose ``OSError`` is printed as a thread traceback and re-raised at the next log call (where
  Lightning's ``TensorBoardLogger.log_metrics`` wraps it in a ``ValueError``) or at ``finalize``;
- figures, the projector files, ``metrics.json``: plain ``OSError``.

:func:`vae.train.boundary.error_line` turns all of these into one :class:`~vae.errors.DiskFullError`:
any exception whose cause/context chain holds a ``DiskFullError`` or a disk-full ``OSError``
(:func:`disk_full_in_chain`), and :func:`quiet_tensorboard` silences the TensorBoard writer
thread's copy of the error (the main thread reports it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from vae.errors import DiskFullError

#: the errnos that mean "no room to write": no space left, quota exceeded
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_TENSORBOARD_WRITER = "tensorboard.summary.writer.event_file_writer"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` is an ``OSError`` for lack of space or quota."""
    return isinstance(err, OSError) and err.errno in DISK_FULL_ERRNOS


def format_bytes(n: int) -> str:
    """``n`` bytes in decimal units: ``512 bytes``, ``16.2 kB``, ``12.9 MB``, ``3.1 GB``."""
    if n < 1000:
        return f"{n:,} bytes"
    for unit in ("kB", "MB", "GB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} TB"


def file_system(path: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """The mount point of the file system holding ``path`` (or its nearest existing ancestor) and
    its type from ``/proc/mounts`` (None where that file is missing)."""
    mount = _existing(Path(path)).resolve()
    while not os.path.ismount(mount) and mount != mount.parent:
        mount = mount.parent
    fstype = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            fields = line.split()
            # mount points with spaces are written with octal escapes (\040)
            if len(fields) >= 3 and _unescape(fields[1]) == str(mount):
                fstype = fields[2]  # the last entry for a mount point is the one in effect
    return mount, fstype


def disk_full_error(
    path: str | os.PathLike[str],
    *,
    reason: str = os.strerror(errno.ENOSPC),
    what: str,
    needed: int | None = None,
    kept: str,
    fix: str,
) -> DiskFullError:
    """The one-line error for a write to ``path`` that ran out of room.

    ``reason`` is the OS's (``No space left on device``, ``Disk quota exceeded``); ``what`` names
    what was being written and ``needed`` its size in bytes, when known; ``kept`` says what is
    intact and ``fix`` how else to go on (the command's own option). The free space is measured
    now, after the caller removed its partial file.
    """
    path = Path(path)
    mount, fstype = file_system(path)
    free = shutil.disk_usage(_existing(path)).free
    where = f"{mount} ({fstype})" if fstype else str(mount)
    size = f" ({format_bytes(needed)})" if needed is not None else ""
    short = needed - free if needed is not None else 0
    make_room = f"free at least {format_bytes(short)} there" if short > 0 else "free space there"
    return DiskFullError(
        f"{path}: {reason.lower()} while writing {what}{size}; the file system mounted at {where} "
        f"has {format_bytes(free)} free; {kept}; {make_room}, {fix}"
    )


@contextlib.contextmanager
def quiet_tensorboard(reported: Callable[[BaseException | None], bool]) -> Iterator[None]:
    """Within the block, TensorBoard's event-writer thread prints no traceback for an exception
    that ``reported`` says the main thread reports (the writer keeps it and the main thread raises
    it again at the next write: the thread's traceback would come before the one line)."""
    previous = threading.excepthook

    def quiet(args: threading.ExceptHookArgs) -> None:
        module = type(args.thread).__module__ if args.thread is not None else ""
        if module != _TENSORBOARD_WRITER or not reported(args.exc_value):
            previous(args)

    threading.excepthook = quiet
    try:
        yield
    finally:
        threading.excepthook = previous


def disk_full_in_chain(err: BaseException) -> BaseException | None:
    """The first DiskFullError in ``err``'s cause/context chain, else the first disk-full OSError."""
    chain: dict[int, BaseException] = {}  # by id, in the order visited
    stack = [err]
    while stack:
        e = stack.pop()
        if e is not None and id(e) not in chain:
            chain[id(e)] = e
            stack += [e.__context__, e.__cause__]  # popped cause first
    found = [e for e in chain.values() if isinstance(e, DiskFullError)]
    found += [e for e in chain.values() if is_disk_full(e)]
    return found[0] if found else None


def _existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (``path`` itself may not be written yet)."""
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _unescape(field: str) -> str:
    r"""A ``/proc/mounts`` field with its octal escapes (``\040`` for a space) decoded."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
