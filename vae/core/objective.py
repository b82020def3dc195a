"""The objective: the −ELBO's terms, the importance-weighted bound and their seeded noise.

Plain torch on a :class:`~vae.core.networks.VAE`; every function returns **per-image** values in
**nats per image** (the caller reduces: :class:`vae.train.module.VAEModule` takes batch means).

- :func:`elbo_terms`: −ELBO = E_q[−log p(x | z)] + KL(q(z | x) ‖ N(0, I)), one reparameterised
  sample, the KL in closed form (Kingma & Welling 2014, eq. 10).
- :func:`iw_nll`: −log p̂_K(x), the importance-weighted bound (Burda et al. 2015, eq. 8).
- :func:`iw_terms`: the same bound as a training objective, with k samples per image and its
  gradient (the IWAE, Burda et al. 2015, §3), plus the one-sample −ELBO terms for logging.
- :func:`log_weights`: log w = log p(x | z) + log p(z) − log q(z | x), the one definition both use.
- :func:`eval_noise`, :func:`iw_noise`: ε ~ N(0, I) as a function of (seed, split, image position,
  sample) only, so evaluation does not depend on batch size, chunking, processes or what ran before.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Normal

from vae.core.networks import VAE
from vae.core.seeding import derive_seed
from vae.kl import gaussian_kl_per_dim

__all__ = [
    "EVAL_NOISE_BLOCK",
    "IW_NOISE_BLOCK",
    "elbo_terms",
    "eval_noise",
    "iw_nll",
    "iw_noise",
    "iw_terms",
    "log_weights",
    "seeded_noise",
]

EVAL_NOISE_BLOCK = 4096  # image positions per seeded draw of the evaluation noise
IW_NOISE_BLOCK = 256  # image positions per seeded draw of the importance-sampling noise


def elbo_terms(vae: VAE, x: Tensor, *, eps: Tensor | None = None) -> dict[str, Tensor]:
    """Per-image terms of the negative ELBO for images ``x`` ``(B, C, H, W)``.

    Returns ``recon`` ``(B,)`` (one reparameterised sample, with noise ``eps`` ``(B, d)`` if given,
    else from the global RNG), ``kl_dim`` ``(B, d)`` (closed form), ``kl`` ``(B,)``, ``loss``
    ``(B,)`` = recon + kl, and ``mu``, ``logvar`` ``(B, d)``; nats per image.
    """
    mu, logvar = vae.encode(x)
    z = vae.reparameterize(mu, logvar, eps=eps)  # (B, d)
    recon = vae.likelihood.nll(vae.decode(z), x)  # (B,)
    # validate=False: no host sync per step (the module checks the loss for non-finite values)
    return _neg_elbo(recon, mu, logvar, validate=False)


def _neg_elbo(recon: Tensor, mu: Tensor, logvar: Tensor, *, validate: bool) -> dict[str, Tensor]:
    """The terms :func:`elbo_terms` returns, from ``recon`` ``(B,)`` and q's ``mu``, ``logvar``
    ``(B, d)`` (the KL in closed form, ``validate`` as :func:`~vae.kl.gaussian_kl_per_dim`'s)."""
    kl_dim = gaussian_kl_per_dim(mu, logvar, validate=validate)  # (B, d)
    kl = kl_dim.sum(dim=-1)
    return {
        "recon": recon,
        "kl": kl,
        "kl_dim": kl_dim,
        "loss": recon + kl,
        "mu": mu,
        "logvar": logvar,
    }


def _log_px_z(vae: VAE, x: Tensor, z: Tensor) -> Tensor:
    """log p(x | z_k) for samples ``z`` ``(k, B, d)`` and images ``x`` ``(B, C, H, W)``: ``(k, B)``."""
    k = z.shape[0]
    out = vae.decode(z.flatten(0, 1))  # (k·B, C, H, W)
    x_rep = x.expand(k, *x.shape).flatten(0, 1)  # (k·B, C, H, W), a view
    return -vae.likelihood.nll(out, x_rep).unflatten(0, (k, -1))


def _log_prior_over_q(mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
    """log p(z_k) − log q(z_k | x) for q = N(``mu``, exp(``logvar``)) ``(B, d)``: ``(k, B)``."""
    q = Normal(mu, torch.exp(0.5 * logvar), validate_args=False)
    prior = Normal(torch.zeros_like(mu), torch.ones_like(mu), validate_args=False)
    return prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1)


def log_weights(vae: VAE, x: Tensor, mu: Tensor, logvar: Tensor, z: Tensor) -> Tensor:
    """log w_k = log p(x | z_k) + log p(z_k) − log q(z_k | x) for samples ``z`` ``(k, B, d)`` of
    q(z | x) = N(``mu``, exp(``logvar``)) ``(B, d)`` and images ``x`` ``(B, C, H, W)``: ``(k, B)``.

    Differentiable in every argument: with reparameterised ``z`` its gradient is the one eq. 8 of
    Burda et al. (2015) weights (no term is detached, as in the paper's §3).
    """
    return _log_px_z(vae, x, z) + _log_prior_over_q(mu, logvar, z)


def iw_terms(
    vae: VAE, x: Tensor, *, n_samples: int, eps: Tensor | None = None
) -> dict[str, Tensor]:
    """The IWAE objective for images ``x`` ``(B, C, H, W)``, per image, nats per image.

    ``iw`` ``(B,)`` = −log (1/k) Σ_i w_i with k = ``n_samples`` reparameterised samples (noise
    ``eps`` ``(k, B, d)`` if given, else the global RNG): the negative of the bound L_k of Burda et
    al. (2015), eq. 8. Its autograd gradient is the paper's estimator, Σ_i w̃_i ∇ log w_i with the
    normalised weights w̃_i = w_i / Σ_j w_j (the derivative of logsumexp is the softmax).

    For logging, the one-sample −ELBO terms of :func:`elbo_terms` come with it: ``recon`` of the
    first sample, ``kl_dim``/``kl`` in closed form, ``loss`` = recon + kl, ``mu``, ``logvar``.
    """
    mu, logvar = vae.encode(x)
    z = vae.reparameterize(mu, logvar, n_samples=n_samples, eps=eps)  # (k, B, d)
    log_px_z = _log_px_z(vae, x, z)  # (k, B)
    log_w = log_px_z + _log_prior_over_q(mu, logvar, z)
    iw = -(torch.logsumexp(log_w, dim=0) - math.log(n_samples))
    return {"iw": iw, **_neg_elbo(-log_px_z[0], mu, logvar, validate=True)}


@torch.no_grad()
def iw_nll(
    vae: VAE,
    x: Tensor,
    *,
    n_samples: int,
    chunk: int,
    noise: Callable[[int, int], Tensor] | None = None,
) -> Tensor:
    """−log p̂_K(x), the importance-weighted bound (Burda et al. 2015, eq. 8), nats per image.

    log p̂_K(x) = logsumexp_k [log p(x | z_k) + log p(z_k) − log q(z_k | x)] − log K, z_k ~ q(z | x).
    Images ``(B, C, H, W)`` → ``(B,)``. Samples are decoded ``chunk`` at a time, so memory is
    O(chunk · B · pixels) whatever K is; the running logsumexp over chunks is exact. With K = 1
    this is an unbiased single-sample estimate of −ELBO. ``noise(start, stop)`` gives the ε of
    samples ``start ≤ k < stop`` as ``(stop − start, B, d)`` (e.g. :func:`iw_noise`); without it
    the samples come from the global RNG.
    """
    mu, logvar = vae.encode(x)  # (B, d)
    running = torch.full_like(mu[:, 0], -math.inf)  # running logsumexp, (B,)
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        eps = None if noise is None else noise(start, start + k)
        z = vae.reparameterize(mu, logvar, n_samples=k, eps=eps)  # (k, B, d)
        log_w = log_weights(vae, x, mu, logvar, z)  # (k, B)
        running = torch.logaddexp(running, torch.logsumexp(log_w, dim=0))
    return -(running - math.log(n_samples))


def seeded_noise(rows: int, latent_dim: int, name: object) -> Tensor:
    """``(rows, latent_dim)`` draws of N(0, I) from a CPU generator seeded by ``name``
    (:func:`vae.core.seeding.derive_seed`)."""
    gen = torch.Generator().manual_seed(derive_seed(name))
    return torch.randn(rows, latent_dim, generator=gen)


def eval_noise(
    index: Tensor,
    *,
    seed: int,
    split: str,
    latent_dim: int,
    cache: dict[tuple[str, int], Tensor] | None = None,
) -> Tensor:
    """ε ~ N(0, I) for the images at positions ``index`` ``(B,)`` of a split: ``(B, latent_dim)``, float32.

    A function of (``seed``, split, position) only: common random numbers, so evaluating the
    same weights gives the same val/test −ELBO whatever the batch size, the number of DDP processes
    or what ran before. Drawn in blocks of :data:`EVAL_NOISE_BLOCK` positions, each from its own
    seeded CPU generator, kept in ``cache`` when one is given.
    """
    cache = {} if cache is None else cache
    idx = index.cpu()
    blocks = idx // EVAL_NOISE_BLOCK
    out = torch.empty(len(idx), latent_dim)
    for block in blocks.unique().tolist():
        key = (split, block)
        if key not in cache:
            # named as in version one, so a checkpoint's val/test figures did not move
            cache[key] = seeded_noise(EVAL_NOISE_BLOCK, latent_dim, f"{seed}/{split}/{block}")
        chosen = blocks == block
        out[chosen] = cache[key][idx[chosen] % EVAL_NOISE_BLOCK]
    return out


def iw_noise(index: Tensor, *, seed: int, latent_dim: int, start: int, stop: int) -> Tensor:
    """ε ~ N(0, I) for importance samples ``start ≤ k < stop`` of the test images at positions
    ``index`` ``(B,)``: ``(stop − start, B, latent_dim)``, float32.

    Sample k of the image at position i is row ``i % IW_NOISE_BLOCK`` of a
    ``(IW_NOISE_BLOCK, latent_dim)`` draw from a CPU generator seeded with
    (``seed``, ``"test_iw"``, ``i // IW_NOISE_BLOCK``, k): a function of (seed, position, k) only,
    so the bound does not depend on the batch size, the chunk, the number of DDP processes or what
    ran before. Nothing is cached (a cache would hold K · N · d numbers); the Python loop runs over
    samples × blocks, not images.
    """
    idx = index.cpu()
    blocks, inverse = (idx // IW_NOISE_BLOCK).unique(return_inverse=True)  # floor: idx ≥ 0
    # row of each image in the blocks' draws stacked, (n_blocks · IW_NOISE_BLOCK, d)
    rows = inverse * IW_NOISE_BLOCK + idx % IW_NOISE_BLOCK  # (B,)
    out = torch.empty(stop - start, len(idx), latent_dim)
    for k in range(start, stop):
        drawn = [
            seeded_noise(IW_NOISE_BLOCK, latent_dim, (seed, "test_iw", b, k))
            for b in blocks.tolist()
        ]
        # index_select, not drawn[block, row] indexing: see benchmarks/README.md
        out[k - start] = torch.cat(drawn).index_select(0, rows)  # (B, d)
    return out
