"""``train(cfg)``: build everything from the composed Hydra config, fit, test, write the run's files.

``train.py`` at the repository root is the thin ``@hydra.main`` wrapper around :func:`run_cli`.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from omegaconf import DictConfig, OmegaConf

from vae.checkpointing import AtomicCheckpointIO, check_resumable
from vae.config import validate_config
from vae.errors import ConfigError, UserError
from vae.module import VAEModule
from vae.report import log_hparams, print_summary, silence_known_noise, written_figures


def _ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):  # a unique name: DDP ranks probe at once
            pass
    except OSError as err:
        raise ConfigError(
            f"paths.output_dir={str(directory)!r}: not writable ({err.strerror}); "
            "choose another location with paths.log_dir=<dir>"
        ) from None


def _instantiate(cfg: Any, **kwargs: Any) -> Any:
    try:
        return instantiate(cfg, **kwargs)
    except InstantiationException as err:
        if isinstance(err.__cause__, UserError):
            raise err.__cause__ from None
        raise


def _build_trainer(cfg: DictConfig, **kwargs: Any) -> L.Trainer:
    try:
        return _instantiate(cfg.trainer, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        if isinstance(cause, (MisconfigurationException, ValueError)):
            raise ConfigError(f"trainer: {' '.join(str(cause).split())}") from None
        raise


class CheckRunDir(Callback):
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir)).absolute()
        existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            what = "not a directory" if not existing.is_dir() else "not writable"
            print(
                f"error: paths.log_dir={str(config.paths.log_dir)!r}: cannot create the run "
                f"directory there ({existing} is {what}); choose another location with "
                "paths.log_dir=<dir>",
                file=sys.stderr,
            )
            sys.exit(2)


def _write_config(output_dir: Path, text: str) -> Path:
    path, k = output_dir / "config.yaml", 0
    while path.exists() and path.read_text() != text:
        k += 1
        path = output_dir / f"config.{k}.yaml"
    path.write_text(text)
    return path


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that has a ``_target_`` (callbacks, loggers)."""
    if not group:
        return []
    return [
        _instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c
    ]


def build_module(cfg: DictConfig, image_shape: tuple[int, int, int]) -> VAEModule:
    """The :class:`VAEModule` described by ``cfg.model``, ``cfg.optim`` and ``cfg.eval``."""
    return VAEModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        evaluation=OmegaConf.to_container(cfg.eval, resolve=True),
        image_shape=tuple(image_shape),
    )


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in metrics.items()}


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the model described by ``cfg``; return the final metrics (nats per image).

    Writes into ``cfg.paths.output_dir``: ``config.yaml`` (the composed config), ``tensorboard/``,
    ``checkpoints/`` (``last.ckpt`` and the best by ``val/loss``) and ``metrics.json``.
    """
    silence_known_noise()
    validate_config(cfg)
    datamodule = _instantiate(cfg.data)  # checks the data.* keys (vae.data.DATA_RULES)
    if cfg.get("ckpt_path"):
        check_resumable(
            cfg.ckpt_path,
            OmegaConf.to_container(cfg.model, resolve=True),
            OmegaConf.to_container(cfg.optim, resolve=True),
        )
    output_dir = Path(cfg.paths.output_dir)
    _ensure_writable(output_dir)
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    if not getattr(datamodule, "download", True):
        datamodule.prepare_data()
    module = build_module(cfg, datamodule.dims)
    if cfg.get("compile"):
        module.compile_networks()
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it cannot show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = _build_trainer(
        cfg, callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()]
    )
    if trainer.strategy.root_device.type == "cpu":
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, which makes every torch.cuda.is_available()
        # probe NVML again (~0.1 ms; Adam asks at every step): on a CPU run ask the runtime once
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
    if trainer.is_global_zero:
        _write_config(output_dir, OmegaConf.to_yaml(cfg, resolve=True))

    start = time.perf_counter()
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    fit_seconds = time.perf_counter() - start

    metrics = {k: v for k, v in _scalars(trainer.callback_metrics).items() if k.startswith("val/")}
    test_seconds = None
    if cfg.get("test"):
        # the final weights: the model the figures show (best-by-val/loss is saved as well)
        start = time.perf_counter()
        results = trainer.test(module, datamodule=datamodule, verbose=False)
        test_seconds = round(time.perf_counter() - start, 2)
        metrics.update(_scalars(results[0]))

    if trainer.is_global_zero:
        summary = {
            "metrics": metrics,
            "units": "nats per image",
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "fit_seconds": round(fit_seconds, 2),
            "test_seconds": test_seconds,
            "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
        }
        (output_dir / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n")
        for logger in trainer.loggers:
            log_hparams(logger, cfg, metrics)  # the curated config with the final metrics
            logger.finalize("success")
        print_summary(cfg, metrics, output_dir, written_figures(trainer.callbacks))
    return metrics


def run_cli(cfg: DictConfig) -> float | None:
    """Run :func:`train` for the command line: a user error becomes one line on stderr and exit 2."""
    try:
        metrics = train(cfg)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    return metrics.get("test/loss", metrics.get("val/loss"))
