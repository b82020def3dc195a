"""The training metrics, summed where they are computed: :class:`TrainTerms` (the training terms on
the device, read every logging interval) and :class:`EvalMetrics` (exact val/test means over images,
also across DDP processes, the active units and the KL of each latent dimension)."""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchmetrics import MeanMetric, Metric, SumMetric

ACTIVE_UNIT_THRESHOLD = 0.01
TRAIN_TERMS = ("loss", "recon", "kl", "objective")
EVAL_TERMS = ("loss", "recon", "kl")


class TrainTerms:
    """Batch means of the training terms (:data:`TRAIN_TERMS`), summed on the device.

    ``add`` costs one in-place addition (into the window's and the epoch's sums) and a few
    element-wise ops, never a host sync. It also remembers the first step at which a term was
    non-finite and which terms were. ``read("window")`` / ``read("epoch")`` return the
    image-weighted means since that span's last read (one sync).
    """

    SPANS = ("window", "epoch")

    def __init__(self) -> None:
        self.sums = self.bad_step = self.bad_terms = None  # sums: (len(SPANS), len(TRAIN_TERMS))
        self.counts = [0] * len(self.SPANS)

    def add(self, terms: Tensor, *, n: int, step: int) -> None:
        if self.sums is None or self.sums.device != terms.device:
            self.sums = terms.new_zeros((len(self.SPANS), *terms.shape))
            self.bad_step = torch.full((), -1, dtype=torch.long, device=terms.device)
            self.bad_terms = torch.zeros(terms.shape, dtype=torch.bool, device=terms.device)
        self.sums += terms * n
        self.counts = [c + n for c in self.counts]
        non_finite = ~torch.isfinite(terms)
        first = non_finite.any() & (self.bad_step < 0)
        self.bad_step = torch.where(first, step, self.bad_step)
        self.bad_terms = torch.where(first, non_finite, self.bad_terms)

    def read(self, span: str) -> list[float]:
        if self.sums is None:
            return [math.nan] * len(TRAIN_TERMS)
        row = self.SPANS.index(span)
        means = (self.sums[row] / max(self.counts[row], 1)).tolist()
        self.sums[row].zero_()
        self.counts[row] = 0
        return means

    def first_non_finite(self) -> tuple[int, list[str]] | None:
        """(step, names of the non-finite terms) of the first bad step, or None."""
        if self.bad_step is None or int(self.bad_step) < 0:
            return None
        flags = dict(zip(TRAIN_TERMS, self.bad_terms.tolist(), strict=True))
        # recon or kl is the cause when one of them is; otherwise the objective (e.g. β · inf)
        names = [k for k in ("recon", "kl") if flags[k]] or ["objective"]
        return int(self.bad_step), names


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


class EvalMetrics(torch.nn.Module):
    """The val/test metrics of :class:`vae.train.module.VAEModule`, per stage: the means over
    images of :data:`EVAL_TERMS` (and ``test/nll_iw``), ``num_images`` (summed over processes: the
    proof that none is dropped or counted twice), ``active_units`` (latent dimensions with
    Cov_x(E[z | x]) > 0.01, Burda et al. 2015, §5.2) and ``kl_dim/<j>``."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        stages = ("val", "test")
        self.means = torch.nn.ModuleDict(
            {f"{s}_{n}": MeanMetric() for s in stages for n in EVAL_TERMS}
            | {"test_nll_iw": MeanMetric()}
        )
        self.counts = torch.nn.ModuleDict({s: SumMetric() for s in stages})
        self.mu_moments = ColumnMoments(latent_dim)
        self.kl_dim_moments = ColumnMoments(latent_dim)

    def update(self, stage: str, terms: dict[str, Tensor]) -> None:
        """Add a batch's per-image terms (:func:`vae.core.objective.elbo_terms`)."""
        for name in EVAL_TERMS:
            self.means[f"{stage}_{name}"].update(terms[name])
        n = terms["loss"].shape[0]
        self.counts[stage].update(torch.tensor(float(n), device=terms["loss"].device))
        self.mu_moments.update(terms["mu"])
        self.kl_dim_moments.update(terms["kl_dim"])

    def epoch(self, stage: str) -> dict[str, Metric | Tensor]:
        """``{"<stage>/<name>": value}`` for ``self.log`` (metrics reduce and reset themselves);
        resets the moments."""
        values: dict[str, Metric | Tensor] = {
            f"{stage}/{n}": self.means[f"{stage}_{n}"] for n in EVAL_TERMS
        }
        # (d,) even for d = 1: torchmetrics squeezes one-element results to 0-dim
        mu_var = self.mu_moments.compute()[1].reshape(-1)
        kl_dim_mean = self.kl_dim_moments.compute()[0].reshape(-1)
        values[f"{stage}/num_images"] = self.counts[stage]
        values[f"{stage}/active_units"] = (mu_var > ACTIVE_UNIT_THRESHOLD).sum().float()
        values |= {f"{stage}/kl_dim/{j}": v.float() for j, v in enumerate(kl_dim_mean)}
        if stage == "test":
            values["test/nll_iw"] = self.means["test_nll_iw"]
        self.mu_moments.reset()
        self.kl_dim_moments.reset()
        return values
