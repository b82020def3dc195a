"""Every notebook in notebooks/ runs top to bottom without errors, and is committed without outputs.

Notebooks are picked up by glob, so a new one is tested without touching this file. Each runs in a
fresh kernel of *this* interpreter (the venv's, whether or not the venv is activated), with the
notebook's folder as working directory and the test process's environment (e.g. ``VAE_DATA_DIR``)
plus ``MPLBACKEND=Agg``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest

NOTEBOOK_DIR = Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT_S = 300

# Prepended to the in-memory copy only: fails the run if the kernel is not this interpreter's.
# (jupyter_client starts kernelspecs whose argv[0] is "python" with sys.executable; a kernelspec
# elsewhere on the Jupyter path with an absolute interpreter path would silently win otherwise.)
KERNEL_CHECK = (
    "import sys as _sys\n"
    f"assert _sys.prefix == {sys.prefix!r}, f'notebook kernel runs in {{_sys.prefix}}, "
    f"not in {sys.prefix}'\n"
    "del _sys"
)


def _ids(paths: list[Path]) -> list[str]:
    return [p.name for p in paths]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_is_committed_without_outputs(path: Path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, cell in enumerate(nb.cells)
        if cell.cell_type == "code" and (cell.outputs or cell.execution_count is not None)
    ]
    assert not dirty, f"{path.name}: clear the outputs of code cells {dirty} before committing"


#: notebooks that read real MNIST (from $VAE_DATA_DIR; skipped without it: tests never download)
NEEDS_MNIST = {"latent_space.ipynb"}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_without_errors(path: Path, monkeypatch: pytest.MonkeyPatch):
    from nbclient import NotebookClient

    if path.name in NEEDS_MNIST:
        root = os.environ.get("VAE_DATA_DIR")
        if not root or not (Path(root) / "MNIST" / "raw").is_dir():
            pytest.skip("needs real MNIST: set VAE_DATA_DIR to the folder holding MNIST/raw/")

    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits os.environ
    nb = nbformat.read(path, as_version=4)
    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},  # cwd of the kernel
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error
