"""``data``: every key's default and rule, written once (:class:`DataConfig`). Pure Python: importing it
loads no torch, so :mod:`vae.train.config` stores these defaults in Hydra's ConfigStore and
``configs/data/*.yaml`` list only what differs (the ``_target_``, the root, the run's seed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from vae.core.config import _field
from vae.rules import Rule, boolean, int_at_least, int_in, one_of, optional, path

__all__ = ["BINARIZE_MODES", "DATASETS", "DATA_RULES", "IDX_DATASETS", "MIN_SIDE", "DataConfig"]

#: the sources read from IDX files (:mod:`vae.train.idx`)
IDX_DATASETS = ("mnist", "fashion_mnist")
DATASETS = (*IDX_DATASETS, "folder")
BINARIZE_MODES = ("none", "dynamic", "static")
#: a folder's smallest image side (two stride-2 stages still leave a pixel)
MIN_SIDE = 4


def _split_size() -> Rule:
    def ok(v: Any) -> bool:
        if isinstance(v, bool):
            return False
        return (isinstance(v, int) and v >= 0) or (isinstance(v, float) and 0.0 <= v < 1.0)

    return ok, "an image count ≥ 0 or a fraction in [0, 1)"


@dataclass(frozen=True)
class DataConfig:
    """``data``: the data module's settings (:class:`vae.train.data.ImageDataModule` reads them)."""

    # mnist | fashion_mnist | folder (your own images: data=folder data.root=<dir>)
    dataset: str = _field("mnist", one_of(DATASETS))
    #: MNIST: the folder holding MNIST/raw/ (null: $VAE_DATA_DIR, else ./data); folder: the images
    root: str | None = _field(None, path(optional=True))
    batch_size: int = _field(128, int_at_least(1))
    #: validation and test batches: only a forward pass, so larger
    eval_batch_size: int = _field(1000, int_at_least(1))
    #: images of the training part held out for validation (a count, or a fraction below 1)
    val_size: int | float = _field(5000, _split_size())
    #: folder without train/ and test/ only: images held out for the test split
    test_size: int | float = _field(0.1, _split_size())
    #: the split, the per-epoch shuffling order and the fixed val/test binarisation
    seed: int = _field(0, int_in(0, 2**63 - 1))
    #: none: grey levels in [0, 1] | dynamic: a fresh Bernoulli draw per pixel each time a training
    #: image is served (val/test: one fixed draw) | static: threshold at 0.5
    binarize: str = _field("none", one_of(BINARIZE_MODES))
    #: fetch missing MNIST files from torchvision's mirrors (needs network)
    download: bool = _field(True, boolean())
    #: folder only: 1 (grey) or 3 (RGB); null: 1 when every image is grey, else 3
    channels: int | None = _field(None, optional(one_of((1, 3))))
    #: folder only: side of the square images (shorter side scaled to it, centre crop); null: the
    #: size every image has
    image_size: int | None = _field(None, optional(int_at_least(MIN_SIDE)))
    #: folder only: where the decoded cache lives (null: $VAE_CACHE_DIR, else ~/.cache/vae)
    cache_dir: str | None = _field(None, path(optional=True))
    num_workers: int = _field(0, int_at_least(0))
    pin_memory: bool = _field(False, boolean())
    #: keep the splits on the training GPU and gather batches there (no-op on CPU)
    device_resident: bool = _field(False, boolean())


#: the ``data`` config keys → what each allows; checked when the data module is built
DATA_RULES: dict[str, Rule] = {f.name: f.metadata["rule"] for f in dataclasses.fields(DataConfig)}
