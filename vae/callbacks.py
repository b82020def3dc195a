"""Lightning glue for the figures: TensorBoard images every few epochs, PNGs and the projector at the end.

Configured in ``configs/callbacks/default.yaml`` (``callbacks.visualize.*``). Only the global-zero
process draws or writes anything. The callback reads the test split straight from the data module's
tensors (no DataLoader, no global RNG), so adding or removing it does not change training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure
from torch import Tensor

from vae import plots
from vae.visualize import FigureOptions, encode_means, render_figures, write_pngs


class LatentVisualizer(L.Callback):
    """Draw the latent space, manifold, reconstructions, samples and interpolations.

    Args:
        every_n_epochs: log the figures to TensorBoard (group ``images/``) every n training epochs
            (0 = only at the end).
        png_dir: where the PNGs go at the end of training (default: the trainer's root dir, i.e.
            the run directory).
        projector: write the TensorBoard embedding projector (test-set posterior means, digit
            labels as metadata, a sprite of the images) at the end of training.
        projector_points: how many test images go into the projector (``None`` = all).
        grid_size, max_points, n_samples, n_reconstructions, interpolation_steps, projection,
        seed: see :class:`vae.visualize.FigureOptions`.
    """

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        png_dir: str | None = None,
        projector: bool = True,
        projector_points: int | None = None,
        grid_size: int = 20,
        max_points: int | None = None,
        n_samples: int = 64,
        n_reconstructions: int = 32,
        interpolation_steps: int = 10,
        projection: str = "pca",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if every_n_epochs < 0:
            raise ValueError(
                f"callbacks.visualize.every_n_epochs must be ≥ 0, got {every_n_epochs}"
            )
        self.every_n_epochs = every_n_epochs
        self.png_dir = png_dir
        self.projector = projector
        self.projector_points = projector_points
        self.options = FigureOptions(
            grid_size=grid_size,
            max_points=max_points,
            n_samples=n_samples,
            n_reconstructions=n_reconstructions,
            interpolation_steps=interpolation_steps,
            projection=projection,
            seed=seed,
        )

    # ---- data ------------------------------------------------------------------------------------
    def _test_split(self, trainer: L.Trainer) -> tuple[Tensor, Tensor, tuple[str, ...]] | None:
        dm = trainer.datamodule
        if dm is None or not hasattr(dm, "test_dataset"):
            rank_zero_warn("LatentVisualizer needs the vae data module; no figures are drawn")
            return None
        if dm.test_dataset is None:
            dm.setup("test")
        ds = dm.test_dataset
        return dm.to_float(ds.images), ds.labels, tuple(dm.class_names)

    @staticmethod
    def _tensorboard(trainer: L.Trainer) -> Any | None:
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                return logger.experiment
        return None

    def _draw(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, Figure | Tensor]:
        split = self._test_split(trainer)
        if split is None:
            return {}
        images, labels, names = split
        return render_figures(module, images, labels, class_names=names, options=self.options)

    def _log_images(self, trainer: L.Trainer, figures: dict[str, Figure | Tensor]) -> None:
        writer = self._tensorboard(trainer)
        if writer is None:
            return
        for name, fig in figures.items():
            image = plots.figure_to_tensor(fig) if isinstance(fig, Figure) else fig
            writer.add_image(f"images/{name}", image, global_step=trainer.global_step)

    # ---- hooks -----------------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or self.every_n_epochs == 0 or trainer.sanity_checking:
            return
        last = trainer.current_epoch + 1 >= (trainer.max_epochs or 0)
        if (trainer.current_epoch + 1) % self.every_n_epochs == 0 and not last:
            self._log_images(trainer, self._draw(trainer, pl_module))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The final figures: TensorBoard images, PNGs in the run directory, the projector."""
        if not trainer.is_global_zero:
            return
        figures = self._draw(trainer, pl_module)
        if not figures:
            return
        self._log_images(trainer, figures)
        write_pngs(figures, Path(self.png_dir or trainer.default_root_dir))
        writer = self._tensorboard(trainer)
        if self.projector and writer is not None:
            self._write_projector(trainer, pl_module, writer)

    def _write_projector(self, trainer: L.Trainer, module: L.LightningModule, writer: Any) -> None:
        images, labels, names = self._test_split(trainer)  # type: ignore[misc]
        n = images.shape[0] if self.projector_points is None else self.projector_points
        images, labels = images[:n], labels[:n]
        was_training = module.training
        module.eval()
        mu = encode_means(module, images)
        module.train(was_training)
        writer.add_embedding(
            mu,
            metadata=[names[int(k)] for k in labels],
            label_img=images.cpu(),
            global_step=trainer.global_step,
            tag="test_posterior_means",
        )
        writer.flush()
