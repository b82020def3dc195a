"""Training callbacks that are not figures: the epoch timer and the rounded progress bar.

The figure callbacks (``LatentVisualizer``, ``ExplorerWriter``) are in :mod:`vae.viz.callbacks`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelSummary, TQDMProgressBar
from lightning.pytorch.utilities.model_summary.model_summary import _format_summary_table

from vae.train.files import append_line


class EpochTimer(L.Callback):
    """Wall time and throughput of the training part of each epoch (validation excluded).

    Logs ``perf/train_epoch_seconds`` and ``perf/train_images_per_second``, and appends one JSON
    line per epoch to ``path`` when given (what ``benchmarks/train_throughput.py`` reads). The clock
    stops at the last training batch, so validation and the epoch-end figures are not counted.
    """

    def __init__(self, *, path: str | None = None) -> None:
        super().__init__()
        self.path = path
        self._start = self._last = 0.0
        self._images = 0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._images = 0
        self._start = self._last = time.perf_counter()

    def on_train_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        self._images += int(batch[0].shape[0])
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        seconds = self._last - self._start
        if seconds <= 0 or not trainer.is_global_zero:
            return
        rate = self._images / seconds
        for logger in trainer.loggers:
            logger.log_metrics(
                {"perf/train_epoch_seconds": seconds, "perf/train_images_per_second": rate},
                step=trainer.global_step,
            )
        if self.path:
            record = {"epoch": trainer.current_epoch, "seconds": seconds, "images": self._images}
            append_line(self.path, json.dumps(record))


class RoundedProgressBar(TQDMProgressBar):
    """Lightning's tqdm bar, with every float metric shown to two decimals (``loss=143.27``).

    tqdm's own format keeps three significant digits (``196.0``), which hides the changes of a
    loss in nats per image; the logged values are untouched.
    """

    def get_metrics(
        self, trainer: L.Trainer, pl_module: L.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        items = super().get_metrics(trainer, pl_module)
        return {k: f"{v:.2f}" if isinstance(v, float) else v for k, v in items.items()}


class ParameterSummary(ModelSummary):
    """Lightning's model summary with only the modules that hold parameters: the metric buffers and
    the parameter-free KL loss are not layers a reader wants listed, and the FLOPs column (zeros:
    Lightning counts FLOPs only for a module with an ``example_input_array``) is left out."""

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        keep = [i for i, p in enumerate(dict(summary_data)["Params"]) if p.strip() != "0"]
        data = [(k, [v[i] for i in keep]) for k, v in summary_data if k != "FLOPs"]
        data = [(k, [str(n) for n in range(len(keep))] if k == " " else v) for k, v in data]
        table = _format_summary_table(
            total_parameters, trainable_parameters, model_size, total_training_modes, 0, *data
        )
        lines = [line for line in table.splitlines() if not line.endswith("Total Flops")]
        logging.getLogger(ModelSummary.__module__).info("\n" + "\n".join(lines))
