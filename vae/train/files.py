"""The one way the project writes a file: :func:`write_atomic` (bytes or text),
:func:`atomic_file` (a file object, for writers such as PIL that want one) and :func:`append_line`
(a line at the end of a small log, by rewriting it).

Each write goes to a temporary file created exclusively in the destination's folder
(``tempfile.mkstemp``: ``O_CREAT | O_EXCL`` under a random name ``.<name>.<8 characters>.tmp``, so
a planted symbolic link or file at any name we could pick is never opened), is fsync'ed, then
renamed over the destination with ``os.replace``. Why:

- nothing we write follows a planted link: ``O_EXCL`` refuses an existing name (a link
  included), and the rename replaces a link *at the destination* itself, never its target;
- a crash, ``kill -9`` or a full disk never leaves a cut file: the destination is the old file or
  the complete new one, and the temporary file is removed on any failure;
- a full disk (ENOSPC, EDQUOT at create, write, fsync or close) is one
  :class:`~vae.errors.DiskFullError` naming the destination, its file system, the bytes needed
  and free (:func:`vae.train.diskspace.disk_full_error`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from vae.train.diskspace import disk_full_error, is_disk_full

#: the temporary files of :func:`write_atomic`: ``.<name>.<random>.tmp`` (mkstemp's random part is
#: 8 characters of ``[a-z0-9_]``), e.g. ``.last.ckpt.k2j4_x9q.tmp``
TEMP_FILE = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp")


def _umask() -> int:
    # read once: os.umask can only be read by setting it, which is not thread-safe later on
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


#: the mode of the files we write: what open() gives a new file under the process's umask
FILE_MODE = 0o666 & ~_umask()


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    *,
    needed: int | None = None,
    what: str | None = None,
    kept: str | None = None,
    fix: str = "or write to another folder",
    durable: bool = True,
) -> Iterator[BinaryIO]:
    """A binary file object whose content replaces ``path`` when the block ends without error.

    The parent folders are created. On any exception ``path`` is left as it was and the temporary
    file removed. ``durable=False`` skips the two fsyncs (benchmarks/README.md): for many small
    files that can be made again (a generated image folder), where a crash of the process still leaves no
    cut file, and only a power cut may. A full disk is a :class:`~vae.errors.DiskFullError`
    naming ``path``: ``needed`` is the size being written when known (else the bytes written
    before the disk filled), ``what`` what it is (default: the file's name), ``kept`` what is
    intact (default: ``path`` is as it was) and ``fix`` the caller's way out, as in
    :func:`~vae.train.diskspace.disk_full_error`.
    """
    target = Path(path)
    tmp: str | None = None
    written = 0
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            written = f.tell()
            os.fchmod(f.fileno(), FILE_MODE)  # mkstemp creates 0600; open() would give this
            if durable:
                os.fsync(f.fileno())
        os.replace(tmp, target)  # replaces a link at ``path`` itself, never what it points to
        tmp = None
    except BaseException as err:
        if tmp is not None:  # removed before the free space is measured
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if not is_disk_full(err):
            raise
        raise disk_full_error(
            target,
            reason=err.strerror or os.strerror(errno.ENOSPC),
            what=what or target.name,
            needed=needed if needed is not None else (written or None),
            kept=kept or f"{target} is as it was (the partial file was removed)",
            fix=fix,
        ) from None
    if durable:
        _sync_folder(target.parent)


def write_atomic(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview | str,
    *,
    what: str | None = None,
    kept: str | None = None,
    fix: str = "or write to another folder",
) -> Path:
    """Replace ``path`` by ``data`` (a ``str`` is written as UTF-8) as :func:`atomic_file` does;
    returns ``path``."""
    payload = memoryview(data.encode("utf-8") if isinstance(data, str) else data).cast("B")
    with atomic_file(path, needed=payload.nbytes, what=what, kept=kept, fix=fix) as f:
        view = payload
        while view:  # straight to the descriptor (the buffer stays empty); a write may be partial
            view = view[os.write(f.fileno(), view) :]
    return Path(path)


def _sync_folder(folder: Path) -> None:
    """fsync ``folder``, so the rename survives a power cut (best effort: not every file system
    lets a folder be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_own(path: str | os.PathLike[str]) -> bytes | None:
    """The content of a file we wrote earlier and now rewrite (a log, the projector's config), or
    None when there is none: a missing file, or a link planted there (``O_NOFOLLOW``: another
    file's content is never copied into ours; the rewrite replaces the link)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as err:
        if err.errno == errno.ELOOP:
            return None
        raise
    with os.fdopen(fd, "rb") as f:
        return f.read()


def append_line(path: str | os.PathLike[str], line: str) -> Path:
    """Add ``line`` and a newline at the end of the text file ``path`` (created if missing), by
    rewriting it with :func:`write_atomic` (an append in place would follow a planted link): for
    small logs, one line per epoch."""
    old = read_own(path) or b""
    return write_atomic(path, old + line.encode("utf-8") + b"\n")
