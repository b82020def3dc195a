"""MNIST and Fashion-MNIST files: finding, downloading and reading the four IDX files, verified.

Files are looked up under ``<root>/MNIST/raw/`` (Fashion: ``<root>/FashionMNIST/raw/``, then the
Debian package's ``/usr/share/datasets/fashion-mnist/``), gzip-compressed or not. Every payload is
verified against its SHA-256 *after* decompression, so archives written by another compressor are
accepted and a corrupt or truncated file is an error, never a garbage tensor. The data module
(:mod:`vae.train.data`) serves them as one of its sources.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tempfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.datasets.utils import download_url

from vae.errors import DatasetError
from vae.train.data_config import IDX_DATASETS

__all__ = [
    "IDX_DATASETS",
    "SHA256",
    "TRAIN_HINTS",
    "DataHints",
    "class_names",
    "load_split",
    "locate_files",
    "read_idx",
]

TRAIN_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST_FILES = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FILES = TRAIN_FILES + TEST_FILES

# SHA-256 of the *uncompressed* IDX payloads.
# MNIST: the published values (equal to ../shared/datasets/MNIST/raw/SHA256SUMS).
# Fashion-MNIST: computed from the Debian package dataset-fashion-mnist (0.0~git20200523.55506a9-1).
# Its .gz files differ from the originals only in the 10-byte gzip header (file name dropped, mtime
# set to the package date); with the original header restored (FNAME = the file name, mtime
# 2017-08-31 10:50:06/27 UTC) all four match torchvision's published MD5s byte for byte, so the
# deflate streams, and hence these payloads, are the originals.
SHA256: dict[str, dict[str, str]] = {
    dataset: dict(zip(FILES, sums, strict=True))
    for dataset, sums in {
        "mnist": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
        "fashion_mnist": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
        ),
    }.items()
}

# Where the Debian package dataset-fashion-mnist installs the four .gz files.
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class _Spec:
    title: str
    folder: str  # torchvision's layout: <root>/<folder>/raw/
    mirrors: tuple[str, ...]
    class_names: tuple[str, ...]


_SPECS = {
    "mnist": _Spec("MNIST", "MNIST", tuple(MNIST.mirrors), tuple(str(d) for d in range(10))),
    "fashion_mnist": _Spec(
        "Fashion-MNIST",
        "FashionMNIST",
        tuple(FashionMNIST.mirrors),
        tuple(FashionMNIST.classes),
    ),
}


@dataclass(frozen=True)
class DataHints:
    """How the running command spells the fixes that a data error suggests.

    Every :class:`DatasetError` ends with one of these, so the message names the options of the
    command at hand: :data:`TRAIN_HINTS` (``train.py``'s config keys) by default;
    ``python -m vae.visualize`` passes its own (``--data-root``, and it never downloads).
    ``{mirrors}`` and ``{raw}`` are filled in with the download mirrors and the ``<folder>/raw/``
    the files belong in.
    """

    not_fetched: str  # why nothing was downloaded
    fetch: str  # how to download the missing files
    refetch: str  # what to do with a corrupt file
    root: str  # how to point the command at another data root
    folder: str  # how to point the command at the folder of images (data=folder)


TRAIN_HINTS = DataHints(
    not_fetched="data.download is false, so nothing was downloaded",
    fetch="on a machine with network access set data.download=true to fetch them from {mirrors}",
    refetch="delete it and download it again (data.download=true), or replace it",
    root="set data.root (default: the VAE_DATA_DIR environment variable, else ./data) to a "
    "directory holding {raw}",
    folder="set data.root to your folder of images",
)

# --------------------------------------------------------------------------------------------
# IDX files


def _decompress(path: Path, raw: bytes, hints: DataHints) -> bytes:
    decomp = zlib.decompressobj(wbits=31)  # gzip container
    try:
        out = decomp.decompress(raw)
        if decomp.unused_data:  # a multi-member archive: rare; let the gzip module handle it
            out = gzip.decompress(raw)
        elif not decomp.eof:
            raise DatasetError(
                f"{path}: the gzip stream ends early (file truncated after {len(raw):,} bytes); "
                f"{hints.refetch}."
            )
    except (zlib.error, OSError, EOFError) as err:
        raise DatasetError(
            f"{path}: cannot decompress ({err}); the file is corrupt: {hints.refetch}."
        ) from err
    return out


def read_idx(
    path: str | os.PathLike[str], *, sha256: str, hints: DataHints = TRAIN_HINTS
) -> torch.Tensor:
    """Read an IDX file of unsigned bytes (gzip-compressed or not) into a uint8 tensor.

    Gzip is recognised by its magic bytes, whatever the file name. The decompressed payload must
    have the SHA-256 ``sha256``, which vouches for its header, shape and length too (so there is no
    separate header check). A mismatch raises ``DatasetError`` naming the file and the two
    checksums, as does a path that is no readable file (:func:`_present`); each message ends with
    the fix, as ``hints`` spells it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as err:
        if not _present(path, kind="file", hints=hints, raw=path.parent):
            raise DatasetError(f"{path}: no such file; {hints.refetch}.") from None
        raise DatasetError(f"{path}: cannot read ({err.strerror}); {hints.refetch}.") from None
    data = _decompress(path, raw, hints) if raw[:2] == b"\x1f\x8b" else raw
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise DatasetError(
            f"{path}: SHA-256 of the IDX payload is {found}, expected {sha256}: the file is "
            f"corrupt or not the published one: {hints.refetch}."
        )
    nd = data[3]  # magic 0x000008NN: unsigned bytes, NN dimensions, then NN big-endian sizes
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(nd))
    writable = bytearray(data)  # torch.frombuffer wants writable memory
    return torch.frombuffer(writable, dtype=torch.uint8, offset=4 + 4 * nd).view(shape)


# --------------------------------------------------------------------------------------------
# Finding, downloading and loading the four files


def _spec(dataset: str) -> _Spec:
    if dataset not in _SPECS:
        raise ValueError(f"{dataset!r} is not one of {IDX_DATASETS}")
    return _SPECS[dataset]


def class_names(dataset: str) -> tuple[str, ...]:
    """The names of ``dataset``'s ten classes, in label order."""
    return _spec(dataset).class_names


def _find(name: str, dirs: Sequence[Path], hints: DataHints) -> Path | None:
    for d in dirs:
        if not _present(d, kind="directory", hints=hints, raw=dirs[0]):
            continue
        for candidate in (d / name, d / f"{name}.gz"):  # uncompressed first: no decompression
            if _present(candidate, kind="file", hints=hints, raw=dirs[0]):
                return candidate
    return None


def _present(path: Path, *, kind: str, hints: DataHints, raw: Path) -> bool:
    """Whether a readable ``kind`` (``"file"`` or ``"directory"``) is at ``path``.

    False when nothing is there (the caller looks elsewhere, or reports it missing). Anything else
    is a :class:`DatasetError` naming the path and what is wrong with it: the other kind (``raw/``
    a regular file, a data file name that is a directory), a special file, a symlink loop or a
    broken symlink, no permission (``os.access``: root may read anyway). ``raw`` is the
    ``<root>/<folder>/raw`` directory named in the fix.
    """
    try:
        st = path.stat()
    except FileNotFoundError:
        if not path.is_symlink():
            return False
        problem = f"a broken symbolic link (to {os.readlink(path)}, which does not exist)"
        fix = f"point it at the {kind} (or remove it)"
    except NotADirectoryError:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), path.parent)
        path, problem = blocker, f"{_kind_of(blocker)} where a directory should be"
        fix = "move it away and put the files in a directory there"
    except PermissionError as err:
        # the outermost directory that may not be entered: the one to chmod
        path = next((p for p in reversed(path.parents) if not os.access(p, os.X_OK)), path.parent)
        problem = f"a directory you may not look into ({err.strerror}, {_mode(path)})"
        fix = "make it readable (chmod a+rx)"
    except OSError as err:
        if err.errno != errno.ELOOP:
            problem, fix = f"cannot access it ({err.strerror})", "check the path"
        else:
            problem = f"a symbolic link loop ({err.strerror})"
            fix = f"point the link at the {kind} (or replace it by the {kind})"
    else:
        is_dir = kind == "directory"
        if not (stat.S_ISDIR if is_dir else stat.S_ISREG)(st.st_mode):
            problem = f"{_kind_of(path)}, not a {kind}"
            fix = f"move it away and put the {'files in a directory' if is_dir else 'file'} there"
        elif not os.access(path, os.R_OK | os.X_OK if is_dir else os.R_OK):
            problem = f"a {kind} you may not read ({_mode(path)})"
            fix = f"make it readable (chmod {'a+rx' if is_dir else 'a+r'})"
        else:
            return True
    raise DatasetError(f"{path}: {problem}; {fix}, or {hints.root.format(raw=_raw_label(raw))}.")


def _kind_of(path: Path) -> str:
    """What is at ``path``, in words (for the "X where Y should be" messages)."""
    mode = path.stat().st_mode
    kinds = {
        stat.S_ISREG: "a regular file",
        stat.S_ISDIR: "a directory",
        stat.S_ISFIFO: "a named pipe",
        stat.S_ISSOCK: "a socket",
        stat.S_ISCHR: "a character device",
        stat.S_ISBLK: "a block device",
    }
    return next((words for test, words in kinds.items() if test(mode)), "a special file")


def _mode(path: Path) -> str:
    """``mode 000, owner uid 1000``: the words of a permission message."""
    try:
        st = path.stat()
    except OSError:
        return "mode unknown"
    return f"mode {stat.S_IMODE(st.st_mode):03o}, owner uid {st.st_uid}"


def _raw_label(raw: Path) -> str:
    """``MNIST/raw/`` from ``<root>/MNIST/raw``: the folder a data root must hold."""
    return f"{raw.parent.name}/{raw.name}/"


def _fetch(url: str, directory: Path, filename: str) -> None:
    """Download ``url`` to ``directory/filename`` (torchvision's downloader; tests replace this)."""
    download_url(url, root=str(directory), filename=filename)


def _download(dataset: str, name: str, directory: Path) -> tuple[Path | None, list[str]]:
    """Fetch ``name.gz`` from the mirrors into ``directory``, verified; atomically renamed in place.

    Returns the final path (None when every mirror failed) and one line per failed attempt.
    """
    spec = _spec(dataset)
    directory.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    filename = f"{name}.gz"
    with tempfile.TemporaryDirectory(
        prefix=f".{name}.", suffix=".part", dir=directory, ignore_cleanup_errors=True
    ) as staging:
        tmp = Path(staging, filename)
        for mirror in spec.mirrors:
            url = f"{mirror}{filename}"
            try:
                _fetch(url, tmp.parent, filename)
                read_idx(tmp, sha256=SHA256[dataset][name])
            except Exception as err:  # network errors come in many types; all mean "next mirror"
                failures.append(f"{url}: {type(err).__name__}: {err}")
                tmp.unlink(missing_ok=True)
                continue
            final = directory / filename
            os.replace(tmp, final)  # not vae.train.files: torchvision's download, renamed
            return final, failures
        return None, failures


def locate_files(
    dataset: str,
    root: str | os.PathLike[str],
    *,
    download: bool = False,
    hints: DataHints = TRAIN_HINTS,
) -> dict[str, Path]:
    """Paths of the four IDX files, downloading the missing ones when ``download`` is true.

    Raises ``DatasetError`` listing the missing files, where they were looked for and how to fix it
    (as ``hints`` spells it), or naming a path that is there but unusable (:func:`_present`).
    Only presence is checked here; ``read_idx``/``load_split`` verify the contents.
    """
    spec = _spec(dataset)
    dirs = [Path(root).expanduser() / spec.folder / "raw"]
    if dataset == "fashion_mnist":
        dirs.append(FASHION_SYSTEM_DIR)
    found = {name: _find(name, dirs, hints) for name in FILES}
    failures: list[str] = []
    if download:
        for name in FILES:
            if found[name] is None:
                found[name], errs = _download(dataset, name, dirs[0])
                failures += errs
                if found[name] is None:
                    break  # every mirror failed (offline?): don't wait on them for each file
    missing = [name for name in FILES if found[name] is None]
    if missing:
        looked = ", ".join(str(d.resolve()) for d in dirs)
        tried = (
            " Download failed: " + "; ".join(failures) + "."
            if failures
            else f" ({hints.not_fetched}.)"
        )
        mirrors = ", ".join(spec.mirrors)
        # a download was tried: "set data.download=true" would advise what was already set
        fetch = (
            f"check this machine's network access to {mirrors} and run again (or download the "
            "files on a machine that has it)"
            if failures
            else hints.fetch.format(mirrors=mirrors)
        )
        raise DatasetError(
            f"{spec.title} files missing: {', '.join(f'{n}[.gz]' for n in missing)}; looked in "
            f"{looked}.{tried} Fix it either way: (1) {fetch}; or (2) put the four IDX files "
            f"(gzip or not) in {dirs[0].resolve()}, or {hints.root.format(raw=_raw_label(dirs[0]))}."
        )
    return {name: path for name, path in found.items() if path is not None}


def load_split(
    dataset: str,
    root: str | os.PathLike[str],
    *,
    train: bool,
    download: bool = False,
    hints: DataHints = TRAIN_HINTS,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The verified training (60,000) or test (10,000) split.

    Returns images as uint8 ``(N, 1, 28, 28)`` and labels as int64 ``(N,)``. Each payload matches
    its published SHA-256 (:data:`SHA256`), so the counts, shapes and labels are the published ones.
    Errors spell their fixes as ``hints`` says.
    """
    paths = locate_files(dataset, root, download=download, hints=hints)
    img_name, lbl_name = TRAIN_FILES if train else TEST_FILES
    sums = SHA256[dataset]
    images = read_idx(paths[img_name], sha256=sums[img_name], hints=hints)  # (N, 28, 28)
    labels = read_idx(paths[lbl_name], sha256=sums[lbl_name], hints=hints)  # (N,)
    return images.unsqueeze(1), labels.long()
