"""The README's Python snippets run as written (so the "use the KL loss" example cannot rot)."""

from __future__ import annotations

import pytest
from readme_snippets import check_kl_snippet, python_blocks

BLOCKS = python_blocks()


def test_the_readme_has_python_snippets() -> None:
    assert any("GaussianKLLoss" in block for block in BLOCKS)


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_snippet_runs(block: str) -> None:
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    if "GaussianKLLoss" in block:
        check_kl_snippet(namespace)
