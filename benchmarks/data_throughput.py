"""Training-epoch throughput: vae.train.data.MNISTDataModule versus torchvision's canonical recipe.

A: ``MNISTDataModule`` (all 60,000 training images, ``val_size=0``), its train loader plus the float
   conversion of every batch (``to_float``, what ``on_after_batch_transfer`` does on the device).
B: ``torchvision.datasets.MNIST(root, train=True, transform=ToTensor())`` + ``DataLoader(batch_size,
   shuffle=True)``: one PIL image and one ``ToTensor`` per sample.

Both run one full shuffled epoch, alternating A/B ``--repeats`` times; the medians and their ratio
are printed. torchvision's MNIST reads only uncompressed files from ``<root>/MNIST/raw/``, so when
the root holds only ``.gz`` files they are decompressed into a temporary root for B (outside the
timing).

    python benchmarks/data_throughput.py [--root DIR] [--repeats 3] [--num-workers 0]
        [--binarize none|dynamic|static] [--threads N]
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from torchvision.datasets import MNIST
from torchvision.transforms import ToTensor

from vae.train.data import FILES, MNISTDataModule
from vae.train.files import atomic_file


def torchvision_root(root: Path, scratch: Path) -> Path:
    """A root where torchvision's MNIST finds uncompressed raw files (``root`` if it already does)."""
    raw = root / "MNIST" / "raw"
    if all((raw / name).is_file() for name in FILES):
        return root
    out = scratch / "MNIST" / "raw"
    out.mkdir(parents=True)
    for name in FILES:
        with gzip.open(raw / f"{name}.gz", "rb") as src, atomic_file(out / name) as dst:
            shutil.copyfileobj(src, dst)
    return scratch


def epoch_ours(dm: MNISTDataModule) -> tuple[int, float]:
    n = 0
    start = time.perf_counter()
    for images, _labels, _indices in dm.train_dataloader():
        n += dm.to_float(images, train=True).shape[0]
    return n, time.perf_counter() - start


def epoch_torchvision(loader: DataLoader) -> tuple[int, float]:
    n = 0
    start = time.perf_counter()
    for x, _ in loader:
        n += x.shape[0]
    return n, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("VAE_DATA_DIR") or "data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=0, help="for both loaders")
    parser.add_argument("--binarize", default="none", choices=("none", "dynamic", "static"))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args()
    root = Path(args.root)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs")
    print(
        f"root={root} batch_size={args.batch_size} num_workers={args.num_workers} "
        f"binarize={args.binarize} (ours; torchvision: grey levels)"
    )

    setups = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        dm = MNISTDataModule(
            root=root,
            download=False,
            val_size=0,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            binarize=args.binarize,
        )
        dm.setup("fit")
        setups.append(time.perf_counter() - start)
    print(
        "setup('fit') (read, decompress and SHA-256 the training files, split): "
        f"median {statistics.median(setups):.2f} s over {args.repeats}"
    )

    with tempfile.TemporaryDirectory() as scratch:
        tv_root = torchvision_root(root, Path(scratch))
        tv = MNIST(str(tv_root), train=True, transform=ToTensor(), download=False)
        loader = DataLoader(
            tv, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers
        )
        ours, theirs = [], []
        for r in range(args.repeats):
            n_a, t_a = epoch_ours(dm)
            n_b, t_b = epoch_torchvision(loader)
            assert n_a == n_b == 60_000, (n_a, n_b)
            ours.append(n_a / t_a)
            theirs.append(n_b / t_b)
            print(
                f"repeat {r + 1}: ours {ours[-1]:>10,.0f} img/s   torchvision {theirs[-1]:>8,.0f} img/s"
            )

    a, b = statistics.median(ours), statistics.median(theirs)
    print(f"median: ours {a:,.0f} img/s, torchvision {b:,.0f} img/s, ratio {a / b:.1f}x")


if __name__ == "__main__":
    main()
