"""The IWAE objective (``model.iw_train_samples``) and the paper's schedule (``optim.scheduler=burda``).

References are independent of :mod:`vae.core.objective`: ``torch.distributions`` densities, the
closed-form KL of ``torch.distributions.kl_divergence``, and, for a one-dimensional latent, the
marginal likelihood log p(x) by numerical quadrature.
"""

from __future__ import annotations

import math
import re
import shlex
from pathlib import Path

import pytest
import torch
from conftest import compose_config
from torch.distributions import Bernoulli, Normal, kl_divergence

from vae.core import objective
from vae.core.config import ModelConfig, coerce
from vae.core.networks import build_vae
from vae.errors import ConfigError
from vae.train.config import validate_config
from vae.train.module import VAEModule
from vae.train.optim import burda_lr_factor
from vae.train.run import train

SHAPE = (1, 4, 4)  # 16 binary pixels: small enough for exact quadrature over a 1-D latent


def _tiny_vae(latent_dim: int, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = ModelConfig(latent_dim=latent_dim, hidden_dims=[16], activation="tanh", norm="none")
    return build_vae(config=config, image_shape=SHAPE).double()


def _batch(n: int, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, *SHAPE, generator=gen) < 0.4).double()


def _reference_log_w(vae: torch.nn.Module, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """log p(x | z) + log p(z) − log q(z | x) with torch.distributions, ``(k, B)``."""
    mu, logvar = vae.encode(x)
    q = Normal(mu, torch.exp(0.5 * logvar))
    z = mu + torch.exp(0.5 * logvar) * eps  # (k, B, d)
    logits = vae.decode(z.flatten(0, 1)).unflatten(0, z.shape[:2])  # (k, B, C, H, W)
    log_px_z = Bernoulli(logits=logits).log_prob(x.expand_as(logits)).flatten(2).sum(-1)
    return log_px_z + Normal(0.0, 1.0).log_prob(z).sum(-1) - q.log_prob(z).sum(-1)


def test_k1_trains_exactly_the_elbo_value_and_gradients() -> None:
    """model.iw_train_samples=1 (the default) is today's −ELBO: one sample, the KL in closed form."""
    x = _batch(8).float()
    model = {"latent_dim": 3, "hidden_dims": [16], "iw_train_samples": 1}
    module = VAEModule(model=model, image_shape=SHAPE)
    torch.manual_seed(5)
    eps = torch.randn(8, 3)  # the noise training_step draws next, after the same seed
    torch.manual_seed(5)
    loss = module.training_step((x, torch.zeros(8), torch.arange(8)), 0)
    loss.backward()
    got = {n: p.grad.clone() for n, p in module.named_parameters()}
    module.zero_grad()

    # the reference: Bernoulli log-likelihood and torch's closed-form Gaussian KL, same noise
    mu, logvar = module.vae.encode(x)
    q = Normal(mu, torch.exp(0.5 * logvar))
    logits = module.vae.decode(mu + torch.exp(0.5 * logvar) * eps)
    recon = -Bernoulli(logits=logits).log_prob(x).flatten(1).sum(-1)
    kl = kl_divergence(q, Normal(0.0, 1.0)).sum(-1)
    reference = (recon + kl).mean()
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    for name, p in module.named_parameters():
        torch.testing.assert_close(got[name], p.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_the_iw_bound_is_the_log_mean_of_the_weights() -> None:
    vae, x = _tiny_vae(2), _batch(6)
    eps = torch.randn(7, 6, 2, dtype=torch.float64)
    t = objective.iw_terms(vae, x, n_samples=7, eps=eps)
    log_w = _reference_log_w(vae, x, eps)
    expected = -(log_w.exp().mean(0).log())  # the definition, without logsumexp
    torch.testing.assert_close(t["iw"], expected)
    # the logged −ELBO terms: the first sample's reconstruction, the closed-form KL
    mu, logvar = vae.encode(x)
    kl = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(-1)
    torch.testing.assert_close(t["kl"], kl)
    q1 = Normal(mu, torch.exp(0.5 * logvar)).log_prob(mu + torch.exp(0.5 * logvar) * eps[0])
    recon_1 = -(
        log_w[0]
        - Normal(0.0, 1.0).log_prob(mu + torch.exp(0.5 * logvar) * eps[0]).sum(-1)
        + q1.sum(-1)
    )
    torch.testing.assert_close(t["recon"], recon_1)


def test_the_gradient_is_eq_8_normalised_weights_times_the_log_weight_gradients() -> None:
    """∇ L_k = Σ_i w̃_i ∇ log w_i (Burda et al. 2015, eq. 8), w̃ the normalised weights, held fixed."""
    vae, x = _tiny_vae(2), _batch(5)
    eps = torch.randn(6, 5, 2, dtype=torch.float64)
    objective.iw_terms(vae, x, n_samples=6, eps=eps)["iw"].sum().backward()
    got = [p.grad.clone() for p in vae.parameters()]
    vae.zero_grad()
    log_w = _reference_log_w(vae, x, eps)
    w_tilde = torch.softmax(log_w, dim=0).detach()
    (-(w_tilde * log_w).sum()).backward()
    for g, p in zip(got, vae.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad)


def _log_px_by_quadrature(vae: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """log p(x) = log ∫ p(x | z) N(z; 0, 1) dz for a 1-D latent, by the trapezoid rule on [−12, 12]."""
    z = torch.linspace(-12, 12, 24001, dtype=torch.float64)
    logits = vae.decode(z[:, None])  # (G, C, H, W)
    log_px_z = Bernoulli(logits=logits[:, None]).log_prob(x[None]).flatten(2).sum(-1)  # (G, B)
    log_joint = log_px_z + Normal(0.0, 1.0).log_prob(z)[:, None]
    dz = float(z[1] - z[0])
    weights = torch.full_like(z, dz)
    weights[[0, -1]] = dz / 2
    return torch.logsumexp(log_joint + weights.log()[:, None], dim=0)


@torch.no_grad()
def test_the_iw_bound_is_tighter_than_the_elbo_and_below_log_px_by_monte_carlo() -> None:
    """E[L_1] = ELBO ≤ E[L_5] ≤ E[L_50] ≤ log p(x) (Burda et al. 2015, Theorem 1), each mean over
    R replicates, compared with 4 standard errors of the difference as the tolerance."""
    vae, x = _tiny_vae(1, seed=3), _batch(4, seed=7)
    for p in vae.decoder.parameters():
        p.mul_(5.0)  # a decoder that depends on z strongly: a true posterior far from q's Gaussian
    log_px = _log_px_by_quadrature(vae, x)  # (B,)
    mu, logvar = vae.encode(x)
    elbo = -kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0)).sum(
        -1
    )  # + E[log p(x | z)], estimated below
    torch.manual_seed(11)
    replicates = 400
    one = torch.stack(
        [-objective.iw_terms(vae, x, n_samples=1)["recon"] for _ in range(replicates)]
    )
    elbo_draws = one + elbo  # (R, B): unbiased draws of the ELBO (closed-form KL)
    bounds = {
        k: torch.stack([-objective.iw_terms(vae, x, n_samples=k)["iw"] for _ in range(replicates)])
        for k in (5, 50)
    }

    def mean_and_se(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return d.mean(0), d.std(0) / math.sqrt(d.shape[0])

    for lower, upper in ((elbo_draws, bounds[5]), (bounds[5], bounds[50])):
        gap, se = mean_and_se(upper - lower)
        assert bool((gap > 4 * se).all()), (gap, se)  # strictly tighter, well beyond the noise
    for k, draws in bounds.items():
        mean, se = mean_and_se(draws)
        assert bool((mean <= log_px + 4 * se).all()), (k, mean, log_px)
    # and it converges to log p(x): with 5,000 samples the gap is a small fraction of the ELBO's
    big = -objective.iw_nll(vae, x, n_samples=5000, chunk=500)
    assert bool(((log_px - big).abs() < 0.05 * (log_px - elbo_draws.mean(0))).all())


def test_training_with_k_samples_minimises_the_bound_and_logs_the_elbo() -> None:
    x = _batch(8).float()
    module = VAEModule(
        model={"latent_dim": 3, "hidden_dims": [16], "iw_train_samples": 5}, image_shape=SHAPE
    )
    torch.manual_seed(2)
    loss = module.training_step((x, torch.zeros(8), torch.arange(8)), 0)
    torch.manual_seed(2)
    t = objective.iw_terms(module.vae, x, n_samples=5)
    assert loss.item() == pytest.approx(t["iw"].mean().item(), rel=1e-6)
    logged = dict(
        zip(("loss", "recon", "kl", "objective"), module.train_terms.read("epoch"), strict=True)
    )
    assert logged["objective"] == pytest.approx(t["iw"].mean().item(), rel=1e-6)
    assert logged["loss"] == pytest.approx(t["loss"].mean().item(), rel=1e-6)
    assert logged["objective"] < logged["loss"]


@pytest.mark.parametrize(
    ("name", "value"), [("beta", 0.5), ("kl_warmup_steps", 10), ("free_bits", 0.1)]
)
def test_the_iw_objective_refuses_the_kl_weighting_keys(name: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"model.iw_train_samples=5 .*model.{name}={value}"):
        coerce(ModelConfig, {"iw_train_samples": 5, name: value}, section="model")
    with pytest.raises(ConfigError, match=r"model\.iw_train_samples=0: expected an integer ≥ 1"):
        coerce(ModelConfig, {"iw_train_samples": 0}, section="model")


def test_the_command_line_refuses_it_before_a_run_directory_exists(tmp_path: Path) -> None:
    cfg = compose_config(
        ["model.iw_train_samples=5", "model.beta=0.5"], output_dir=tmp_path / "run"
    )
    with pytest.raises(ConfigError, match=r"model\.beta=0\.5 is set"):
        validate_config(cfg)  # what the Hydra callback runs before making the directory


def test_the_burda_schedule_is_3_to_the_i_epochs_at_ten_to_the_minus_i_over_7() -> None:
    stages = [i for i in range(8) for _ in range(3**i)]  # the paper's 3,280 epochs, spelled out
    assert len(stages) == 3280
    for epoch, stage in enumerate(stages):
        assert burda_lr_factor(epoch) == pytest.approx(10 ** (-stage / 7), rel=1e-12)
    assert burda_lr_factor(3280) == pytest.approx(10 ** (-8 / 7))  # a ninth stage, if run that long


@pytest.mark.parametrize(
    ("name", "k"), [("iwae_paper_vae", 1), ("iwae_paper_k5", 5), ("iwae_paper_k50", 50)]
)
def test_the_paper_presets_hold_the_papers_setting(name: str, k: int, tmp_path: Path) -> None:
    base = compose_config(output_dir=tmp_path)
    cfg = compose_config([f"experiment={name}"], output_dir=tmp_path)
    validate_config(cfg)
    assert (cfg.model.latent_dim, list(cfg.model.hidden_dims), cfg.model.activation) == (
        50,
        [200, 200],
        "tanh",
    )
    assert (cfg.model.norm, cfg.model.iw_train_samples) == ("none", k)
    assert (cfg.optim.lr, cfg.optim.eps, cfg.optim.scheduler) == (1e-3, 1e-4, "burda")
    assert (cfg.data.batch_size, cfg.data.binarize, cfg.data.val_size) == (20, "dynamic", 400)
    assert (cfg.trainer.max_epochs, cfg.eval.iw_samples) == (3280, 5000)
    # and nothing else: the rest is the default run's
    assert cfg.model.likelihood == base.model.likelihood
    assert cfg.seed == base.seed
    assert cfg.trainer.accelerator == base.trainer.accelerator


@pytest.mark.usefixtures("mnist_root")
@pytest.mark.parametrize("name", ["iwae_paper_vae", "iwae_paper_k5", "iwae_paper_k50"])
def test_each_paper_preset_trains_and_tests_a_few_batches(name: str, tmp_path: Path) -> None:
    """The presets as the README runs them, cut to 3 training batches and a 5-sample test bound."""
    cfg = compose_config(
        [
            f"experiment={name}",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=3",
            "trainer.limit_val_batches=1",
            "trainer.limit_test_batches=1",
            "trainer.enable_progress_bar=false",
            "eval.iw_samples=5",
            "callbacks.visualize.projector=false",
            "callbacks.explorer.enabled=false",
        ],
        output_dir=tmp_path / "run",
    )
    metrics = train(cfg)
    assert metrics["test/nll_iw"] < metrics["test/loss"]  # the 5-sample bound is the tighter one
    assert 0 <= metrics["test/active_units"] <= 50


def test_the_documented_preset_commands_compose_and_validate(tmp_path: Path) -> None:
    """Every `python train.py experiment=iwae_paper_…` line of the README and docs/reproduced.md
    is a valid config as written (its hydra.* keys aside, which only place the run)."""
    root = Path(__file__).resolve().parents[1]
    for doc, least in (("README.md", 2), ("docs/reproduced.md", 3)):
        lines = re.findall(
            r"python train\.py (experiment=iwae_paper\S*[^\n`]*)", (root / doc).read_text()
        )
        assert len(lines) >= least, doc
        for line in lines:
            args = [a for a in shlex.split(line.rstrip("\\ ")) if not a.startswith("hydra.")]
            validate_config(compose_config(args, output_dir=tmp_path))
