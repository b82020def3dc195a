"""The data module: MNIST, Fashion-MNIST or a folder of your own images, as uint8 tensors served in
batches by indexing.

Sources (``data.dataset``): ``mnist`` and ``fashion_mnist`` read the verified IDX files
(:mod:`vae.train.idx`); ``folder`` reads ``data.root``'s images through one memory-mapped uint8
cache file (:mod:`vae.train.folder`: layouts, shape rules, the cache). Every source becomes the same
thing: images uint8 ``(N, C, H, W)``, labels int64 ``(N,)`` (-1 when the folder has none), class
names. A split is those tensors and the rows it uses; a batch is one indexing operation
(``IndexedTensorDataset.__getitems__``), travels to the device as uint8 and is converted to float
(and binarised) there, in ``on_after_batch_transfer``. A folder larger than memory still trains: a
batch reads only its rows of the cache.

Splits: MNIST's 60,000 training images and a folder's ``train/`` give the validation split
(``val_size`` images, a permutation seeded by ``seed``) and the training split; their 10,000 test
images and ``test/`` are the test split. A folder without ``train/``/``test/`` first gives
``test_size`` images to the test split (a permutation seeded by ``seed``), then its remaining images
are split as above. Sizes are counts, or fractions below 1.

Randomness, and what reproduces it:

* The splits are permutations drawn from generators seeded with ``seed``.
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

import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader, Dataset, RandomSampler, Sampler, default_collate

from vae.core.seeding import derive_seed
from vae.errors import ConfigError, DatasetError
from vae.rules import check, refuse_unknown
from vae.train.data_config import BINARIZE_MODES, DATA_RULES, DATASETS, DataConfig
from vae.train.folder import FolderImages, load_folder
from vae.train.idx import (
    FILES,
    SHA256,
    TRAIN_HINTS,
    DataHints,
    load_split,
    locate_files,
    read_idx,
)
from vae.train.idx import (
    class_names as idx_class_names,
)

__all__ = [
    "BINARIZE_MODES",
    "DATASETS",
    "DATA_RULES",
    "FILES",
    "SHA256",
    "TRAIN_HINTS",
    "DataConfig",
    "DataHints",
    "DatasetError",
    "EpochShuffleSampler",
    "FashionMNISTDataModule",
    "ImageDataModule",
    "IndexedTensorDataset",
    "MNISTDataModule",
    "collate_batch",
    "load_split",
    "locate_files",
    "read_idx",
    "to_float",
]


#: images converted at a time where a whole split is read (a float copy of a folder's split could
#: exceed memory; 4,096 28×28 images are 12.8 MB as float32)
CHUNK = 4096


def _default_cache_dir() -> Path:
    """``$VAE_CACHE_DIR``, else ``$XDG_CACHE_HOME/vae``, else ``~/.cache/vae``."""
    if os.environ.get("VAE_CACHE_DIR"):
        return Path(os.environ["VAE_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vae"


# --------------------------------------------------------------------------------------------
# Batches


class IndexedTensorDataset(Dataset):
    """``(image, label, index)`` triples of a split; a whole batch is one indexing operation.

    ``images`` uint8 ``(N, C, H, W)`` and ``labels`` ``(N,)`` may hold more than the split (a whole
    source, or a memory-mapped cache): ``rows`` are the split's rows of them (None: all, in order),
    so a split is never copied. ``DataLoader`` calls ``__getitems__(indices)`` when it exists; it
    returns the batch already stacked, and ``collate_batch`` passes it through. The tensors may live
    on any device. The index (the image's position in the split) travels with the batch so
    evaluation can draw the same noise for the same image whatever the batch size or the number of
    processes.
    """

    def __init__(
        self, images: torch.Tensor, labels: torch.Tensor, *, rows: torch.Tensor | None = None
    ) -> None:
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        self.source_images = images
        self.source_labels = labels
        self.rows = rows
        self._packed = _as_int64_rows(images)

    def __len__(self) -> int:
        return self.source_images.shape[0] if self.rows is None else self.rows.shape[0]

    @property
    def images(self) -> torch.Tensor:
        """The split's images ``(len, C, H, W)`` (a copy when ``rows`` picks them)."""
        return self._take(self.source_images, self.rows)

    @property
    def labels(self) -> torch.Tensor:
        return self._take(self.source_labels, self.rows)

    @staticmethod
    def _take(t: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        return t if rows is None else t.index_select(0, rows.to(t.device))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        row = index if self.rows is None else int(self.rows[index])
        return self.source_images[row], self.source_labels[row], index

    def __getitems__(
        self, indices: Sequence[int]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.source_images.device)
        rows = idx if self.rows is None else self.rows.index_select(0, idx)
        if self._packed is None:
            images = self.source_images.index_select(0, rows)
        else:
            words = self._packed.index_select(0, rows)
            images = words.view(torch.uint8).view(len(idx), *self.source_images.shape[1:])
        return images, self.source_labels.index_select(0, rows), idx

    def to(self, device: torch.device | str) -> IndexedTensorDataset:
        self.source_images = self.source_images.to(device)
        self.source_labels = self.source_labels.to(device)
        self.rows = None if self.rows is None else self.rows.to(device)
        self._packed = _as_int64_rows(self.source_images)
        return self


def _as_int64_rows(images: torch.Tensor) -> torch.Tensor | None:
    """The images' memory seen as one row of int64 words per image (98 for 28x28 uint8), or None.

    Gathering a batch of 128 MNIST images then moves 12,544 elements instead of 100,352, below
    torch's threshold for splitting a CPU op across threads: on a busy CPU, a multi-threaded
    100 KB copy stalls on its slowest thread (measured in benchmarks/README.md).
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
        for _ in range(done):  # uint8 gathers only, no float conversion: cheap to skip
            next(batches)
        yield from batches

    def state_dict(self) -> dict[str, int]:
        return {"batches_trained": int(self.position())}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Nothing to load: the position comes back with Lightning's own loop state."""


def _bernoulli(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """1.0 with probability ``p``, else 0.0, elementwise: ``U < p`` with U ~ Uniform[0, 1).

    The same distribution as ``torch.bernoulli(p)`` and the same RNG, faster on CPU
    (benchmarks/README.md).
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


def data_config(settings: dict[str, Any]) -> DataConfig:
    """The checked :class:`DataConfig` of the data module's keyword arguments.

    A relative root is relative to where the command started: it is stored absolute, so that the
    checkpoint finds the data from any working directory.
    """
    refuse_unknown("data.", settings, DATA_RULES)
    for key, value in settings.items():
        check(f"data.{key}", value, DATA_RULES[key])
    root = settings.get("root")
    if root is None and settings.get("dataset") == "folder":
        raise ConfigError(
            "data.root=None: data=folder reads your images from data.root; "
            "set data.root=<folder of images>"
        )
    root = root if root is not None else os.environ.get("VAE_DATA_DIR") or "data"
    return DataConfig(**(settings | {"root": str(Path(root).expanduser().absolute())}))


#: the fewest test images a run can use (the figures and the explorer compare test images)
MIN_TEST = 2


def _count(key: str, size: int | float, n: int, *, pool: str) -> int:
    """``data.<key>`` (a count, or a fraction) as a number of images out of the ``n`` that ``pool``
    names ("the folder's {n} images"), leaving one for training. A test split needs
    :data:`MIN_TEST` images, a validation split that ``size`` asks for one."""
    count = round(size * n) if isinstance(size, float) else size
    if count >= n:
        raise ConfigError(
            f"data.{key}={size!r}: the data has {n:,} images there, so none would remain for "
            "training; set a smaller count or a fraction such as 0.1"
        )
    least = MIN_TEST if key == "test_size" else 1 if size else 0
    if count < least:
        split = "test" if key == "test_size" else "validation"
        why = f" ({size!r} × {n:,} rounds to {count})" if isinstance(size, float) else ""
        need = f"at least {least}" if least > 1 else "an image"
        values = [f"data.{key}={least} (a count of images)"] if n > least else []
        values += ["data.val_size=0 (no validation)"] if key == "val_size" else []
        more = f"add images (at least {least + 1} in all)"
        fix = f"set {' or '.join(values)}, or add images" if values else more
        raise ConfigError(
            f"data.{key}={size!r}: {count} of {pool.format(n=f'{n:,}')}{why}, but the {split} "
            f"split needs {need} and training one; {fix}"
        )
    return count


def _chunks(ds: IndexedTensorDataset) -> Iterator[torch.Tensor]:
    """The split's images in order, :data:`CHUNK` at a time: ``(≤ CHUNK, C, H, W)`` each."""
    return (ds.__getitems__(rows)[0] for rows in torch.arange(len(ds)).split(CHUNK))


def _eval_dataset(
    images: torch.Tensor,
    labels: torch.Tensor,
    rows: torch.Tensor | None,
    *,
    binarize: str,
    seed: tuple[int, str],
) -> IndexedTensorDataset:
    """A val/test split; under ``dynamic`` its images drawn once (``seed``: the data seed and the
    split's name), stored as 0/255."""
    ds = IndexedTensorDataset(images, labels, rows=rows)
    if binarize != "dynamic":
        return ds
    data_seed, split = seed
    generator = torch.Generator().manual_seed(derive_seed(("binarize", split, data_seed)))
    drawn = torch.empty((len(ds), *images.shape[1:]), dtype=torch.uint8, device=images.device)
    for i, chunk in enumerate(_chunks(ds)):  # the same draws as one call, never a float split
        binary = to_float(chunk, binarize="dynamic", generator=generator)
        drawn[i * CHUNK : (i + 1) * CHUNK] = binary.to(torch.uint8).mul_(255)
    return IndexedTensorDataset(drawn, ds.labels)


def _eval_sampler(trainer: Any, ds: IndexedTensorDataset) -> Sampler | None:
    """Under DDP, every val/test image exactly once over all processes.

    Lightning would otherwise swap in a ``DistributedSampler``, which pads the split with
    repeated images so that every process gets the same count, and those would be counted twice.
    Ranks may then run one batch fewer than others, which is safe because nothing in evaluation
    synchronises per batch (the module has no buffers; metrics are reduced once, at epoch end).
    """
    if trainer is None or trainer.world_size <= 1:
        return None
    return UnrepeatedDistributedSampler(
        ds, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )


def _require(ds: IndexedTensorDataset | None, split: str) -> IndexedTensorDataset:
    if ds is None:
        stage = {"train": "fit", "val": "fit", "test": "test"}[split]
        raise RuntimeError(f"the {split} split is not loaded: call setup({stage!r}) first")
    return ds


# --------------------------------------------------------------------------------------------
# The DataModule


class ImageDataModule(L.LightningDataModule):
    """MNIST, Fashion-MNIST or a folder of images: train/val/test splits (module docstring).

    Keyword arguments are the ``data`` config keys (:class:`DataConfig`: defaults and rules; the
    values are also attributes, ``dm.batch_size``). Every split yields ``(images, labels, indices)``
    from the DataLoader: uint8 ``(B, C, H, W)``, int64 labels ``(B,)`` (-1: unlabelled) and the
    int64 positions ``(B,)`` in the split. ``on_after_batch_transfer`` turns the images into float32
    in [0, 1] on the device (see ``to_float``), binarised per ``binarize``.

    ``device_resident=True`` keeps the splits on the training device (when the trainer's root
    device is not the CPU: a no-op on CPU), so batches are gathered there and nothing crosses the
    bus per step; data loading then runs in the main process (``num_workers`` and ``pin_memory``
    are ignored).
    """

    CONFIG_RULES = DATA_RULES  # what each ``data`` key allows (vae.train.config reads it)
    #: how its data errors spell the fixes (not an argument: not saved in checkpoints); a command
    #: with other options sets its own on the instance, as ``python -m vae.visualize`` does
    hints: DataHints = TRAIN_HINTS

    def __init__(self, **settings: Any) -> None:
        super().__init__()
        self.config = data_config(settings)
        self.save_hyperparameters(dataclasses.asdict(self.config), logger=False)
        self.root = Path(self.config.root)
        self._folder: FolderImages | None = None
        self.train_dataset: IndexedTensorDataset | None = None
        self.val_dataset: IndexedTensorDataset | None = None
        self.test_dataset: IndexedTensorDataset | None = None
        self.train_indices: torch.Tensor | None = None  # positions in the training part
        self.val_indices: torch.Tensor | None = None

    def __getattr__(self, name: str) -> Any:
        """The ``data`` settings as attributes (``dm.batch_size``), read from :attr:`config`."""
        config = self.__dict__.get("config")
        if config is None or name not in DATA_RULES:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(config, name)

    # ---- what the source holds -------------------------------------------------------------

    @property
    def is_folder(self) -> bool:
        return self.config.dataset == "folder"

    def folder(self) -> FolderImages:
        """The folder's decoded images (built into the cache on first use)."""
        if self._folder is None:
            cache = self.config.cache_dir or _default_cache_dir()
            c = self.config
            self._folder = load_folder(
                self.root,
                cache_dir=cache,
                channels=c.channels,
                image_size=c.image_size,
                root_fix=self.hints.folder,
            )
        return self._folder

    @property
    def dims(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of the images (a folder is scanned, and cached, to know it)."""
        return tuple(self.folder().images.shape[1:]) if self.is_folder else (1, 28, 28)

    @property
    def class_names(self) -> tuple[str, ...]:
        """One name per label; empty for an unlabelled folder."""
        if self.is_folder:
            return self.folder().class_names
        return idx_class_names(self.config.dataset)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _part(self, part: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """``(images, labels, rows)`` of the ``train`` part (training and validation) or ``test``."""
        if not self.is_folder:
            load = {
                "dataset": self.config.dataset,
                "download": self.config.download,
                "hints": self.hints,
            }
            images, labels = load_split(root=self.root, train=part == "train", **load)
            return images, labels, None
        f = self.folder()
        n = f.images.shape[0]
        if f.test_start is not None:  # train/ and test/: contiguous rows
            if n - f.test_start < MIN_TEST:
                raise DatasetError(
                    f"{self.root / 'test'}: {n - f.test_start} image, but the test split needs at "
                    f"least {MIN_TEST}; add images to it"
                )
            span = slice(0, f.test_start) if part == "train" else slice(f.test_start, n)
            return f.images[span], f.labels[span], None
        n_test = _count("test_size", self.config.test_size, n, pool="the folder's {n} images")
        perm = torch.randperm(
            n, generator=torch.Generator().manual_seed(derive_seed(("test", self.config.seed)))
        )
        rows = perm[:n_test] if part == "test" else perm[n_test:]
        return f.images, f.labels, rows.sort().values

    # ---- Lightning hooks -------------------------------------------------------------------

    def prepare_data(self) -> None:
        """Download missing files or build the folder's cache (Lightning: once per node)."""
        if self.is_folder:
            self.folder()
        else:
            locate_files(
                self.config.dataset, self.root, download=self.config.download, hints=self.hints
            )

    def setup(self, stage: str | None = None) -> None:
        """Load the splits ``stage`` needs (once; later calls reuse them)."""
        if stage in (None, "fit", "validate") and self.train_dataset is None:
            images, labels, pool = self._part("train")
            n = len(images) if pool is None else len(pool)
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed))
            n_val = _count("val_size", self.config.val_size, n, pool="the {n} training images")
            self.val_indices = perm[:n_val].sort().values  # ascending
            self.train_indices = perm[n_val:].sort().values

            def rows(positions: torch.Tensor) -> torch.Tensor:
                return positions if pool is None else pool.index_select(0, positions)

            self.train_dataset = IndexedTensorDataset(images, labels, rows=rows(self.train_indices))
            self.val_dataset = _eval_dataset(
                images,
                labels,
                rows(self.val_indices),
                binarize=self.config.binarize,
                seed=(self.config.seed, "val"),
            )
        if stage in (None, "test") and self.test_dataset is None:
            self.test_dataset = _eval_dataset(
                *self._part("test"), binarize=self.config.binarize, seed=(self.config.seed, "test")
            )
        self._maybe_move_to_device()

    def state_dict(self) -> dict[str, Any]:
        """What the checkpoint records of the data: its shape, class names and, for a folder, the
        fingerprint, so that a redraw can tell when the folder has changed."""
        out = {"dims": list(self.dims), "class_names": list(self.class_names)}
        return out | ({"fingerprint": self.folder().fingerprint} if self.is_folder else {})

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keep what the checkpoint recorded (:meth:`state_dict`) for :meth:`changed_since_training`."""
        self.recorded = dict(state_dict)

    def changed_since_training(self) -> str | None:
        """A note when the folder's fingerprint differs from the one the checkpoint recorded; an
        error when its images no longer have the recorded shape (the model cannot read them)."""
        was = getattr(self, "recorded", {}).get("fingerprint")
        if not self.is_folder or was is None or was == self.folder().fingerprint:
            return None
        now, trained = ("×".join(map(str, d)) for d in (self.dims, self.recorded["dims"]))
        if now != trained:
            raise DatasetError(
                f"{self.root}: its images are now {now} (channels×height×width), the model was "
                f"trained on {trained}; {self.hints.folder}"
            )
        return (
            f"note: {self.root} has changed since the model was trained (its fingerprint of file "
            "names, sizes and modification times differs): this shows the folder as it is now"
        )

    def train_dataloader(self) -> DataLoader:
        ds = _require(self.train_dataset, "train")
        sampler = EpochShuffleSampler(ds, seed=self.config.seed)
        return self._loader(ds, self.config.batch_size, sampler, position=self._batches_trained)

    def val_dataloader(self) -> DataLoader | list:
        ds = _require(self.val_dataset, "val")
        if len(ds) == 0:
            return []  # val_size=0: no validation
        return self._loader(ds, self.config.eval_batch_size, _eval_sampler(self.trainer, ds))

    def test_dataloader(self) -> DataLoader:
        ds = _require(self.test_dataset, "test")
        return self._loader(ds, self.config.eval_batch_size, _eval_sampler(self.trainer, ds))

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
        return to_float(images, binarize=self.config.binarize, train=train)

    def pixel_mean(self) -> torch.Tensor:
        """The training split's mean image ``(C, H, W)``, float64 in [0, 1]: the expectation of the
        images as served (grey levels; under ``dynamic`` the same, being each draw's expectation;
        under ``static`` the fraction of images with the pixel on). Needs ``setup("fit")``."""
        ds = _require(self.train_dataset, "train")
        total = torch.zeros(ds.source_images.shape[1:], dtype=torch.int64)
        for chunk in _chunks(ds):  # an int64 copy of a split is large
            if self.config.binarize == "static":
                chunk = chunk > 127  # as to_float thresholds
            total += chunk.sum(dim=0, dtype=torch.int64).cpu()  # (n, C, H, W) -> (C, H, W), exact
        scale = 1.0 if self.config.binarize == "static" else 255.0
        return total.to(torch.float64) / (scale * len(ds))

    # ---- internals -------------------------------------------------------------------------

    def _maybe_move_to_device(self) -> None:
        if not self.config.device_resident or self.trainer is None:
            return
        device = self.trainer.strategy.root_device
        if device.type == "cpu":
            return
        for ds in (self.train_dataset, self.val_dataset, self.test_dataset):
            if ds is not None and ds.source_images.device != device:
                ds.to(device)

    def _loader(
        self,
        ds: IndexedTensorDataset,
        batch_size: int,
        sampler: Sampler | None,
        *,
        position: Callable[[], int] | None = None,
    ) -> DataLoader:
        on_device = ds.source_images.device.type != "cpu"
        workers = 0 if on_device else self.config.num_workers
        kwargs = {"position": position} if position is not None else {}
        return (ResumableLoader if position is not None else DataLoader)(
            ds,
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate_batch,
            num_workers=workers,
            pin_memory=self.config.pin_memory and not on_device,
            persistent_workers=workers > 0,
            **kwargs,
        )

    def _batches_trained(self) -> int:
        """Training batches completed in the current epoch (what a mid-epoch checkpoint records)."""
        loop = getattr(self.trainer, "fit_loop", None)  # None: no Trainer (the loader on its own)
        return loop.epoch_loop.batch_progress.current.completed if loop is not None else 0


#: the names MNIST-era configs and checkpoints use
MNISTDataModule = ImageDataModule


class FashionMNISTDataModule(ImageDataModule):
    """:class:`ImageDataModule` with ``dataset="fashion_mnist"`` by default."""

    def __init__(self, **settings: Any) -> None:
        super().__init__(**({"dataset": "fashion_mnist"} | settings))
