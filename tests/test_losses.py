"""vae.kl against independent references: torch.distributions, scipy, Monte Carlo, hand sums."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from torch.distributions import (
    Categorical,
    Independent,
    MultivariateNormal,
    Normal,
    kl_divergence,
)

from vae.kl import (
    GaussianKLLoss,
    cross_entropy,
    discrete_kl,
    entropy,
    gaussian_kl,
    gaussian_kl_per_dim,
    mvn_kl,
    smoothed,
)

F64 = torch.float64
LN2 = math.log(2.0)


def diag_normal(mu: torch.Tensor, logvar: torch.Tensor) -> Independent:
    return Independent(Normal(mu, torch.exp(0.5 * logvar)), 1)


def random_spd_tril(gen: torch.Generator, *batch: int, k: int) -> torch.Tensor:
    """Cholesky factors of random, well-conditioned SPD matrices A Aᵀ + ½ I."""
    a = torch.randn(*batch, k, k, generator=gen, dtype=F64)
    return torch.linalg.cholesky(a @ a.mT + 0.5 * torch.eye(k, dtype=F64))


# ------------------------------------------------------------------------------------------
# gaussian_kl / gaussian_kl_per_dim
# ------------------------------------------------------------------------------------------


def test_gaussian_kl_standard_prior_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    mu = torch.randn(64, 8, generator=gen, dtype=F64) * 2
    logvar = torch.randn(64, 8, generator=gen, dtype=F64) * 2
    ref = kl_divergence(
        diag_normal(mu, logvar), diag_normal(torch.zeros_like(mu), torch.zeros_like(mu))
    )
    out = gaussian_kl(mu, logvar)
    assert out.shape == (64,)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    # and the textbook expression, ½ Σ (μ² + σ² − 1 − ln σ²), written out independently
    by_hand = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(-1)
    torch.testing.assert_close(out, by_hand, rtol=1e-12, atol=1e-12)


def test_gaussian_kl_broadcast_prior_matches_torch_distributions():
    gen = torch.Generator().manual_seed(1)
    mu = torch.randn(32, 5, generator=gen, dtype=F64)
    logvar = torch.randn(32, 5, generator=gen, dtype=F64)
    prior_mu = torch.randn(5, generator=gen, dtype=F64)  # one prior for the whole batch
    prior_logvar = torch.randn(5, generator=gen, dtype=F64)
    ref = kl_divergence(
        diag_normal(mu, logvar),
        diag_normal(prior_mu.expand_as(mu), prior_logvar.expand_as(mu)),
    )
    torch.testing.assert_close(
        gaussian_kl(mu, logvar, prior_mu, prior_logvar), ref, rtol=1e-12, atol=1e-12
    )
    # only one of the two prior arguments: the other one is the standard normal's
    ref_mu_only = kl_divergence(
        diag_normal(mu, logvar), diag_normal(prior_mu.expand_as(mu), torch.zeros_like(mu))
    )
    torch.testing.assert_close(gaussian_kl(mu, logvar, prior_mu=prior_mu), ref_mu_only)
    ref_lv_only = kl_divergence(
        diag_normal(mu, logvar), diag_normal(torch.zeros_like(mu), prior_logvar.expand_as(mu))
    )
    torch.testing.assert_close(gaussian_kl(mu, logvar, prior_logvar=prior_logvar), ref_lv_only)


def test_gaussian_kl_matches_monte_carlo_estimate():
    gen = torch.Generator().manual_seed(2)
    mu = torch.tensor([0.5, -1.0, 2.0], dtype=F64)
    logvar = torch.tensor([-0.5, 0.3, 1.0], dtype=F64)
    prior_mu = torch.tensor([0.0, 0.5, 1.0], dtype=F64)
    prior_logvar = torch.tensor([0.2, -0.3, 0.5], dtype=F64)
    q, p = diag_normal(mu, logvar), diag_normal(prior_mu, prior_logvar)
    n = 400_000
    z = mu + torch.exp(0.5 * logvar) * torch.randn(n, 3, generator=gen, dtype=F64)
    log_ratio = q.log_prob(z) - p.log_prob(z)  # KL = E_q[log q(z) − log p(z)]
    estimate = log_ratio.mean()
    std_error = log_ratio.std() / math.sqrt(n)
    exact = gaussian_kl(mu, logvar, prior_mu, prior_logvar)
    assert std_error < 0.01 * exact  # the estimate is informative
    assert abs(estimate - exact) < 4 * std_error


def test_gaussian_kl_of_a_distribution_with_itself_is_zero():
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(10, 4, generator=gen) * 100
    logvar = torch.randn(10, 4, generator=gen) * 10
    assert torch.equal(gaussian_kl(mu, logvar, mu, logvar), torch.zeros(10))
    assert torch.equal(gaussian_kl(torch.zeros(3, 2), torch.zeros(3, 2)), torch.zeros(3))


@pytest.mark.parametrize(
    ("shapes", "expected"),
    [
        (((7,), (7,), None, None), ()),
        (((4, 7), (4, 7), None, None), (4,)),
        (((4, 7), (1, 7), None, None), (4,)),
        (((4, 7), (4, 7), (7,), (7,)), (4,)),
        (((3, 1, 7), (3, 1, 7), (5, 7), (1, 7)), (3, 5)),
        (((2, 3, 7), (2, 3, 7), (3, 7), None), (2, 3)),
    ],
)
def test_gaussian_kl_shapes_and_broadcasting(shapes, expected):
    gen = torch.Generator().manual_seed(4)
    args = [None if s is None else torch.randn(*s, generator=gen) for s in shapes]
    assert gaussian_kl(*args).shape == expected
    per_dim = gaussian_kl_per_dim(*args)
    assert per_dim.shape == (*expected, 7)
    assert torch.equal(per_dim.sum(-1), gaussian_kl(*args))


def test_gaussian_kl_per_dim_matches_univariate_torch_kl():
    gen = torch.Generator().manual_seed(5)
    mu, logvar = torch.randn(2, 6, 3, generator=gen, dtype=F64)
    pmu, plogvar = torch.randn(2, 3, generator=gen, dtype=F64)
    ref = kl_divergence(
        Normal(mu, torch.exp(0.5 * logvar)), Normal(pmu, torch.exp(0.5 * plogvar))
    )  # elementwise, univariate
    torch.testing.assert_close(gaussian_kl_per_dim(mu, logvar, pmu, plogvar), ref)


def test_gaussian_kl_extreme_float32_is_finite_and_accurate():
    gen = torch.Generator().manual_seed(6)
    n, d = 1024, 16
    mu = (torch.rand(n, d, generator=gen) * 2 - 1) * 1e3
    logvar = (torch.rand(n, d, generator=gen) * 2 - 1) * 30
    prior_mu = (torch.rand(n, d, generator=gen) * 2 - 1) * 1e3
    prior_logvar = (torch.rand(n, d, generator=gen) * 2 - 1) * 30
    # the corners of the box too
    mu[:4], logvar[:4], prior_mu[:4], prior_logvar[:4] = 1e3, 30.0, -1e3, -30.0
    mu[4:8], logvar[4:8], prior_mu[4:8], prior_logvar[4:8] = 0.0, -30.0, 0.0, 30.0
    # Error budget in float32 (u = 2⁻²⁴): e^x − 1 − x loses at most ~20 half-ulps to cancellation
    # just above the series threshold (|x| = 0.1), so ≤ 1e-6 without a prior. With a prior,
    # Δ = logvar − prior_logvar is itself rounded (absolute error ≤ |Δ|·u) and exp turns that
    # into a relative error of up to 60·u ≈ 3.6e-6: the condition number of the problem, the
    # same as perturbing the float32 inputs by half an ulp.
    for args, rtol in [((mu, logvar), 1e-6), ((mu, logvar, prior_mu, prior_logvar), 5e-6)]:
        out = gaussian_kl_per_dim(*args)
        assert out.dtype == torch.float32
        assert torch.isfinite(out).all()
        a = [t.double() for t in args]  # float64 reference from the same (float32) inputs
        prior = Normal(a[2], torch.exp(0.5 * a[3])) if len(a) == 4 else Normal(0.0, 1.0)
        ref = kl_divergence(Normal(a[0], torch.exp(0.5 * a[1])), prior)
        torch.testing.assert_close(out.double(), ref, rtol=rtol, atol=0)
        torch.testing.assert_close(gaussian_kl(*args).double(), ref.sum(-1), rtol=rtol, atol=0)


def test_gaussian_kl_small_logvar_differences_keep_relative_accuracy_in_float32():
    # exp(Δ) − 1 − Δ ≈ Δ²/2: computed naively in float32 this cancels to garbage for small Δ
    delta = torch.tensor([3e-1, 1e-1, 9.99e-2, 3e-2, 1e-3, 1e-4, 1e-5, -1e-5, -1e-3, -2e-1])
    prior_logvar = torch.full_like(delta, 2.5)
    logvar = prior_logvar + delta
    mu = torch.zeros_like(delta)
    out = gaussian_kl_per_dim(mu, logvar, mu, prior_logvar)
    d64 = logvar.double() - prior_logvar.double()  # the Δ the float32 inputs really hold
    ref = 0.5 * (torch.expm1(d64) - d64)
    assert (out > 0).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=0)


def test_gaussian_kl_gradients_are_finite_at_the_extremes():
    mu = torch.tensor([[1e3, -1e3, 0.0, 1e-3]], requires_grad=True)
    logvar = torch.tensor([[30.0, -30.0, 1e-6, -1e-6]], requires_grad=True)
    prior_mu = torch.tensor([-1e3, 1e3, 0.0, 0.0], requires_grad=True)
    prior_logvar = torch.tensor([-30.0, 30.0, 0.0, 0.0], requires_grad=True)
    gaussian_kl(mu, logvar, prior_mu, prior_logvar).sum().backward()
    for t in (mu, logvar, prior_mu, prior_logvar):
        assert torch.isfinite(t.grad).all()
    mu.grad = logvar.grad = None
    gaussian_kl(mu, logvar).sum().backward()
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(logvar.grad).all()
    # d/dlogvar ½(e^lv − 1 − lv) = ½(e^lv − 1), also where the Taylor branch is used
    torch.testing.assert_close(logvar.grad, 0.5 * torch.expm1(logvar.detach()))


def test_gaussian_kl_gradcheck_float64():
    gen = torch.Generator().manual_seed(7)
    # include Δ in the series branch (|Δ| < 0.1) and outside it
    mu = torch.randn(3, 4, generator=gen, dtype=F64).requires_grad_()
    logvar = torch.tensor(
        [[0.01, -0.05, 0.5, -2.0], [0.0, 0.3, 1.5, -0.02], [3.0, -3.0, 0.07, 0.2]], dtype=F64
    ).requires_grad_()
    prior_mu = torch.randn(4, generator=gen, dtype=F64).requires_grad_()
    prior_logvar = torch.tensor([0.03, 0.0, -0.4, 0.1], dtype=F64).requires_grad_()
    assert torch.autograd.gradcheck(gaussian_kl, (mu, logvar, prior_mu, prior_logvar))
    assert torch.autograd.gradcheck(gaussian_kl, (mu, logvar))
    assert torch.autograd.gradgradcheck(gaussian_kl, (mu, logvar))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_gaussian_kl_preserves_dtype_and_device(dtype):
    mu = torch.tensor([[0.5, -0.25]], dtype=dtype)
    logvar = torch.tensor([[0.1, -0.2]], dtype=dtype)
    for out in (gaussian_kl(mu, logvar), gaussian_kl(mu, logvar, mu * 0, logvar * 0)):
        assert out.dtype == dtype
        assert out.device == mu.device
        ref = 0.5 * (0.25 + 0.0625 + math.expm1(0.1) - 0.1 + math.expm1(-0.2) + 0.2)
        assert out.item() == pytest.approx(ref, rel=1e-2 if dtype.itemsize == 2 else 1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gaussian_and_mvn_kl_on_cuda_match_cpu():
    gen = torch.Generator().manual_seed(8)
    mu, logvar = torch.randn(2, 16, 4, generator=gen)
    out = gaussian_kl(mu.cuda(), logvar.cuda(), mu[0].cuda(), logvar[0].cuda())
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), gaussian_kl(mu, logvar, mu[0], logvar[0]))
    tril = random_spd_tril(gen, 16, k=4).float()
    torch.testing.assert_close(mvn_kl(mu.cuda(), tril.cuda()).cpu(), mvn_kl(mu, tril))


def test_gaussian_kl_argument_errors():
    with pytest.raises(ValueError, match="do not broadcast"):
        gaussian_kl(torch.zeros(4, 3), torch.zeros(4, 3), torch.zeros(2))
    with pytest.raises(ValueError, match="at least one"):
        gaussian_kl(torch.tensor(0.0), torch.tensor(0.0))
    with pytest.raises(TypeError, match="floating-point"):
        gaussian_kl(torch.zeros(2, dtype=torch.long), torch.zeros(2))


# ------------------------------------------------------------------------------------------
# mvn_kl
# ------------------------------------------------------------------------------------------


def test_mvn_kl_matches_torch_multivariate_normal():
    gen = torch.Generator().manual_seed(10)
    k = 5
    mu = torch.randn(6, k, generator=gen, dtype=F64)
    tril = random_spd_tril(gen, 6, k=k)
    prior_mu = torch.randn(6, k, generator=gen, dtype=F64)
    prior_tril = random_spd_tril(gen, 6, k=k)
    ref = kl_divergence(
        MultivariateNormal(mu, scale_tril=tril), MultivariateNormal(prior_mu, scale_tril=prior_tril)
    )
    out = mvn_kl(mu, tril, prior_mu, prior_tril)
    assert out.shape == (6,)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    # a single prior broadcast against the batch
    ref1 = kl_divergence(
        MultivariateNormal(mu, scale_tril=tril),
        MultivariateNormal(prior_mu[0], scale_tril=prior_tril[0]),
    )
    torch.testing.assert_close(mvn_kl(mu, tril, prior_mu[0], prior_tril[0]), ref1)
    # batch shapes (2, 1) and (3,) broadcast to (2, 3)
    mu2 = torch.randn(2, 1, k, generator=gen, dtype=F64)
    tril2 = random_spd_tril(gen, 2, 1, k=k)
    ref2 = kl_divergence(
        MultivariateNormal(mu2, scale_tril=tril2),
        MultivariateNormal(prior_mu[:3], scale_tril=prior_tril[:3]),
    )
    out2 = mvn_kl(mu2, tril2, prior_mu[:3], prior_tril[:3])
    assert out2.shape == (2, 3)
    torch.testing.assert_close(out2, ref2)


def test_mvn_kl_standard_prior_matches_closed_form_with_logdet():
    gen = torch.Generator().manual_seed(11)
    k = 4
    mu = torch.randn(8, k, generator=gen, dtype=F64)
    tril = random_spd_tril(gen, 8, k=k)
    cov = tril @ tril.mT
    # ½ (tr Σ + μᵀμ − k − log det Σ), with log det from torch.logdet of Σ itself
    ref = 0.5 * (cov.diagonal(dim1=-2, dim2=-1).sum(-1) + (mu**2).sum(-1) - k - torch.logdet(cov))
    torch.testing.assert_close(mvn_kl(mu, tril), ref, rtol=1e-12, atol=1e-12)
    ref_torch = kl_divergence(
        MultivariateNormal(mu, scale_tril=tril),
        MultivariateNormal(torch.zeros(k, dtype=F64), scale_tril=torch.eye(k, dtype=F64)),
    )
    torch.testing.assert_close(mvn_kl(mu, tril), ref_torch)
    # an explicit identity prior gives the same numbers as None
    eye = torch.eye(k, dtype=F64)
    torch.testing.assert_close(mvn_kl(mu, tril, torch.zeros(k, dtype=F64), eye), ref)


def test_mvn_kl_with_diagonal_scale_equals_gaussian_kl():
    gen = torch.Generator().manual_seed(12)
    mu, logvar, pmu, plogvar = torch.randn(4, 10, 3, generator=gen, dtype=F64)
    tril = torch.diag_embed(torch.exp(0.5 * logvar))
    prior_tril = torch.diag_embed(torch.exp(0.5 * plogvar))
    torch.testing.assert_close(mvn_kl(mu, tril), gaussian_kl(mu, logvar))
    torch.testing.assert_close(
        mvn_kl(mu, tril, pmu, prior_tril), gaussian_kl(mu, logvar, pmu, plogvar)
    )


def test_mvn_kl_ignores_upper_triangle_and_is_zero_against_itself():
    gen = torch.Generator().manual_seed(13)
    mu = torch.randn(3, 4, generator=gen, dtype=F64)
    tril = random_spd_tril(gen, 3, k=4)
    junk = tril + torch.triu(torch.randn(3, 4, 4, generator=gen, dtype=F64), diagonal=1)
    torch.testing.assert_close(mvn_kl(mu, junk), mvn_kl(mu, tril))
    torch.testing.assert_close(mvn_kl(mu, tril, mu, tril), torch.zeros(3, dtype=F64))


def test_mvn_kl_gradcheck_and_errors():
    gen = torch.Generator().manual_seed(14)
    mu = torch.randn(2, 3, generator=gen, dtype=F64).requires_grad_()
    tril = random_spd_tril(gen, 2, k=3).requires_grad_()
    pmu = torch.randn(3, generator=gen, dtype=F64).requires_grad_()
    ptril = random_spd_tril(gen, k=3).requires_grad_()
    assert torch.autograd.gradcheck(mvn_kl, (mu, tril, pmu, ptril))
    with pytest.raises(ValueError, match=r"scale_tril must have shape \(\.\.\., 3, 3\)"):
        mvn_kl(torch.zeros(3), torch.eye(2))
    with pytest.raises(ValueError, match="prior_mu must have shape"):
        mvn_kl(torch.zeros(3), torch.eye(3), torch.zeros(2))
    with pytest.raises(ValueError, match="batch shapes do not broadcast"):
        mvn_kl(torch.zeros(4, 3), torch.eye(3).expand(5, 3, 3))


# ------------------------------------------------------------------------------------------
# GaussianKLLoss
# ------------------------------------------------------------------------------------------


def torch_reduction(per_element: torch.Tensor, reduction: str) -> torch.Tensor:
    """``reduction`` applied to ``per_element`` by torch.nn.KLDivLoss itself: with log_target=True
    its pointwise loss is exp(target) · (target − input), so target 0 and input −x give x back."""
    loss = torch.nn.KLDivLoss(reduction=reduction, log_target=True)
    with warnings.catch_warnings():  # torch warns that its 'mean' is not the KL; so do we
        warnings.simplefilter("ignore", UserWarning)
        return loss(-per_element, torch.zeros_like(per_element))


@pytest.mark.parametrize("shape", [(16, 4), (2, 16, 4), (4,)])
def test_gaussian_kl_loss_reductions_are_torchs(shape):
    gen = torch.Generator().manual_seed(20)
    mu, logvar = torch.randn(2, *shape, generator=gen, dtype=F64)
    q = Normal(mu, torch.exp(0.5 * logvar))
    per_element = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(mu)))
    for reduction in ("none", "sum", "mean", "batchmean"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            loss = GaussianKLLoss(reduction=reduction)
        expected = torch_reduction(per_element, reduction)
        if reduction == "batchmean" and len(shape) == 1:
            expected = per_element.sum()  # a (d,) input is one sample (torch would divide by d)
        torch.testing.assert_close(loss(mu, logvar), expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(loss(q), expected, rtol=1e-12, atol=1e-12)  # a Normal
        torch.testing.assert_close(loss(Independent(q, 1)), expected, rtol=1e-12, atol=1e-12)
        loss.beta = 0.25
        torch.testing.assert_close(loss(mu, logvar), 0.25 * expected, rtol=1e-12, atol=1e-12)


def test_gaussian_kl_loss_default_is_the_kl_per_sample_and_mean_warns():
    gen = torch.Generator().manual_seed(21)
    mu, logvar = torch.randn(2, 16, 4, generator=gen)
    per_sample = gaussian_kl(mu, logvar)
    # the default: the KL per sample, batch mean (what reduction='mean' meant in vae 0.1.0)
    assert GaussianKLLoss().reduction == "batchmean"
    torch.testing.assert_close(GaussianKLLoss()(mu, logvar), per_sample.mean())
    with pytest.warns(UserWarning, match="number of latent dimensions.*'batchmean'"):
        mean = GaussianKLLoss(reduction="mean")
    torch.testing.assert_close(mean(mu, logvar), per_sample.mean() / 4)
    assert GaussianKLLoss(beta=0.0)(mu, logvar).item() == 0.0
    # free_bits=0 is exactly the plain KL; β can be changed between steps (annealing)
    loss = GaussianKLLoss(free_bits=0.0)
    assert torch.equal(loss(mu, logvar), per_sample.mean())
    loss.beta = 3.0
    torch.testing.assert_close(loss(mu, logvar), 3.0 * per_sample.mean())


def test_gaussian_kl_loss_free_bits_by_hand():
    # logvar = 0, so each KL_bj = μ_bj² / 2. Batch of 2, two latent dimensions:
    #   dim 0: μ = 0.1, 0.3 → KL = 0.005, 0.045 → batch mean 0.025 nats (below λ = 0.5)
    #   dim 1: μ = 2.0, 4.0 → KL = 2.0, 8.0     → batch mean 5.0 nats   (above λ)
    # objective = max(0.5, 0.025) + max(0.5, 5.0) = 5.5 nats
    mu = torch.tensor([[0.1, 2.0], [0.3, 4.0]], dtype=F64, requires_grad=True)
    logvar = torch.zeros(2, 2, dtype=F64)
    loss = GaussianKLLoss(free_bits=0.5)
    value = loss(mu, logvar)
    assert value.item() == pytest.approx(5.5, abs=1e-12)
    value.backward()
    # dimension 0 is clamped at λ: no gradient; dimension 1: d/dμ mean_b(μ²/2) = μ / 2
    assert torch.equal(mu.grad[:, 0], torch.zeros(2, dtype=F64))
    torch.testing.assert_close(mu.grad[:, 1], torch.tensor([1.0, 2.0], dtype=F64))
    sum_loss = GaussianKLLoss(reduction="sum", free_bits=0.5, beta=2.0)
    assert sum_loss(mu, logvar).item() == pytest.approx(2.0 * 2 * 5.5, abs=1e-12)
    # torch's 'mean' divides the sum by every element: 2 samples × 2 dimensions
    with pytest.warns(UserWarning, match="number of latent dimensions"):
        mean_loss = GaussianKLLoss(reduction="mean", free_bits=0.5)
    assert mean_loss(mu, logvar).item() == pytest.approx(2 * 5.5 / 4, abs=1e-12)
    # a posterior as a distribution: the same 5.5 nats
    q = Independent(Normal(mu.detach(), torch.ones(2, 2, dtype=F64)), 1)
    assert loss(q).item() == pytest.approx(5.5, abs=1e-12)
    # λ below every dimension's KL: free bits change nothing
    torch.testing.assert_close(
        GaussianKLLoss(free_bits=0.01)(mu, logvar), gaussian_kl(mu, logvar).mean()
    )
    # reduce() on an already computed per-dimension KL: the same 5.5 nats (what the VAE module uses)
    per_dim = gaussian_kl_per_dim(mu.detach(), logvar)
    assert loss.reduce(per_dim).item() == pytest.approx(5.5, abs=1e-12)
    assert sum_loss.reduce(per_dim).item() == pytest.approx(22.0, abs=1e-12)


def test_gaussian_kl_loss_argument_errors():
    with pytest.raises(
        ValueError, match=r"reduction must be one of 'none', 'batchmean', 'sum', 'mean'"
    ):
        GaussianKLLoss(reduction="avg")
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        GaussianKLLoss(beta=-0.1)
    with pytest.raises(ValueError, match="free_bits must be a finite number >= 0"):
        GaussianKLLoss(free_bits=-1.0)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        GaussianKLLoss(beta=float("nan"))
    with pytest.raises(ValueError, match="free_bits > 0 needs reduction='batchmean', 'sum' or"):
        GaussianKLLoss(reduction="none", free_bits=0.5)
    loss = GaussianKLLoss(free_bits=0.5)
    with pytest.raises(ValueError, match="free_bits > 0 needs"):
        loss.reduction = "none"
    with pytest.raises(ValueError, match="beta must be"):
        loss.beta = -1.0
    with pytest.raises(TypeError):
        GaussianKLLoss("sum")  # keyword-only
    assert "free_bits=0.5" in repr(loss)
    with pytest.raises(TypeError, match="prior is N"):
        loss(Normal(torch.zeros(2), torch.ones(2)), torch.zeros(2))
    with pytest.raises(TypeError, match="use mvn_kl"):
        loss(MultivariateNormal(torch.zeros(2), torch.eye(2)))
    with pytest.raises(TypeError, match="logvar is missing"):
        loss(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="mu contains NaN"):
        loss(torch.tensor([[0.0, float("nan")]]), torch.zeros(1, 2))
    assert GaussianKLLoss(validate=False)(torch.tensor([[float("nan")]]), torch.zeros(1, 1)).isnan()


# ------------------------------------------------------------------------------------------
# entropy, cross_entropy, discrete_kl
# ------------------------------------------------------------------------------------------


def random_pmfs(rng: np.random.Generator, rows: int, k: int, zero_frac: float) -> np.ndarray:
    x = rng.random((rows, k)) * (rng.random((rows, k)) >= zero_frac)
    x[:, 0] += 0.1  # at least one nonzero per row
    return x / x.sum(-1, keepdims=True)


@pytest.mark.parametrize("base", [math.e, 2, 10, 3.7])
def test_discrete_functions_match_scipy_on_batches_with_zeros(base):
    rng = np.random.default_rng(30)
    p = random_pmfs(rng, 50, 7, zero_frac=0.3)
    q = random_pmfs(rng, 50, 7, zero_frac=0.0)  # q > 0 everywhere: everything finite
    q[::2] = np.where(p[::2] == 0, 0.0, q[::2])  # q = 0 only where p = 0 too: still finite
    q /= q.sum(-1, keepdims=True)
    tp, tq = torch.from_numpy(p), torch.from_numpy(q)
    ln_b = math.log(base)
    h_ref = scipy.stats.entropy(p, base=base, axis=-1)
    kl_ref = scipy.special.rel_entr(p, q).sum(-1) / ln_b
    ce_ref = -scipy.special.xlogy(p, q).sum(-1) / ln_b
    np.testing.assert_allclose(entropy(tp, base=base).numpy(), h_ref, rtol=1e-12)
    np.testing.assert_allclose(discrete_kl(tp, tq, base=base).numpy(), kl_ref, rtol=1e-10)
    np.testing.assert_allclose(cross_entropy(tp, tq, base=base).numpy(), ce_ref, rtol=1e-12)
    # scipy.stats.entropy(p, q) is its KL; and KL = H(p, q) − H(p)
    np.testing.assert_allclose(
        discrete_kl(tp, tq, base=base).numpy(),
        scipy.stats.entropy(p, q, base=base, axis=-1),
        rtol=1e-10,
    )
    np.testing.assert_allclose(
        discrete_kl(tp, tq, base=base).numpy(), ce_ref - h_ref, rtol=1e-8, atol=1e-12
    )
    # along another dimension
    np.testing.assert_allclose(
        discrete_kl(tp.T, tq.T, base=base, dim=0).numpy(), kl_ref, rtol=1e-10
    )


def test_discrete_kl_is_infinite_where_q_misses_support_of_p():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.5, 0.5, 0.0]])
    q = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.0, 0.5]])
    ref = scipy.special.rel_entr(p.numpy(), q.numpy()).sum(-1)
    assert np.isinf(ref).all()
    assert torch.isinf(discrete_kl(p, q)).all()
    assert (discrete_kl(p, q) > 0).all()
    assert torch.isinf(cross_entropy(p, q)).all()
    # the other direction is finite: q's zeros meet p's zeros or p's mass
    assert discrete_kl(q[:1], p[:1]).item() == pytest.approx(math.log(2.0))


def test_abcd_coding_worked_example_in_bits():
    # p = (1/2, 1/4, 1/8, 1/8), q uniform over 4 symbols:
    # H(p) = ½·1 + ¼·2 + ⅛·3 + ⅛·3 = 0.5 + 0.5 + 0.375 + 0.375 = 1.75 bits
    # H(p, q) = Σ p · log2 4 = 2 bits; KL = 2 − 1.75 = 0.25 bits (not 0.125)
    p = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=F64)
    q = torch.full((4,), 0.25, dtype=F64)
    assert entropy(p, base=2).item() == pytest.approx(1.75, abs=1e-15)
    assert cross_entropy(p, q, base=2).item() == pytest.approx(2.0, abs=1e-15)
    assert discrete_kl(p, q, base=2).item() == pytest.approx(0.25, abs=1e-15)
    assert discrete_kl(p, p, base=2).item() == 0.0
    assert scipy.stats.entropy(p.numpy(), q.numpy(), base=2) == pytest.approx(0.25)
    # base conversion: nats = bits · ln 2, hartleys = bits · log10 2
    assert discrete_kl(p, q).item() == pytest.approx(0.25 * LN2, rel=1e-14)
    assert entropy(p).item() == pytest.approx(1.75 * LN2, rel=1e-14)
    assert entropy(p, base=10).item() == pytest.approx(1.75 * math.log10(2), rel=1e-14)


def test_discrete_kl_of_p_with_itself_is_exactly_zero():
    rng = np.random.default_rng(31)
    p = torch.from_numpy(random_pmfs(rng, 20, 9, zero_frac=0.4)).float()
    assert torch.equal(discrete_kl(p, p), torch.zeros(20))


def test_discrete_kl_is_not_symmetric():
    p = torch.tensor([0.9, 0.1], dtype=F64)
    q = torch.tensor([0.5, 0.5], dtype=F64)
    pq, qp = discrete_kl(p, q).item(), discrete_kl(q, p).item()
    assert pq == pytest.approx(scipy.special.rel_entr([0.9, 0.1], [0.5, 0.5]).sum(), rel=1e-14)
    assert qp == pytest.approx(scipy.special.rel_entr([0.5, 0.5], [0.9, 0.1]).sum(), rel=1e-14)
    # 0.9 ln 1.8 + 0.1 ln 0.2 ≈ 0.3681 nats vs 0.5 ln(5/9) + 0.5 ln 5 ≈ 0.5108 nats
    assert pq == pytest.approx(0.9 * math.log(1.8) + 0.1 * math.log(0.2), rel=1e-14)
    assert qp == pytest.approx(0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(5.0), rel=1e-14)
    assert abs(pq - qp) > 0.1


def test_discrete_kl_gradient_wrt_q_is_finite_where_p_is_zero():
    p = torch.tensor([0.0, 0.25, 0.75], dtype=F64)
    logits = torch.tensor([0.3, -0.2, 0.5], dtype=F64, requires_grad=True)
    discrete_kl(p, torch.softmax(logits, -1)).backward()
    assert torch.isfinite(logits.grad).all()
    # d KL / d logits = softmax(logits) − p for a softmax model
    torch.testing.assert_close(logits.grad, torch.softmax(logits.detach(), -1) - p)
    q = torch.tensor([0.2, 0.3, 0.5], dtype=F64, requires_grad=True)
    p0 = torch.tensor([0.0, 0.5, 0.5], dtype=F64)
    assert torch.autograd.gradcheck(lambda q: discrete_kl(p0, q, validate=False), (q,))
    assert torch.autograd.gradcheck(lambda q: cross_entropy(p0, q, validate=False), (q,))


def test_discrete_functions_preserve_dtype():
    p = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float16)
    for out in (entropy(p, base=2), cross_entropy(p, p), discrete_kl(p, p)):
        assert out.dtype == torch.float16
    assert entropy(p, base=2).item() == pytest.approx(1.5, rel=1e-3)


@pytest.mark.parametrize(
    ("p", "q", "message"),
    [
        ([0.5, -0.1, 0.6], [0.3, 0.3, 0.4], "p has negative entries"),
        ([0.5, 0.5, 0.0], [0.3, -0.3, 1.0], "q has negative entries"),
        ([0.5, 0.4, 0.0], [0.3, 0.3, 0.4], "p does not sum to 1 along dim=-1"),
        ([0.5, 0.5, 0.0], [0.3, 0.3, 0.5], "q does not sum to 1"),
        ([0.5, float("nan"), 0.5], [0.3, 0.3, 0.4], "p contains NaN"),
        ([0.5, 0.5, 0.0], [float("inf"), 0.3, 0.4], "q contains infinite entries"),
        ([0.5, 0.5], [0.3, 0.3, 0.4], r"p and q do not broadcast: shapes \(2,\) and \(3,\)"),
        ([], [], "p is empty"),
    ],
)
def test_discrete_kl_input_errors(p, q, message):
    with pytest.raises(ValueError, match=message):
        discrete_kl(torch.tensor(p), torch.tensor(q))


def test_discrete_validation_details():
    ok = torch.tensor([0.25, 0.25, 0.5])
    with pytest.raises(ValueError, match="p does not sum to 1"):
        entropy(torch.tensor([0.3, 0.3, 0.3]))
    with pytest.raises(ValueError, match="at least one dimension"):
        entropy(torch.tensor(1.0))
    with pytest.raises(ValueError, match="p is empty"):
        entropy(torch.zeros(3, 0))
    # torch's broadcasting, also along the outcomes: a (2, 1) q is one value repeated, no pmf
    with pytest.raises(ValueError, match="q does not sum to 1"):
        cross_entropy(ok.expand(2, 3), torch.ones(2, 1))
    with pytest.raises(ValueError, match="p and logits do not broadcast"):
        cross_entropy(ok, logits=torch.zeros(2))
    with pytest.raises(TypeError, match="floating-point"):
        entropy(torch.tensor([1, 0]))
    for bad_base in (1, 0, -2.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="base must be a finite number > 0 and != 1"):
            entropy(ok, base=bad_base)
    # the sum tolerance is √eps of the dtype: 1e-5 off passes in float32, fails in float64
    near = torch.tensor([0.5, 0.5 + 1e-5], dtype=F64)
    assert torch.isfinite(entropy(near.float()))
    with pytest.raises(ValueError, match=r"max \|sum - 1\| = 1e-05 exceeds the tolerance 1.5e-08"):
        entropy(near)
    # validate=False skips the check (the caller vouches for the input)
    assert entropy(near, validate=False).item() == pytest.approx(
        -float(scipy.special.xlogy(near.numpy(), near.numpy()).sum())
    )


# ------------------------------------------------------------------------------------------
# smoothed
# ------------------------------------------------------------------------------------------


def test_smoothed_hand_example_over_abcd():
    # P = (a 3/5, b 1/5, c 1/5, d 0), Q = (a 5/9, b 3/9, c 0, d 1/9), ε = 1e-3.
    # P has one zero (d): d gets ε, a, b, c each give up ε/3. Q has one zero (c) likewise.
    eps = 1e-3
    p = torch.tensor([3 / 5, 1 / 5, 1 / 5, 0.0], dtype=F64)
    q = torch.tensor([5 / 9, 3 / 9, 0.0, 1 / 9], dtype=F64)
    assert torch.isinf(discrete_kl(p, q))
    ps, qs = smoothed(p, q, eps)
    p_hand = [3 / 5 - eps / 3, 1 / 5 - eps / 3, 1 / 5 - eps / 3, eps]
    q_hand = [5 / 9 - eps / 3, 3 / 9 - eps / 3, eps, 1 / 9 - eps / 3]
    torch.testing.assert_close(ps, torch.tensor(p_hand, dtype=F64), rtol=0, atol=1e-15)
    torch.testing.assert_close(qs, torch.tensor(q_hand, dtype=F64), rtol=0, atol=1e-15)
    assert ps.sum().item() == pytest.approx(1.0, abs=1e-15)
    assert qs.sum().item() == pytest.approx(1.0, abs=1e-15)
    kl_hand = sum(a * math.log(a / b) for a, b in zip(p_hand, q_hand, strict=True))
    kl = discrete_kl(ps, qs).item()
    assert math.isfinite(kl)
    assert kl == pytest.approx(kl_hand, rel=1e-13)
    assert kl == pytest.approx(scipy.stats.entropy(p_hand, q_hand), rel=1e-13)


def test_smoothed_batched_along_dim():
    rng = np.random.default_rng(40)
    p = torch.from_numpy(random_pmfs(rng, 30, 6, zero_frac=0.4))
    q = torch.from_numpy(random_pmfs(rng, 30, 6, zero_frac=0.4))
    eps = 1e-4
    ps, qs = smoothed(p.T, q.T, eps, dim=0)  # symbols along dim 0
    ps, qs = ps.T, qs.T
    for x, xs in ((p, ps), (q, qs)):
        torch.testing.assert_close(xs.sum(-1), torch.ones(30, dtype=F64), rtol=0, atol=1e-14)
        assert (xs > 0).all()
        xn = x.numpy()
        n_zero = (xn == 0).sum(-1, keepdims=True)
        n_pos = 6 - n_zero
        expected = np.where(xn == 0, eps, xn - eps * n_zero / n_pos)  # row by row, by hand
        np.testing.assert_allclose(xs.numpy(), expected, rtol=0, atol=1e-16)
    assert torch.isfinite(discrete_kl(ps, qs)).all()
    # a vector without zeros is left alone
    full = torch.tensor([0.2, 0.8], dtype=F64)
    assert torch.equal(smoothed(full, full)[0], full)


def test_smoothed_errors():
    p = torch.tensor([0.98, 0.02, 0.0, 0.0])
    q = torch.tensor([0.25, 0.25, 0.25, 0.25])
    # p's nonzero entries give up ε·2/2 = ε each: 0.02 − ε must stay > 0, so ε < 0.02
    with pytest.raises(ValueError, match=r"eps=0\.05 is too large for p.*eps must be < 0\.02"):
        smoothed(p, q, 0.05)
    assert (smoothed(p, q, 0.019)[0] > 0).all()
    for bad in (0.0, -1e-3, float("nan")):
        with pytest.raises(ValueError, match="eps must be a finite number > 0"):
            smoothed(p, q, bad)
    with pytest.raises(ValueError, match=r"do not broadcast: shapes \(4,\) and \(3,\)"):
        smoothed(p, q[:3])
    with pytest.raises(TypeError, match=r"q must be a torch\.Tensor"):
        smoothed(p, Categorical(q))


def test_public_api_is_importable_from_the_package_without_heavy_imports():
    # a fresh interpreter, so that modules imported by other tests do not hide anything
    code = (
        "import sys\n"
        "from vae import gaussian_kl, GaussianKLLoss, discrete_kl, mvn_kl, entropy, "
        "cross_entropy, smoothed, gaussian_kl_per_dim\n"
        "import vae.kl\n"
        "assert gaussian_kl is vae.kl.gaussian_kl\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'lightning', 'pytorch_lightning', 'torchvision', 'hydra', 'omegaconf', 'matplotlib'} "
        "or m in {'vae.train.data', 'vae.core.networks', 'vae.train.module', 'vae.train.run'})\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------------------
# No silent NaN: empty batches, singular factors, infinite log-variances, half precision,
# validation under torch.compile / vmap (docs/errors.md, "The KL library at its edges")
# ------------------------------------------------------------------------------------------


def test_empty_batch_sums_to_zero_and_a_mean_over_it_is_an_error():
    mu = torch.zeros(0, 3, requires_grad=True)
    logvar = torch.zeros(0, 3, requires_grad=True)
    # a sum over no samples is 0 (math.fsum([]) == 0.0), also with free bits and any β
    for loss in (
        GaussianKLLoss(reduction="sum"),
        GaussianKLLoss(reduction="sum", free_bits=0.5, beta=2.0),
    ):
        out = loss(mu, logvar)
        assert out.shape == ()
        assert out.item() == math.fsum([]) == 0.0
        out.backward()
        assert mu.grad.shape == (0, 3)
        assert loss.reduce(torch.zeros(0, 3)).item() == 0.0
    assert GaussianKLLoss(reduction="none")(mu, logvar).shape == (0, 3)
    assert gaussian_kl(mu, logvar).shape == (0,)
    assert gaussian_kl_per_dim(mu, logvar).shape == (0, 3)
    message = r"reduction='batchmean'\) got an empty batch \(shape \(0, 3\)\).*reduction='sum'"
    for loss in (GaussianKLLoss(), GaussianKLLoss(free_bits=0.5)):
        with pytest.raises(ValueError, match=message):
            loss(mu, logvar)
        with pytest.raises(ValueError, match=message):
            loss.reduce(torch.zeros(0, 3))
    # no latent dimensions: KL = a sum over no dimensions = 0 per sample (free bits included)
    for loss in (GaussianKLLoss(), GaussianKLLoss(reduction="sum", free_bits=0.5)):
        assert loss(torch.zeros(4, 0), torch.zeros(4, 0)).item() == 0.0
    assert torch.equal(gaussian_kl(torch.zeros(4, 0), torch.zeros(4, 0)), torch.zeros(4))
    # mvn_kl: an empty batch gives an empty result, with or without a prior
    eye = torch.eye(2, dtype=F64)
    assert mvn_kl(torch.zeros(0, 2, dtype=F64), eye.expand(0, 2, 2)).shape == (0,)
    empty_with_prior = mvn_kl(torch.zeros(0, 2, dtype=F64), eye.expand(0, 2, 2), None, 2 * eye)
    assert empty_with_prior.shape == (0,)


def test_mvn_kl_rejects_a_zero_on_a_diagonal():
    mu = torch.zeros(3, 2, dtype=F64)
    tril = torch.eye(2, dtype=F64).repeat(3, 1, 1)
    singular = tril.clone()
    singular[2, 1, 1] = 0.0
    with pytest.raises(
        ValueError, match=r"scale_tril has a zero on its diagonal \(at batch index \(2,\), row 1\)"
    ):
        mvn_kl(mu, singular)
    with pytest.raises(ValueError, match=r"prior_scale_tril has a zero on its diagonal \(row 0\)"):
        mvn_kl(mu, tril, None, torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64))
    # what validate=False lets through: +inf for a singular Σ (ln det Σ = −∞), NaN for a
    # singular Σ₀ (∞ − ∞): the reason for the check
    assert torch.isposinf(mvn_kl(mu, singular, validate=False)[2])
    prior = torch.tensor([[0.0, 0.0], [1.0, 1.0]], dtype=F64)
    assert torch.isnan(mvn_kl(mu, tril, None, prior, validate=False)).all()
    # a small but nonzero diagonal is fine and accurate
    small = torch.diag(torch.tensor([1e-3, 2.0], dtype=F64))
    ref = kl_divergence(
        MultivariateNormal(mu[0], scale_tril=small),
        MultivariateNormal(torch.zeros(2, dtype=F64), scale_tril=torch.eye(2, dtype=F64)),
    )
    torch.testing.assert_close(mvn_kl(mu[0], small), ref, rtol=1e-12, atol=0)


def test_infinite_logvar_gives_inf_not_nan_and_finite_values_keep_finite_gradients():
    inf = math.inf
    # float32: e^88.0 is finite, e^88.8 overflows (float32 max ≈ 3.40e38 = e^88.72)
    logvar = torch.tensor([inf, -inf, 88.0, 88.8, 30.0, -30.0, 0.0], requires_grad=True)
    mu = torch.zeros(7, requires_grad=True)
    out = gaussian_kl_per_dim(mu, logvar)
    out.sum().backward()
    lv = [inf, -inf, 88.0, 88.8, 30.0, -30.0, 0.0]
    # reference: ½ (e^lv − 1 − lv) in Python floats (math.exp overflows past 709, so 88.8 is fine)
    ref = [inf, inf] + [0.5 * (math.expm1(v) - v) for v in lv[2:]]
    assert not torch.isnan(out).any()
    f32_max = torch.finfo(torch.float32).max
    for got, want, v in zip(out.tolist(), ref, lv, strict=True):
        if math.exp(min(v, 709.0)) < f32_max:  # e^lv fits in float32: the value is accurate
            assert got == pytest.approx(want, rel=1e-6), v
        else:  # ±inf, or e^lv overflows (at 88.8 even ½ e^lv ≈ 1.8e38 would still fit: documented)
            assert got == inf, v
    # d/dlogvar = ½ (e^lv − 1): +inf at +inf and where e^lv overflows, −½ at −inf, else finite
    grad_ref = [0.5 * math.expm1(v) if v < 88.7 else inf for v in lv[1:]]
    assert logvar.grad[0].item() == inf
    for got, want, v in zip(logvar.grad[1:].tolist(), grad_ref, lv[1:], strict=True):
        assert got == pytest.approx(want, rel=1e-6), v
    assert torch.equal(mu.grad, torch.zeros(7))
    # with a prior too, and through the loss; float64 has its own overflow point (e^709.78)
    finite_prior = torch.tensor([0.5, 2.0])
    assert torch.isposinf(gaussian_kl(torch.zeros(2), torch.tensor([inf, 0.0]), None, finite_prior))
    assert torch.isposinf(GaussianKLLoss()(torch.zeros(1, 2), torch.tensor([[0.0, inf]])))
    x64 = torch.tensor([709.0, 710.0, inf], dtype=F64)
    out64 = gaussian_kl_per_dim(torch.zeros(3, dtype=F64), x64)
    assert out64[0].item() == pytest.approx(0.5 * (math.exp(709.0) - 710.0), rel=1e-14)
    assert torch.isposinf(out64[1:]).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32_and_rounded_once(dtype):
    finfo = torch.finfo(dtype)
    gen = torch.Generator().manual_seed(50)
    top = 11.7 if dtype == torch.float16 else 30.0  # fp16: ½ e^11.7 ≈ 60,250 < 65,504
    logvar = torch.linspace(-30.0, top, 401).to(dtype)
    mu = ((torch.rand(401, generator=gen) * 2 - 1) * (300 if dtype == torch.float16 else 1e3)).to(
        dtype
    )
    prior_mu = torch.randn(401, generator=gen).to(dtype)
    prior_logvar = (torch.rand(401, generator=gen) * 2).to(dtype)  # Δ stays below ~11.7 too
    # float64 reference from the same (half-precision) inputs, by torch.distributions
    m, lv, pm, plv = (t.double() for t in (mu, logvar, prior_mu, prior_logvar))
    std_normal = Normal(torch.zeros_like(m), torch.ones_like(m))
    ref = kl_divergence(Normal(m, torch.exp(0.5 * lv)), std_normal)
    ref_prior = kl_divergence(Normal(m, torch.exp(0.5 * lv)), Normal(pm, torch.exp(0.5 * plv)))
    for out, expected in (
        (gaussian_kl_per_dim(mu, logvar), ref),
        (gaussian_kl_per_dim(mu, logvar, prior_mu, prior_logvar), ref_prior),
    ):
        assert out.dtype == dtype
        # one rounding to the half dtype: within one of its ulps (relative eps) wherever the
        # exact KL fits in it, and +inf only where it does not (fp16: ½ μ² + ½ e^lv > 65,504)
        fits, over = expected < finfo.max, expected > finfo.max * (1 + finfo.eps)
        assert fits.sum() > 300
        torch.testing.assert_close(out.double()[fits], expected[fits], rtol=finfo.eps, atol=0)
        assert torch.isposinf(out[over]).all()
    # sums and means in float32 before rounding: a (1, 401) batch's KL of ~1e7 nats fits in
    # bf16, not in fp16, whose sum is then inf like the exact value
    total = gaussian_kl(mu[None], logvar[None])
    assert total.dtype == dtype
    loss = GaussianKLLoss()(mu.view(401, 1), logvar.view(401, 1))
    torch.testing.assert_close(loss.double(), ref.mean(), rtol=finfo.eps, atol=0)
    if ref.sum() < finfo.max:
        torch.testing.assert_close(total.double(), ref.sum()[None], rtol=finfo.eps, atol=0)
    else:
        assert torch.isposinf(total).all()
    # the gradient: ½ (e^lv − 1) for logvar, μ for mu, rounded to the half dtype, finite
    mu_g, lv_g = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
    gaussian_kl_per_dim(mu_g, lv_g).sum().backward()
    assert lv_g.grad.dtype == dtype
    assert torch.isfinite(lv_g.grad).all()
    torch.testing.assert_close(lv_g.grad.double(), 0.5 * torch.expm1(lv), rtol=finfo.eps, atol=0)
    torch.testing.assert_close(mu_g.grad.double(), m, rtol=finfo.eps, atol=0)


def test_float16_overflows_only_where_the_kl_exceeds_its_range():
    # ½ (e^lv − 1 − lv) against N(0, 1): 11.1 → 33,…, 11.7 → 60,…; 11.8 → 66,… > 65,504
    logvar = torch.tensor([11.0, 11.1, 11.5, 11.7, 11.8, 12.0], dtype=torch.float16)
    out = gaussian_kl_per_dim(torch.zeros(6, dtype=torch.float16), logvar)
    for got, v in zip(out.tolist(), logvar.tolist(), strict=True):
        exact = 0.5 * (math.expm1(v) - v)
        if exact < 65504:
            assert got == pytest.approx(exact, rel=2**-10), v
        else:
            assert got == math.inf, v
    assert torch.isfinite(out[:4]).all()  # before: inf from logvar ≥ 11.1 (e^11.1 > 65,504)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_mvn_kl_half_precision_matches_float64(dtype):
    gen = torch.Generator().manual_seed(51)
    k = 3
    mu, prior_mu = (torch.randn(2, 8, k, generator=gen) * 3).to(dtype)
    tril, prior_tril = (random_spd_tril(gen, 8, k=k).to(dtype) for _ in range(2))
    ref = kl_divergence(
        MultivariateNormal(mu.double(), scale_tril=tril.double()),
        MultivariateNormal(prior_mu.double(), scale_tril=prior_tril.double()),
    )
    out = mvn_kl(mu, tril, prior_mu, prior_tril)
    assert out.dtype == dtype
    # computed in float32 from the half inputs, rounded once; float32's solves add ~1e-6
    torch.testing.assert_close(out.double(), ref, rtol=torch.finfo(dtype).eps, atol=1e-5)


def test_validation_under_compile_fullgraph_and_vmap_says_to_pass_validate_false():
    p = torch.tensor([[0.2, 0.8], [0.5, 0.5]])
    q = torch.tensor([[0.4, 0.6], [0.3, 0.7]])
    eager = discrete_kl(p, q)
    hint = "validate=True checks the inputs' values on the host.*pass validate=False"
    # backend="eager": Dynamo's tracing (where fullgraph applies) without Inductor's compile time
    full = torch.compile(discrete_kl, fullgraph=True, backend="eager")
    with pytest.raises(Exception, match=hint):
        full(p, q)
    for fn in (discrete_kl, entropy, cross_entropy):
        with pytest.raises(RuntimeError, match=hint):
            torch.func.vmap(fn)(p, q) if fn is not entropy else torch.func.vmap(fn)(p)
    with pytest.raises(RuntimeError, match=hint):
        torch.func.vmap(mvn_kl)(torch.zeros(2, 2), torch.eye(2).expand(2, 2, 2))
    # validate=False: compiles as one graph and vmaps, with the eager values
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda p, q: discrete_kl(p, q, validate=False), fullgraph=True, backend="eager"
    )
    torch.testing.assert_close(compiled(p, q), eager)
    vmapped = torch.func.vmap(lambda p, q: discrete_kl(p, q, validate=False))
    torch.testing.assert_close(vmapped(p, q), eager)
    tril = random_spd_tril(torch.Generator().manual_seed(52), 2, k=2).float()
    torch.testing.assert_close(
        torch.func.vmap(lambda m, t: mvn_kl(m, t, validate=False))(p, tril), mvn_kl(p, tril)
    )
    # without fullgraph the check still runs (eagerly, at a graph break) and still catches
    torch._dynamo.reset()
    partial = torch.compile(discrete_kl, backend="eager")
    torch.testing.assert_close(partial(p, q), eager)
    with pytest.raises(ValueError, match="p does not sum to 1"):
        partial(torch.tensor([[0.2, 0.9], [0.5, 0.5]]), q)


# ------------------------------------------------------------------------------------------
# One set of manners: torch.distributions objects, logits by keyword, torch's broadcasting,
# validate= everywhere
# ------------------------------------------------------------------------------------------


def test_gaussian_functions_take_normal_and_independent_normal_as_kl_divergence_does():
    gen = torch.Generator().manual_seed(30)
    mu, logvar = torch.randn(2, 32, 6, generator=gen, dtype=F64) * 2
    prior_mu, prior_logvar = torch.randn(2, 6, generator=gen, dtype=F64)
    q = Normal(mu, torch.exp(0.5 * logvar))
    p = Normal(prior_mu, torch.exp(0.5 * prior_logvar))  # (6,) against (32, 6): broadcast
    std = Normal(torch.zeros(6, dtype=F64), torch.ones(6, dtype=F64))
    tight = {"rtol": 1e-12, "atol": 1e-12}
    # Normal: per element as kl_divergence; gaussian_kl sums the last (latent) dimension
    torch.testing.assert_close(gaussian_kl_per_dim(q, p), kl_divergence(q, p), **tight)
    torch.testing.assert_close(gaussian_kl_per_dim(q), kl_divergence(q, std), **tight)
    both = kl_divergence(Independent(q, 1), Independent(p, 1))
    torch.testing.assert_close(gaussian_kl(q, p), both, **tight)
    # Independent(Normal): kl_divergence exactly, also with two event dimensions
    torch.testing.assert_close(gaussian_kl(Independent(q, 1), Independent(p, 1)), both, **tight)
    q2, p2 = Independent(q, 2), Independent(Normal(prior_mu.expand(32, 6), p.scale), 2)
    torch.testing.assert_close(gaussian_kl(q2, p2), kl_divergence(q2, p2), **tight)
    assert gaussian_kl(q2).shape == ()
    # and the tensor form gives the same numbers
    torch.testing.assert_close(gaussian_kl(q, p), gaussian_kl(mu, logvar, prior_mu, prior_logvar))
    with pytest.raises(TypeError, match="use mvn_kl"):
        gaussian_kl(MultivariateNormal(mu, torch.eye(6, dtype=F64)))
    with pytest.raises(TypeError, match="pass the prior as a distribution too"):
        gaussian_kl(q, None, prior_mu)
    with pytest.raises(TypeError, match="logvar is required"):
        gaussian_kl(mu)


def test_mvn_kl_takes_multivariate_normal_objects():
    gen = torch.Generator().manual_seed(31)
    q = MultivariateNormal(
        torch.randn(5, 3, generator=gen, dtype=F64), scale_tril=random_spd_tril(gen, 5, k=3)
    )
    p = MultivariateNormal(
        torch.randn(3, generator=gen, dtype=F64), scale_tril=random_spd_tril(gen, k=3)
    )
    torch.testing.assert_close(mvn_kl(q, p), kl_divergence(q, p), rtol=1e-10, atol=1e-12)
    std = MultivariateNormal(torch.zeros(3, dtype=F64), torch.eye(3, dtype=F64))
    torch.testing.assert_close(mvn_kl(q), kl_divergence(q, std), rtol=1e-10, atol=1e-12)
    with pytest.raises(TypeError, match="p must be a MultivariateNormal, got Normal"):
        mvn_kl(q, Normal(0.0, 1.0))


def test_discrete_functions_take_categorical_as_kl_divergence_does():
    gen = torch.Generator().manual_seed(32)
    p_logits = torch.randn(8, 5, generator=gen, dtype=F64)
    p_logits[0, 2] = -math.inf  # an outcome p never takes
    p, q = (
        Categorical(logits=p_logits),
        Categorical(logits=torch.randn(5, generator=gen, dtype=F64)),
    )
    torch.testing.assert_close(discrete_kl(p, q), kl_divergence(p, q), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(entropy(p), p.entropy(), rtol=1e-12, atol=1e-14)
    # a Categorical built from probabilities with a zero where p is not: +inf, as kl_divergence
    q0 = Categorical(probs=torch.tensor([0.5, 0.5, 0.0, 0.0, 0.0], dtype=F64))
    assert torch.isposinf(discrete_kl(p, q0)).all()
    assert torch.isposinf(kl_divergence(p, q0)).all()
    # H(p, q) = H(p) + KL(p ‖ q)
    torch.testing.assert_close(cross_entropy(p, q), p.entropy() + kl_divergence(p, q))
    with pytest.raises(ValueError, match="outcomes are the last dim: use dim=-1"):
        discrete_kl(p, q, dim=0)


def test_logits_by_keyword_match_torch_functional():
    gen = torch.Generator().manual_seed(33)
    p = torch.softmax(torch.randn(16, 10, generator=gen, dtype=F64), -1)
    p[:, 3] = 0.0
    p = p / p.sum(-1, keepdim=True)
    z = torch.randn(16, 10, generator=gen, dtype=F64) * 3  # a model's logits
    # F.cross_entropy takes the logits first, then class probabilities as the target
    torch.testing.assert_close(
        cross_entropy(p, logits=z), torch.nn.functional.cross_entropy(z, p, reduction="none")
    )
    kl_ref = torch.nn.functional.kl_div(z.log_softmax(-1), p, reduction="none").sum(-1)
    torch.testing.assert_close(discrete_kl(p, logits=z), kl_ref)
    torch.testing.assert_close(discrete_kl(p, logits=z), discrete_kl(p, torch.softmax(z, -1)))
    torch.testing.assert_close(entropy(logits=z), Categorical(logits=z).entropy())
    torch.testing.assert_close(cross_entropy(p, logits=z, base=2), cross_entropy(p, logits=z) / LN2)
    # logits along another dim, and −inf logits (q = 0 exactly): +inf where p > 0, 0 where p = 0
    torch.testing.assert_close(discrete_kl(p.T, logits=z.T, dim=0), kl_ref)
    z_inf = z.clone()
    z_inf[:, 3] = -math.inf
    q_inf = torch.softmax(z_inf, -1)  # exactly 0 in column 3, where p is 0 too
    ref_inf = scipy.stats.entropy(p.numpy(), q_inf.numpy(), axis=-1)
    np.testing.assert_allclose(discrete_kl(p, logits=z_inf).numpy(), ref_inf, rtol=1e-12)
    z_inf[0, 0] = -math.inf
    assert torch.isposinf(discrete_kl(p, logits=z_inf)[0])
    # gradients with respect to the logits are torch's: softmax(z) − p
    zg = z.clone().requires_grad_()
    discrete_kl(p, logits=zg).sum().backward()
    torch.testing.assert_close(zg.grad, torch.softmax(z, -1) - p)
    # a user passing logits where probabilities go is told so by validation, not given a number
    with pytest.raises(ValueError, match="q has negative entries"):
        cross_entropy(p, z)
    with pytest.raises(TypeError, match="q \\(probabilities\\) or logits="):
        cross_entropy(p, torch.softmax(z, -1), logits=z)
    with pytest.raises(TypeError, match="p \\(probabilities\\) or logits="):
        entropy()
    for bad, message in (
        (float("nan"), "logits contains NaN"),
        (math.inf, r"logits contains \+inf"),
    ):
        zb = z.clone()
        zb[2, 1] = bad
        with pytest.raises(ValueError, match=message):
            discrete_kl(p, logits=zb)
    with pytest.raises(ValueError, match="-inf only"):
        entropy(logits=torch.full((3,), -math.inf))


def test_discrete_functions_broadcast_as_torch_does():
    gen = torch.Generator().manual_seed(34)
    p = torch.softmax(torch.randn(7, 5, generator=gen, dtype=F64), -1)
    q = torch.softmax(torch.randn(5, generator=gen, dtype=F64), -1)
    expanded = q.expand(7, 5)
    assert torch.equal(discrete_kl(p, q), discrete_kl(p, expanded))
    assert torch.equal(cross_entropy(p, q), cross_entropy(p, expanded))
    assert torch.equal(discrete_kl(q, p), discrete_kl(expanded, p))
    ref = scipy.stats.entropy(p.numpy(), q.numpy()[None].repeat(7, 0), axis=-1)
    np.testing.assert_allclose(discrete_kl(p, q).numpy(), ref, rtol=1e-12)
    sp, sq = smoothed(p, q)
    assert sp.shape == sq.shape == (7, 5)


def test_gaussian_functions_broadcast_as_torch_does():
    gen = torch.Generator().manual_seed(35)
    mu, logvar = torch.randn(2, 3, 1, 4, generator=gen, dtype=F64)
    prior_mu = torch.randn(5, 4, generator=gen, dtype=F64)  # broadcasts to (3, 5, 4)
    out = gaussian_kl(mu, logvar, prior_mu)
    assert out.shape == (3, 5)
    ref = gaussian_kl(mu.expand(3, 5, 4), logvar.expand(3, 5, 4), prior_mu.expand(3, 5, 4))
    assert torch.equal(out, ref)


NAN3 = torch.tensor([0.5, float("nan"), 0.5])
U3 = torch.ones(3) / 3


@pytest.mark.parametrize(
    "call",
    [
        lambda x, v: gaussian_kl(x, torch.zeros(3), validate=v),
        lambda x, v: gaussian_kl_per_dim(torch.zeros(3), torch.zeros(3), x, validate=v),
        lambda x, v: mvn_kl(x, torch.eye(3), validate=v),
        lambda x, v: GaussianKLLoss(validate=v)(x, torch.zeros(3)),
        lambda x, v: GaussianKLLoss(validate=v).reduce(x),
        lambda x, v: entropy(x, validate=v),
        lambda x, v: cross_entropy(U3, logits=x, validate=v),
        lambda x, v: discrete_kl(x, U3, validate=v),
        lambda x, v: smoothed(U3, x, validate=v)[1],
    ],
    ids=["gaussian_kl", "per_dim", "mvn_kl", "loss", "reduce", "H", "H(p,q)", "KL", "smoothed"],
)
def test_every_function_validates_and_validate_false_skips(call):
    with pytest.raises(ValueError, match="contains NaN"):
        call(NAN3, True)
    # validate=False: no check (no host sync): NaN in gives NaN out, nothing raised
    assert call(NAN3, False).isnan().any()
