"""Lightning glue for the figures: TensorBoard images every few epochs, PNGs and the projector at the end.

Configured in ``configs/callbacks/default.yaml`` (``callbacks.visualize.*``). Only the global-zero
process draws or writes anything. The callback reads the test split straight from the data module's
tensors (no DataLoader, no global RNG), so adding or removing it does not change training.

Every epoch that is due (and the end of training) gets exactly one set of ``images/`` at
``global_step``: the last epoch's images, when due, are logged at its end like any other, and
``on_fit_end`` logs only when nothing was logged at the final step (``every_n_epochs=0``, an epoch
count that is not a multiple of n). Each figure is rendered once, and TensorBoard gets the same
8-bit pixels as the PNG (:func:`vae.viz.figures.to_images`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, ClassVar

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from vae.rules import Rule, boolean, check, int_at_least, one_of, optional
from vae.train.environment import collect_environment, git_state
from vae.viz import explore
from vae.viz import figures as visualize


def with_test_split(trainer: L.Trainer, missing: str) -> Any | None:
    """The trainer's vae data module with its test split loaded (read straight from its tensors:
    no DataLoader, no global RNG), or None after warning ``missing`` when it has none."""
    dm = trainer.datamodule
    if dm is None or not hasattr(dm, "test_dataset"):
        rank_zero_warn(missing)
        return None
    if dm.test_dataset is None:
        dm.setup("test")
    return dm


class LatentVisualizer(L.Callback):
    """Draw the latent space, manifold, reconstructions, samples and interpolations.

    Args:
        every_n_epochs: log the figures to TensorBoard (group ``images/``) every n training epochs
            (0 = only at the end), or ``"auto"``: after the first epoch, then whenever drawing again
            keeps the time spent on figures within :attr:`AUTO_SHARE` of the fit so far (drawing
            costs about an epoch of the default model; every epoch would cost a fifth of the run).
        png_dir: where the PNGs go at the end of training (default: the trainer's root dir, i.e.
            the run directory).
        projector: write the TensorBoard embedding projector (test-set posterior means, digit
            labels as metadata, a sprite of the images) at the end of training.
        projector_points: how many test images go into the projector (``None`` = all).
        figure_options: the fields of :class:`vae.train.figure_config.FigureOptions` (grid size, number of
            points, samples, ...).
    """

    #: what each key of ``callbacks.visualize`` allows (read by :func:`vae.train.config.validate_config`)
    CONFIG_RULES: ClassVar[dict[str, Rule]] = {
        "every_n_epochs": (
            lambda v: one_of(("auto",))[0](v) or int_at_least(0)[0](v),
            "auto or an integer ≥ 0",
        ),
        "projector_points": optional(int_at_least(1)),
        **{f.name: f.metadata["rule"] for f in dataclasses.fields(visualize.FigureOptions)},
    }

    def __init__(
        self,
        *,
        every_n_epochs: int | str = "auto",
        png_dir: str | None = None,
        projector: bool = True,
        projector_points: int | None = None,
        **figure_options: Any,
    ) -> None:
        super().__init__()
        self.options = visualize.FigureOptions(**figure_options)
        values = {"every_n_epochs": every_n_epochs, "projector_points": projector_points}
        for key, value in (values | dataclasses.asdict(self.options)).items():
            check(f"callbacks.visualize.{key}", value, self.CONFIG_RULES[key])
        self.every_n_epochs = every_n_epochs
        self.png_dir = png_dir
        self.projector = projector
        self.projector_points = projector_points
        self._logged_step: int | None = None  # global_step of the last images/ logged this fit
        # every_n_epochs="auto": when this fit started, seconds spent drawing, the last draw's cost
        self._fit_start = self._spent = self._last_draw = 0.0
        self.png_paths: list[Path] = []  # the PNGs written at the end of the last fit

    # ---- data ------------------------------------------------------------------------------------
    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> Any | None:
        loggers = (lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger))
        return next((logger.experiment for logger in loggers), None)

    def _draw(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Tensor]:
        """The figures as RGB image tensors ``(3, H, W)`` in [0, 1], each rendered once."""
        dm = with_test_split(
            trainer, "LatentVisualizer needs the vae data module; no figures are drawn"
        )
        if dm is None:
            return {}
        ds, names = dm.test_dataset, tuple(dm.class_names)
        figures = visualize.render_figures(
            module, dm.to_float(ds.images), ds.labels, class_names=names, options=self.options
        )
        return visualize.to_images(figures)

    def _log_images(self, trainer: L.Trainer, images: dict[str, Tensor]) -> None:
        writer = self._tensorboard(trainer)
        if writer is None:
            return
        for name, image in images.items():
            # 8-bit, rounded like the PNG (save_image); add_image would truncate floats · 255
            pixels = image.mul(255).add(0.5).clamp(0, 255).to(torch.uint8)
            writer.add_image(f"images/{name}", pixels, global_step=trainer.global_step)
        self._logged_step = trainer.global_step

    # ---- hooks -----------------------------------------------------------------------------------
    #: every_n_epochs="auto": the largest share of the fit's wall time spent drawing figures
    AUTO_SHARE: ClassVar[float] = 0.05
    #: seconds; a test gives the callback a clock of its own
    _clock = staticmethod(time.perf_counter)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._logged_step = None
        self._fit_start, self._spent, self._last_draw = self._clock(), 0.0, 0.0

    def _due(self, trainer: L.Trainer) -> bool:
        if self.every_n_epochs != "auto":
            return (
                self.every_n_epochs != 0 and (trainer.current_epoch + 1) % self.every_n_epochs == 0
            )
        if self._last_draw == 0.0:  # nothing drawn yet in this fit: the first epoch's figures
            return True
        elapsed = self._clock() - self._fit_start
        return self._spent + self._last_draw <= self.AUTO_SHARE * (elapsed + self._last_draw)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking or not self._due(trainer):
            return
        start = self._clock()
        self._log_images(trainer, self._draw(trainer, pl_module))
        self._last_draw = self._clock() - start
        self._spent += self._last_draw

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final figures: TensorBoard images, PNGs in the run directory, the projector.

        Drawn afresh from the final model (a callback may have changed the weights since the last
        epoch's end, e.g. weight averaging); logged to TensorBoard only if no images were logged
        at this step already, so each step has one set.
        """
        if not trainer.is_global_zero:
            return
        images = self._draw(trainer, pl_module)
        if not images:
            return
        if self._logged_step != trainer.global_step:
            self._log_images(trainer, images)
        self.png_paths = visualize.write_pngs(images, self.png_dir or trainer.default_root_dir)
        writer = self._tensorboard(trainer)
        if self.projector and writer is not None:
            dm, n = trainer.datamodule, self.projector_points  # n None: every test image
            ds, names = dm.test_dataset, tuple(dm.class_names)
            visualize.write_projector(
                writer.log_dir,
                visualize.encode_all(pl_module, dm.to_float(ds.images[:n]))[0],
                [names[int(k)] if k >= 0 else "unlabelled" for k in ds.labels[:n]],
                ds.images[:n],  # the stored uint8 images (binarised ones under dynamic/static)
                step=trainer.global_step,
            )


class ExplorerWriter(L.Callback):
    """Write the interactive latent-space explorer ``explorer.html`` (:mod:`vae.viz.explore`) into
    the run directory: one self-contained page that works offline.

    Written at the end of training with the validation numbers, and rewritten at the end of
    ``trainer.test`` (which ``train.py`` runs after fitting) with the test numbers, so the page of
    a finished run shows the test −ELBO, IW bound, KL and active units. Global-zero only; it reads
    the test split from the data module's tensors (no DataLoader, no global RNG), so it does not
    change training. Turn it off with ``callbacks.explorer.enabled=false`` (or drop it:
    ``~callbacks.explorer``).

    Args:
        enabled: write the page at all.
        path: the page's path (default: ``<trainer.default_root_dir>/explorer.html``).
        precision: of the embedded weights, ``float16`` (default; ~5 MB for the default model)
            or ``float32`` (~8 MB, the page then matches torch to ~1e-6).
        max_points: test images shown on the plane (``None`` = all).
    """

    #: what each key of ``callbacks.explorer`` allows (read by :func:`vae.train.config.validate_config`)
    CONFIG_RULES: ClassVar[dict[str, Rule]] = {
        "enabled": boolean(),
        "precision": one_of(explore.PRECISIONS),
        "max_points": optional(int_at_least(2)),
    }

    def __init__(
        self,
        *,
        enabled: bool = True,
        path: str | None = None,
        precision: str = "float16",
        max_points: int | None = None,
    ) -> None:
        super().__init__()
        values = {"enabled": enabled, "precision": precision, "max_points": max_points}
        for key, value in values.items():
            check(f"callbacks.explorer.{key}", value, self.CONFIG_RULES[key])
        self.enabled = bool(enabled)
        self.path = path
        self.precision = precision
        self.max_points = max_points
        self.seconds = 0.0  # time spent writing pages in this process (reported in the README)
        self.git = git_state()  # built as the run starts: the code that trains, as in metrics.json
        # (weights fingerprint, page payload) of the last page: the test-end page reuses the
        # fit-end one when the weights are the same, and only its numbers change
        self._cache: tuple[str, dict[str, Any]] | None = None

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._write(trainer, pl_module)

    on_test_end = on_fit_end

    def _write(self, trainer: L.Trainer, module: L.LightningModule) -> Path | None:
        if not self.enabled or not trainer.is_global_zero:
            return None
        start = time.perf_counter()
        dm = with_test_split(
            trainer, "ExplorerWriter needs the vae data module; no explorer.html is written"
        )
        if dm is None:
            return None
        ds = dm.test_dataset
        metrics = {
            k: float(v)
            for k, v in trainer.callback_metrics.items()
            if isinstance(v, (int, float)) or (isinstance(v, Tensor) and v.numel() == 1)
        }
        fingerprint = explore.weights_fingerprint(module)
        if self._cache is not None and self._cache[0] == fingerprint:
            payload = self._cache[1]  # same weights as the last page (fit end → test end)
            payload["metrics"] = explore.metric_rows(metrics)
        else:
            environment = collect_environment(
                device=trainer.strategy.root_device, precision=str(trainer.precision), git=self.git
            )
            payload = explore.page_payload(
                module,
                images=dm.to_float(ds.images),
                labels=ds.labels,
                class_names=tuple(dm.class_names),
                metrics=metrics,
                config=explore.config_summary(module, dict(dm.hparams), environment=environment),
                precision=self.precision,
                max_points=self.max_points,
                option="callbacks.explorer.precision={}",
            )
            self._cache = (fingerprint, payload)
        default = Path(trainer.default_root_dir) / explore.FILENAME
        path = explore.write_page(Path(self.path or default), explore.render_html(payload))
        self.seconds += time.perf_counter() - start
        return path
