"""Does serialising a checkpoint in memory first slow checkpointing down?

``vae.train.checkpointing.AtomicCheckpointIO.save_checkpoint`` runs ``torch.save`` into a ``BytesIO`` and
writes the bytes itself (so a full disk is an ``OSError`` with its errno, see vae/train/diskspace.py).
This times it against the previous version, ``torch.save`` straight into the temp file, both
followed by fsync and ``os.replace``, on a checkpoint of the default model (the weights and Adam's
two moments, as Lightning saves them: 12.9 MB), alternating the two ``--repeats`` times, and
prints the medians and their ratio::

    .venv/bin/python benchmarks/checkpoint_write.py --repeats 30 [--dir /some/disk]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch

from vae.train.checkpointing import AtomicCheckpointIO
from vae.train.module import VAEModule


def default_checkpoint() -> dict:
    """A checkpoint dict shaped like Lightning's for the default VAEModule after some Adam steps."""
    module = VAEModule()
    optimizer = torch.optim.Adam(module.parameters())
    for p in module.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # creates exp_avg and exp_avg_sq for every parameter
    return {
        "epoch": 1,
        "global_step": 100,
        "state_dict": module.state_dict(),
        "optimizer_states": [optimizer.state_dict()],
        "hyper_parameters": dict(module.hparams),
    }


def direct_save(checkpoint: dict, target: Path) -> None:
    """The previous AtomicCheckpointIO.save_checkpoint: torch.save into the temp file (the
    baseline this benchmark measures, so it writes as that code did)."""
    tmp_dir = target.parent
    fd, tmp = tempfile.mkstemp(dir=tmp_dir)  # not vae.train.files: the baseline measured
    with os.fdopen(fd, "wb") as f:  # not vae.train.files: the baseline measured
        torch.save(checkpoint, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)  # not vae.train.files: the baseline measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write (default: a temp dir)"
    )
    args = parser.parse_args()
    checkpoint = default_checkpoint()
    io_ = AtomicCheckpointIO()
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        target = Path(d) / "last.ckpt"
        io_.save_checkpoint(checkpoint, target)  # warm-up, and the size
        size = target.stat().st_size
        times: dict[str, list[float]] = {"in memory, then written": [], "torch.save to file": []}
        for _ in range(args.repeats):
            for name, save in (
                ("in memory, then written", io_.save_checkpoint),
                ("torch.save to file", direct_save),
            ):
                start = time.perf_counter()
                save(checkpoint, target)
                times[name].append(time.perf_counter() - start)
    print(f"checkpoint: {size / 1e6:.1f} MB, {args.repeats} saves each, alternating")
    medians = {name: statistics.median(t) for name, t in times.items()}
    for name, m in medians.items():
        print(f"{name:>26}: median {m * 1e3:7.1f} ms")
    ratio = medians["in memory, then written"] / medians["torch.save to file"]
    print(f"ratio (in memory / to file): {ratio:.2f}")


if __name__ == "__main__":
    main()
