"""The end of a run: :class:`RunSummary` times the fit and the test, then writes ``metrics.json``,
gives each logger the final metrics with the curated config (and TensorBoard the environment), and
prints the closing summary."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from vae.train.environment import collect_environment, environment_markdown, git_state
from vae.train.files import read_own, write_atomic
from vae.train.report import UNITS, log_hparams, print_summary, written_figures


def write_metrics(path: Path, summary: dict[str, Any], *, resumed_from: Path | None) -> None:
    """Write ``metrics.json``; a resumed run keeps the metrics of the file it continues that it
    did not compute again (e.g. ``val/*`` when nothing was left to train), and says so."""
    if resumed_from is not None:
        earlier = read_own(path)
        if earlier is not None:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                summary["metrics"] = json.loads(earlier)["metrics"] | summary["metrics"]
        summary["resumed_from"] = str(resumed_from)
    write_atomic(
        path,
        json.dumps(summary, indent=2) + "\n",
        fix="or write the run elsewhere with paths.log_dir=<dir>",
    )


class RunSummary:
    """What a run reports when it ends (global rank 0 only), in ``output_dir``."""

    def __init__(self, cfg: DictConfig, *, output_dir: Path, resumed_from: Path | None) -> None:
        self.cfg = cfg
        self.output_dir = output_dir
        self.resumed_from = resumed_from
        self.seconds: dict[str, float | None] = {"fit": None, "test": None}
        # the code that runs is the checkout's state now: a commit or checkout during the run
        # must not be recorded as what trained the model
        self.git = git_state()

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Wall time of the block as ``<stage>_seconds`` (``fit``, ``test``)."""
        start = time.perf_counter()
        yield
        self.seconds[stage] = round(time.perf_counter() - start, 2)

    def finish(self, trainer: L.Trainer, metrics: dict[str, float]) -> None:
        """``metrics.json``, the loggers' final metrics and text tab, and the printed summary."""
        if not trainer.is_global_zero:
            return
        summary = {
            "metrics": metrics,
            "units": UNITS,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "fit_seconds": self.seconds["fit"],
            "test_seconds": self.seconds["test"],
            "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
            "environment": collect_environment(
                device=trainer.strategy.root_device, precision=str(trainer.precision), git=self.git
            ),
        }
        write_metrics(self.output_dir / "metrics.json", summary, resumed_from=self.resumed_from)
        for logger in trainer.loggers:
            log_hparams(logger, self.cfg, metrics)  # the curated config with the final metrics
            if hasattr(logger.experiment, "add_text"):  # TensorBoard's text tab
                logger.experiment.add_text(
                    "environment", environment_markdown(summary["environment"])
                )
            logger.finalize("success")
        print_summary(self.cfg, metrics, self.output_dir, written_figures(trainer.callbacks))
