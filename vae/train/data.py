"""MNIST and Fashion-MNIST as verified uint8 tensors, served in batches by indexing.

The canonical recipe (torchvision ``MNIST`` + ``ToTensor`` + ``DataLoader``) converts every image
through PIL one at a time. Here each split is one ``uint8`` tensor of shape ``(N, 1, 28, 28)``; a
batch is a single indexing operation (``IndexedTensorDataset.__getitems__``), travels to the device
as uint8 and is converted to float (and binarised) there, in ``on_after_batch_transfer``.

Files are looked up under ``<root>/MNIST/raw/`` (Fashion: ``<root>/FashionMNIST/raw/``, then the
Debian package's ``/usr/share/datasets/fashion-mnist/``), gzip-compressed or not. Every payload is
verified against its SHA-256 *after* decompression, so archives written by another compressor are
accepted and a corrupt or truncated file is an error, never a garbage tensor.

Randomness, and what reproduces it:

* The train/val split is a permutation drawn from a generator seeded with ``seed``.
* The training order of epoch ``e`` is a permutation drawn from a generator seeded with
  ``(seed, e)`` (``EpochShuffleSampler``; Lightning calls ``set_epoch`` on it every epoch). It does
  not depend on the global RNG, so a resumed run replays the same order for the same epoch.
  Under DDP Lightning replaces the sampler by a ``DistributedSampler`` whose order is a function of
  ``(PL_GLOBAL_SEED, epoch)``, the same kind of guarantee.
* ``binarize="dynamic"`` draws a fresh Bernoulli sample of every training pixel each time the image
  is served, from the *global* torch RNG (so ``seed_everything`` and a restored RNG state reproduce
  it). Validation and test images are binarised once, at setup, by a generator seeded with ``seed``,
  so evaluation numbers are deterministic (and identical across epochs and runs with that seed).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import os
import stat
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate
from torchvision.datasets import MNIST, FashionMNIST
from torchvision.datasets.utils import download_url

from vae.core.seeding import derive_seed
from vae.errors import DatasetError
from vae.rules import Rule, boolean, check, int_at_least, int_in, one_of, path

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "DATA_RULES",
    "SHA256",
    "TRAIN_HINTS",
    "DataHints",
    "DatasetError",
    "EpochShuffleSampler",
    "FashionMNISTDataModule",
    "IndexedTensorDataset",
    "MNISTDataModule",
    "collate_batch",
    "load_split",
    "locate_files",
    "read_idx",
    "to_float",
]

BINARIZE_MODES = ("none", "dynamic", "static")
DATASETS = ("mnist", "fashion_mnist")

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


TRAIN_HINTS = DataHints(
    not_fetched="data.download is false, so nothing was downloaded",
    fetch="on a machine with network access set data.download=true to fetch them from {mirrors}",
    refetch="delete it and download it again (data.download=true), or replace it",
    root="set data.root (default: the VAE_DATA_DIR environment variable, else ./data) to a "
    "directory holding {raw}",
)

NUM_TRAIN = 60_000

#: the ``data`` config keys (the data module's arguments) → what each allows; checked once, when
#: the data module is built
DATA_RULES: dict[str, Rule] = {
    "dataset": one_of(DATASETS),
    "root": path(optional=True),
    "batch_size": int_at_least(1),
    "eval_batch_size": int_at_least(1),
    "val_size": int_in(0, NUM_TRAIN - 1),
    "seed": int_in(0, 2**63 - 1),
    "binarize": one_of(BINARIZE_MODES),
    "download": boolean(),
    "num_workers": int_at_least(0),
    "pin_memory": boolean(),
    "device_resident": boolean(),
}


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
    check("data.dataset", dataset, DATA_RULES["dataset"])
    return _SPECS[dataset]


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
            os.replace(tmp, final)  # same file system: atomic
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


# --------------------------------------------------------------------------------------------
# Batches


class IndexedTensorDataset(Dataset):
    """``(image, label, index)`` triples held as two tensors; a whole batch is one indexing operation.

    ``DataLoader`` calls ``__getitems__(indices)`` when it exists; it returns the batch already
    stacked, and ``collate_batch`` passes it through. The tensors may live on any device. The index
    (the image's position in the split) travels with the batch so evaluation can draw the same
    noise for the same image whatever the batch size or the number of processes.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.images = images
        self.labels = labels
        self._packed = _as_int64_rows(images)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.images[index], self.labels[index], index

    def __getitems__(
        self, indices: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        if self._packed is None:
            images = self.images.index_select(0, idx)
        else:
            rows = self._packed.index_select(0, idx)
            images = rows.view(self.images.dtype).view(len(idx), *self.images.shape[1:])
        return images, self.labels.index_select(0, idx), idx

    def to(self, device: torch.device | str) -> IndexedTensorDataset:
        self.images = self.images.to(device)
        self.labels = self.labels.to(device)
        self._packed = _as_int64_rows(self.images)
        return self


def _as_int64_rows(images: torch.Tensor) -> torch.Tensor | None:
    """The images' memory seen as one row of int64 words per image (98 for 28x28 uint8), or None.

    Gathering a batch of 128 MNIST images then moves 12,544 elements instead of 100,352, below
    torch's threshold for splitting a CPU op across threads: on a busy CPU, a multi-threaded
    100 KB copy stalls on its slowest thread (2-core VM at load 2.5: 3.8 s instead of 0.02 s per
    epoch of gathers; benchmarks/README.md).
    """
    if images.dtype != torch.uint8 or images.ndim < 2 or not images.is_contiguous():
        return None
    n = images.shape[0]
    per_image = images[0].numel() if n else 0
    if per_image == 0 or per_image % 8 or images.storage_offset() % 8:
        return None
    return images.view(n, per_image).view(torch.int64)


def collate_batch(batch: Any) -> Any:
    """Collate function for ``IndexedTensorDataset``: a batch from ``__getitems__`` is returned
    as is; a list of samples (a dataset without ``__getitems__``) falls back to default_collate."""
    return batch if isinstance(batch, tuple) else default_collate(batch)


class EpochShuffleSampler(RandomSampler):
    """A ``RandomSampler`` whose permutation for epoch ``e`` depends only on ``(seed, e)``.

    Lightning calls ``set_epoch`` at the start of every epoch; without Lightning the epoch advances
    by one at each pass. Being a ``RandomSampler``, Lightning recognises it as shuffled and swaps in
    a ``DistributedSampler`` under DDP.
    """

    def __init__(self, data_source: Dataset, *, seed: int = 0) -> None:
        super().__init__(data_source)
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(derive_seed(("shuffle", self.seed, self.epoch)))
        self.epoch += 1
        yield from torch.randperm(self.num_samples, generator=generator).tolist()


class ResumableLoader(DataLoader):
    """A ``DataLoader`` that resumes mid-epoch: a run restored from a checkpoint saved in the middle
    of an epoch (SIGTERM, SIGINT) trains on exactly the batches that epoch had left.

    ``position()`` is how many batches of the current epoch are already trained (the data module
    reads Lightning's batch progress, which the checkpoint restores; it is 0 when an epoch starts).
    A pass skips that many batches of the epoch's order, a function of (seed, epoch)
    (:class:`EpochShuffleSampler`), when it yields its first batch (Lightning creates iterators it
    never advances, and loads loader states only when its set-up came after the restore, which
    estimating the schedule's length prevents: so the position is read when needed, not loaded).
    ``state_dict`` / ``load_state_dict`` make Lightning treat the loader as resumable (no warning).
    """

    def __init__(self, *args: Any, position: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position

    def __iter__(self) -> Iterator[Any]:
        # lazy: the position is read (and the skip done) when the pass yields its first batch
        done = int(self.position())
        if not 0 < done < len(self):  # a new epoch: as DataLoader (a generator around it)
            yield from super().__iter__()
            return
        # a mid-epoch restore. Creating the iterator draws a base seed from the global RNG, which
        # the uninterrupted run did before the checkpoint's RNG state was taken: undo that draw
        state = torch.get_rng_state()
        batches = super().__iter__()
        torch.set_rng_state(state)
        for _ in range(done):  # uint8 gathers only: ~0.05 ms a batch
            next(batches)
        yield from batches

    def state_dict(self) -> dict[str, int]:
        return {"batches_trained": int(self.position())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to load: the position comes back with Lightning's own loop state."""


def _bernoulli(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """1.0 with probability ``p``, else 0.0, elementwise: ``U < p`` with U ~ Uniform[0, 1).

    The same distribution as ``torch.bernoulli(p)`` and the same RNG, about 4x faster on CPU.
    """
    u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
    return u.lt_(p)


def to_float(
    images: torch.Tensor,
    *,
    binarize: str = "none",
    train: bool = False,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """uint8 images (any shape) → float32 in [0, 1] on the same device.

    ``none``: grey levels x / 255 (exactly ``ToTensor``'s). ``static``: 1 where x / 255 > 0.5,
    else 0. ``dynamic``: a Bernoulli draw with success probability x / 255 per pixel, from
    ``generator`` (default: the global torch RNG of that device, for training), or, when ``train``
    is false and no generator is given, from a generator with a fixed seed, so the same images
    always give the same binary images (evaluation).
    """
    check("data.binarize", binarize, DATA_RULES["binarize"])
    if binarize == "static":
        return (images > 127).to(torch.float32)  # x/255 > 0.5  <=>  x >= 128
    x = images.to(torch.float32).div_(255.0)
    if binarize == "dynamic":
        if generator is None and not train:
            generator = torch.Generator(device=x.device).manual_seed(derive_seed(("eval", 0)))
        x = _bernoulli(x, generator)
    return x


# --------------------------------------------------------------------------------------------
# The DataModule


class MNISTDataModule(L.LightningDataModule):
    """MNIST or Fashion-MNIST: 60,000 training images split into train/val, and the 10,000 test.

    Every split yields ``(images, labels, indices)`` from the DataLoader: uint8 ``(B, 1, 28, 28)``,
    int64 labels ``(B,)`` and the int64 positions ``(B,)`` in the split. ``on_after_batch_transfer``
    turns the images into float32 in [0, 1] on the device (see ``to_float``), binarised per
    ``binarize``. See the module docstring for randomness.

    ``device_resident=True`` keeps the splits on the training device (when the trainer's root
    device is not the CPU: a no-op on CPU), so batches are gathered there and nothing crosses the
    bus per step; data loading then runs in the main process (``num_workers`` and ``pin_memory``
    are ignored).
    """

    CONFIG_RULES = DATA_RULES  # what each ``data`` key allows (vae.train.config reads it)

    dims = (1, 28, 28)
    num_classes = 10
    NUM_TRAIN = NUM_TRAIN
    #: how its data errors spell the fixes (not an argument: not saved in checkpoints); a command
    #: with other options sets its own on the instance, as ``python -m vae.visualize`` does
    hints: DataHints = TRAIN_HINTS

    def __init__(
        self,
        *,
        dataset: str = "mnist",
        root: str | os.PathLike[str] | None = None,
        batch_size: int = 128,
        eval_batch_size: int = 1000,
        val_size: int = 5000,
        seed: int = 0,
        binarize: str = "none",
        download: bool = True,
        num_workers: int = 0,
        pin_memory: bool = False,
        device_resident: bool = False,
    ) -> None:
        super().__init__()
        if root is None:
            root = os.environ.get("VAE_DATA_DIR") or "data"
        self.save_hyperparameters(logger=False)  # the arguments: plain data in the checkpoint
        for key, value in self.hparams.items():
            check(f"data.{key}", value, DATA_RULES[key])
            setattr(self, key, value)
        # a relative root is relative to where the command started: stored absolute, so that the
        # checkpoint finds the data from any working directory
        self.root = Path(root).expanduser().absolute()
        self.hparams["root"] = str(self.root)
        self.class_names = _spec(self.dataset).class_names

        self.train_dataset: IndexedTensorDataset | None = None
        self.val_dataset: IndexedTensorDataset | None = None
        self.test_dataset: IndexedTensorDataset | None = None
        self.train_indices: torch.Tensor | None = None  # positions in the 60,000 training images
        self.val_indices: torch.Tensor | None = None

    # ---- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download missing files (Lightning runs this once per node, before ``setup``)."""
        locate_files(self.dataset, self.root, download=self.download, hints=self.hints)

    def setup(self, stage: str | None = None) -> None:
        """Load and verify the splits ``stage`` needs (once; later calls reuse them)."""
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            images, labels = load_split(
                self.dataset, self.root, train=True, download=self.download, hints=self.hints
            )
            perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(self.seed))
            self.val_indices = perm[: self.val_size].sort().values  # ascending
            self.train_indices = perm[self.val_size :].sort().values
            self.train_dataset = IndexedTensorDataset(
                images.index_select(0, self.train_indices),
                labels.index_select(0, self.train_indices),
            )
            self.val_dataset = IndexedTensorDataset(
                self._fixed_eval_images(images.index_select(0, self.val_indices), "val"),
                labels.index_select(0, self.val_indices),
            )
        if stage in (None, "test") and self.test_dataset is None:
            images, labels = load_split(
                self.dataset, self.root, train=False, download=self.download, hints=self.hints
            )
            self.test_dataset = IndexedTensorDataset(
                self._fixed_eval_images(images, "test"), labels
            )
        self._maybe_move_to_device()

    def train_dataloader(self) -> DataLoader:
        ds = self._require(self.train_dataset, "train")
        sampler = EpochShuffleSampler(ds, seed=self.seed)
        return self._loader(ds, self.batch_size, sampler, position=self._batches_trained)

    def val_dataloader(self) -> DataLoader | list:
        ds = self._require(self.val_dataset, "val")
        if len(ds) == 0:
            return []  # val_size=0: no validation
        return self._loader(ds, self.eval_batch_size, self._eval_sampler(ds))

    def test_dataloader(self) -> DataLoader:
        ds = self._require(self.test_dataset, "test")
        return self._loader(ds, self.eval_batch_size, self._eval_sampler(ds))

    def _eval_sampler(self, ds: IndexedTensorDataset) -> Sampler | None:
        """Under DDP, every val/test image exactly once over all processes.

        Lightning would otherwise swap in a ``DistributedSampler``, which pads the split with
        repeated images so that every process gets the same count, and those would be counted twice.
        Ranks may then run one batch fewer than others, which is safe because nothing in evaluation
        synchronises per batch (the module has no buffers; metrics are reduced once, at epoch end).
        """
        trainer = self.trainer
        if trainer is None or trainer.world_size <= 1:
            return None
        return UnrepeatedDistributedSampler(
            ds, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        images, *rest = batch  # (images, labels, indices)
        training = self.trainer is not None and self.trainer.training
        return (self.to_float(images, train=training), *rest)

    # ---- public helpers --------------------------------------------------------------------

    def to_float(self, images: torch.Tensor, *, train: bool = False) -> torch.Tensor:
        """Convert a uint8 batch with this ``binarize``, as ``on_after_batch_transfer`` does.

        Under ``dynamic``, validation and test images are already binarised (0/255, drawn once at
        setup), which the evaluation draw leaves unchanged.
        """
        return to_float(images, binarize=self.binarize, train=train)

    def pixel_mean(self) -> torch.Tensor:
        """The training split's mean image ``(C, H, W)``, float64 in [0, 1]: the expectation of the
        images as served (grey levels; under ``dynamic`` the same, being each draw's expectation;
        under ``static`` the fraction of images with the pixel on). Needs ``setup("fit")``."""
        images = self._require(self.train_dataset, "train").images
        total = torch.zeros(images.shape[1:], dtype=torch.int64, device=images.device)
        for chunk in images.split(4096):  # chunks: an int64 copy of the split would be 345 MB
            if self.binarize == "static":
                chunk = chunk > 127  # as to_float thresholds
            total += chunk.sum(dim=0, dtype=torch.int64)  # (n, C, H, W) -> (C, H, W), exact
        scale = 1.0 if self.binarize == "static" else 255.0
        return (total.to(torch.float64) / (scale * images.shape[0])).cpu()

    # ---- internals -------------------------------------------------------------------------

    def _fixed_eval_images(self, images: torch.Tensor, split: str) -> torch.Tensor:
        """Under ``dynamic``: one seeded Bernoulli draw, stored as uint8 0/255."""
        if self.binarize != "dynamic":
            return images
        generator = torch.Generator().manual_seed(derive_seed(("binarize", split, self.seed)))
        return to_float(images, binarize="dynamic", generator=generator).to(torch.uint8).mul_(255)

    def _maybe_move_to_device(self) -> None:
        if not self.device_resident or self.trainer is None:
            return
        device = self.trainer.strategy.root_device
        if device.type == "cpu":
            return
        for ds in (self.train_dataset, self.val_dataset, self.test_dataset):
            if ds is not None and ds.images.device != device:
                ds.to(device)

    def _loader(
        self,
        ds: IndexedTensorDataset,
        batch_size: int,
        sampler: Sampler | None,
        *,
        position: Callable[[], int] | None = None,
    ) -> DataLoader:
        on_device = ds.images.device.type != "cpu"
        workers = 0 if on_device else self.num_workers
        kwargs = {"position": position} if position is not None else {}
        return (ResumableLoader if position is not None else DataLoader)(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_batch,
            num_workers=workers,
            pin_memory=self.pin_memory and not on_device,
            persistent_workers=workers > 0,
            **kwargs,
        )

    def _batches_trained(self) -> int:
        """Training batches completed in the current epoch (what a mid-epoch checkpoint records)."""
        loop = getattr(self.trainer, "fit_loop", None)  # None: no Trainer (the loader on its own)
        return loop.epoch_loop.batch_progress.current.completed if loop is not None else 0

    @staticmethod
    def _require(ds: IndexedTensorDataset | None, split: str) -> IndexedTensorDataset:
        if ds is None:
            stage = {"train": "fit", "val": "fit", "test": "test"}[split]
            raise RuntimeError(f"the {split} split is not loaded: call setup({stage!r}) first")
        return ds


class FashionMNISTDataModule(MNISTDataModule):
    """``MNISTDataModule`` with ``dataset="fashion_mnist"`` by default."""

    def __init__(self, *, dataset: str = "fashion_mnist", **kwargs: Any) -> None:
        super().__init__(dataset=dataset, **kwargs)
