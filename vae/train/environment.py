"""Where a run ran: versions, device, threads, precision, the project's git commit, the command line.

:func:`collect_environment` returns a plain dict (JSON-ready: it goes into ``metrics.json`` and the
TensorBoard text tab); :func:`format_environment` is its one-line human summary. Nothing here
fails: what cannot be found is ``None`` (a package that is not installed, CUDA on a CPU run) or
``"unknown"`` (the git commit outside a git checkout). Imports torch only.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch

#: distributions whose versions are recorded besides torch (None when not installed)
PACKAGES = ("lightning", "torchvision", "hydra-core")
#: the folder that holds the ``vae`` package: the repository in a checkout or editable install
PACKAGE_PARENT = Path(__file__).resolve().parents[2]  # <checkout>/vae/train/environment.py
GIT_TIMEOUT_S = 5.0
UNKNOWN = "unknown"


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _git(repo_dir: Path, *args: str) -> str | None:
    """``git -C repo_dir <args>``'s output, or None (no git, not a repository, timeout, error)."""
    try:
        out = subprocess.check_output(
            ["git", "-C", str(repo_dir), *args],
            stderr=subprocess.DEVNULL,
            text=True,
            timeout=GIT_TIMEOUT_S,
        )
    except (OSError, subprocess.SubprocessError):  # a non-zero exit is a CalledProcessError
        return None
    return out.strip() or None


def git_state(repo_dir: Path = PACKAGE_PARENT) -> dict[str, Any]:
    """``{"commit": <40 hex>, "describe": "<tag or short hash>[-dirty]", "dirty": bool}`` of the
    checkout at ``repo_dir``, each ``"unknown"`` when ``repo_dir`` is not the top of a git checkout
    (an installed, non-editable package: git is not asked about folders above it)."""
    unknown = {"commit": UNKNOWN, "describe": UNKNOWN, "dirty": UNKNOWN}
    if not (repo_dir / ".git").exists():  # a directory, or a file in a worktree / submodule
        return unknown
    commit = _git(repo_dir, "rev-parse", "HEAD")
    describe = _git(repo_dir, "describe", "--always", "--dirty")
    if commit is None or describe is None:
        return unknown
    return {"commit": commit, "describe": describe, "dirty": describe.endswith("-dirty")}


def cpu_name() -> str:
    """The CPU model (``model name`` of /proc/cpuinfo on Linux, else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or UNKNOWN


def collect_environment(
    *,
    device: torch.device | str = "cpu",
    precision: str | None = None,
    argv: list[str] | None = None,
    repo_dir: Path = PACKAGE_PARENT,
    git: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A plain, JSON-ready dict describing where a run on ``device`` at ``precision`` ran.

    Keys: ``python``, ``torch``, ``lightning``, ``torchvision``, ``hydra-core`` (versions; None
    when not installed), ``cuda`` and ``cudnn`` (the versions torch uses, None unless ``device`` is
    a CUDA device), ``device`` (e.g. ``"cpu"``, ``"cuda:0"``), ``device_name`` (GPU name, or CPU
    model), ``cpu`` (CPU model), ``threads`` (:func:`torch.get_num_threads`), ``precision``,
    ``platform``, ``git`` (``git``, a :func:`git_state` taken earlier, e.g. when the run started;
    else :func:`git_state` of ``repo_dir`` now) and ``command`` (``argv``, by default ``sys.argv``).
    """
    device = torch.device(device)
    on_cuda = device.type == "cuda"
    cpu = cpu_name()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        **{name: _version(name) for name in PACKAGES},
        "cuda": torch.version.cuda if on_cuda else None,
        "cudnn": torch.backends.cudnn.version() if on_cuda else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if on_cuda else cpu,
        "cpu": cpu,
        "threads": torch.get_num_threads(),
        "precision": precision,
        "platform": platform.platform(),
        "git": git if git is not None else git_state(repo_dir),
        "command": list(sys.argv if argv is None else argv),
    }


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether the CPU multiplies bfloat16 in hardware (the ``avx512_bf16`` or ``amx_bf16`` flag of
    /proc/cpuinfo); without it bf16 autocast emulates and is slower than float32. False off Linux."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return False
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return bool({"avx512_bf16", "amx_bf16"} & set(value.split()))
    return False


def auto_precision(accelerator: str) -> str:
    """``trainer.precision=auto``: ``bf16-mixed`` where the device computes bfloat16 natively (a
    CPU with AVX-512 BF16 or AMX, a CUDA GPU that supports it), else ``32-true``. The weights stay
    float32 either way, and validation and test run in float32 (:class:`vae.train.module.VAEModule`),
    so only the training step's arithmetic changes (what it buys: benchmarks/README.md)."""
    use_cuda = accelerator in ("gpu", "cuda") or (
        accelerator == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        native = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    else:
        native = accelerator in ("auto", "cpu") and cpu_has_native_bf16()
    return "bf16-mixed" if native else "32-true"


def format_environment(env: dict[str, Any]) -> str:
    """One line: ``vae 78fd0a0-dirty · Python 3.11.2 · torch 2.14.1 · lightning 2.6.6 · cpu (AMD
    EPYC 7B13, 2 threads) · 32-true``; CUDA and cuDNN versions follow a GPU's name."""
    device = f"{env['device']} ({env['device_name']}, {env['threads']} threads)"
    if env.get("cuda"):
        device += f" · CUDA {env['cuda']} · cuDNN {env['cudnn']}"
    parts = [
        f"vae {env['git']['describe']}",
        f"Python {env['python']}",
        f"torch {env['torch']}",
        env.get("lightning") and f"lightning {env['lightning']}",
        device,
        env.get("precision") and str(env["precision"]),
    ]
    return " · ".join(part for part in parts if part)  # lightning, precision: when known


def environment_markdown(env: dict[str, Any]) -> str:
    """The summary line above a two-column Markdown table of every field (for TensorBoard's text tab)."""
    rows = [f"| {key} | `{value}` |" for key, value in env.items()]
    return "\n".join([format_environment(env), "", "| field | value |", "|---|---|", *rows])
