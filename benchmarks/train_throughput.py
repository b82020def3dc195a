"""Training throughput: our ``train.py`` path versus the canonical PyTorch VAE example, same run.

A = ``benchmarks/reference_vae.py`` (MLP 784-400-20, torchvision MNIST + ToTensor + DataLoader, a
plain loop with ``loss.item()`` every step); B = ``python train.py experiment=canonical`` (the same
architecture, optimiser and batch size through our Lightning module and data module, with the
progress bar, logging, checkpointing and figures a user gets by default; ``data.val_size=0`` so that
both train on the same 60,000 images).

Each is a separate process that trains ``1 + --epochs`` epochs; the first is a warm-up and is not
timed. Processes alternate A B A B … (``--pairs`` pairs). Printed per pair: training images per
second of each (the training part of the epochs only: validation, test and figures excluded), the
ratio B / A, peak resident memory of each process, and the test −ELBO (nats per image) each reached;
then the median ratio.

    python benchmarks/train_throughput.py [--pairs 3] [--epochs 2] [--device cpu|cuda]
        [--root DIR] [--ours "trainer.precision=bf16-mixed ..."]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vae.train.files import write_atomic

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _run(cmd: list[str], log: Path) -> int:
    """Run ``cmd`` to completion; its output goes to ``log``. Returns the peak RSS in MiB."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=REPO)
    output = proc.stdout.read()  # to the end: the process has exited (or closed its output)
    proc.stdout.close()
    _, status, usage = os.wait4(proc.pid, 0)
    write_atomic(log, output)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {shlex.join(cmd)}\n{log.read_text()[-3000:]}")
    return round(usage.ru_maxrss / 1024)  # ru_maxrss is in KiB on Linux


def reference(root: Path, epochs: int, device: str, scratch: Path) -> dict:
    log = scratch / "reference.log"
    cmd = [sys.executable, str(HERE / "reference_vae.py"), "--epochs", str(epochs + 1)]
    rss = _run([*cmd, "--root", str(root), "--device", device], log)
    result = json.loads(log.read_text().strip().splitlines()[-1])
    seconds, images = result["epoch_seconds"][1:], result["images"][1:]
    return {"rate": sum(images) / sum(seconds), "rss": rss, "test_loss": result["test_loss"]}


def ours(root: Path, epochs: int, device: str, extra: list[str], scratch: Path) -> dict:
    run_dir = scratch / "ours"
    timings = scratch / "epochs.jsonl"
    trainer = ["trainer=gpu", "data.device_resident=true"] if device != "cpu" else ["trainer=cpu"]
    cmd = [
        sys.executable,
        str(REPO / "train.py"),
        "experiment=canonical",
        *trainer,
        f"trainer.max_epochs={epochs + 1}",
        f"data.root={root}",
        "data.download=false",
        # train on all 60,000 images like the reference (no validation split), so the test losses
        # after the same number of epochs compare like with like
        "data.val_size=0",
        f"paths.output_dir={run_dir}",
        f"callbacks.epoch_timer.path={timings}",
        *extra,
    ]
    rss = _run(cmd, scratch / "ours.log")
    records = [json.loads(line) for line in timings.read_text().splitlines()][1:]
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    rate = sum(r["images"] for r in records) / sum(r["seconds"] for r in records)
    return {"rate": rate, "rss": rss, "test_loss": metrics["test/loss"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("VAE_DATA_DIR", "data")))
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2, help="timed epochs after the warm-up")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--ours", default="", help="extra overrides for train.py")
    args = parser.parse_args()
    root = args.root.resolve()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__},"
        f" device {args.device}; {args.epochs} timed epochs after 1 warm-up, {args.pairs} pairs A B"
    )
    print(
        "pair | reference img/s | ours img/s | ratio | ref RSS MiB | ours RSS MiB | ref test | ours test"
    )
    ratios = []
    for pair in range(args.pairs):
        with tempfile.TemporaryDirectory() as scratch:
            a = reference(root, args.epochs, args.device, Path(scratch))
        with tempfile.TemporaryDirectory() as scratch:
            b = ours(root, args.epochs, args.device, shlex.split(args.ours), Path(scratch))
        ratios.append(b["rate"] / a["rate"])
        print(
            f"{pair + 1:4d} | {a['rate']:15,.0f} | {b['rate']:10,.0f} | {ratios[-1]:5.2f}× "
            f"| {a['rss']:11d} | {b['rss']:12d} | {a['test_loss']:8.2f} | {b['test_loss']:9.2f}",
            flush=True,
        )
    print(
        f"median ratio (ours / reference, training images per second): {statistics.median(ratios):.2f}×"
    )
    print("test losses are −ELBO in nats per image on the 10,000 test images, one sample per image")


if __name__ == "__main__":
    main()
