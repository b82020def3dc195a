"""Training throughput of two checkouts of this repository, alternating, in one run.

Does a change slow the training path down? Runs ``python train.py experiment=canonical trainer=cpu
data.val_size=0 trainer.max_epochs=3`` in checkout A (e.g. a ``git worktree`` of the commit before
the change) and in checkout B (default: this one), A B A B … ``--pairs`` times, each process
importing its own ``vae`` (``PYTHONPATH``). Printed: training images per second of the two epochs
after the warm-up (``vae.train.callbacks.EpochTimer``), the ratio B / A per pair and its median, and the
test −ELBO (nats per image) each reached::

    git worktree add --detach /tmp/before <commit>
    .venv/bin/python benchmarks/train_ab.py --before /tmp/before [--after .] [--pairs 3]
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

REPO = Path(__file__).resolve().parent.parent


def run(tree: Path, root: Path, scratch: Path) -> tuple[float, float]:
    """(training images per second after the warm-up epoch, test −ELBO) of one run in ``tree``."""
    timings = scratch / "epochs.jsonl"
    cmd = [
        sys.executable, "train.py", "experiment=canonical", "trainer=cpu",
        "trainer.max_epochs=3", f"data.root={root}", "data.download=false", "data.val_size=0",
        f"paths.output_dir={scratch / 'run'}", f"callbacks.epoch_timer.path={timings}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"failed in {tree} ({done.returncode}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in timings.read_text().splitlines()][1:]
    rate = sum(r["images"] for r in records) / sum(r["seconds"] for r in records)
    metrics = json.loads((scratch / "run" / "metrics.json").read_text())["metrics"]
    return rate, metrics["test/loss"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="checkout A")
    parser.add_argument("--after", type=Path, default=REPO, help="checkout B (default: this one)")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--root", type=Path, default=Path(os.environ.get("VAE_DATA_DIR", "data")))
    args = parser.parse_args()
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    losses: dict[str, float] = {}
    for pair in range(args.pairs):
        for name, tree in trees.items():
            with tempfile.TemporaryDirectory(prefix=f"train-ab-{name}-") as scratch:
                rate, losses[name] = run(tree, args.root.resolve(), Path(scratch))
            rates[name].append(rate)
        ratio = rates["after"][-1] / rates["before"][-1]
        print(f"pair {pair + 1}: before {rates['before'][-1]:,.0f} img/s, after "
              f"{rates['after'][-1]:,.0f} img/s, after / before {ratio:.2f}", flush=True)  # fmt: skip
    ratios = [a / b for a, b in zip(rates["after"], rates["before"], strict=True)]
    print(f"median after / before: {statistics.median(ratios):.2f}")
    print(
        f"test -ELBO (nats per image): before {losses['before']:.2f}, after {losses['after']:.2f}"
    )


if __name__ == "__main__":
    main()
