"""The curve of docs/reproduced.md: test bounds against epochs, for each run of the reproduction.

Per run: the validation −ELBO after every epoch (from the run's TensorBoard events; 400 images,
one seeded sample each) and, at the checkpoints ``benchmarks/reproduce_eval.py`` evaluated, the
test −ELBO and the test K-sample bound; nats per image, lower is better. The paper's final figure
for that row is drawn as a dashed line::

    .venv/bin/python benchmarks/reproduce_plot.py --out docs/reproduced_curve.png \\
        --run "VAE k=1" logs/.../run_vae curve_vae.jsonl 86.76 \\
        --run "IWAE k=5" logs/.../run_k5 curve_k5.jsonl 85.54
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vae.train.files import atomic_file


def val_curve(run: Path) -> list[float]:
    """``val/loss`` after each epoch, in order (validation runs once per epoch)."""
    values: list[tuple[float, float]] = []
    for events in sorted(run.glob("tensorboard/**/events.out.tfevents.*")):
        acc = EventAccumulator(str(events))
        acc.Reload()
        if "val/loss" in acc.Tags()["scalars"]:
            values += [(e.step, e.value) for e in acc.Scalars("val/loss")]
    # a resumed run appends to the same directory: one value per step, the latest
    return [v for _, v in sorted(dict(values).items())]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--run", nargs=4, action="append", required=True, metavar=("LABEL", "DIR", "JSONL", "PAPER")
    )
    args = parser.parse_args()
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for (label, run, jsonl, paper), color in zip(args.run, ("C0", "C1", "C2", "C3"), strict=False):
        val = val_curve(Path(run))
        ax.plot(
            range(1, len(val) + 1),
            val,
            color=color,
            alpha=0.35,
            lw=1,
            label=f"{label}: val −ELBO (400 images)",
        )
        rows = sorted(
            (json.loads(line) for line in Path(jsonl).read_text().splitlines() if line.strip()),
            key=lambda r: r["epochs_trained"],
        )
        epochs = [r["epochs_trained"] for r in rows]
        ax.plot(
            epochs,
            [r["neg_elbo"] for r in rows],
            "o--",
            color=color,
            ms=3,
            label=f"{label}: test −ELBO",
        )
        k = rows[0]["iw_samples"] if rows else "K"
        ax.plot(
            epochs,
            [r["nll_iw"] for r in rows],
            "s-",
            color=color,
            ms=3,
            label=f"{label}: test −log p̂ (K={k})",
        )
        ax.axhline(float(paper), color=color, ls=":", lw=1, label=f"{label}: paper, 3,280 epochs")
    ax.set_xlabel("epochs trained (batch 20, 2,980 steps each)")
    ax.set_ylabel("nats per image (lower is better)")
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    with atomic_file(args.out) as f:
        fig.savefig(f, format=Path(args.out).suffix.lstrip(".") or "png", dpi=120)
    print(args.out)


if __name__ == "__main__":
    main()
