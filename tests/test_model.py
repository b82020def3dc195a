"""Networks, likelihoods and the importance-weighted bound, checked against independent references."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats
from torch import Tensor, nn
from torch.distributions import Bernoulli, MultivariateNormal

from vae.core.config import ModelConfig
from vae.core.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    GaussianLikelihood,
    build_likelihood,
)
from vae.core.networks import VAE, build_vae, soft_clamp
from vae.kl import gaussian_kl
from vae.train.module import VAEModule

MODEL = {
    "architecture": "mlp",
    "latent_dim": 2,
    "hidden_dims": [64, 32],
    "channels": [8, 16],
    "activation": "relu",
    "norm": "layer",
    "logvar_bound": 10.0,
    "likelihood": "bernoulli",
    "gaussian_std": 1.0,
    "learn_std": False,
    "beta": 1.0,
    "kl_warmup_steps": 0,
    "free_bits": 0.0,
}
OPTIM = {"optimizer": "adam", "lr": 1e-3, "weight_decay": 0.0, "scheduler": "none"}


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 14, 10), (3, 9, 9)])
def test_networks_map_images_to_latents_and_back(architecture: str, shape: tuple) -> None:
    torch.manual_seed(0)
    config = ModelConfig(architecture=architecture, latent_dim=3, hidden_dims=[16])
    vae = build_vae(config=config, image_shape=shape)
    x = torch.rand(4, *shape)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (4, 3)
    assert vae.decode(mu).shape == (4, *shape)


def test_sizes_come_from_the_config() -> None:
    vae = build_vae(
        config=ModelConfig(latent_dim=5, hidden_dims=[300, 100]), image_shape=(1, 28, 28)
    )
    linears = [m for m in vae.modules() if isinstance(m, nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    assert shapes == [(784, 300), (300, 100), (100, 10), (5, 100), (100, 300), (300, 784)]


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
def test_layer_norm_sits_before_every_hidden_activation(architecture: str) -> None:
    def build(norm: str) -> VAE:
        config = ModelConfig(architecture=architecture, hidden_dims=[48, 24], norm=norm)
        return build_vae(config=config, image_shape=(1, 28, 28))

    plain, normed = build("none"), build("layer")
    assert not any(isinstance(m, nn.LayerNorm) for m in plain.modules())
    block = [nn.Linear, nn.LayerNorm, nn.ReLU]
    assert [type(m) for m in normed.encoder.body] == block * 2
    if (
        architecture == "mlp"
    ):  # the decoder's output layer (logits) is neither normalised nor activated
        assert [type(m) for m in normed.decoder.net] == block * 2 + [nn.Linear]
    else:  # latent → 24 → 48 → the first feature map, then the transposed convolutions
        assert [type(m) for m in normed.decoder.body] == block * 3
    # per-image normalisation: an image's code does not depend on the rest of the batch
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(normed.encode(x)[0][:2], normed.encode(x[:2])[0])
    with pytest.raises(ValueError, match=r"model\.norm='batch' is not one of"):
        build("batch")


def cb_mean(lam: Tensor) -> Tensor:
    """The continuous Bernoulli's mean λ/(2λ − 1) + 1/(2 atanh(1 − 2λ)) (Loaiza-Ganem & Cunningham
    2019), written out here rather than taken from torch; λ ≠ ½."""
    return lam / (2 * lam - 1) + 1 / (2 * torch.atanh(1 - 2 * lam))


@pytest.mark.parametrize("name", LIKELIHOODS)
def test_output_for_mean_inverts_the_likelihood_mean(name: str) -> None:
    low = 0.05 if name == "continuous_bernoulli" else 1e-3  # CB reaches 0.03 at logit −50
    m = torch.cat([torch.linspace(low, 0.45, 40), torch.linspace(0.55, 1 - low, 40)]).double()
    out = build_likelihood(name, gaussian_std=1.0, learn_std=False).output_for_mean(m)
    if name == "bernoulli":
        expected_mean = torch.sigmoid(out)
        np.testing.assert_allclose(out.numpy(), special.logit(m.numpy()), rtol=1e-12)
    elif name == "continuous_bernoulli":
        expected_mean = cb_mean(torch.sigmoid(out))
    else:
        expected_mean = out  # the decoder outputs the Gaussian's mean
    torch.testing.assert_close(expected_mean, m, rtol=0, atol=1e-9)


@pytest.mark.parametrize("architecture", ["mlp", "conv"])
@pytest.mark.parametrize("name", LIKELIHOODS)
def test_init_output_bias_starts_the_decoder_at_the_mean_image(
    architecture: str, name: str
) -> None:
    torch.manual_seed(0)
    shape = (1, 12, 12)
    config = ModelConfig(architecture=architecture, hidden_dims=[16], likelihood=name)
    vae = build_vae(config=config, image_shape=shape)
    pixel_mean = torch.rand(shape, dtype=torch.float64) * 0.9 + 0.05
    if name != "continuous_bernoulli":  # (whose mean reaches only [0.03, 0.97], see its docstring)
        pixel_mean[0, 0, :3] = torch.tensor([0.0, 1.0, 0.5])  # never on, always on: clipped
    last = vae.decoder.net[-1] if architecture == "mlp" else vae.decoder.deconv[-1]
    with torch.no_grad():
        last.weight.zero_()  # the output is then the bias alone, whatever z
    vae.init_output_bias(pixel_mean)
    decoded = vae.likelihood.mean(vae.decode(torch.randn(3, 2)).double())
    assert torch.isfinite(decoded).all()
    clipped = pixel_mean.clamp(1e-3, 1 - 1e-3)
    if architecture == "mlp":  # one bias per pixel: exactly the mean image
        torch.testing.assert_close(decoded, clipped.expand(3, *shape), rtol=0, atol=1e-6)
    else:  # one bias per channel: the output whose mean is the channel's … averaged in output space
        assert torch.allclose(decoded, decoded[0, 0, 0, 0], rtol=0, atol=1e-6)
        if name == "bernoulli":
            expected = torch.sigmoid(torch.logit(clipped).mean())
            torch.testing.assert_close(decoded[0, 0, 0, 0], expected, rtol=0, atol=1e-6)


def test_soft_clamp_is_identity_near_zero_and_bounded() -> None:
    x = torch.tensor([-1e6, -50.0, -0.01, 0.0, 0.01, 50.0, 1e6])
    y = soft_clamp(x, 10.0)
    assert y.abs().max() <= 10.0
    torch.testing.assert_close(y[2:5], x[2:5], rtol=1e-5, atol=0)


def test_bernoulli_nll_matches_torch_distributions_on_binary_pixels() -> None:
    torch.manual_seed(0)
    logits = torch.randn(6, 1, 4, 4, dtype=torch.float64) * 5
    x = torch.bernoulli(torch.full_like(logits, 0.3))
    expected = -Bernoulli(logits=logits).log_prob(x).flatten(1).sum(1)
    torch.testing.assert_close(BernoulliLikelihood().nll(logits, x), expected)


def test_bernoulli_nll_on_grey_levels_is_the_cross_entropy_and_stays_finite() -> None:
    x = torch.tensor([[0.0, 0.25, 0.5, 1.0]], dtype=torch.float64).view(1, 1, 2, 2)
    logits = torch.tensor([[-200.0, -1.0, 0.5, 200.0]], dtype=torch.float64).view(1, 1, 2, 2)
    p = torch.sigmoid(logits)
    # −[x log p + (1 − x) log(1 − p)], with 0 · log 0 = 0 for the saturated pixels
    expected = -(torch.xlogy(x, p) + torch.xlogy(1 - x, 1 - p)).sum()
    got = BernoulliLikelihood().nll(logits, x)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, expected.view(1))


@pytest.mark.parametrize("logit", [-4.0, -0.3, 0.0, 1e-4, 2.5])
def test_continuous_bernoulli_density_integrates_to_one(logit: float) -> None:
    lik = ContinuousBernoulliLikelihood()
    out = torch.tensor([logit], dtype=torch.float64).view(1, 1, 1, 1)

    def density(x: float) -> float:
        xs = torch.tensor([x], dtype=torch.float64).view(1, 1, 1, 1)
        return math.exp(-lik.nll(out, xs).item())

    total, _ = integrate.quad(density, 0.0, 1.0)
    assert total == pytest.approx(1.0, abs=1e-6)
    mean, _ = integrate.quad(lambda x: x * density(x), 0.0, 1.0)
    assert lik.mean(out).item() == pytest.approx(mean, abs=1e-6)


def test_gaussian_nll_matches_scipy() -> None:
    torch.manual_seed(0)
    out = torch.randn(3, 1, 2, 2, dtype=torch.float64)
    x = torch.rand(3, 1, 2, 2, dtype=torch.float64)
    lik = GaussianLikelihood(std=0.3, learn_std=True)
    expected = stats.norm.logpdf(x.numpy(), loc=out.numpy(), scale=0.3).reshape(3, -1).sum(1)
    torch.testing.assert_close(lik.nll(out, x), torch.from_numpy(-expected), check_dtype=False)
    assert any(p.requires_grad for p in lik.parameters())
    assert not list(GaussianLikelihood(std=0.3).parameters())


def test_colour_images_are_modelled_per_channel_and_pixel() -> None:
    """(B, 3, H, W): each value of each channel is its own Bernoulli / Gaussian factor, so −log p
    of an RGB image is the sum of its three channels' (scipy and torch.distributions, per value)."""
    torch.manual_seed(1)
    out = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    x = torch.rand(2, 3, 4, 5, dtype=torch.float64)
    bern = -(x * special.log_expit(out.numpy()) + (1 - x) * special.log_expit(-out.numpy()))
    torch.testing.assert_close(BernoulliLikelihood().nll(out, x), bern.flatten(1).sum(1))
    gauss = -stats.norm.logpdf(x.numpy(), loc=out.numpy(), scale=0.5).reshape(2, -1).sum(1)
    got = GaussianLikelihood(std=0.5).nll(out, x)
    torch.testing.assert_close(got, torch.from_numpy(gauss))
    per_channel = sum(
        BernoulliLikelihood().nll(out[:, c : c + 1], x[:, c : c + 1]) for c in range(3)
    )
    torch.testing.assert_close(BernoulliLikelihood().nll(out, x), per_channel)


def test_conv_stages_follow_the_image_size_and_channels() -> None:
    """One stride-2 stage per ``model.channels`` entry: 64×64 RGB with four stages ends at 4×4, and
    the decoder gives back exactly (3, 64, 64); an odd size (3, 30, 22) too."""
    config = ModelConfig(architecture="conv", channels=[8, 8, 8, 8], hidden_dims=[16])
    vae = build_vae(config=config, image_shape=(3, 64, 64))
    assert vae.decoder.start_shape == (8, 4, 4)
    assert vae.decode(torch.zeros(2, 2)).shape == (2, 3, 64, 64)
    odd_config = ModelConfig(architecture="conv", channels=[4, 4], hidden_dims=[8])
    odd = build_vae(config=odd_config, image_shape=(3, 30, 22))
    assert odd.decode(odd.encode(torch.rand(2, 3, 30, 22))[0]).shape == (2, 3, 30, 22)


def test_unknown_likelihood_names_the_key_and_the_options() -> None:
    with pytest.raises(ValueError, match=r"model\.likelihood='poisson' is not one of bernoulli"):
        build_likelihood("poisson", gaussian_std=1.0, learn_std=False)


def _module(**model_overrides) -> VAEModule:
    return VAEModule(
        model=MODEL | model_overrides,
        optim=OPTIM,
        evaluation={"iw_samples": 4, "iw_chunk": 3},
        image_shape=(1, 28, 28),
    )


def test_elbo_terms_use_the_closed_form_kl() -> None:
    torch.manual_seed(0)
    module = _module()
    x = torch.rand(8, 1, 28, 28)
    t = module.elbo_terms(x)
    assert t["recon"].shape == t["kl"].shape == t["loss"].shape == (8,)
    torch.testing.assert_close(t["kl"], gaussian_kl(t["mu"], t["logvar"]))
    torch.testing.assert_close(t["loss"], t["recon"] + t["kl"])


def test_kl_warmup_is_linear() -> None:
    module = _module(beta=2.0, kl_warmup_steps=100)
    # global_step is read from the trainer; without one it is 0
    assert module.current_beta() == 0.0
    module.kl_warmup_steps = 0
    assert module.current_beta() == 2.0


def _linear_gaussian_module(exact_encoder: bool) -> tuple[VAEModule, MultivariateNormal]:
    """A VAE whose marginal p(x) is known: z ~ N(0, I₂), x | z ~ N(W z + b, σ² I₄).

    Then p(x) = N(b, W Wᵀ + σ² I) exactly. W has orthogonal columns, so the true posterior
    N(S Wᵀ (x − b) / σ², S), S = (I + WᵀW / σ²)⁻¹, is diagonal and the encoder can be exact.
    """
    torch.manual_seed(0)
    sigma = 0.5
    w = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 0.5], [1.0, 0.0]], dtype=torch.float64)
    w[:, 1] -= (w[:, 0] @ w[:, 1]) / (w[:, 0] @ w[:, 0]) * w[:, 0]  # orthogonalise the columns
    b = torch.tensor([0.1, -0.2, 0.3, 0.0], dtype=torch.float64)
    module = VAEModule(
        model=MODEL | {"likelihood": "gaussian", "gaussian_std": sigma, "hidden_dims": [8]},
        optim=OPTIM,
        evaluation={"iw_samples": 1, "iw_chunk": 64},
        image_shape=(1, 2, 2),
    ).double()
    decoder = nn.Linear(2, 4).double()
    decoder.weight.data, decoder.bias.data = w.clone(), b.clone()
    module.vae.decoder = nn.Sequential(decoder, nn.Unflatten(-1, (1, 2, 2)))
    if exact_encoder:
        s = torch.linalg.inv(torch.eye(2, dtype=torch.float64) + w.T @ w / sigma**2)

        class Exact(nn.Module):
            def forward(self, x):
                mu = (x.flatten(1) - b) @ w @ s.T / sigma**2  # (B, 4) @ (4, 2) -> (B, 2)
                return mu, torch.diagonal(s).log().expand_as(mu)

        module.vae.encoder = Exact()
    marginal = MultivariateNormal(b, w @ w.T + sigma**2 * torch.eye(4, dtype=torch.float64))
    return module, marginal


def test_iw_bound_is_exact_with_the_true_posterior() -> None:
    module, marginal = _linear_gaussian_module(exact_encoder=True)
    x = marginal.sample((16,)).view(16, 1, 2, 2)
    nll = -marginal.log_prob(x.flatten(1))
    # q = p(z | x): every importance weight equals p(x), so even K = 1 is exact
    torch.testing.assert_close(module.iw_nll(x, n_samples=1), nll)
    torch.testing.assert_close(module.iw_nll(x, n_samples=7, chunk=3), nll)


def test_iw_bound_tightens_towards_log_px_with_a_poor_encoder() -> None:
    module, marginal = _linear_gaussian_module(exact_encoder=False)
    torch.manual_seed(1)
    x = marginal.sample((64,)).view(64, 1, 2, 2)
    nll = -marginal.log_prob(x.flatten(1))
    linear = module.vae.decoder[0]
    w, b, sigma = linear.weight.detach(), linear.bias.detach(), 0.5
    with torch.no_grad():
        mu, logvar = module.vae.encode(x)
        # −ELBO in closed form for a linear-Gaussian decoder:
        # E_q ||x − W z − b||² = ||x − W μ − b||² + Σ_j ||W_:j||² σ_j²
        sq = (x.flatten(1) - mu @ w.T - b).square().sum(1) + (logvar.exp() * w.square().sum(0)).sum(
            1
        )
        recon = sq / (2 * sigma**2) + 4 * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
        neg_elbo = recon + gaussian_kl(mu, logvar)
    gaps = [
        (module.iw_nll(x, n_samples=k, chunk=5000) - nll).mean().item() for k in (10, 1000, 20000)
    ]
    # E[IW bound] decreases in K towards −log p(x) (Burda et al. 2015, theorem 1): the mean gap over
    # 64 images shrinks, and with 20000 samples it has closed more than 99 % of the ELBO's gap
    elbo_gap = (neg_elbo - nll).mean().item()
    assert elbo_gap > 10
    assert gaps[0] < 0.2 * elbo_gap
    assert gaps[0] > gaps[1] > abs(gaps[2])
    assert abs(gaps[2]) < 0.01 * elbo_gap
    # K = 1 is an unbiased estimate of −ELBO: its mean over images and repeats matches
    reps = module.iw_nll(x.repeat(200, 1, 1, 1), n_samples=1)  # 200 draws for each image
    se = reps.std() / math.sqrt(reps.numel())
    assert abs(reps.mean() - neg_elbo.mean()) < 4 * se
