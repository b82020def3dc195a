"""Test-set evaluation of a run's checkpoints for docs/reproduced.md: the K-sample bound, timed.

For each checkpoint: −log p̂_K(x) (``test/nll_iw``'s estimator, the same seeded noise: a function of
(``eval.seed``, image, sample) only), the one-sample −ELBO, and the active units (Burda et al. 2015,
§5.2: Cov_x(E[z | x]) > 0.01 over the test set), in nats per image, with the standard error over
images. The test images are taken in a seeded random order, so a time budget that ends the
evaluation early (``--minutes``: it stops after the batch that passes it) still gives an unbiased
estimate on a random subset, stated as such (``n_images``). One JSON line per checkpoint is
appended to ``--out``::

    .venv/bin/python benchmarks/reproduce_eval.py --run logs/train/runs/<run> \\
        --ckpt logs/train/runs/<run>/checkpoints/curve/epoch0040.ckpt --iw-samples 5000 \\
        --out eval.jsonl

The data module is the run's own (its ``config.yaml``), so the test images are binarised exactly
as the run's validation and test were.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from vae.train.data import MNISTDataModule
from vae.train.files import append_line
from vae.train.module import ACTIVE_UNIT_THRESHOLD, VAEModule


def test_images(run: Path) -> torch.Tensor:
    """The run's test split as float images ``(N, C, H, W)``, binarised as its evaluation was."""
    data = OmegaConf.to_container(OmegaConf.load(run / "config.yaml").data, resolve=True)
    data.pop("_target_")
    dm = MNISTDataModule(**data)
    dm.setup("test")
    return dm.to_float(dm.test_dataset.images)


@torch.no_grad()
def evaluate(
    ckpt: Path, images: torch.Tensor, *, iw_samples: int, chunk: int, batch: int, minutes: float
) -> dict[str, float]:
    module = VAEModule.load_from_checkpoint(ckpt, map_location="cpu").eval()
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    mu = module.encode(images)[0]
    active = int((mu.double().var(dim=0, unbiased=False) > ACTIVE_UNIT_THRESHOLD).sum())
    sums = torch.zeros(4, dtype=torch.float64)  # Σ nll, Σ nll², Σ −ELBO, Σ (−ELBO)²
    n, start = 0, time.perf_counter()
    for first in range(0, len(order), batch):
        index = order[first : first + batch]
        x = images[index]
        nll = module.iw_nll(x, n_samples=iw_samples, chunk=chunk, index=index).double()
        elbo = module.elbo_terms(x, eps=module.eval_noise(index, "test"))["loss"].double()
        sums += torch.stack([nll.sum(), nll.square().sum(), elbo.sum(), elbo.square().sum()])
        n += len(index)
        if time.perf_counter() - start > 60 * minutes:
            break
    seconds = time.perf_counter() - start

    def mean_se(total: float, squares: float) -> tuple[float, float]:
        mean = total / n
        return mean, math.sqrt(max(squares / n - mean**2, 0.0) / max(n - 1, 1))

    nll_mean, nll_se = mean_se(float(sums[0]), float(sums[1]))
    elbo_mean, elbo_se = mean_se(float(sums[2]), float(sums[3]))
    epoch = re.search(r"epoch(\d+)", ckpt.name)
    return {
        "checkpoint": str(ckpt),
        # Lightning numbers epochs from 0: epoch0004.ckpt was written after 5 epochs of training
        "epochs_trained": int(epoch.group(1)) + 1 if epoch else None,
        "iw_samples": iw_samples,
        "n_images": n,
        "nll_iw": nll_mean,
        "nll_iw_se": nll_se,
        "neg_elbo": elbo_mean,
        "neg_elbo_se": elbo_se,
        "active_units": active,
        "seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="the run directory (config.yaml)")
    parser.add_argument("--ckpt", type=Path, nargs="+", required=True)
    parser.add_argument("--iw-samples", type=int, default=5000)
    parser.add_argument("--chunk", type=int, default=25, help="samples decoded per pass")
    parser.add_argument("--batch", type=int, default=500, help="test images per pass")
    parser.add_argument("--minutes", type=float, default=math.inf, help="stop after this long")
    parser.add_argument(
        "--out", type=Path, required=True, help="append one JSON line per checkpoint"
    )
    args = parser.parse_args()
    images = test_images(args.run)
    for ckpt in args.ckpt:
        row = evaluate(
            ckpt,
            images,
            iw_samples=args.iw_samples,
            chunk=args.chunk,
            batch=args.batch,
            minutes=args.minutes,
        )
        append_line(args.out, json.dumps(row))
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
