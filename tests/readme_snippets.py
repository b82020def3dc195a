"""The README's Python snippets and the check of its KL example: torch only (no pytest, no conftest),
so that a second environment holding only torch can run them too (tests/test_packaging.py)."""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch.distributions import Independent, Normal, kl_divergence

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(readme: Path = README) -> list[str]:
    """The text of every ```python block of ``readme``, in order."""
    return re.findall(r"```python\n(.*?)```", readme.read_text(), flags=re.DOTALL)


def kl_snippet(readme: Path = README) -> str:
    """The "Use the KL loss in your own model" example: the block that uses ``GaussianKLLoss``."""
    return next(block for block in python_blocks(readme) if "GaussianKLLoss" in block)


def check_kl_snippet(namespace: dict) -> None:
    """Assert what the KL example computed, in the ``namespace`` it ran in, against torch itself."""
    # the snippet's loss is the −ELBO of its toy model: finite, and gradients reached the encoder
    assert torch.isfinite(namespace["loss"])
    assert namespace["model"].enc.weight.grad is not None
    # its KL term is KL(q(z|x) ‖ N(0, I)) summed over the batch, as torch.distributions has it
    q_z, x, recon_x = namespace["q_z"], namespace["x"], namespace["recon_x"].detach()
    q = Normal(q_z.loc.detach(), q_z.scale.detach())
    prior = Normal(torch.zeros_like(q.loc), torch.ones_like(q.loc))
    kl = kl_divergence(Independent(q, 1), Independent(prior, 1))  # (32,): one value per image
    torch.testing.assert_close(namespace["kl_term"](q), kl.sum())
    # and the loss is the −ELBO: Bernoulli NLL written out by hand + that KL, in nats
    target = x.view(-1, 784)
    nll = -(target * recon_x.log() + (1 - target) * (1 - recon_x).log()).sum()
    torch.testing.assert_close(namespace["loss"].detach(), nll + kl.sum(), rtol=1e-5, atol=1e-3)
