"""``pip install .`` is the KL library alone: torch and nothing else; the rest is the ``train`` extra.

The second environment is built honestly but without a 90-second torch install: a venv made
``--without-pip`` gets torch and the distributions torch itself requires, linked from this venv's
site-packages (nothing else: no .pth to this venv, no system site-packages). pip, run from this
venv with ``--python``, then installs a wheel of the project into it *with* its dependencies, with
no index, no find-links and no pip config: that succeeds only if torch is all ``pip install .``
asks for. There, from outside the repository, the README's KL example runs and is checked against
torch.distributions, the training stack is not importable, and ``python train.py`` says in one
line what to install.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT
from packaging.requirements import Requirement

TRAIN_STACK = (
    "lightning",
    "hydra",
    "omegaconf",
    "torchvision",
    "tensorboard",
    "matplotlib",
    "numpy",
)


def _closure(name: str) -> list[importlib.metadata.Distribution]:
    """``name``'s distribution and everything it requires here, with the extras it asks for."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(name, "")]  # (distribution, extra) pairs still to follow
    while todo:
        dist_name, extra = todo.pop()
        dist = importlib.metadata.distribution(dist_name)
        key = dist.metadata["Name"].lower().replace("_", "-")
        if (key, extra) in done:
            continue
        done.add((key, extra))
        seen[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": extra}):
                todo += [(req.name, e) for e in ("", *req.extras)]
    return list(seen.values())


def _link_distributions(dists: list[importlib.metadata.Distribution], site: Path) -> list[str]:
    """Symlink the top-level files and folders of ``dists`` into ``site``; their names."""
    tops = {
        f.parts[0]: Path(d.locate_file(f.parts[0]))
        for d in dists
        for f in d.files or []
        if f.parts[0] not in ("..", "__pycache__")
    }
    for name, target in sorted(tops.items()):
        (site / name).symlink_to(target)
    return sorted(tops)


def _clean_env() -> dict[str, str]:
    """This process's environment without pip's settings, PYTHONPATH or a virtualenv."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    return env | {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1"}


def _run(*cmd: str | Path, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=_clean_env(), capture_output=True, text=True
    )
    if check and done.returncode != 0:
        pytest.fail(f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}")
    return done


@pytest.fixture(scope="module")
def torch_only_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a venv holding torch (and its requirements) plus ``pip install .``."""
    tmp = tmp_path_factory.mktemp("torch_only")
    src = tmp / "src"  # what a wheel is built from, so the build leaves nothing in the repository
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).exists():
            shutil.copy2(ROOT / name, src / name)
    shutil.copytree(ROOT / "vae", src / "vae", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp / "wheels"
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels, src,
         cwd=tmp)  # fmt: skip
    (wheel,) = wheels.glob("vae-*.whl")

    venv = tmp / "venv"
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=tmp)
    python = venv / "bin" / "python"
    site = Path(
        _run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp)
        .stdout.strip()
    )  # fmt: skip
    linked = _link_distributions(_closure("torch"), site)
    assert "torch" in linked
    assert not set(TRAIN_STACK) & set(linked), "torch's requirements would bring the training stack"
    # with dependencies, offline: pip finds nothing to download, so torch must be all it needs
    _run(*pip, "--python", python, "install", "-q", "--no-index", "--no-cache-dir", wheel, cwd=tmp)
    return python


def test_the_kl_library_needs_only_torch(torch_only_python: Path, tmp_path: Path) -> None:
    script = f"""
import importlib.metadata, importlib.util, json, sys
sys.path.insert(0, {str(ROOT / "tests")!r})  # readme_snippets only: it imports torch alone
from readme_snippets import check_kl_snippet, kl_snippet

import vae

namespace = {{}}
exec(compile(kl_snippet(), "README.md", "exec"), namespace)
check_kl_snippet(namespace)
print(json.dumps({{
    "vae": vae.__file__,
    "requires": importlib.metadata.requires("vae"),
    "importable": {{m: importlib.util.find_spec(m) is not None for m in {TRAIN_STACK!r}}},
}}))
"""
    done = _run(torch_only_python, "-c", script, cwd=tmp_path)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert Path(report["vae"]).is_relative_to(torch_only_python.parent.parent)  # the installed copy
    unconditional = [Requirement(r) for r in report["requires"] if "extra ==" not in r]
    assert [r.name for r in unconditional] == ["torch"]
    assert report["importable"] == dict.fromkeys(TRAIN_STACK, False)


def test_train_py_without_the_extra_says_what_to_install(
    torch_only_python: Path, tmp_path: Path
) -> None:
    done = _run(torch_only_python, ROOT / "train.py", cwd=tmp_path, check=False)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr  # one line, no traceback
    assert lines[0].startswith("error: ")
    assert "pip install -e '.[train]'" in lines[0]
    assert "'hydra'" in lines[0]  # the module that is missing
