"""Every notebook in notebooks/ runs top to bottom without errors, and is committed without outputs.

Notebooks are picked up by glob, so a new one is tested without touching this file. Each runs in a
fresh kernel of *this* interpreter (the venv's, whether or not the venv is activated), started the
way Jupyter starts one: the notebook's folder as working directory and ``JPY_SESSION_NAME`` naming
the notebook, with the test process's environment plus ``MPLBACKEND=Agg``. A relative
``VAE_DATA_DIR`` means relative to the folder the tests were started in: it is resolved once here,
and the kernel gets the absolute path.
"""

from __future__ import annotations

import json
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


def _execute(nb: nbformat.NotebookNode, *, cwd: Path) -> None:
    """Run ``nb`` in a fresh kernel of this interpreter started in ``cwd`` (env: ``os.environ``)."""
    from nbclient import NotebookClient

    nb.cells.insert(0, nbformat.v4.new_code_cell(KERNEL_CHECK))
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(cwd)}},  # cwd of the kernel
    )
    client.execute()  # raises CellExecutionError, naming the cell, on the first error


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_ids(NOTEBOOKS))
def test_notebook_runs_without_errors(path: Path, monkeypatch: pytest.MonkeyPatch):
    root = os.environ.get("VAE_DATA_DIR")
    if path.name in NEEDS_MNIST and (not root or not (Path(root) / "MNIST" / "raw").is_dir()):
        pytest.skip("needs real MNIST: set VAE_DATA_DIR to the folder holding MNIST/raw/")
    if root:  # relative to where the tests were started (this process's cwd), not to the kernel's
        monkeypatch.setenv("VAE_DATA_DIR", str(Path(root).resolve()))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # the kernel inherits os.environ
    monkeypatch.setenv("JPY_SESSION_NAME", str(path))  # what Jupyter tells a notebook's kernel
    _execute(nbformat.read(path, as_version=4), cwd=path.parent)


def _latent_setup(*, cwd: Path) -> dict[str, object]:
    """Run only the setup cell of latent_space.ipynb in a kernel started in ``cwd``; its paths."""
    nb = nbformat.read(NOTEBOOK_DIR / "latent_space.ipynb", as_version=4)
    setup = next(c for c in nb.cells if c.cell_type == "code" and "REPO =" in c.source)
    report = 'import json\nprint(json.dumps({"repo": str(REPO), **DATA}))'
    nb.cells = [setup, nbformat.v4.new_code_cell(report)]
    _execute(nb, cwd=cwd)
    return json.loads(nb.cells[-1].outputs[0]["text"])


def test_latent_notebook_finds_the_repository_from_the_repository_root(
    monkeypatch: pytest.MonkeyPatch,
):
    # a kernel started in the repository root (no notebook name given): not the folder above it
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    setup = _latent_setup(cwd=NOTEBOOK_DIR.parent)
    assert setup == {
        "repo": str(NOTEBOOK_DIR.parent),
        "root": str(NOTEBOOK_DIR.parent / "data"),
        "download": True,
    }


def test_latent_notebook_finds_the_repository_from_its_own_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # a kernel started outside the repository, told which notebook it runs (as Jupyter does), with
    # a relative VAE_DATA_DIR given in another folder ($PWD: where the command was started)
    start = tmp_path / "start"
    monkeypatch.setenv("JPY_SESSION_NAME", str(NOTEBOOK_DIR / "latent_space.ipynb"))
    monkeypatch.setenv("VAE_DATA_DIR", "../shared/datasets")
    monkeypatch.setenv("PWD", str(start))
    setup = _latent_setup(cwd=tmp_path)
    assert setup == {
        "repo": str(NOTEBOOK_DIR.parent),
        "root": str(tmp_path / "shared" / "datasets"),
        "download": False,
    }


def test_the_dev_extra_can_execute_the_notebooks_as_the_readme_says() -> None:
    """``jupyter nbconvert --execute`` (the README's command) needs nbconvert: in the dev extra."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "nbconvert", "--version"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
