"""The README's Python snippets run as written (so the "use the KL loss" example cannot rot)."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import ROOT

BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), flags=re.DOTALL)


def test_the_readme_has_python_snippets() -> None:
    assert any("GaussianKLLoss" in block for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(block: str) -> None:
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    if "GaussianKLLoss" in block:
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
