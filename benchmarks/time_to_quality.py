"""Time to quality: test −ELBO against wall-clock seconds for three recipes, in one run.

Runs whole ``python train.py`` processes one after the other on this machine:

- ``before``: the default command of an earlier commit (``--before-rev``, by default the commit
  before the time-to-quality changes: batch 128, lr 3e-3, float32, figures every epoch);
- ``new``: today's default command (``python train.py``), for each of ``--seeds``;
- ``batch1024``: the fastest recipe measured on a 2-core CPU with AVX-512 BF16 (batch 1024, lr 8.5e-3,
  ``trainer.precision=auto``: bf16 autocast where the CPU computes bfloat16 natively, else float32),
  today's default otherwise: ~3.3× the training images per second there, at a worse final −ELBO;
- ``canonical``: ``experiment=canonical`` (pytorch/examples' recipe: 784-400-20 → here with a 2-D
  latent space to be comparable, Adam 1e-3, batch 128) for ``--canonical-epochs`` epochs.

For each run it records the wall time of the whole process, the validation −ELBO after every epoch
(TensorBoard's ``val/loss`` and its wall time, seconds since the process started) and the final test
−ELBO and importance-weighted bound of ``metrics.json`` (nats per image). Results accumulate in
``benchmarks/time_to_quality.json`` (one entry per recipe and seed, so seeds can be run on different
days; only ratios of one run are comparable); the table is printed and the curves are drawn into
``benchmarks/time_to_quality.png``::

    VAE_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/time_to_quality.py
    VAE_DATA_DIR=../shared/datasets .venv/bin/python benchmarks/time_to_quality.py --recipes new --seeds 1 2
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from vae.train.files import atomic_file, write_atomic

REPO = Path(__file__).resolve().parent.parent

OUT_JSON = REPO / "benchmarks" / "time_to_quality.json"
OUT_PNG = REPO / "benchmarks" / "time_to_quality.png"
#: the last commit whose default command is the recipe before this benchmark's changes
BEFORE_REV = "65b4180"
RECIPES = {
    "before": [],
    "new": [],
    "batch1024": ["data.batch_size=1024", "optim.lr=8.5e-3", "trainer.precision=auto"],
    "canonical": ["experiment=canonical", "model.latent_dim=2", "trainer.precision=32-true"],
}


def export(rev: str, dest: Path) -> Path:
    """The files of commit ``rev`` under ``dest`` (``git archive``: no worktree bookkeeping)."""
    tar = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True)
    with tarfile.open(fileobj=io.BytesIO(tar.stdout)) as archive:
        archive.extractall(dest, filter="data")
    return dest


def val_curve(run_dir: Path, started: float) -> list[tuple[float, float]]:
    """(seconds since the process started, val −ELBO) after each epoch, from TensorBoard."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    points = []
    for events in sorted({p.parent for p in run_dir.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
        acc.Reload()
        if "val/loss" in acc.Tags()["scalars"]:
            points += [(e.wall_time - started, e.value) for e in acc.Scalars("val/loss")]
    return sorted(points)


def run(recipe: str, seed: int, tree: Path, scratch: Path, extra: list[str]) -> dict:
    run_dir = scratch / f"{recipe}-seed{seed}"
    cmd = [
        sys.executable, "train.py", f"seed={seed}", "data.download=false",
        f"hydra.run.dir={run_dir}", "trainer.enable_progress_bar=false", *RECIPES[recipe], *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(tree)}
    load = os.getloadavg()[0]
    started = time.time()
    done = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
    wall = time.time() - started
    if done.returncode != 0:
        sys.exit(f"{recipe} seed {seed} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads((run_dir / "metrics.json").read_text())
    m = summary["metrics"]
    print(f"{recipe} seed {seed}: {wall:.0f} s, test −ELBO {m['test/loss']:.2f}", flush=True)
    return {
        "recipe": recipe, "seed": seed, "command": " ".join(cmd[1:]), "wall_s": wall,
        "fit_s": summary.get("fit_seconds"), "epochs": summary.get("epochs"),
        "test_loss": m["test/loss"], "test_nll_iw": m["test/nll_iw"],
        "precision": summary.get("environment", {}).get("precision"),
        "load_before": load, "load_after": os.getloadavg()[0],
        "val_curve": val_curve(run_dir, started), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }  # fmt: skip


def table(results: dict[str, dict]) -> str:
    before = results.get("before/0")
    rows = ["| recipe | seed | precision | wall (s) | test −ELBO (nats/image) | IW bound | before / this |",
            "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for r in sorted(results.values(), key=lambda r: (list(RECIPES).index(r["recipe"]), r["seed"])):
        ratio = f"{before['wall_s'] / r['wall_s']:.2f}×" if before else "—"
        rows.append(
            f"| {r['recipe']} | {r['seed']} | {r['precision']} | {r['wall_s']:.0f} | "
            f"{r['test_loss']:.2f} | {r['test_nll_iw']:.2f} | {ratio} |"
        )
    return "\n".join(rows)


def plot(results: dict[str, dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    colours = {
        "before": "tab:grey",
        "new": "tab:blue",
        "batch1024": "tab:green",
        "canonical": "tab:orange",
    }
    for _key, r in sorted(results.items()):
        t, v = zip(*r["val_curve"], strict=True) if r["val_curve"] else ((), ())
        label = (
            f"{r['recipe']} (seed {r['seed']}): test {r['test_loss']:.2f} at {r['wall_s']:.0f} s"
        )
        ax.plot(t, v, color=colours[r["recipe"]], alpha=1.0 if r["seed"] == 0 else 0.4, label=label)
        ax.plot([r["wall_s"]], [r["test_loss"]], "o", color=colours[r["recipe"]])
    ax.set(xlabel="wall-clock seconds since `python train.py` started",
           ylabel="−ELBO, nats per image (lines: validation; dots: final test)", ylim=(130, 160))  # fmt: skip
    ax.set_title("Time to quality: 2-D VAE on MNIST, 2 CPU cores")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_file(OUT_PNG) as f:
        fig.savefig(f, format="png", dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument(
        "--seeds", nargs="+", type=int, default=[0], help="seeds of the new default"
    )
    parser.add_argument("--before-rev", default=BEFORE_REV)
    parser.add_argument("--canonical-epochs", type=int, default=10)
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    parser.add_argument("--json", type=Path, default=OUT_JSON, help="where the results accumulate")
    args = parser.parse_args()
    results = json.loads(args.json.read_text()) if args.json.exists() else {}
    with tempfile.TemporaryDirectory(prefix="ttq-") as scratch:
        scratch = Path(scratch)
        before = export(args.before_rev, scratch / "before") if "before" in args.recipes else None
        for recipe in args.recipes:
            seeds = args.seeds if recipe == "new" else [0]
            extra = [*args.extra]
            if recipe == "canonical":
                extra.append(f"trainer.max_epochs={args.canonical_epochs}")
            for seed in seeds:
                tree = before if recipe == "before" else REPO
                results[f"{recipe}/{seed}"] = run(recipe, seed, tree, scratch, extra)
                write_atomic(args.json, json.dumps(results, indent=1) + "\n")
    print(table(results))
    plot(results)


if __name__ == "__main__":
    main()
