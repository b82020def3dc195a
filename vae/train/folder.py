"""A folder of your own images, decoded once into one uint8 cache file that epochs read memory-mapped.

**Layouts** of ``<root>`` (hidden names, starting with ``.``, are skipped):

* class folders ``<root>/<class>/**/<image>``: the labels, classes numbered in the sorted order of
  their names (torchvision's ``ImageFolder`` convention);
* flat ``<root>/<image>``: no labels;
* ``<root>/train/`` and ``<root>/test/``, each holding one of the two above (the same classes): they
  are the split. Without them the data module draws a seeded split.

**Order.** The images of a split are ordered by file name, ties broken by class, then by the path
(not class by class, as ``ImageFolder``): a folder whose file names are the images' indices, as
``benchmarks/mnist_folder.py`` writes MNIST, keeps the dataset's own order, so the same seed draws
the same split and trains on the same batches.

**Shape.** An image is grey when its Pillow mode is one of :data:`GREY_MODES`, colour otherwise
(palette images count as colour). ``channels`` null: 1 when every image is grey, else 3. Grey
images become RGB by repeating the grey level; colour becomes grey by ITU-R 601-2 luma
(L = 0.299 R + 0.587 G + 0.114 B, Pillow's ``convert("L")``); an alpha channel is dropped.
``image_size`` null: the size all images share (a folder of several sizes needs it). Otherwise each
image is scaled (bilinear, antialiased) so that its shorter side is ``image_size``, then the centre
``image_size`` × ``image_size`` square is cropped; images are never enlarged, so one whose shorter
side is smaller is an error.

**Cache.** ``<cache_dir>/folder-<root>-<settings>-<fingerprint>.npy`` (uint8 ``(N, C, H, W)``, rows
of ``train/`` first) and a ``.json`` beside it (labels, class names, the split). The fingerprint
hashes every image's relative path, size and modification time, so an added, removed, renamed or
edited file rebuilds the cache (and removes the stale one). Both files are written under unique
temporary names and renamed into place; nothing is ever written in the image folder.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from vae.errors import DatasetError
from vae.train.data_config import MIN_SIDE
from vae.train.files import atomic_file, write_atomic
from vae.train.idx import TRAIN_HINTS

__all__ = ["GREY_MODES", "IMAGE_SUFFIXES", "MIN_SIDE", "FolderImages", "load_folder", "scan_folder"]

#: file name endings read as images (case-insensitive); any other visible file is an error
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
#: Pillow modes counted as grey; every other mode is colour
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
#: bumped when the cache's contents change meaning
CACHE_VERSION = 1


@dataclass(frozen=True)
class Scan:
    """What the folder holds: each split's image paths and labels (-1: unlabelled), the classes."""

    root: Path
    files: dict[str, list[Path]]  # "all", or "train" and "test"
    labels: dict[str, list[int]]
    class_names: tuple[str, ...]
    fingerprint: str


@dataclass(frozen=True)
class FolderImages:
    """The decoded folder: ``images`` uint8 ``(N, C, H, W)`` memory-mapped (``train/`` rows first),
    ``labels`` int64 ``(N,)`` (-1 when unlabelled), ``test_start`` the first ``test/`` row (None
    without a ``train/``/``test/`` split), ``fingerprint`` of the folder."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: tuple[str, ...]
    test_start: int | None
    fingerprint: str


# --------------------------------------------------------------------------------------------
# Scanning


def _fail(path: Path, problem: str, fix: str) -> DatasetError:
    return DatasetError(f"{path}: {problem}; {fix}")


def _stat(path: Path) -> os.stat_result:
    """``path``'s stat, following links; a broken link, a link loop or no permission is an error."""
    try:
        return path.stat()
    except FileNotFoundError:
        if path.is_symlink():
            raise _fail(
                path, "a broken symbolic link", "remove it or point it at an image"
            ) from None
        raise _fail(
            path, "no such file or directory", "set data.root to your folder of images"
        ) from None
    except PermissionError:
        raise _fail(path, "no permission to read it", "make it readable (chmod a+rX)") from None
    except OSError as err:
        if "loop" in str(err.strerror).lower() or err.errno == 40:
            raise _fail(
                path, "a symbolic link loop", "remove the link or point it at an image or folder"
            ) from None
        raise _fail(path, f"cannot access it ({err.strerror})", "check it") from None


def _entries(directory: Path, ancestors: frozenset) -> tuple[list[Path], list[Path], frozenset]:
    """The visible sub-folders and files of ``directory`` (sorted), and the ancestors below it.

    A folder reached again through a symbolic link (an ancestor of itself) is a loop, an error.
    """
    st = _stat(directory)
    if not stat.S_ISDIR(st.st_mode):
        raise _fail(directory, "not a folder", "set data.root to a folder of images")
    ident = (st.st_dev, st.st_ino)
    if ident in ancestors:
        raise _fail(directory, "a symbolic link loop (a folder inside itself)", "remove the link")
    try:
        names = sorted(n for n in os.listdir(directory) if not n.startswith("."))
    except PermissionError:
        raise _fail(
            directory, "a folder you may not list", "make it readable (chmod a+rx)"
        ) from None
    dirs, files = [], []
    for name in names:
        path = directory / name
        (dirs if stat.S_ISDIR(_stat(path).st_mode) else files).append(path)
    return dirs, files, ancestors | {ident}


def _check_images(files: list[Path]) -> None:
    for path in files:
        if path.suffix.lower() not in IMAGE_SUFFIXES or not stat.S_ISREG(_stat(path).st_mode):
            raise _fail(
                path,
                "not an image file (images end in " + ", ".join(IMAGE_SUFFIXES) + ")",
                "move it out of the folder",
            )


def _images_below(directory: Path, ancestors: frozenset) -> list[Path]:
    """Every image file in ``directory`` and its sub-folders (a class folder's images)."""
    dirs, files, ancestors = _entries(directory, ancestors)
    _check_images(files)
    found = list(files)
    for sub in dirs:
        found += _images_below(sub, ancestors)
    return found


def _split_files(directory: Path, ancestors: frozenset) -> tuple[list[Path], list[int], list[str]]:
    """One split's images and labels, and its class names (none for a flat folder)."""
    dirs, files, ancestors = _entries(directory, ancestors)
    _check_images(files)
    if dirs and files:
        raise _fail(
            directory,
            f"holds both images ({files[0].name}) and folders ({dirs[0].name})",
            "put every image in a class folder, or keep only images (no labels)",
        )
    if not dirs and not files:
        raise _fail(
            directory, "no images in the folder", "add images (" + ", ".join(IMAGE_SUFFIXES) + ")"
        )
    if files:
        return files, [-1] * len(files), []
    paths, labels = [], []
    for k, sub in enumerate(dirs):
        found = _images_below(sub, ancestors)
        if not found:
            raise _fail(sub, "a class folder with no images", "add images to it or remove it")
        paths += found
        labels += [k] * len(found)
    # by file name, then class, then path: see the module docstring
    order = sorted(range(len(paths)), key=lambda i: (paths[i].name, labels[i], str(paths[i])))
    return [paths[i] for i in order], [labels[i] for i in order], [d.name for d in dirs]


def scan_folder(root: str | os.PathLike[str], *, root_fix: str = TRAIN_HINTS.folder) -> Scan:
    """List the folder's images by layout (module docstring), with their fingerprint. A ``root``
    that is missing or not a folder is an error ending in ``root_fix`` (the calling command's)."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir() and not root.is_symlink():  # a link: _stat names a broken one or a loop
        problem = "not a folder" if root.exists() else "no such file or directory"
        raise _fail(root, problem, root_fix)
    dirs, files, ancestors = _entries(root, frozenset())
    names = {d.name for d in dirs}
    if {"train", "test"} <= names:
        extra = [p for p in (*dirs, *files) if p.name not in ("train", "test")]
        if extra:
            raise _fail(extra[0], "beside train/ and test/", "move it into one of them, or away")
        parts = {s: _split_files(root / s, ancestors) for s in ("train", "test")}
        if parts["train"][2] != parts["test"][2]:
            raise _fail(
                root / "test",
                f"classes {parts['test'][2]} differ from train/'s {parts['train'][2]}",
                "give test/ and train/ the same class folders",
            )
    else:
        parts = {"all": _split_files(root, frozenset())}
    h = hashlib.sha256()
    for split, (paths, _, _) in parts.items():
        for p in paths:
            st = _stat(p)
            h.update(f"{split}\0{p.relative_to(root)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    first = next(iter(parts.values()))
    return Scan(
        root=root,
        files={s: v[0] for s, v in parts.items()},
        labels={s: v[1] for s, v in parts.items()},
        class_names=tuple(first[2]),
        fingerprint=h.hexdigest(),
    )


# --------------------------------------------------------------------------------------------
# Decoding


def _open(path: Path) -> Image.Image:
    """The image at ``path``, header read; an unreadable or non-image file is an error."""
    try:
        return Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as err:
        raise _fail(path, f"cannot read it as an image ({err})", "replace or remove it") from None


def _shape(
    files: list[Path], *, channels: int | None, image_size: int | None
) -> tuple[int, int, int]:
    """The cache's ``(C, H, W)`` by the rules of the module docstring (reads only headers)."""
    grey, sizes = True, {}
    for path in files:
        with _open(path) as im:
            grey = grey and im.mode in GREY_MODES
            sizes.setdefault(im.size, path)
            if image_size is not None and min(im.size) < image_size:
                raise _fail(
                    path,
                    f"{im.size[0]}×{im.size[1]} is smaller than data.image_size={image_size} "
                    "(images are only shrunk)",
                    f"set data.image_size to at most {min(im.size)}, or remove it",
                )
            if min(im.size) < MIN_SIDE:
                raise _fail(
                    path,
                    f"{im.size[0]}×{im.size[1]} is too small (at least {MIN_SIDE} pixels a side)",
                    "remove it",
                )
    c = channels if channels is not None else (1 if grey else 3)
    if image_size is not None:
        return c, image_size, image_size
    if len(sizes) > 1:
        (s1, p1), (s2, p2) = list(sizes.items())[:2]
        raise DatasetError(
            f"data.image_size: the images have {len(sizes)} sizes ({p1.name} {s1[0]}×{s1[1]}, "
            f"{p2.name} {s2[0]}×{s2[1]}); set data.image_size=<pixels> to scale each image's "
            "shorter side to it and crop the centre square"
        )
    (w, h), _ = next(iter(sizes.items()))
    return c, h, w


def _decode(path: Path, shape: tuple[int, int, int]) -> np.ndarray:
    """The image at ``path`` as uint8 ``(C, H, W)``: converted, scaled and cropped as documented."""
    c, h, w = shape
    with _open(path) as im:
        try:
            im.load()  # a truncated file fails here
            im = im.convert("L" if c == 1 else "RGB")
        except (OSError, ValueError, SyntaxError) as err:
            raise _fail(path, f"cannot decode the image ({err})", "replace or remove it") from None
        if im.size != (w, h):  # image_size given: shorter side to it, then the centre square
            scale = h / min(im.size)
            size = (max(h, round(im.size[0] * scale)), max(h, round(im.size[1] * scale)))
            im = im.resize(size, Image.Resampling.BILINEAR)
            left, top = (size[0] - w) // 2, (size[1] - h) // 2
            im = im.crop((left, top, left + w, top + h))
        return np.asarray(im, dtype=np.uint8).reshape(h, w, c).transpose(2, 0, 1)


def _progress(total: int, desc: str) -> Callable[[Iterator], Iterator]:
    from tqdm.auto import tqdm

    return lambda it: tqdm(it, total=total, desc=desc, unit="img", file=sys.stderr, disable=None)


# --------------------------------------------------------------------------------------------
# The cache


def _build(
    scan: Scan, npy: Path, meta: Path, *, channels: int | None, image_size: int | None
) -> None:
    splits = list(scan.files)
    files = [p for s in splits for p in scan.files[s]]
    shape = _shape(files, channels=channels, image_size=image_size)

    header = {"descr": "|u1", "fortran_order": False, "shape": (len(files), *shape)}
    what = f"the image cache of {scan.root}"
    # written through the one atomic writer: a killed build leaves no half cache behind
    with atomic_file(npy, needed=len(files) * math.prod(shape), what=what) as f:
        np.lib.format.write_array_header_1_0(f, header)  # padded: the data stays aligned for mmap
        for path in _progress(len(files), f"caching {scan.root}")(files):
            f.write(np.ascontiguousarray(_decode(path, shape), dtype=np.uint8).tobytes())
    info = {
        "version": CACHE_VERSION,
        "fingerprint": scan.fingerprint,
        "root": str(scan.root),
        "class_names": list(scan.class_names),
        "labels": [k for s in splits for k in scan.labels[s]],
        "test_start": len(scan.files["train"]) if "train" in scan.files else None,
    }
    write_atomic(meta, json.dumps(info), what=f"the image cache index of {scan.root}")


def _cache_paths(scan: Scan, cache_dir: Path, settings: str) -> tuple[Path, Path]:
    def short(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    stem = f"folder-{short(str(scan.root))}-{short(settings)}-{scan.fingerprint[:16]}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _read_cache(npy: Path, meta: Path, fingerprint: str) -> FolderImages | None:
    """The cache if it is complete and of this fingerprint, else None (then it is rebuilt)."""
    try:
        info = json.loads(meta.read_text())
        if info.get("version") != CACHE_VERSION or info.get("fingerprint") != fingerprint:
            return None
        # copy-on-write: torch gets a writable array, and the file is never written
        images = torch.from_numpy(np.load(npy, mmap_mode="c"))
    except (OSError, ValueError, json.JSONDecodeError):
        return None
    labels = torch.tensor(info["labels"], dtype=torch.int64)
    if images.ndim != 4 or images.shape[0] != len(labels):
        return None
    return FolderImages(images, labels, tuple(info["class_names"]), info["test_start"], fingerprint)


def load_folder(
    root: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str],
    channels: int | None = None,
    image_size: int | None = None,
    root_fix: str = TRAIN_HINTS.folder,
) -> FolderImages:
    """The folder's images, from the cache when it matches the folder, else decoded into it
    (``root_fix``: as :func:`scan_folder`)."""
    scan = scan_folder(root, root_fix=root_fix)
    cache = Path(cache_dir).expanduser().absolute()
    if cache == scan.root or scan.root in cache.parents:
        raise DatasetError(
            f"data.cache_dir={str(cache)!r} is inside data.root: nothing is written in the image "
            "folder; choose another data.cache_dir"
        )
    cache.mkdir(parents=True, exist_ok=True)
    npy, meta = _cache_paths(scan, cache, f"channels={channels} image_size={image_size}")
    found = _read_cache(npy, meta, scan.fingerprint)
    if found is None:
        _build(scan, npy, meta, channels=channels, image_size=image_size)
        for stale in cache.glob(npy.name.rsplit("-", 1)[0] + "-*"):  # earlier versions of it
            if stale not in (npy, meta):
                stale.unlink(missing_ok=True)
        found = _read_cache(npy, meta, scan.fingerprint)
        assert found is not None, f"the cache just written is unreadable: {npy}"
    return found
