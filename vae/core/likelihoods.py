"""Observation models p(x | z) for images in [0, 1].

Each likelihood turns the decoder's output ``out`` (same shape as the images, ``(B, C, H, W)``) into

- ``nll(out, x)``: the negative log-likelihood −log p(x | z) in **nats per image**, summed over every
  pixel, shape ``(B,)`` (no reduction over the batch: the Lightning module decides the mean);
- ``mean(out)``: the decoder mean E[x | z] clipped to [0, 1], the image shown in plots;
- ``output_for_mean(m)``: the inverse, the decoder output whose mean is ``m`` (any shape, values in
  (0, 1)): how the decoder's output bias starts at the training images' mean (``model.init_output_bias``).

``bernoulli`` is the default and the number the literature reports for MNIST with grey levels as
targets; it is not a normalised density for non-binary data (Loaiza-Ganem & Cunningham 2019), which is
what ``continuous_bernoulli`` fixes. ``gaussian`` is a density on ℝ^D, so its nats are not comparable
with the two others.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import ContinuousBernoulli

from vae.core.config import LIKELIHOODS


def _sum_pixels(t: Tensor) -> Tensor:
    return t.flatten(start_dim=1).sum(dim=1)  # (B, C, H, W) -> (B,)


class BernoulliLikelihood(nn.Module):
    """p(x | z) = Π_i Bern(x_i; σ(out_i)); −log p = BCE-with-logits, computed from logits for stability."""

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        # log-sum-exp form inside binary_cross_entropy_with_logits: finite for any logit
        return _sum_pixels(F.binary_cross_entropy_with_logits(out, x, reduction="none"))

    def mean(self, out: Tensor) -> Tensor:
        return torch.sigmoid(out)

    def output_for_mean(self, m: Tensor) -> Tensor:
        return torch.logit(m)  # σ⁻¹


class ContinuousBernoulliLikelihood(nn.Module):
    """The normalised density on [0, 1]: CB(x; λ) = C(λ) λ^x (1 − λ)^(1−x), λ = σ(out).

    Loaiza-Ganem & Cunningham 2019, eq. 7; ``torch.distributions.ContinuousBernoulli`` supplies log C(λ)
    (with its Taylor expansion near λ = ½). Its mean differs from λ and is what the plots show.
    """

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        return -_sum_pixels(ContinuousBernoulli(logits=out, validate_args=False).log_prob(x))

    def mean(self, out: Tensor) -> Tensor:
        return ContinuousBernoulli(logits=out, validate_args=False).mean

    def output_for_mean(self, m: Tensor) -> Tensor:
        """The logit whose CB mean is ``m``, found by bisection in float64 (the mean increases with
        the logit but has no closed-form inverse). The mean approaches 0 only like 1/|logit|, so
        the search is limited to logits in [−50, 50]: a mean beyond what they reach (below about
        0.03 or above 0.97, where torch clamps the probabilities) gets −50 or 50."""
        target = m.to(torch.float64)
        lo, hi = torch.full_like(target, -50.0), torch.full_like(target, 50.0)
        for _ in range(60):  # 60 halvings of an interval of 100: 1e-16 logits
            mid = 0.5 * (lo + hi)
            below = self.mean(mid) < target
            lo, hi = torch.where(below, mid, lo), torch.where(below, hi, mid)
        return (0.5 * (lo + hi)).to(m.dtype)


class GaussianLikelihood(nn.Module):
    """p(x | z) = Π_i N(x_i; out_i, σ²) with σ fixed (``learn_std=False``) or one learned scalar σ.

    −log p = Σ_i [ (x_i − out_i)² / (2σ²) + log σ + ½ log 2π ]; σ is stored as log σ (unconstrained).
    """

    def __init__(self, *, std: float = 1.0, learn_std: bool = False) -> None:
        super().__init__()
        if not std > 0:
            raise ValueError(f"model.gaussian_std must be > 0, got {std}")
        # a fixed σ is a plain float, not a buffer (DDP would broadcast a buffer at every forward)
        self.log_std: nn.Parameter | float = (
            nn.Parameter(torch.tensor(math.log(std))) if learn_std else math.log(std)
        )

    def nll(self, out: Tensor, x: Tensor) -> Tensor:
        log_std = torch.as_tensor(self.log_std, dtype=out.dtype, device=out.device)
        sq = (x - out).square() * torch.exp(-2.0 * log_std)  # (x − μ)² / σ²
        return _sum_pixels(0.5 * sq + log_std + 0.5 * math.log(2.0 * math.pi))

    def mean(self, out: Tensor) -> Tensor:
        return out.clamp(0.0, 1.0)

    def output_for_mean(self, m: Tensor) -> Tensor:
        return m.clone()  # the decoder outputs the mean itself


def build_likelihood(name: str, *, gaussian_std: float, learn_std: bool) -> nn.Module:
    """The likelihood called ``name`` (one of :data:`LIKELIHOODS`)."""
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "continuous_bernoulli":
        return ContinuousBernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(std=gaussian_std, learn_std=learn_std)
    raise ValueError(f"model.likelihood={name!r} is not one of {', '.join(LIKELIHOODS)}")
