"""Shared fixtures: the Hydra config composed into ``tmp_path``, and the real-MNIST location.

Real MNIST is read from ``$VAE_DATA_DIR`` (CI sets it to ``../shared/datasets``); tests that need it
are skipped when it is not set. No test touches the network: every composed config has
``data.download=false``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict

import vae.train.config  # noqa: F401 (stores the model/optim/eval defaults that train.yaml lists first)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"

#: a run small enough for a test: a handful of batches of real MNIST, no progress bar
TINY = (
    "trainer=cpu",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=8",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.log_every_n_steps=4",
    "data.batch_size=64",
    "data.eval_batch_size=250",
    "eval.iw_samples=4",
)


#: a short run of 3 epochs × 8 batches with everything a resume must restore: a cosine schedule,
#: dynamic binarisation (fresh random pixels every step) and the reparameterisation noise
RESUME_RUN = (
    *TINY,
    "trainer.max_epochs=3",
    "data.binarize=dynamic",
    "callbacks.visualize.projector=false",
)
#: the metrics a resumed run must end with, equal to an uninterrupted run's
RESUME_METRICS = (
    "val/loss",
    "val/recon",
    "val/kl",
    "test/loss",
    "test/recon",
    "test/kl",
    "test/nll_iw",
)


def run_metrics(run_dir: Path) -> dict[str, float]:
    """The ``metrics`` of ``<run_dir>/metrics.json``."""
    return json.loads((run_dir / "metrics.json").read_text())["metrics"]


def train_py(*overrides: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``python train.py <overrides>`` in a subprocess started in the repository root (output
    captured, not checked: the caller asserts the exit status)."""
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def compose_config(overrides: Sequence[str] = (), *, output_dir: Path | None = None) -> DictConfig:
    """The config ``python train.py <overrides>`` would run, with the run directory ``output_dir``."""
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        cfg = compose("train", overrides=["data.download=false", *overrides])
    if output_dir is not None:
        with open_dict(cfg):
            cfg.paths.output_dir = str(output_dir)
    return cfg


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., DictConfig]:
    """``make_cfg(*overrides, tiny=True, name="run")``: a composed config writing into tmp_path/name."""

    def make(*overrides: str, tiny: bool = True, name: str = "run") -> DictConfig:
        base = TINY if tiny else ()
        return compose_config([*base, *overrides], output_dir=tmp_path / name)

    return make


@pytest.fixture(scope="session")
def mnist_root() -> Path:
    """The folder holding ``MNIST/raw/`` (from ``$VAE_DATA_DIR``); skips the test when unset."""
    root = os.environ.get("VAE_DATA_DIR")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("real MNIST not available: set VAE_DATA_DIR to the folder holding MNIST/raw/")
    return Path(root)


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """Put every logger's handlers back after each test: a ``python train.py`` run in-process
    (runpy) lets Hydra point them at that test's captured stderr, closed once the test ends."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    saved = [(lg, lg.handlers[:], lg.level, lg.propagate, lg.disabled) for lg in loggers]
    yield
    for lg, handlers, level, propagate, disabled in saved:
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate, lg.disabled = propagate, disabled


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> dict[str, float]:
    """The final metrics of :data:`RESUME_RUN` trained without interruption (the reference of
    every exact-resume test)."""
    from vae.train.run import train

    run_dir = tmp_path_factory.mktemp("uninterrupted") / "run"
    train(compose_config(RESUME_RUN, output_dir=run_dir))
    return run_metrics(run_dir)
