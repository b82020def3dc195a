"""Two small costs the code's docstrings point to, each against its reference in one run.

- The dynamic binarisation's draw (``vae.train.data._bernoulli``: ``U < p``) against
  ``torch.bernoulli(p)`` on one batch of 128 MNIST-sized images and on 10,000 of them.
- The atomic writer with and without its two fsyncs (``durable=False``) on a 20 KB file (a small PNG),
  in a temporary folder on the file system of ``--dir``.

    .venv/bin/python benchmarks/small_costs.py [--dir /tmp] [--repeats 200]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vae.train.data import _bernoulli
from vae.train.files import atomic_file


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def draws(repeats: int) -> None:
    gen = torch.Generator().manual_seed(0)
    for rows in (128, 10_000):
        p = torch.rand(rows, 784, generator=gen)
        ours = _median_seconds(lambda p=p: _bernoulli(p, gen), repeats)
        ref = _median_seconds(lambda p=p: torch.bernoulli(p, generator=gen), repeats)
        print(
            f"draw, {rows:>6,} images: U < p {ours * 1e3:8.3f} ms, torch.bernoulli {ref * 1e3:8.3f} ms,"
            f" reference / ours {ref / ours:5.2f}x"
        )


def writes(folder: Path, repeats: int) -> None:
    data = os.urandom(20_000)

    def write(durable: bool) -> None:
        with atomic_file(folder / "file.bin", durable=durable) as f:
            f.write(data)

    durable = _median_seconds(lambda: write(True), repeats)
    quick = _median_seconds(lambda: write(False), repeats)
    print(
        f"write 20 KB: durable {durable * 1e3:7.3f} ms, durable=False {quick * 1e3:7.3f} ms,"
        f" durable / quick {durable / quick:5.1f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    draws(args.repeats)
    with tempfile.TemporaryDirectory(dir=args.dir) as folder:
        writes(Path(folder), args.repeats)


if __name__ == "__main__":
    main()
