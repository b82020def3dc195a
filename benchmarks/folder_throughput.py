"""``data=folder`` against ``data=mnist``: an epoch's images/s, and the cache's build time.

The same 60,000 MNIST training images two ways, in one run:

A: ``ImageDataModule(dataset="mnist", val_size=0)``: the IDX files, held in memory;
B: ``ImageDataModule(dataset="folder", val_size=0)`` on MNIST exported as PNGs
   (``benchmarks/mnist_folder.py``; exported first when ``--folder`` is empty): the memory-mapped
   uint8 cache file.

Each epoch is the train loader plus the float conversion of every batch (``to_float``, what
``on_after_batch_transfer`` does), alternating A/B ``--repeats`` times; the medians and their ratio
are printed. Before that the cache is built ``--builds`` times into fresh temporary folders (decode
70,000 PNGs, write, rename): seconds per 10,000 images, median.

    python benchmarks/folder_throughput.py --folder /tmp/mnist_png [--root DIR] [--repeats 5]
        [--builds 1] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vae.train.data import ImageDataModule
from vae.train.folder import load_folder

sys.path.insert(0, str(Path(__file__).parent))
from mnist_folder import export


def epoch(dm: ImageDataModule) -> tuple[int, float]:
    n = 0
    start = time.perf_counter()
    for images, _labels, _indices in dm.train_dataloader():
        n += dm.to_float(images, train=True).shape[0]
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", default=os.environ.get("VAE_DATA_DIR", "data"))
    parser.add_argument("--folder", required=True, help="MNIST as PNGs (exported if missing)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--builds", type=int, default=1)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    folder = Path(args.folder)
    if not (folder / "test").is_dir():
        export(args.root, folder)

    with tempfile.TemporaryDirectory() as tmp:
        builds = []
        for b in range(args.builds):
            start = time.perf_counter()
            n = load_folder(folder, cache_dir=Path(tmp, f"build{b}")).images.shape[0]
            builds.append(time.perf_counter() - start)
        per_10k = statistics.median(builds) / n * 10_000
        print(f"cache build: {n:,} images in {statistics.median(builds):.1f} s (median of "
              f"{len(builds)}): {per_10k:.2f} s per 10,000 images")  # fmt: skip

        mnist = ImageDataModule(root=args.root, download=False, val_size=0)
        own = ImageDataModule(dataset="folder", root=str(folder), cache_dir=f"{tmp}/build0",
                              val_size=0)  # fmt: skip
        for dm in (mnist, own):
            dm.setup("fit")
        times: dict[str, list[float]] = {"mnist": [], "folder": []}
        for _ in range(args.repeats):
            for name, dm in (("mnist", mnist), ("folder", own)):
                n, seconds = epoch(dm)
                times[name].append(n / seconds)
    rates = {k: statistics.median(v) for k, v in times.items()}
    print(f"epoch of {n:,} images, median of {args.repeats}: data=mnist {rates['mnist']:,.0f} img/s, "
          f"data=folder {rates['folder']:,.0f} img/s: folder/mnist = "
          f"{rates['folder'] / rates['mnist']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
