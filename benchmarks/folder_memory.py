"""A folder larger than memory still trains: the process's anonymous memory does not grow with the
folder cache's size.

For each size in ``--sizes-mib``, a fresh temporary folder (under ``--tmp``) gets enough synthetic
``--side`` × ``--side`` RGB noise images (BMP: written and decoded fast) for a uint8 cache of at
least that many MiB; then a child process:

1. builds the cache through ``ImageDataModule(dataset="folder").prepare_data()`` (decode, write,
   rename), sampling its ``RssAnon`` (``/proc/self/status``: memory not backed by a file) every
   5 ms: the build's peak growth;
2. ``setup("fit")`` (the seeded splits over the memory-mapped cache), then one training epoch of
   the train loader plus the float conversion of every batch (``to_float``, what
   ``on_after_batch_transfer`` does), sampling ``RssAnon`` while each batch is held: the epoch's
   peak growth over what the process held before it;
3. reads ``/proc/self/smaps``: the cache mapping's ``Rss`` (pages of the file in memory, which the
   kernel may drop at any time) and ``Anonymous`` (pages copied out of it: the copy-on-write
   mapping is never written, so 0 is expected).

The growth must not depend on the size: an epoch holds one batch (uint8 and float32) at a time,
whatever the cache's size. The folder and the cache are deleted after each size.

    python benchmarks/folder_memory.py [--sizes-mib 1024 4096] [--side 256] [--tmp /tmp]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vae.train.files import atomic_file

MIB = 2**20


def rss_anon() -> int:
    """The process's anonymous resident memory in bytes (``RssAnon`` of ``/proc/self/status``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status (Linux only)")


def mapping_of(path: Path) -> dict[str, int]:
    """``Rss`` and ``Anonymous`` (bytes) of the process's mappings of ``path`` (``/proc/self/smaps``)."""
    totals, inside = {"Rss": 0, "Anonymous": 0}, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
            inside = len(head) >= 6 and head[5] == str(path)
        elif inside and head and head[0].rstrip(":") in totals:
            totals[head[0].rstrip(":")] += int(head[1]) * 1024
    return totals


class PeakSampler:
    """The highest ``RssAnon`` seen while the ``with`` block runs, sampled every 5 ms."""

    def __enter__(self) -> PeakSampler:
        self.peak, self._stop = rss_anon(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, rss_anon())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())


def child(folder: Path, cache: Path) -> dict[str, float]:
    """Build, set up and read one epoch of ``folder``; the measurements (MiB, seconds)."""
    from vae.train.data import ImageDataModule

    dm = ImageDataModule(
        dataset="folder", root=str(folder), cache_dir=str(cache), val_size=0.1, test_size=0.1
    )
    before = rss_anon()
    start = time.perf_counter()
    with PeakSampler() as build:
        dm.prepare_data()
    build_s = time.perf_counter() - start
    dm.setup("fit")
    npy = next(cache.glob("*.npy"))
    base = peak = rss_anon()
    start, n = time.perf_counter(), 0
    for images, _labels, _indices in dm.train_dataloader():
        x = dm.to_float(images, train=True)
        n += x.shape[0]
        peak = max(peak, rss_anon())  # the batch alive, uint8 and float32
        del x, images
    epoch_s = time.perf_counter() - start
    mapped = mapping_of(npy)
    return {
        "cache_mib": npy.stat().st_size / MIB,
        "images": dm.folder().images.shape[0],
        "trained": n,
        "build_s": build_s,
        "build_peak_mib": (build.peak - before) / MIB,
        "epoch_s": epoch_s,
        "epoch_growth_mib": (peak - base) / MIB,
        "anon_before_epoch_mib": base / MIB,
        "mapping_rss_mib": mapped["Rss"] / MIB,
        "mapping_anonymous_mib": mapped["Anonymous"] / MIB,
    }


def write_folder(folder: Path, count: int, side: int) -> None:
    """``count`` RGB noise images, ``side`` pixels square, as BMP files (uncompressed)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        with atomic_file(folder / f"{i:06d}.bmp", durable=False) as f:
            Image.fromarray(pixels).save(f, format="BMP")


def measure(size_mib: int, side: int, tmp: Path) -> dict[str, float]:
    count = math.ceil(size_mib * MIB / (3 * side * side))
    with tempfile.TemporaryDirectory(dir=tmp, prefix="folder_memory-") as work:
        folder, cache = Path(work, "images"), Path(work, "cache")
        start = time.perf_counter()
        write_folder(folder, count, side)
        written = time.perf_counter() - start
        out = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), str(cache)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        if out.returncode != 0:
            sys.exit(f"error: the child for {size_mib} MiB failed:\n{out.stderr[-3000:]}")
        shutil.rmtree(folder)  # the folder first: the disk holds one copy less
    return json.loads(out.stdout.splitlines()[-1]) | {"write_s": written}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes-mib", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--side", type=int, default=256, help="image side in pixels (RGB)")
    parser.add_argument("--tmp", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    free = shutil.disk_usage(args.tmp).free / MIB
    if free < 2.2 * max(args.sizes_mib):  # the images and the cache, side by side
        sys.exit(f"error: --tmp {args.tmp}: {free:,.0f} MiB free, the largest size needs "
                 f"{2.2 * max(args.sizes_mib):,.0f}; free some space or pass --tmp DIR")  # fmt: skip
    rows = [measure(size, args.side, args.tmp) for size in args.sizes_mib]
    print("| cache (MiB) | images | epoch: RssAnon growth (MiB) | mapping Rss / Anonymous (MiB) "
          "| build: RssAnon peak growth (MiB) | build (s) | epoch (s) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cache_mib']:,.1f} | {r['images']:,} | {r['epoch_growth_mib']:+.1f} | "
              f"{r['mapping_rss_mib']:,.0f} / {r['mapping_anonymous_mib']:.1f} | "
              f"{r['build_peak_mib']:+.1f} | {r['build_s']:.1f} | {r['epoch_s']:.1f} |")  # fmt: skip
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
