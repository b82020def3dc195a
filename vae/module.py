"""The Lightning module: the negative ELBO, its optimisation, and the evaluation metrics.

Every per-image quantity is in **nats per image** and is reduced over the batch here, in one place
(:meth:`VAEModule._reduce`); the loss functions return per-sample values.

Logged, per stage ``train/``, ``val/``, ``test/``:

- ``loss`` = −ELBO = ``recon`` + ``kl`` (β = 1, no free bits: the bound itself, comparable across runs);
- ``recon`` = E_q[−log p(x | z)] (one reparameterised sample), ``kl`` = KL(q(z | x) ‖ N(0, I)) in closed form;
- ``train/objective``: what the optimiser minimises, recon + β_t · KL (with free bits, if set);
- ``val/active_units``: latent dimensions with Cov_x(E[z | x]) > 0.01 (Burda et al. 2015, §5.2), and
  ``val/kl_dim/<j>``, the KL of each latent dimension;
- ``test/nll_iw``: the importance-weighted bound with ``eval.iw_samples`` samples (Burda et al. 2015, eq. 8),
  an estimate of −log p(x) that is tighter than ``test/loss``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.distributions import Normal
from torchmetrics import MeanMetric, Metric, SumMetric

from vae.checkpointing import rng_states, set_rng_states
from vae.config import UserError
from vae.losses import GaussianKLLoss, gaussian_kl_per_dim
from vae.model import VAE, build_vae

#: keys of the ``model`` config that describe the network (the rest describe the objective)
NETWORK_KEYS = (
    "architecture",
    "latent_dim",
    "hidden_dims",
    "channels",
    "activation",
    "logvar_bound",
    "likelihood",
    "gaussian_std",
    "learn_std",
)
ACTIVE_UNIT_THRESHOLD = 0.01
EVAL_NOISE_BLOCK = 4096
CHECK_FINITE_EVERY_N_STEPS = 50


def _derive_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


class NonFiniteLossError(UserError, FloatingPointError):
    """The training loss became NaN or infinite; raised before anything is checkpointed."""


class ColumnMoments(Metric):
    """Running per-column mean and variance of a ``(B, d)`` stream, exact under DDP (sums are reduced)."""

    full_state_update = False

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.add_state("total", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total_sq", torch.zeros(dim, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, values: Tensor) -> None:
        v = values.detach().to(torch.float64)  # float64 keeps E[v²] − E[v]² accurate
        self.total += v.sum(dim=0)
        self.total_sq += v.square().sum(dim=0)
        self.count += v.shape[0]

    def compute(self) -> tuple[Tensor, Tensor]:
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean.square()).clamp_min(0.0)
        return mean, var


class VAEModule(L.LightningModule):
    """A VAE trained on the negative ELBO with a closed-form Gaussian KL against N(0, I).

    Args (all plain data, saved with the checkpoint so ``load_from_checkpoint(path)`` needs nothing else):
        model: the ``model`` config: network keys (:data:`NETWORK_KEYS`) plus ``beta``,
            ``kl_warmup_steps`` and ``free_bits`` (nats per latent dimension).
        optim: the ``optim`` config: ``optimizer`` (adam | adamw), ``lr``, ``weight_decay``,
            ``scheduler`` (none | cosine).
        evaluation: the ``eval`` config: ``iw_samples`` and ``iw_chunk`` (samples decoded per pass).
        image_shape: ``(C, H, W)`` of the data.
    """

    def __init__(
        self,
        *,
        model: Mapping[str, Any],
        optim: Mapping[str, Any],
        evaluation: Mapping[str, Any],
        image_shape: tuple[int, int, int] = (1, 28, 28),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.image_shape = tuple(image_shape)
        self.latent_dim = int(model["latent_dim"])
        self.vae: VAE = build_vae(
            image_shape=self.image_shape, **{k: model[k] for k in NETWORK_KEYS if k in model}
        )
        self.beta = float(model.get("beta", 1.0))
        self.kl_warmup_steps = int(model.get("kl_warmup_steps", 0))
        self.kl_objective = GaussianKLLoss(
            reduction="mean", beta=1.0, free_bits=float(model.get("free_bits", 0.0))
        )
        self.iw_samples = int(evaluation.get("iw_samples", 1))
        self.iw_chunk = int(evaluation.get("iw_chunk", 16))
        self.eval_seed = int(evaluation.get("seed", 0))
        self._noise_blocks: dict[tuple[str, int], Tensor] = {}
        stages = ("val", "test")
        names = ("loss", "recon", "kl")
        self.eval_means = torch.nn.ModuleDict(
            {f"{s}_{n}": MeanMetric() for s in stages for n in names}
            | {"test_nll_iw": MeanMetric()}
        )
        # images evaluated, summed over processes: the proof that none is dropped or counted twice
        self.eval_counts = torch.nn.ModuleDict({s: SumMetric() for s in stages})
        self.mu_moments = ColumnMoments(self.latent_dim)
        self.kl_dim_moments = ColumnMoments(self.latent_dim)
        # first training step whose recon / kl was non-finite (−1: none yet); kept on the device and
        # read back only every CHECK_FINITE_EVERY_N_STEPS steps and before validation, so the
        # training loop does not wait for the device at every step
        # (a plain tensor, not a buffer: DDP would broadcast a buffer from rank 0 at every forward)
        self._first_bad = torch.full((3,), -1, dtype=torch.long)

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
        """Per-image terms of the negative ELBO for images ``x`` ``(B, C, H, W)``.

        Returns ``recon`` ``(B,)`` (one reparameterised sample, with noise ``eps`` ``(B, d)`` if given,
        else from the global RNG), ``kl_dim`` ``(B, d)`` (closed form), ``kl`` ``(B,)``, ``loss``
        ``(B,)`` = recon + kl, and ``mu``, ``logvar`` ``(B, d)``; nats per image.
        """
        mu, logvar = self.vae.encode(x)
        z = self.vae.reparameterize(mu, logvar, eps=eps)  # (B, d)
        recon = self.vae.likelihood.nll(self.vae.decode(z), x)  # (B,)
        kl_dim = gaussian_kl_per_dim(mu, logvar)  # (B, d)
        kl = kl_dim.sum(dim=-1)
        return {
            "recon": recon,
            "kl": kl,
            "kl_dim": kl_dim,
            "loss": recon + kl,
            "mu": mu,
            "logvar": logvar,
        }

    def current_beta(self) -> float:
        """β_t = β · min(1, step / kl_warmup_steps): linear KL warm-up (Bowman et al. 2016)."""
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, self.global_step / self.kl_warmup_steps)

    def training_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> Tensor:
        x = batch[0]  # (images, labels, indices)
        t = self.elbo_terms(x)
        beta = self.current_beta()
        objective = t["recon"].mean() + beta * self.kl_objective(t["mu"], t["logvar"])
        self._track_finite(t["recon"], t["kl"], objective)
        self.log_dict(
            {
                "train/loss": t["loss"].mean().detach(),
                "train/recon": t["recon"].mean().detach(),
                "train/kl": t["kl"].mean().detach(),
                "train/objective": objective.detach(),
            },
            on_step=True,
            on_epoch=True,
            batch_size=x.shape[0],
        )
        if self.kl_warmup_steps > 0:
            self.log("train/beta", beta, on_step=True, on_epoch=False)
        return objective

    # ---- the non-finite guard -------------------------------------------------------------------
    def _track_finite(self, recon: Tensor, kl: Tensor, objective: Tensor) -> None:
        """Remember (step, recon bad, kl bad) of the first non-finite step, without a host sync."""
        recon_bad, kl_bad = ~torch.isfinite(recon).all(), ~torch.isfinite(kl).all()
        bad = recon_bad | kl_bad | ~torch.isfinite(objective)
        record = torch.stack(
            [
                torch.full_like(recon_bad, self.global_step, dtype=torch.long),
                recon_bad.long(),
                kl_bad.long(),
            ]
        )
        if self._first_bad.device != bad.device:
            self._first_bad = self._first_bad.to(bad.device)
        first = bad & (self._first_bad[0] < 0)
        self._first_bad = torch.where(first, record, self._first_bad)

    def check_finite(self) -> None:
        """Raise :class:`NonFiniteLossError` naming the step and the term if the loss went NaN/inf."""
        step, recon_bad, kl_bad = self._first_bad.tolist()
        if step < 0:
            return
        terms = [name for name, b in (("recon", recon_bad), ("kl", kl_bad)) if b] or ["objective"]
        ckpt = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or None
        kept = (
            f"the last good checkpoint is {ckpt}" if ckpt else "no checkpoint had been written yet"
        )
        raise NonFiniteLossError(
            f"training stopped: the loss became non-finite at step {step} "
            f"(term: {', '.join(terms)}; optim.lr={self.hparams.optim['lr']}); {kept}. "
            "Lower optim.lr or clip gradients (trainer.gradient_clip_val=1.0)"
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.global_step % CHECK_FINITE_EVERY_N_STEPS == 0:
            self.check_finite()

    def on_validation_epoch_start(self) -> None:
        if self.trainer.state.fn == "fit":
            self.check_finite()  # before validation, so no checkpoint is written from a broken model

    def on_train_epoch_end(self) -> None:
        self.check_finite()

    # ---- checkpoints ---------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rng_states"] = rng_states()  # exact resume: the same draws as without the crash

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # only when a Trainer resumes fitting: load_from_checkpoint must not touch the global RNG
        resuming = self._trainer is not None and self.trainer.state.fn == "fit"
        if resuming and "rng_states" in checkpoint:
            set_rng_states(checkpoint["rng_states"])

    # ---- evaluation ------------------------------------------------------------------------------
    def _eval_step(self, batch: tuple[Tensor, ...], stage: str) -> dict[str, Tensor]:
        x = batch[0]
        eps = self.eval_noise(batch[2], stage) if len(batch) > 2 else None
        t = self.elbo_terms(x, eps=eps)
        for name in ("loss", "recon", "kl"):
            # MeanMetric over per-image values: an exact mean over images, also across DDP processes
            self.eval_means[f"{stage}_{name}"].update(t[name])
        self.eval_counts[stage].update(torch.tensor(float(x.shape[0]), device=x.device))
        self.mu_moments.update(t["mu"])
        self.kl_dim_moments.update(t["kl_dim"])
        return t

    def _log_eval_epoch(self, stage: str) -> None:
        for name in ("loss", "recon", "kl"):
            self.log(f"{stage}/{name}", self.eval_means[f"{stage}_{name}"], prog_bar=name == "loss")
        _, mu_var = self.mu_moments.compute()
        kl_dim_mean, _ = self.kl_dim_moments.compute()
        self.log(f"{stage}/num_images", self.eval_counts[stage])
        self.log(f"{stage}/active_units", (mu_var > ACTIVE_UNIT_THRESHOLD).sum().float())
        for j in range(self.latent_dim):
            self.log(f"{stage}/kl_dim/{j}", kl_dim_mean[j].float())
        self.mu_moments.reset()
        self.kl_dim_moments.reset()

    def validation_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_eval_epoch("val")

    def test_step(self, batch: tuple[Tensor, ...], batch_idx: int) -> None:
        x = batch[0]
        self._eval_step(batch, "test")
        self.eval_means["test_nll_iw"].update(self.iw_nll(x, n_samples=self.iw_samples))

    def on_test_epoch_end(self) -> None:
        self._log_eval_epoch("test")
        self.log("test/nll_iw", self.eval_means["test_nll_iw"])

    def eval_noise(self, index: Tensor, stage: str) -> Tensor:
        """ε ~ N(0, I) for the images at positions ``index`` ``(B,)`` of a split: ``(B, latent_dim)``.

        A function of (``eval.seed``, split, position) only: common random numbers, so evaluating the
        same weights gives the same val/test −ELBO whatever the batch size, the number of DDP processes
        or what ran before. Drawn in blocks of :data:`EVAL_NOISE_BLOCK` positions, each from its own
        seeded CPU generator, and cached.
        """
        idx = index.cpu()
        blocks = torch.div(idx, EVAL_NOISE_BLOCK, rounding_mode="floor")
        out = torch.empty(len(idx), self.latent_dim)
        for block in blocks.unique().tolist():
            key = (stage, block)
            if key not in self._noise_blocks:
                seed = _derive_seed(self.eval_seed, stage, block)
                gen = torch.Generator().manual_seed(seed)
                self._noise_blocks[key] = torch.randn(
                    EVAL_NOISE_BLOCK, self.latent_dim, generator=gen
                )
            chosen = blocks == block
            out[chosen] = self._noise_blocks[key][idx[chosen] % EVAL_NOISE_BLOCK]
        return out.to(device=index.device, dtype=self.dtype)

    @torch.no_grad()
    def iw_nll(self, x: Tensor, *, n_samples: int, chunk: int | None = None) -> Tensor:
        """−log p̂_K(x), the importance-weighted bound (Burda et al. 2015, eq. 8), nats per image.

        log p̂_K(x) = logsumexp_k [log p(x | z_k) + log p(z_k) − log q(z_k | x)] − log K, z_k ~ q(z | x).
        Images ``(B, C, H, W)`` → ``(B,)``. Samples are decoded ``chunk`` at a time (default
        ``eval.iw_chunk``), so memory is O(chunk · B · pixels) whatever K is; the running logsumexp
        over chunks is exact. With K = 1 this is an unbiased single-sample estimate of −ELBO.
        """
        chunk = chunk or self.iw_chunk
        mu, logvar = self.vae.encode(x)  # (B, d)
        q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
        prior = Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
        running = torch.full_like(mu[:, 0], -math.inf)  # running logsumexp, (B,)
        for start in range(0, n_samples, chunk):
            k = min(chunk, n_samples - start)
            z = self.vae.reparameterize(mu, logvar, n_samples=k)  # (k, B, d)
            out = self.vae.decode(z.flatten(0, 1))  # (k·B, C, H, W)
            x_rep = x.expand(k, *x.shape).flatten(0, 1)  # (k·B, C, H, W), a view
            log_px_z = -self.vae.likelihood.nll(out, x_rep).unflatten(0, (k, -1))  # (k, B)
            log_w = log_px_z + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)  # (k, B)
            running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
        return -(running - math.log(n_samples))

    # ---- optimisation ----------------------------------------------------------------------------
    def configure_optimizers(self) -> Any:
        cfg = self.hparams.optim
        kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[cfg.get("optimizer", "adam")]
        # fused: one kernel for the whole update (about 2.4× faster than foreach Adam on 2 CPU cores)
        optimizer = kind(
            self.parameters(),
            lr=float(cfg["lr"]),
            weight_decay=float(cfg.get("weight_decay", 0.0)),
            fused=True,
        )
        scheduler = cfg.get("scheduler", "none")
        if scheduler == "none":
            return optimizer
        total = max(1, int(self.trainer.estimated_stepping_batches))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, T_max=total, eta_min=float(cfg["lr"]) * float(cfg.get("min_lr_ratio", 0.0))
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
