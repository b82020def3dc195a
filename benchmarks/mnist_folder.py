"""The round trip: MNIST exported as a folder of PNGs trains exactly as MNIST does.

    python benchmarks/mnist_folder.py --out /tmp/mnist_png            # export only
    python benchmarks/mnist_folder.py --out /tmp/mnist_png --train trainer.max_epochs=1

The export writes ``<out>/train/<digit>/<index>.png`` (the 60,000 training images) and
``<out>/test/<digit>/<index>.png`` (the 10,000 test images), the index zero-padded: the folder
source orders images by file name, so the folder's order is MNIST's, the same seed draws the same
validation split and every batch is the same. ``--train`` then runs ``train.py`` twice with the given
overrides, ``data=mnist`` and ``data=folder data.root=<out> data.val_size=5000`` (MNIST's split
sizes), and prints both test −ELBOs (nats per image, as the summary rounds them and unrounded).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from vae.train.files import atomic_file
from vae.train.idx import load_split

ROOT = Path(__file__).resolve().parents[1]


def export(data_root: str | os.PathLike[str], out: str | os.PathLike[str]) -> Path:
    """Write MNIST (from ``data_root``) as PNGs under ``out``; returns ``out``. Existing files are
    kept (an interrupted export is completed, not redone)."""
    out = Path(out)
    for part in ("train", "test"):
        images, labels = load_split("mnist", data_root, train=part == "train")
        for digit in range(10):
            (out / part / str(digit)).mkdir(parents=True, exist_ok=True)
        width = len(str(len(images) - 1))
        for i, (image, label) in enumerate(zip(images[:, 0].numpy(), labels.tolist(), strict=True)):
            path = out / part / str(label) / f"{i:0{width}d}.png"
            if not path.exists():
                # atomic: a killed export leaves no cut PNG that the next one would skip
                with atomic_file(path, durable=False) as f:
                    Image.fromarray(np.ascontiguousarray(image)).save(f, format="PNG")
    return out


def test_loss(overrides: list[str], log_dir: Path) -> float:
    """Run ``train.py`` with ``overrides``; the test −ELBO (nats per image) from metrics.json."""
    run_dir = log_dir / "run"
    subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides, f"hydra.run.dir={run_dir}"],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]["test/loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder to write the PNGs into")
    parser.add_argument("--data-root", default=os.environ.get("VAE_DATA_DIR", "data"))
    parser.add_argument("--train", nargs="*", help="train.py overrides for both runs")
    args = parser.parse_args()
    out = export(args.data_root, args.out)
    print(f"exported MNIST to {out}")
    if args.train is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        common = [*args.train, "data.download=false", f"data.cache_dir={tmp}/cache"]
        mnist = test_loss([*common, f"data.root={args.data_root}"], Path(tmp, "mnist"))
        folder = test_loss(
            [*common, "data=folder", f"data.root={out}", "data.val_size=5000"], Path(tmp, "folder")
        )
    print(f"test −ELBO, nats per image: data=mnist {mnist:.2f} ({mnist!r})")
    print(f"                            data=folder {folder:.2f} ({folder!r})")


if __name__ == "__main__":
    main()
