"""The Lightning module: the negative ELBO, its optimisation, and the evaluation metrics.

Every per-image quantity is in **nats per image** and is reduced over the batch here, in this
module only (batch means in ``training_step``; evaluation sums per-image values over batches and
processes and divides once, at epoch end); the loss functions return per-sample values.

Logged, per stage ``train/``, ``val/``, ``test/``:

- ``loss`` = −ELBO = ``recon`` + ``kl`` (β = 1, no free bits: the bound itself, comparable across runs);
- ``recon`` = E_q[−log p(x | z)] (one reparameterised sample), ``kl`` = KL(q(z | x) ‖ N(0, I)) in closed form;
- ``train/objective``: what the optimiser minimises, recon + β_t · KL (with free bits, if set), or
  with ``model.iw_train_samples`` = k > 1 the negative importance-weighted bound with k samples
  (the IWAE objective, Burda et al. 2015, eq. 8), while ``train/loss`` stays the one-sample −ELBO;
- ``val/active_units``: latent dimensions with Cov_x(E[z | x]) > 0.01 (Burda et al. 2015, §5.2), and
  ``val/kl_dim/<j>``, the KL of each latent dimension;
- ``test/nll_iw``: the importance-weighted bound with ``eval.iw_samples`` samples (Burda et al. 2015, eq. 8),
  an estimate of −log p(x) that is tighter than ``test/loss``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from vae.core import objective
from vae.core.config import NETWORK_KEYS, EvalConfig, ModelConfig, OptimConfig, as_dict, coerce
from vae.core.networks import VAE, build_vae
from vae.core.objective import EVAL_NOISE_BLOCK, IW_NOISE_BLOCK
from vae.errors import NonFiniteLossError
from vae.kl import GaussianKLLoss
from vae.train.checkpointing import load_checkpoint, rng_states, set_rng_states
from vae.train.guards import NonFiniteGuard, ResumeGuard
from vae.train.metrics import TRAIN_TERMS, EvalMetrics, TrainTerms
from vae.train.optim import configure_optimizer

__all__ = ["EVAL_NOISE_BLOCK", "IW_NOISE_BLOCK", "NETWORK_KEYS", "NonFiniteLossError", "VAEModule"]


def float32(x: Tensor) -> torch.autocast:
    """Autocast off on ``x``'s device: under ``trainer.precision=bf16-mixed`` (or ``16-mixed``) the
    weights are float32 and only the training step runs in lower precision, so the reported
    validation and test numbers are the float32 numbers of the same weights."""
    return torch.autocast(x.device.type, enabled=False)


class VAEModule(L.LightningModule):
    """A VAE trained on the negative ELBO with a closed-form Gaussian KL against N(0, I).

    ``model``, ``optim``, ``evaluation``: a :class:`~vae.core.config.ModelConfig`,
    :class:`~vae.core.config.OptimConfig`, :class:`~vae.core.config.EvalConfig` or a mapping of some
    of its keys (the rest keep their defaults, so ``VAEModule()`` is the model ``python train.py``
    trains by default); ``image_shape``: ``(C, H, W)`` of the data. All are saved with the checkpoint
    as plain dicts, so ``load_from_checkpoint(path)`` needs nothing else.
    """

    def __init__(
        self,
        *,
        model: ModelConfig | Mapping[str, Any] | None = None,
        optim: OptimConfig | Mapping[str, Any] | None = None,
        evaluation: EvalConfig | Mapping[str, Any] | None = None,
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        self.model_config = coerce(ModelConfig, model, section="model")
        self.optim_config = coerce(OptimConfig, optim, section="optim")
        self.eval_config = coerce(EvalConfig, evaluation, section="eval")
        self.image_shape = tuple(int(n) for n in image_shape)
        self.save_hyperparameters(
            {
                "model": as_dict(self.model_config),
                "optim": as_dict(self.optim_config),
                "evaluation": as_dict(self.eval_config),
                "image_shape": self.image_shape,
            }
        )
        m = self.model_config
        self.latent_dim = m.latent_dim
        self.vae: VAE = build_vae(config=m, image_shape=self.image_shape)
        self.beta = float(m.beta)
        self.kl_warmup_steps = m.kl_warmup_steps
        # the KL per image, batch mean; validate=False: kl_dim comes from elbo_terms unchecked and
        # the loss is checked for non-finite values once per step
        self.kl_objective = GaussianKLLoss(
            reduction="batchmean", beta=1.0, free_bits=float(m.free_bits), validate=False
        )
        self.iw_samples = self.eval_config.iw_samples
        self.iw_chunk = self.eval_config.iw_chunk
        self._noise_blocks: dict[tuple[str, int], Tensor] = {}
        self.eval_metrics = EvalMetrics(self.latent_dim)
        self.train_terms = TrainTerms()
        self.iw_train_samples = m.iw_train_samples
        self._train_elbo = self.train_loss_terms  # torch.compile'd by compile_networks()
        # true once the weights are not fresh: trained here, or loaded from a checkpoint
        self._weights_trained = False

    def setup(self, stage: str) -> None:
        """Before fitting fresh weights (never trained nor loaded), start the decoder at the
        training images' mean (``model.init_output_bias``). Lightning calls this after the data
        module's ``setup`` and before it restores a ``ckpt_path``; under DDP every process computes
        the same bias from the same training split."""
        if stage != "fit" or not self.model_config.init_output_bias or self._weights_trained:
            return
        datamodule = getattr(self.trainer, "datamodule", None)
        pixel_mean = getattr(datamodule, "pixel_mean", None)
        if pixel_mean is None:
            rank_zero_warn(
                "model.init_output_bias=true needs a data module with pixel_mean(); "
                "the decoder keeps its random initialisation"
            )
            return
        self.vae.init_output_bias(pixel_mean())
        self._weights_trained = True

    def compile_networks(self) -> None:
        """``torch.compile`` the training loss: :meth:`train_loss_terms` and its backward, fused (what it
        gains and costs: benchmarks/README.md). Only the training step uses it (evaluation stays
        eager: its other shapes cost no recompilation); the weights and state-dict keys are unchanged.
        """
        self._train_elbo = torch.compile(self.train_loss_terms, dynamic=False)

    # ---- the user-facing model -------------------------------------------------------------------
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Images ``(B, C, H, W)`` in [0, 1] → posterior (mu, logvar), each ``(B, latent_dim)``."""
        return self.vae.encode(x)

    def decode(self, z: Tensor) -> Tensor:
        """Latent codes ``(B, latent_dim)`` → decoder mean images ``(B, C, H, W)`` in [0, 1]."""
        return self.vae.likelihood.mean(self.vae.decode(z))

    @torch.no_grad()
    def sample(self, n: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images ``(n, C, H, W)``: decoder means of z ~ N(0, I)."""
        z = torch.randn(n, self.latent_dim, generator=generator, device=self.device)
        return self.decode(z.to(self.dtype))

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction (decoder mean of the posterior mean), same shape as ``x``."""
        mu, _ = self.encode(x)
        return self.decode(mu)

    # ---- the objective ---------------------------------------------------------------------------
    def elbo_terms(self, x: Tensor, *, eps: Tensor | None = None) -> dict[str, Tensor]:
        """Per-image terms of the −ELBO (:func:`vae.core.objective.elbo_terms`), nats per image."""
        return objective.elbo_terms(self.vae, x, eps=eps)

    def train_loss_terms(self, x: Tensor) -> dict[str, Tensor]:
        """The training step's per-image terms: :meth:`elbo_terms`, or with
        ``model.iw_train_samples`` = k > 1 :func:`vae.core.objective.iw_terms` (``iw`` added)."""
        if self.iw_train_samples == 1:
            return self.elbo_terms(x)
        return objective.iw_terms(self.vae, x, n_samples=self.iw_train_samples)

    def current_beta(self) -> float:
        """β_t = β · min(1, step / kl_warmup_steps): linear KL warm-up (Bowman et al. 2016)."""
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, self.global_step / self.kl_warmup_steps)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x = batch[0]  # (images, labels, indices)
        t = self._train_elbo(x)
        if "iw" in t:
            objective = t["iw"].mean()
        else:
            objective = t["recon"].mean() + self.current_beta() * self.kl_objective.reduce(
                t["kl_dim"]
            )
        terms = torch.stack([t["loss"].mean(), t["recon"].mean(), t["kl"].mean(), objective])
        self.train_terms.add(terms.detach(), n=x.shape[0], step=self.global_step)
        return objective

    # ---- training metrics ---------------------------------------------------------------------
    # the terms are summed on the device (no host sync) and read back every
    # `trainer.log_every_n_steps` steps, when they are logged (self.log per step: benchmarks/README.md)
    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % self.trainer.log_every_n_steps != 0:
            return
        means = self.train_terms.read("window")  # the one host sync per logging interval
        if self.trainer.is_global_zero:
            metrics = {f"train/{k}_step": v for k, v in zip(TRAIN_TERMS, means, strict=True)}
            if self.kl_warmup_steps > 0:
                metrics["train/beta"] = self.current_beta()
            for logger in self.loggers:
                logger.log_metrics(metrics, step=self.global_step)
        self.log("loss", means[0], prog_bar=True, logger=False, on_step=True, on_epoch=False)

    def on_train_epoch_end(self) -> None:
        means = self.train_terms.read("epoch")
        self.log_dict(
            {f"train/{k}_epoch": v for k, v in zip(TRAIN_TERMS, means, strict=True)}, sync_dist=True
        )

    def configure_callbacks(self) -> list[L.Callback]:
        """The guards every fit of this module gets (:mod:`vae.train.guards`): a NaN/inf loss stops
        training with one line before a checkpoint is written; a resume continues its run. Once
        per trainer (a ``test`` after ``fit`` would otherwise replace them, with a message)."""
        present = {type(c) for c in self.trainer.callbacks}
        return [guard() for guard in (NonFiniteGuard, ResumeGuard) if guard not in present]

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()  # exact resume: the same draws as without the crash

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._weights_trained = True  # trained weights: setup() must not re-initialise them
        # only when a Trainer resumes fitting: load_from_checkpoint must not touch the global RNG
        resuming = self._trainer is not None and self.trainer.state.fn == "fit"
        if resuming and "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    # ---- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: tuple[Tensor, ...], stage: str) -> None:
        x = batch[0]
        eps = self.eval_noise(batch[2], stage) if len(batch) > 2 else None
        with float32(x):
            self.eval_metrics.update(stage, self.elbo_terms(x, eps=eps))

    def _log_eval_epoch(self, stage: str) -> None:
        for name, value in self.eval_metrics.epoch(stage).items():
            self.log(name, value, prog_bar=name == f"{stage}/loss")

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch, "test")
        index = batch[2] if len(batch) > 2 else None  # (images, labels, indices)
        with float32(batch[0]):
            nll_iw = self.iw_nll(batch[0], n_samples=self.iw_samples, index=index)
        self.eval_metrics.means["test_nll_iw"].update(nll_iw)

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")

    def eval_noise(self, index: Tensor, stage: str) -> Tensor:
        """ε of the val/test −ELBO for the images at positions ``index`` ``(B,)`` of ``stage``'s
        split: ``(B, latent_dim)`` (:func:`vae.core.objective.eval_noise`, cached per block)."""
        seed, d, cache = self.eval_config.seed, self.latent_dim, self._noise_blocks
        eps = objective.eval_noise(index, seed=seed, split=stage, latent_dim=d, cache=cache)
        return eps.to(device=index.device, dtype=self.dtype)

    def iw_noise(self, index: Tensor, *, start: int, stop: int) -> Tensor:
        """ε of importance samples ``start ≤ k < stop`` of the test images at positions ``index``:
        ``(stop − start, B, latent_dim)`` (:func:`vae.core.objective.iw_noise`)."""
        eps = objective.iw_noise(
            index, seed=self.eval_config.seed, latent_dim=self.latent_dim, start=start, stop=stop
        )
        return eps.to(device=index.device, dtype=self.dtype)

    def iw_nll(
        self, x: Tensor, *, n_samples: int, chunk: int | None = None, index: Tensor | None = None
    ) -> Tensor:
        """−log p̂_K(x) (:func:`vae.core.objective.iw_nll`), nats per image, ``(B,)``; ``chunk``
        defaults to ``eval.iw_chunk``. ``index`` ``(B,)``, the images' positions in the test split,
        draws the noise with :meth:`iw_noise` (else from the global RNG)."""

        def noise(start: int, stop: int) -> Tensor:
            return self.iw_noise(index, start=start, stop=stop)

        noise_of = None if index is None else noise
        return objective.iw_nll(
            self.vae, x, n_samples=n_samples, chunk=chunk or self.iw_chunk, noise=noise_of
        )

    def configure_optimizers(self) -> Any:
        cosine = self.optim_config.scheduler == "cosine"  # the only schedule that needs the trainer
        steps = max(1, int(self.trainer.estimated_stepping_batches)) if cosine else 1
        return configure_optimizer(self.parameters(), self.optim_config, total_steps=steps)

    # ---- loading -----------------------------------------------------------------------------------
    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls, checkpoint_path: str | Path, *, map_location: Any = None, strict: bool = True
    ) -> VAEModule:
        """The model of a checkpoint written by train.py, read once by
        :func:`vae.train.checkpointing.load_checkpoint` (a :class:`~vae.errors.CheckpointError` if
        the file holds Python objects, is not a checkpoint of this model or its weights do not
        fit its stored config), then built with :meth:`from_checkpoint`. Not Lightning's: that
        reads the file a second time, and passes the stored hyper-parameters to constructors."""
        return cls.from_checkpoint(
            load_checkpoint(checkpoint_path, map_location=map_location or "cpu"), strict=strict
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Mapping[str, Any], *, strict: bool = True) -> VAEModule:
        """The model of a checkpoint dict that :func:`~vae.train.checkpointing.load_checkpoint`
        returned, on the device its weights were loaded to."""
        module = cls(**checkpoint["hyper_parameters"])  # its arguments, checked by load_checkpoint
        module.on_load_checkpoint(dict(checkpoint))
        module.load_state_dict(checkpoint["state_dict"], strict=strict)
        device = next(iter(checkpoint["state_dict"].values()), torch.zeros(())).device
        return module.to(device)
