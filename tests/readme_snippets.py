"""The README's Python snippets and the check of its KL example: torch only (no pytest, no conftest),
so that a second environment holding only torch can run them too (tests/test_packaging.py)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

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
    assert namespace["encoder"].weight.grad is not None
    # its KL term is the closed form against N(0, I), checked against torch.distributions
    mu, logvar = namespace["mu"].detach(), namespace["logvar"].detach()
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    per_dim = torch.distributions.kl_divergence(q, p)  # (32, 16)
    expected = torch.clamp(per_dim.mean(0), min=0.1).sum()  # free bits λ = 0.1
    torch.testing.assert_close(namespace["kl_term"](mu, logvar), expected)
