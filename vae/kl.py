"""KL divergences and entropies, as pure, batched, differentiable torch functions.

Continuous (nats):

* :func:`gaussian_kl_per_dim`, :func:`gaussian_kl`: diagonal Gaussians, closed form.
* :func:`mvn_kl`: full-covariance Gaussians given by Cholesky factors.
* :class:`GaussianKLLoss`: the VAE's KL term against N(0, I), with ``beta`` and free bits.

Discrete (probability vectors along ``dim``; unit chosen by ``base``: e → nats, 2 → bits):

* :func:`entropy`, :func:`cross_entropy`, :func:`discrete_kl`
* :func:`smoothed`: ε-smoothing so that distributions with different supports get a finite KL.

One set of manners for all of them, torch's:

* **Shapes broadcast** as torch broadcasts them (a (d,) prior against (B, d) posteriors, one q
  against a batch of p); nothing is reduced over the batch: every function returns one value per
  sample (per element for the ``_per_dim`` one), and :class:`GaussianKLLoss` reduces with
  ``torch.nn.KLDivLoss``'s reduction names and meanings ('none', 'batchmean', 'sum', 'mean').
* **torch.distributions objects** are accepted where tensors describe one: ``gaussian_kl(q, p)``
  with ``Normal`` / ``Independent(Normal)``, ``mvn_kl(q, p)`` with ``MultivariateNormal``,
  ``discrete_kl(p, q)`` with ``Categorical``; each equals ``torch.distributions.kl_divergence``,
  with ``p=None`` meaning N(0, I) for the Gaussians.
* **Logits by keyword**, where torch users pass them: ``cross_entropy(p, logits=z)``,
  ``discrete_kl(p, logits=z)``, ``entropy(logits=z)``.
* **validate=** (keyword-only, default True) on every function: one host sync that checks the
  inputs' values (NaN; for probabilities also negatives and sums ≠ 1; zero Cholesky diagonals).
  It cannot run inside ``torch.compile(fullgraph=True)`` or ``torch.func.vmap``: pass
  ``validate=False`` there (the error says so), and in hot loops.

Every function keeps the device of its inputs and returns their (promoted) floating dtype. The
Gaussian functions compute float16 and bfloat16 inputs in float32 (:func:`_compute_dtypes`) and
round the result once: float16 cannot hold e^{logvar} for logvar > 11.09. No silent NaN: an empty
batch gives an empty result or a sum of 0 (a mean over no samples is a ``ValueError``),
``logvar = ±inf`` gives +inf, and inputs that would give inf or NaN by accident (a Cholesky factor
with a zero on its diagonal, NaN, probabilities that are not a distribution) raise a
``ValueError`` when ``validate``; with ``validate=False`` NaN inputs give NaN.
Conventions for zero probabilities follow Cover & Thomas, *Elements of Information Theory*
(2nd ed., 2006), §2.3: 0 log(0/q) = 0 (also for q = 0) and p log(p/0) = +∞ for p > 0.
"""

from __future__ import annotations

import functools
import math
import warnings
from numbers import Real

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MultivariateNormal, Normal

__all__ = [
    "GaussianKLLoss",
    "cross_entropy",
    "discrete_kl",
    "entropy",
    "gaussian_kl",
    "gaussian_kl_per_dim",
    "mvn_kl",
    "smoothed",
]

# Below this |x|, exp(x) − 1 − x is evaluated by its Taylor series: expm1(x) − x would cancel
# to a relative error of about 2·eps/|x| (≈ 2.4e-3 at x = 1e-4 in float32).
_EXPM1MX_SERIES_BELOW = 0.1
# Taylor coefficients 1/n! for n = 2..10 of exp(x) − 1 − x; the first omitted term, x¹¹/11!, is
# below 1e-16 of the sum for |x| < 0.1. Float32 and narrower stop at n = 6: x⁷/7! is below 5e-9
# of the sum there, under float32's eps (6e-8), and four fewer operations on the training path.
_EXPM1MX_COEFFS = tuple(1.0 / math.factorial(n) for n in range(2, 11))
_EXPM1MX_COEFFS_F32 = _EXPM1MX_COEFFS[:5]


def _expm1mx(x: Tensor) -> Tensor:
    """exp(x) − 1 − x ≥ 0 to within ~10 ulp relative wherever exp(x) is finite (also x → 0).

    +inf for x = ±inf and wherever e^x overflows the dtype; the gradient e^x − 1 is finite wherever
    the value is (+inf at x = +inf, −1 at x = −inf).
    """
    small = x.abs() < _EXPM1MX_SERIES_BELOW
    # Double `where`: the series only ever sees small arguments, so neither branch can produce
    # inf/nan that would leak into the gradient of the branch that is not selected.
    xs = torch.where(small, x, torch.zeros_like(x))
    coeffs = _EXPM1MX_COEFFS if x.dtype == torch.float64 else _EXPM1MX_COEFFS_F32
    series = xs * coeffs[-1] + coeffs[-2]
    for c in reversed(coeffs[:-2]):  # Horner: x² (1/2! + x (1/3! + x (… + x/n!)))
        series = series * xs + c
    series = series * xs * xs
    # expm1(x) − x is inf − inf = NaN at x = +inf. Capping the subtrahend at ln(max) + 1, beyond
    # which expm1(x) is already inf in this dtype, changes no finite value and gives +inf there.
    cap = math.log(torch.finfo(x.dtype).max) + 1.0
    return torch.where(small, series, torch.expm1(x) - x.clamp(max=cap))


def _check_float(name: str, t: Tensor) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")


def _compute_dtypes(*tensors: Tensor | None) -> tuple[torch.dtype, torch.dtype]:
    """(result dtype, dtype to compute in) of the Gaussian functions for these inputs.

    The result dtype is the inputs' promoted dtype; half precision (float16, bfloat16) is computed
    in float32 and rounded once at the end, so float16 does not overflow in e^{logvar} (> 65504 for
    logvar > 11.09) long before the KL itself does, and bfloat16 keeps float32's accuracy for
    small Δ. For float32 and float64 both are the same and :func:`_as` returns the tensors
    themselves: the float32 training path pays a few dtype comparisons, no copy and no kernel.
    """
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors if t is not None))
    return dtype, (torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype)


def _as(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``dtype``; without a call into torch when it already is (``.to``'s cost:
    benchmarks/README.md)."""
    return t if t.dtype == dtype else t.to(dtype)


_HOST_CHECK_HINT = (
    "vae.kl: validate=True checks the inputs' values on the host, which {what} cannot do: "
    "pass validate=False {where} (and check the inputs once outside it)"
)


def _any_on_host(flags: Tensor) -> bool:
    """``bool(flags.any())``, the one host sync of a validation, with a useful error where none is
    possible.

    Under ``torch.compile`` this is a graph break whose message says to pass ``validate=False``
    (``fullgraph=True`` refuses graph breaks and shows it); without ``fullgraph`` the check still
    runs, eagerly. Under ``torch.func.vmap``, which cannot read values, a RuntimeError says the same.
    """
    if torch.compiler.is_compiling():
        what, where = "torch.compile(fullgraph=True)", "in compiled code"
        # torch._dynamo is imported whenever this branch is traced
        torch._dynamo.graph_break(msg=_HOST_CHECK_HINT.format(what=what, where=where))
    try:
        return bool(flags.any())
    except RuntimeError as err:  # functorch: "data-dependent control flow" is not supported
        hint = _HOST_CHECK_HINT.format(what="torch.func.vmap", where="inside the transform")
        raise RuntimeError(hint) from err


def _check_no_nan(named: dict[str, Tensor | None]) -> None:
    """ValueError naming the first input that contains NaN (one host sync for all of them)."""
    given = {k: t for k, t in named.items() if t is not None and t.numel()}
    if not given or not _any_on_host(torch.stack([t.isnan().any() for t in given.values()])):
        return
    name = next(k for k, t in given.items() if t.isnan().any())
    raise ValueError(f"{name} contains NaN")


# --------------------------------------------------------------------------------------------
# Gaussian
# --------------------------------------------------------------------------------------------


def gaussian_kl_per_dim(
    mu: Tensor | Distribution,
    logvar: Tensor | Distribution | None = None,
    prior_mu: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    r"""Per-dimension KL(N(mu, exp(logvar)) ‖ N(prior_mu, exp(prior_logvar))) in nats.

    Also ``gaussian_kl_per_dim(q)`` and ``gaussian_kl_per_dim(q, p)`` with ``torch.distributions``
    objects, as ``kl_divergence(q, p)`` takes them: ``q`` a ``Normal`` or ``Independent(Normal)``,
    ``p`` one of those or ``None`` (N(0, I)). The result then has the shape of ``q``'s batch and
    event dimensions together (one value per scalar Gaussian), i.e. ``kl_divergence(q.base_dist,
    p.base_dist)`` for ``Independent``.

    Each dimension is an independent univariate Gaussian, so the KL of the diagonal Gaussian is
    the sum of these terms (see :func:`gaussian_kl`). With Δ = logvar − prior_logvar:

    .. math::
        \mathrm{KL}_j = \tfrac12\big[(e^{Δ_j} − 1 − Δ_j) + (μ_j − μ^0_j)^2 e^{-\log σ^2_{0,j}}\big]

    and against the standard normal (both priors ``None``): ½ (μ² + e^{logvar} − 1 − logvar).
    e^Δ − 1 − Δ is evaluated without catastrophic cancellation (``expm1``, and for |Δ| < 0.1 its
    Taylor series), so the result stays finite and accurate in float32 for logvar ∈ [−30, 30]
    and |mu| ≤ 1e3, gradients included: relative error ≤ 1e-6 against N(0, I) and ≤ 5e-6 with
    a prior, where rounding Δ itself costs up to |Δ|·2⁻²⁴ (the condition number of exp).

    Extremes: ``logvar = ±inf`` (a posterior of infinite or zero variance) gives +inf, as do
    inputs where e^Δ overflows (Δ > 88.72 in float32, > 709.78 in float64; so also within ln 2
    below the point where the KL ½ e^Δ itself would overflow) or the KL exceeds the dtype's range;
    the gradient is finite wherever the value is.
    float16 / bfloat16 inputs are computed in float32 and the result rounded to their dtype once,
    so float16 is within one float16 ulp of the exact value up to its range: inf only where the KL
    itself exceeds 65504 (against N(0, I): logvar ≳ 11.8, or |mu| ≳ 362). An empty batch,
    e.g. ``(0, d)``, gives an empty result. inf − inf at the same position of a posterior and a
    prior argument (e.g. ``mu = prior_mu = inf``) is undefined and gives NaN.

    Args:
        mu: posterior means, shape (..., d); or the posterior as a distribution (see above).
        logvar: posterior log-variances ln σ² (natural log), shape broadcastable with ``mu``; or,
            when ``mu`` is a distribution, the prior as one (``None``: N(0, I)).
        prior_mu: prior means, broadcastable with ``mu``, e.g. (d,) against (B, d).
            ``None`` means 0.
        prior_logvar: prior log-variances, broadcastable likewise. ``None`` means 0 (unit variance).
        validate: check that no input is NaN (one host sync), as every function of this module
            checks its inputs' values; pass False in hot loops, inside
            ``torch.compile(fullgraph=True)`` or ``torch.func.vmap`` (keyword-only).

    Returns:
        Shape ``broadcast(mu, logvar, prior_mu, prior_logvar)`` (nothing reduced), nats ≥ 0.

    Raises:
        TypeError: an argument is not a floating-point tensor, or a distribution of another kind.
        ValueError: the shapes do not broadcast, an argument is 0-dimensional, or (when
            ``validate``) an input contains NaN.
    """
    params, _ = _gaussian_args(mu, logvar, prior_mu, prior_logvar)
    kl, dtype = _gaussian_kl_per_dim(*params, validate=validate)
    return _as(kl, dtype)


def _gaussian_kl_per_dim(
    mu: Tensor,
    logvar: Tensor,
    prior_mu: Tensor | None,
    prior_logvar: Tensor | None,
    *,
    validate: bool,
) -> tuple[Tensor, torch.dtype]:
    """:func:`gaussian_kl_per_dim` in the compute dtype (float32 for half inputs), and the dtype
    to return, so that callers reducing it (:func:`gaussian_kl`, :class:`GaussianKLLoss`) sum
    before rounding to half precision."""
    args = {"mu": mu, "logvar": logvar, "prior_mu": prior_mu, "prior_logvar": prior_logvar}
    given = {k: v for k, v in args.items() if v is not None}
    for name, t in given.items():
        _check_float(name, t)
        if t.dim() == 0:
            raise ValueError(f"{name} must have at least one (latent) dimension, got a scalar")
    try:
        torch.broadcast_shapes(*(t.shape for t in given.values()))
    except RuntimeError as err:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in given.items())
        raise ValueError(f"shapes do not broadcast: {shapes}") from err
    if validate:
        _check_no_nan(given)
    dtype, compute = _compute_dtypes(mu, logvar, prior_mu, prior_logvar)
    mu, logvar = _as(mu, compute), _as(logvar, compute)  # the same tensors unless half precision

    # General diagonal case, one dimension at a time (Rasmussen & Williams 2006, GPML, app. A.5):
    # KL = ½ [σ²/σ₀² − 1 − ln(σ²/σ₀²) + (μ − μ₀)²/σ₀²] with σ²/σ₀² = e^Δ, 1/σ₀² = e^{−ln σ₀²}.
    diff = mu if prior_mu is None else mu - _as(prior_mu, compute)
    if prior_logvar is None:
        # Unit prior variance. Against N(0, I) this is Kingma & Welling (2013), "Auto-Encoding
        # Variational Bayes", appendix B: −KL = ½ Σ (1 + log σ² − μ² − σ²), here written as
        # ½ (μ² + (e^{log σ²} − 1 − log σ²)) (the sum commutes: the same bits in either order).
        return 0.5 * (_expm1mx(logvar) + diff.square()), dtype
    prior_logvar = _as(prior_logvar, compute)
    kl = 0.5 * (_expm1mx(logvar - prior_logvar) + diff.square() * torch.exp(-prior_logvar))
    return kl, dtype


def gaussian_kl(
    mu: Tensor | Distribution,
    logvar: Tensor | Distribution | None = None,
    prior_mu: Tensor | None = None,
    prior_logvar: Tensor | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    r"""KL(N(mu, diag e^{logvar}) ‖ N(prior_mu, diag e^{prior_logvar})) in nats.

    The sum over the last (latent) dimension of :func:`gaussian_kl_per_dim` (same extremes and
    precision; half-precision inputs are summed in float32 before the result is rounded); with no
    prior it is the VAE's closed form against N(0, I), ½ Σ_j (μ_j² + σ_j² − 1 − ln σ_j²)
    (Kingma & Welling 2013, appendix B). An empty batch ``(0, d)`` gives shape ``(0,)``; ``d = 0``
    gives 0 (a sum over no dimensions).

    ``gaussian_kl(q, p)`` takes ``torch.distributions`` objects as :func:`gaussian_kl_per_dim`
    does and sums over ``q``'s event dimensions: for ``Independent(Normal, n)`` it equals
    ``kl_divergence(q, p)``; a plain ``Normal`` of shape (..., d) is read as d independent latent
    dimensions, its last one summed (``kl_divergence(Independent(q, 1), Independent(p, 1))``).

    Args:
        mu: posterior means, shape (..., d); or the posterior as a distribution.
        logvar: posterior log-variances ln σ², broadcastable with ``mu``; or the prior as a
            distribution when ``mu`` is one (``None``: N(0, I)).
        prior_mu: prior means, broadcastable (e.g. (d,) against (B, d)); ``None`` means 0.
        prior_logvar: prior log-variances, broadcastable; ``None`` means 0.
        validate: as in :func:`gaussian_kl_per_dim` (keyword-only).

    Returns:
        Tensor of shape ``broadcast(...)[:-1]`` (the batch shape): the last dimension is summed.
        Nats, ≥ 0, in the inputs' promoted dtype.
    """
    params, event_dims = _gaussian_args(mu, logvar, prior_mu, prior_logvar)
    kl, dtype = _gaussian_kl_per_dim(*params, validate=validate)
    return _as(kl.sum(dim=tuple(range(-max(event_dims, 1), 0))), dtype)


def _normal_params(name: str, d: Distribution) -> tuple[Tensor, Tensor, int]:
    """(mean, log-variance, number of event dimensions) of a ``Normal`` or
    ``Independent(Normal)``."""
    event_dims = 0
    if isinstance(d, Independent) and isinstance(d.base_dist, Normal):
        d, event_dims = d.base_dist, d.reinterpreted_batch_ndims
    if isinstance(d, Normal):
        return d.loc, 2.0 * d.scale.log(), event_dims
    other = "mvn_kl" if isinstance(d, MultivariateNormal) else "a Normal or Independent(Normal)"
    raise TypeError(
        f"{name} must be a Normal or Independent(Normal) here, got {type(d).__name__}; use {other}"
    )


def _gaussian_args(
    mu: Tensor | Distribution,
    logvar: Tensor | Distribution | None,
    prior_mu: Tensor | None,
    prior_logvar: Tensor | None,
) -> tuple[tuple[Tensor, Tensor, Tensor | None, Tensor | None], int]:
    """The four tensors of the Gaussian functions and the number of event dimensions to sum, from
    either call form: tensors ``(mu, logvar, prior_mu, prior_logvar)`` or distributions ``(q, p)``.
    """
    if not isinstance(mu, Distribution):
        if logvar is None:
            raise TypeError("logvar is required when mu is a tensor (or pass a Normal as mu)")
        if isinstance(logvar, Distribution):
            raise TypeError("a prior distribution needs the posterior as one too: (q, p)")
        return (mu, logvar, prior_mu, prior_logvar), 1
    if prior_mu is not None or prior_logvar is not None:
        raise TypeError(
            "with a distribution as the posterior, pass the prior as a distribution too: (q, p)"
        )
    q_mu, q_logvar, event_dims = _normal_params("q", mu)
    if logvar is None:
        return (q_mu, q_logvar, None, None), event_dims
    if not isinstance(logvar, Distribution):
        raise TypeError(f"the prior must be a distribution or None, got {type(logvar).__name__}")
    p_mu, p_logvar, _ = _normal_params("p", logvar)
    return (q_mu, q_logvar, p_mu, p_logvar), event_dims


def mvn_kl(
    mu: Tensor | MultivariateNormal,
    scale_tril: Tensor | MultivariateNormal | None = None,
    prior_mu: Tensor | None = None,
    prior_scale_tril: Tensor | None = None,
    *,
    validate: bool = True,
) -> Tensor:
    r"""KL(N(mu, L Lᵀ) ‖ N(prior_mu, L₀ L₀ᵀ)) in nats, for full covariance matrices.

    .. math::
        \mathrm{KL} = \tfrac12\big[\operatorname{tr}(Σ_0^{-1}Σ) + (μ_0 − μ)^ᵀ Σ_0^{-1}(μ_0 − μ)
                      − k + \ln\det Σ_0 − \ln\det Σ\big]

    computed with triangular solves only: tr(Σ₀⁻¹Σ) = ‖L₀⁻¹L‖²_F, the Mahalanobis term is
    ‖L₀⁻¹(μ − μ₀)‖², and ln det Σ = 2 Σ_i ln |L_ii|. Against N(0, I) (both priors ``None``)
    this is ½ (tr Σ + μᵀμ − k − ln det Σ).

    Only the lower triangles of the scale matrices are read (the strict upper triangle is
    ignored, as in ``torch.linalg.solve_triangular``); their diagonals must be nonzero: a zero
    makes Σ (or Σ₀) singular, where the KL is +inf or undefined (∞ − ∞), so it is rejected
    rather than returned as inf/NaN. float16 / bfloat16 inputs are computed in float32 and the
    result rounded to their dtype. An empty batch, e.g. mu ``(0, k)``, gives shape ``(0,)``.
    ``mvn_kl(q)`` and ``mvn_kl(q, p)`` take ``MultivariateNormal`` objects (their ``loc`` and
    ``scale_tril``), as ``kl_divergence(q, p)`` does; ``p=None`` is N(0, I).

    Args:
        mu: means, shape (..., k); or q, a ``MultivariateNormal``.
        scale_tril: lower-triangular Cholesky factors L of the covariance Σ = L Lᵀ, (..., k, k);
            or p, a ``MultivariateNormal`` or ``None``, when ``mu`` is a distribution.
        prior_mu: prior means, (..., k), broadcastable; ``None`` means 0.
        prior_scale_tril: prior Cholesky factors, (..., k, k), broadcastable; ``None`` means I.
        validate: check that the diagonals are nonzero (one host sync); pass False to skip it,
            e.g. under ``torch.compile(fullgraph=True)`` or ``torch.func.vmap`` (keyword-only).

    Returns the broadcast batch shape (all but the event dimension k), in nats, in the inputs'
    promoted dtype. Raises ``TypeError`` for an argument that is not a floating-point tensor,
    ``ValueError`` for a scale matrix that is not k × k, batch shapes that do not broadcast, or
    (when ``validate``) a zero on a scale matrix's diagonal.
    """
    mu, scale_tril, prior_mu, prior_scale_tril, batch = _mvn_inputs(
        mu, scale_tril, prior_mu, prior_scale_tril, validate=validate
    )
    k = mu.shape[-1]
    dtype, compute = _compute_dtypes(mu, scale_tril, prior_mu, prior_scale_tril)
    L = _as(scale_tril, compute).tril()
    diff = _as(mu, compute) if prior_mu is None else _as(mu, compute) - _as(prior_mu, compute)
    # ln det Σ = ln det(L Lᵀ) = 2 Σ ln |L_ii|
    logdet = 2.0 * L.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
    if prior_scale_tril is None:
        # Prior N(μ₀, I) (μ₀ = 0 if None): ½ (tr Σ + ‖μ − μ₀‖² − k − ln det Σ), tr(L Lᵀ) = ‖L‖²_F.
        kl = 0.5 * (L.square().sum((-2, -1)) + diff.square().sum(-1) - k - logdet)
        return _as(kl, dtype)
    # Full-covariance prior: L₀ its lower triangle, broadcast to the batch.
    L0 = _as(prior_scale_tril, compute).tril()
    L0b = L0.expand(*batch, k, k)
    # tr(Σ₀⁻¹Σ) = tr(L₀⁻ᵀ L₀⁻¹ L Lᵀ) = ‖L₀⁻¹ L‖²_F, with M = L₀⁻¹L from a triangular solve.
    M = torch.linalg.solve_triangular(L0b, L.expand(*batch, k, k), upper=False)
    trace = M.square().sum((-2, -1))
    # (μ − μ₀)ᵀ Σ₀⁻¹ (μ − μ₀) = ‖L₀⁻¹ (μ − μ₀)‖²
    v = torch.linalg.solve_triangular(L0b, diff.expand(*batch, k).unsqueeze(-1), upper=False)
    maha = v.squeeze(-1).square().sum(-1)
    prior_logdet = 2.0 * L0.diagonal(dim1=-2, dim2=-1).abs().log().sum(-1)
    # Rasmussen & Williams (2006), GPML, appendix A.5 (KL between two multivariate Gaussians).
    return _as(0.5 * (trace + maha - k + prior_logdet - logdet), dtype)


def _mvn_inputs(
    mu: Tensor | MultivariateNormal,
    scale_tril: Tensor | MultivariateNormal | None,
    prior_mu: Tensor | None,
    prior_scale_tril: Tensor | None,
    *,
    validate: bool,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None, torch.Size]:
    """The tensors of :func:`mvn_kl` from either call form (tensors, or distributions (q, p)) and
    their broadcast batch shape, after checking their dtypes and shapes (and, when ``validate``,
    the scale matrices' diagonals); its errors are mvn_kl's."""
    if isinstance(mu, Distribution):
        for name, d in (("q", mu), ("p", scale_tril)):
            if d is not None and not isinstance(d, MultivariateNormal):
                raise TypeError(f"{name} must be a MultivariateNormal, got {type(d).__name__}")
        if prior_mu is not None or prior_scale_tril is not None:
            raise TypeError("with q a distribution, pass the prior as one too: mvn_kl(q, p)")
        if scale_tril is not None:  # p; None is N(0, I)
            prior_mu, prior_scale_tril = scale_tril.loc, scale_tril.scale_tril
        mu, scale_tril = mu.loc, mu.scale_tril
    elif not isinstance(scale_tril, Tensor):
        raise TypeError("scale_tril must be a tensor when mu is one (or pass q, p)")
    _check_float("mu", mu)
    _check_float("scale_tril", scale_tril)
    if mu.dim() < 1:
        raise ValueError("mu must have shape (..., k), got a scalar")
    k = mu.shape[-1]
    named = {"scale_tril": scale_tril}
    if prior_scale_tril is not None:
        named["prior_scale_tril"] = prior_scale_tril
    for name, t in named.items():
        _check_float(name, t)
        if t.dim() < 2 or t.shape[-2:] != (k, k):
            raise ValueError(f"{name} must have shape (..., {k}, {k}), got {tuple(t.shape)}")
    if prior_mu is not None:
        _check_float("prior_mu", prior_mu)
        if prior_mu.dim() < 1 or prior_mu.shape[-1] != k:
            raise ValueError(f"prior_mu must have shape (..., {k}), got {tuple(prior_mu.shape)}")
    pairs = ((mu, 1), (scale_tril, 2), (prior_mu, 1), (prior_scale_tril, 2))
    batch_shapes = [t.shape[:-n] for t, n in pairs if t is not None]  # without the event dims
    try:
        batch = torch.broadcast_shapes(*batch_shapes)
    except RuntimeError as err:
        raise ValueError(
            f"batch shapes do not broadcast: {[tuple(s) for s in batch_shapes]}"
        ) from err

    if validate:
        _check_no_nan({"mu": mu, **named, "prior_mu": prior_mu})
        for name, t in named.items():
            _check_nonzero_diagonal(name, t)
    return mu, scale_tril, prior_mu, prior_scale_tril, batch


def _check_nonzero_diagonal(name: str, tril: Tensor) -> None:
    """ValueError naming the first batch index whose Cholesky factor has a zero on its diagonal."""
    zero = tril.diagonal(dim1=-2, dim2=-1) == 0  # (..., k)
    if not _any_on_host(zero):
        return
    where = tuple(zero.nonzero()[0].tolist())
    batch, row = where[:-1], where[-1]
    at = f"at batch index {batch}, " if batch else ""
    raise ValueError(
        f"{name} has a zero on its diagonal ({at}row {row}): the covariance L Lᵀ is singular, "
        "so the KL is infinite or undefined; pass Cholesky factors with a nonzero diagonal "
        "(e.g. torch.linalg.cholesky of a positive-definite matrix)"
    )


# --------------------------------------------------------------------------------------------
# The VAE loss term
# --------------------------------------------------------------------------------------------

#: torch.nn.KLDivLoss's reduction names, with its meanings (see GaussianKLLoss)
REDUCTIONS = ("none", "batchmean", "sum", "mean")


class GaussianKLLoss(nn.Module):
    r"""β-weighted KL(q(z|x) ‖ N(0, I)) of a diagonal-Gaussian encoder, optionally with free bits.

    ``forward(mu, logvar)`` takes encoder outputs of shape (..., d) (usually (B, d)), or
    ``forward(q)`` a ``Normal`` / ``Independent(Normal)`` posterior (its event dimensions are the
    latent dimensions). The reductions are ``torch.nn.KLDivLoss``'s names with its meanings,
    applied to the per-element KL (nats, one value per latent dimension of each sample):

    * ``reduction='batchmean'`` (default): β · sum / (batch size), the KL per sample averaged
      over the batch, a scalar (the −ELBO's KL term in nats per sample). As torch, the batch size
      is ``size(0)``; a (d,) input is one sample.
    * ``reduction='sum'``: β · the sum over the batch and the latent dimensions, a scalar;
    * ``reduction='mean'``: β · the mean over every element, i.e. the 'batchmean' value divided
      by d as well (torch's 'mean'; a warning says so, as torch's does: it is not the KL);
    * ``reduction='none'``: β · the per-element KL, shape (..., d) (only without free bits).

    The default differs from ``KLDivLoss``'s (``'mean'``, which torch itself warns is not the
    KL): ``GaussianKLLoss()`` is the KL per sample.

    **Free bits** (Kingma et al. 2016, "Improved Variational Inference with Inverse
    Autoregressive Flow", appendix C.8), λ = ``free_bits`` nats per latent dimension: each
    dimension's batch-mean KL, K_j = mean_b KL_bj, is replaced by max(λ, K_j), so the 'sum' is
    β N Σ_j max(λ, K_j) (N = number of samples), and 'batchmean' and 'mean' divide that as above
    ('batchmean' of a (B, d) input: β Σ_j max(λ, K_j)). A dimension whose K_j is below λ then
    contributes the constant λ and gets no gradient: the encoder is not pushed to use less than
    λ nats in it. The clamp is applied to batch means, so there are no per-element values:
    ``reduction='none'`` with ``free_bits > 0`` is a ValueError. ``free_bits=0`` is the plain KL.

    **Empty batch** (N = 0): 'sum' gives 0 (a sum over no samples, also with free bits), 'none'
    an empty tensor, and 'batchmean' / 'mean' raise a ValueError, since a mean over nothing is
    undefined (0/0 = NaN). float16 / bfloat16 inputs are computed and reduced in float32 and the
    result is rounded to their dtype (see :func:`gaussian_kl_per_dim`).

    ``beta`` and ``free_bits`` are validated properties and may be changed between steps
    (e.g. for KL annealing).

    Args:
        reduction: 'batchmean' | 'sum' | 'mean' | 'none' (keyword-only).
        beta: weight of the KL term, ≥ 0 (keyword-only).
        free_bits: λ in nats per latent dimension, ≥ 0 (keyword-only).
        validate: check that no input is NaN (one host sync per call); pass False in compiled
            or vmapped code (keyword-only).
    """

    def __init__(
        self,
        *,
        reduction: str = "batchmean",
        beta: float = 1.0,
        free_bits: float = 0.0,
        validate: bool = True,
    ):
        super().__init__()
        self._free_bits = 0.0
        self.reduction = reduction
        self.beta = beta
        self.free_bits = free_bits
        self.validate = bool(validate)

    @property
    def reduction(self) -> str:
        return self._reduction

    @reduction.setter
    def reduction(self, value: str) -> None:
        if value not in REDUCTIONS:
            allowed = ", ".join(repr(r) for r in REDUCTIONS)
            raise ValueError(f"reduction must be one of {allowed}, got {value!r}")
        _check_free_bits_reduction(self._free_bits, value)
        if value == "mean":
            warnings.warn(_MEAN_WARNING, UserWarning, stacklevel=3)
        self._reduction = value

    @property
    def beta(self) -> float:
        return self._beta

    @beta.setter
    def beta(self, value: float) -> None:
        self._beta = _non_negative("beta", value)

    @property
    def free_bits(self) -> float:
        return self._free_bits

    @free_bits.setter
    def free_bits(self, value: float) -> None:
        value = _non_negative("free_bits", value)
        _check_free_bits_reduction(value, self._reduction)
        self._free_bits = value

    def forward(self, mu: Tensor | Distribution, logvar: Tensor | None = None) -> Tensor:
        if isinstance(mu, Distribution):
            if logvar is not None:
                raise TypeError(
                    "GaussianKLLoss()(q) takes the posterior alone: the prior is N(0, I)"
                )
            mu, logvar, event_dims = _normal_params("q", mu)
            if event_dims > 1:  # the latent dimensions as one, so free bits count each once
                mu, logvar = mu.flatten(-event_dims), logvar.flatten(-event_dims)
        elif logvar is None:
            raise TypeError("GaussianKLLoss()(mu, logvar): logvar is missing (or pass a Normal)")
        per_dim, dtype = _gaussian_kl_per_dim(mu, logvar, None, None, validate=self.validate)
        return _as(self._reduce(per_dim), dtype)

    def reduce(self, per_dim: Tensor) -> Tensor:
        """β, free bits and the reduction applied to an already computed per-dimension KL.

        ``per_dim`` ``(..., d)``, e.g. from :func:`gaussian_kl_per_dim`: ``forward(mu, logvar)`` is
        ``reduce(gaussian_kl_per_dim(mu, logvar))``, for callers that need the per-dimension KL
        anyway (logging it, say) and should not compute it twice. Returned in ``per_dim``'s dtype;
        half precision is reduced in float32.
        """
        _check_float("per_dim", per_dim)
        if per_dim.dim() == 0:
            raise ValueError("per_dim must have shape (..., d), got a scalar")
        if self.validate:
            _check_no_nan({"per_dim": per_dim})
        dtype, compute = _compute_dtypes(per_dim)
        return _as(self._reduce(_as(per_dim, compute)), dtype)

    def _reduce(self, per_dim: Tensor) -> Tensor:
        if self._reduction == "none":
            return self._beta * per_dim
        n = math.prod(per_dim.shape[:-1])  # samples in the batch (static: no host sync)
        # torch's batchmean divides by size(0); a (d,) input is one sample
        divisor = {"sum": 1, "batchmean": per_dim.shape[0] if per_dim.dim() > 1 else 1}.get(
            self._reduction, per_dim.numel()
        )
        if divisor == 0:
            raise ValueError(
                f"GaussianKLLoss(reduction={self._reduction!r}) got an empty batch (shape "
                f"{tuple(per_dim.shape)}): a mean over nothing is undefined; skip the empty "
                "batch or use reduction='sum', which gives 0"
            )
        if self._free_bits > 0 and n > 0:
            dim_means = per_dim.reshape(n, per_dim.shape[-1]).mean(0)  # K_j, shape (d,)
            # Kingma et al. (2016), appendix C.8: Σ_j max(λ, E_batch[KL_j]), N times for the sum
            total = n * dim_means.clamp(min=self._free_bits).sum()
        else:  # also free bits over N = 0 samples: N · Σ_j max(λ, K_j) = 0, not 0 · NaN
            total = per_dim.sum()
        return self._beta * (total if divisor == 1 else total / divisor)

    def extra_repr(self) -> str:
        return (
            f"reduction={self._reduction!r}, beta={self._beta}, free_bits={self._free_bits}, "
            f"validate={self.validate}"
        )


_MEAN_WARNING = (
    "GaussianKLLoss(reduction='mean') divides the KL by the batch size and by the number of "
    "latent dimensions, as torch.nn.KLDivLoss's 'mean' does: it is not the KL per sample. "
    "'batchmean' (the default) is the KL per sample averaged over the batch, what "
    "reduction='mean' meant in vae 0.1.0"
)


def _check_free_bits_reduction(free_bits: float, reduction: str) -> None:
    if free_bits > 0 and reduction == "none":
        raise ValueError(
            "free_bits > 0 needs reduction='batchmean', 'sum' or 'mean': free bits clamp the "
            "batch-mean KL of each latent dimension, so there are no per-element values to return"
        )


def _non_negative(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


# --------------------------------------------------------------------------------------------
# Discrete distributions
# --------------------------------------------------------------------------------------------


def _log_base(base: float) -> float | None:
    """ln(base), or None for base e (no rescaling, so nats stay bit-exact)."""
    if isinstance(base, bool) or not isinstance(base, Real):
        raise TypeError(f"base must be a real number, got {type(base).__name__}")
    if not (math.isfinite(base) and base > 0 and base != 1):
        raise ValueError(f"base must be a finite number > 0 and != 1, got {base}")
    return None if base == math.e else math.log(base)


def _validate_pmf(name: str, p: Tensor, dim: int) -> None:
    """Raise ValueError unless p (a floating-point tensor) holds probability vectors along dim (one
    fused check)."""
    if p.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if p.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(p.shape)})")
    # |Σp − 1| allowed: √eps of the dtype (float64 1.5e-8, float32 3.5e-4, float16 3.1e-2,
    # bfloat16 8.8e-2), loose enough for vectors normalised in that dtype.
    tol = math.sqrt(torch.finfo(p.dtype).eps)
    sums = p.sum(dim)
    # One reduction over p plus one over the (much smaller) sums, one host sync. A NaN or ±inf
    # anywhere makes its row sum non-finite, which fails the |Σp − 1| ≤ tol comparison.
    bad = ~((sums - 1).abs() <= tol) | (p.amin(dim) < 0)
    if not _any_on_host(bad):  # a clear error under torch.compile(fullgraph=True) / vmap
        return
    # Slow path, only on failure: say what is wrong.
    _check_no_nan({name: p})
    if torch.isinf(p).any():
        raise ValueError(f"{name} contains infinite entries")
    if (p < 0).any():
        raise ValueError(f"{name} has negative entries (min {p.min().item():.3g})")
    worst = (sums - 1).abs().max().item()
    raise ValueError(
        f"{name} does not sum to 1 along dim={dim}: max |sum - 1| = {worst:.3g} exceeds the "
        f"tolerance {tol:.2g} for {p.dtype}"
    )


def _validate_logits(name: str, logits: Tensor, dim: int) -> None:
    """Raise ValueError unless ``logits`` are unnormalised log-probabilities along ``dim``: no NaN,
    no +inf, and at least one entry above −inf in each vector (one host sync)."""
    if logits.dim() == 0:
        raise ValueError(f"{name} must have at least one dimension, got a scalar")
    if logits.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(logits.shape)})")
    impossible = logits.isnan() | (logits == math.inf)
    bad = impossible.any(dim) | (logits == -math.inf).all(dim)
    if not _any_on_host(bad):
        return
    _check_no_nan({name: logits})
    if impossible.any():
        raise ValueError(f"{name} contains +inf (a probability that is not finite)")
    raise ValueError(f"{name} has a vector of -inf only along dim={dim} (no outcome possible)")


def _categorical_probs(name: str, x: Tensor | Categorical, dim: int) -> Tensor:
    """``x``, or a ``Categorical``'s probabilities (its outcomes are the last dimension)."""
    if isinstance(x, Categorical):
        if dim != -1:
            raise ValueError(
                f"{name} is a Categorical, whose outcomes are the last dim: use dim=-1"
            )
        return x.probs
    _check_float(name, x)
    return x


def _discrete_inputs(
    p: Tensor | Categorical,
    q: Tensor | Categorical | None,
    logits: Tensor | None,
    dim: int,
    validate: bool,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``(p, q, log q)`` broadcast against each other as torch broadcasts, exactly one of ``q`` /
    ``log q`` set: the model's distribution given as probabilities (``q``), as ``logits`` (any
    real numbers; log q = log_softmax) or as a ``Categorical`` (its normalised logits, −inf
    where its probability is exactly 0)."""
    if (q is None) == (logits is None):
        raise TypeError("pass the model's distribution once: q (probabilities) or logits=")
    p = _categorical_probs("p", p, dim)
    if isinstance(q, Categorical):
        _categorical_probs("q", q, dim)  # checks dim
        # its normalised logits, −inf where a probability is exactly 0 (as kl_divergence reads it)
        q, logits = None, q.logits.masked_fill(q.probs == 0, -math.inf)
    other_name, other = ("q", q) if q is not None else ("logits", logits)
    _check_float(other_name, other)
    try:
        p, other = torch.broadcast_tensors(p, other)
    except RuntimeError:
        raise ValueError(
            f"p and {other_name} do not broadcast: shapes {tuple(p.shape)} and "
            f"{tuple(other.shape)} (torch's broadcasting rules apply)"
        ) from None
    if validate:
        _validate_pmf("p", p, dim)
        if q is not None:
            _validate_pmf("q", other, dim)
        else:
            _validate_logits(other_name, other, dim)
    return (p, other, None) if q is not None else (p, None, other.log_softmax(dim))


def _in_base(x: Tensor, log_base: float | None) -> Tensor:
    return x if log_base is None else x / log_base


def _cross_entropy(
    p: Tensor, q: Tensor | None, log_q: Tensor | None, dim: int, log_base: float | None
) -> Tensor:
    """−Σ p log_b q along ``dim``, with 0 log q = 0: the log only sees q where p > 0, so the
    gradient is finite too."""
    pos = p > 0
    if log_q is None:
        log_q = torch.where(pos, q, torch.ones_like(q)).log()
    else:
        log_q = torch.where(pos, log_q, torch.zeros_like(log_q))
    return _in_base(-(p * log_q).sum(dim), log_base)


def entropy(
    p: Tensor | Categorical | None = None,
    *,
    logits: Tensor | None = None,
    base: float = math.e,
    dim: int = -1,
    validate: bool = True,
) -> Tensor:
    r"""Shannon entropy H(p) = −Σ_i p_i log_b p_i of probability vectors along ``dim``.

    Args:
        p: probabilities, any shape; ``dim`` indexes the outcomes. Or a ``Categorical``.
        logits: p given as unnormalised log-probabilities instead (p = softmax(logits) along
            ``dim``), as ``Categorical(logits=...)`` takes them (keyword-only).
        base: logarithm base b: e → nats (default), 2 → bits, 10 → hartleys; any finite b > 0,
            b ≠ 1 (keyword-only).
        dim: dimension of the outcomes, reduced (keyword-only).
        validate: check that p holds probability vectors (no NaN/inf, no negatives,
            |Σp − 1| ≤ √eps of the dtype; logits: no NaN or +inf, not all −inf): one host sync.
            Pass False to skip the check in hot loops and inside
            ``torch.compile(fullgraph=True)`` or ``torch.func.vmap``, which cannot read values on
            the host (with True they raise an error that says so; plain ``torch.compile`` runs
            the check eagerly, at a graph break).

    Returns:
        Tensor of p's shape without ``dim``, in units of log base b; ≥ 0.

    Raises:
        TypeError: neither or both of ``p`` and ``logits``.
        ValueError: invalid base, empty p, NaN/inf, negative entries or sums ≠ 1 (when
            ``validate``).
    """
    log_base = _log_base(base)
    if (p is None) == (logits is None):
        raise TypeError("pass the distribution once: p (probabilities) or logits=")
    if p is not None:
        p = _categorical_probs("p", p, dim)
        if validate:
            _validate_pmf("p", p, dim)
        # Shannon (1948): H(p) = H(p, p); 0 log 0 = 0 (Cover & Thomas 2006, §2.1).
        return _cross_entropy(p, p, None, dim, log_base)
    _check_float("logits", logits)
    if validate:
        _validate_logits("logits", logits, dim)
    log_p = logits.log_softmax(dim)
    return _cross_entropy(log_p.exp(), None, log_p, dim, log_base)


def cross_entropy(
    p: Tensor | Categorical,
    q: Tensor | Categorical | None = None,
    *,
    logits: Tensor | None = None,
    base: float = math.e,
    dim: int = -1,
    validate: bool = True,
) -> Tensor:
    r"""Cross-entropy H(p, q) = −Σ_i p_i log_b q_i along ``dim``.

    Terms with p_i = 0 are 0 whatever q_i is; p_i > 0 with q_i = 0 gives +inf.
    ``cross_entropy(p, logits=z)`` takes the model's logits as ``F.cross_entropy(z, p,
    reduction='none')`` does (which puts the logits first) and equals it.

    Shapes broadcast as in torch (``p`` (B, n) against one ``q`` (n,), say); the reduced ``dim``
    indexes the outcomes of the broadcast shape. ``torch.distributions.Categorical`` objects may
    stand for ``p`` and ``q`` (their outcomes are the last dimension: ``dim=-1``).
    Args:
        p: the true probabilities.
        q: the model probabilities, broadcastable with p.
        logits: the model's distribution as unnormalised log-probabilities instead of ``q``
            (q = softmax(logits) along ``dim``; keyword-only).
        base, dim, validate: as in :func:`entropy`.

    Returns:
        Tensor of the broadcast shape without ``dim``, in units of log base b; ≥ H(p).
    """
    log_base = _log_base(base)
    p, q, log_q = _discrete_inputs(p, q, logits, dim, validate)
    # Cover & Thomas (2006), §2.3 conventions: 0 log q = 0, p log 0 = −∞ (so H = +∞).
    return _cross_entropy(p, q, log_q, dim, log_base)


def discrete_kl(
    p: Tensor | Categorical,
    q: Tensor | Categorical | None = None,
    *,
    logits: Tensor | None = None,
    base: float = math.e,
    dim: int = -1,
    validate: bool = True,
) -> Tensor:
    r"""Relative entropy KL(p ‖ q) = Σ_i p_i log_b(p_i / q_i) along ``dim``.

    Mathematically H(p, q) − H(p), but computed term by term as p log(p/q) (as
    ``scipy.special.rel_entr`` does), never as a difference of two large entropies, so that
    KL(p ‖ p) is exactly 0 and small divergences keep their absolute accuracy (≈ eps).
    Terms with p_i = 0 contribute 0 (also when q_i = 0); p_i > 0 with q_i = 0 gives +inf.
    Not symmetric: KL(p ‖ q) ≠ KL(q ‖ p) in general. ``discrete_kl(Categorical, Categorical)``
    equals ``kl_divergence``; ``discrete_kl(p, logits=z)`` equals ``F.kl_div(z.log_softmax(-1),
    p, reduction='none').sum(-1)`` (torch's order: the model first, in log space).

    Shapes broadcast as in torch (``p`` (B, n) against one ``q`` (n,), say); the reduced ``dim``
    indexes the outcomes of the broadcast shape. ``torch.distributions.Categorical`` objects may
    stand for ``p`` and ``q`` (their outcomes are the last dimension: ``dim=-1``).
    Args:
        p: the true (data) probabilities.
        q: the approximating (model) probabilities, broadcastable with p.
        logits: the model's distribution as unnormalised log-probabilities instead of ``q``
            (keyword-only).
        base, dim, validate: as in :func:`entropy`.

    Returns:
        Tensor of the broadcast shape without ``dim``, in units of log base b; ≥ 0 up to
        rounding.

    Raises:
        TypeError: neither or both of ``q`` and ``logits``.
        ValueError: invalid base, shapes that do not broadcast, empty inputs, NaN/inf, negative
            entries or sums ≠ 1 (when ``validate``).
    """
    log_base = _log_base(base)
    p, q, log_q = _discrete_inputs(p, q, logits, dim, validate)
    pos = p > 0
    one = torch.ones_like(p)
    # Kullback & Leibler (1951); Cover & Thomas (2006), eq. in §2.3 with 0 log(0/q) = 0 and
    # p log(p/0) = +∞. Entries with p = 0 become log(1/1) = 0, so that neither the value nor the
    # gradient sees 0/0.
    if log_q is None:
        log_ratio = (torch.where(pos, p, one) / torch.where(pos, q, one)).log()
    else:
        log_ratio = torch.where(pos, p, one).log() - torch.where(pos, log_q, 0 * one)
    return _in_base((p * log_ratio).sum(dim), log_base)


def smoothed(
    p: Tensor, q: Tensor, eps: float = 1e-3, *, dim: int = -1, validate: bool = True
) -> tuple[Tensor, Tensor]:
    r"""ε-smooth two distributions over the same symbols so that KL between them is finite.

    Applied to each vector (p and q separately, along ``dim``): every symbol with zero
    probability receives ε, and each of the vector's n₊ nonzero symbols gives up ε·n₀/n₊
    (n₀ = number of zeros), so the vector still sums to 1 and has full support. This is
    absolute discounting of the seen symbols in favour of the unseen ones (cf. Ney, Essen &
    Kneser 1994, "On structuring probabilistic dependences in stochastic language modelling").
    Vectors without zeros are returned unchanged.

    Args:
        p, q: probabilities over the union of both supports along ``dim``, broadcastable.
        eps: mass given to each zero-probability symbol, > 0.
        dim: dimension of the symbols (keyword-only).
        validate: check p and q as in :func:`discrete_kl` (keyword-only).

    Returns:
        ``(p', q')``, the smoothed tensors in the broadcast shape, dtype and device of the
        inputs.

    Raises:
        ValueError: eps ≤ 0, or eps so large that some nonzero entry would drop to ≤ 0
            (the message gives the largest admissible eps), or invalid p, q.
    """
    if isinstance(eps, bool) or not isinstance(eps, Real) or not (math.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    _check_float("p", p)
    _check_float("q", q)
    p, q, _ = _discrete_inputs(p, q, None, dim, validate)

    def smooth(name: str, x: Tensor) -> Tensor:
        zero = x == 0
        n_zero = zero.sum(dim, keepdim=True).to(x.dtype)
        n_pos = x.shape[dim] - n_zero
        give_up = eps * n_zero / n_pos  # per nonzero symbol; 0 where the vector has no zeros
        out = torch.where(zero, torch.full_like(x, eps), x - give_up)
        # The smallest nonzero entry must stay positive: min_{x_i > 0} x_i > ε n₀ / n₊.
        min_pos = torch.where(zero, torch.full_like(x, math.inf), x).amin(dim, keepdim=True)
        if bool((min_pos <= give_up).any()):
            per_vector = torch.where(n_zero > 0, min_pos * n_pos / n_zero, math.inf)
            limit = per_vector.min().item()
            raise ValueError(
                f"eps={eps} is too large for {name}: a nonzero entry would become <= 0; "
                f"eps must be < {limit:.3g} here"
            )
        return out

    return smooth("p", p), smooth("q", q)
