"""Training throughput of ``data=folder`` against ``data=mnist``, alternating, in one run.

Runs ``python train.py experiment=canonical trainer=cpu data.val_size=0 trainer.max_epochs=3`` on
MNIST's IDX files (``data=mnist``) and on MNIST exported as PNGs (``data=folder``, read through its
memory-mapped cache, built once before the timed runs; ``benchmarks/mnist_folder.py`` exports the
folder first when ``--folder`` is empty), mnist folder mnist folder … ``--pairs`` times, each a fresh
process. Printed: training images per second of the two epochs after the warm-up
(``vae.train.callbacks.EpochTimer``), the ratio folder / mnist per pair and its median, and the test
−ELBO (nats per image) each reached (the same: the folder path trains on the same batches)::

    VAE_DATA_DIR=../shared/datasets python benchmarks/folder_train.py --folder /tmp/mnist_png
        [--pairs 3] [--threads N] [--extra trainer.limit_train_batches=150 test=false]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from vae.train.folder import load_folder

sys.path.insert(0, str(Path(__file__).parent))
from mnist_folder import export

REPO = Path(__file__).resolve().parent.parent
#: overrides given to both runs (``--extra``)
EXTRA: list[str] = []


def run(data: list[str], scratch: Path, threads: int | None) -> tuple[float, float | None]:
    """(training images per second after the warm-up epoch, test −ELBO) of one ``train.py`` run."""
    timings = scratch / "epochs.jsonl"
    cmd = [
        sys.executable, "train.py", "experiment=canonical", "trainer=cpu",
        "trainer.max_epochs=3", "data.download=false", "data.val_size=0", *data,
        f"paths.output_dir={scratch / 'run'}", f"callbacks.epoch_timer.path={timings}", *EXTRA,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed: {' '.join(data)} ({done.returncode}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in timings.read_text().splitlines()][1:]
    rate = sum(r["images"] for r in records) / sum(r["seconds"] for r in records)
    metrics = json.loads((scratch / "run" / "metrics.json").read_text())["metrics"]
    return rate, metrics.get("test/loss")  # None with test=false


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("VAE_DATA_DIR", "data")))
    parser.add_argument(
        "--folder", type=Path, required=True, help="MNIST as PNGs (exported if missing)"
    )
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, help="OMP_NUM_THREADS of the runs (default: torch's)"
    )
    parser.add_argument(
        "--extra", nargs="*", default=[], help="overrides for both: trainer.limit_train_batches=150"
    )
    args = parser.parse_args()
    EXTRA.extend(args.extra)
    if not (args.folder / "test").is_dir():
        export(args.root, args.folder)
    with tempfile.TemporaryDirectory(prefix="folder-train-") as tmp:
        cache = Path(tmp, "cache")
        load_folder(args.folder, cache_dir=cache)  # built once, outside the timing
        sources = {
            "mnist": [f"data.root={args.root.resolve()}"],
            "folder": [
                "data=folder",
                f"data.root={args.folder.resolve()}",
                f"data.cache_dir={cache}",
            ],
        }
        rates: dict[str, list[float]] = {name: [] for name in sources}
        losses: dict[str, float] = {}
        for pair in range(args.pairs):
            for name, data in sources.items():
                with tempfile.TemporaryDirectory(dir=tmp) as scratch:
                    rate, losses[name] = run(data, Path(scratch), args.threads)
                rates[name].append(rate)
            print(f"pair {pair + 1}: mnist {rates['mnist'][-1]:,.0f} img/s, folder "
                  f"{rates['folder'][-1]:,.0f} img/s, folder / mnist "
                  f"{rates['folder'][-1] / rates['mnist'][-1]:.2f}", flush=True)  # fmt: skip
    ratios = [f / m for f, m in zip(rates["folder"], rates["mnist"], strict=True)]
    print(f"median folder / mnist: {statistics.median(ratios):.2f}")
    if None not in losses.values():  # test=false: none
        print(
            f"test -ELBO (nats/image): mnist {losses['mnist']:.4f}, folder {losses['folder']:.4f}"
        )


if __name__ == "__main__":
    main()
