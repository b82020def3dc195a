"""``train(cfg)``: build everything from the composed Hydra config, fit, test, write the run's files.

``train.py`` at the repository root is the thin ``@hydra.main`` wrapper around :func:`run_cli`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from vae.errors import ConfigError, RunInterrupted, UserError
from vae.train.checkpointing import (
    AtomicCheckpointIO,
    check_resumable,
    load_checkpoint,
    remove_stale_temp_files,
)
from vae.train.config import validate_config
from vae.train.diskspace import disk_full_is_one_line
from vae.train.environment import collect_environment, environment_markdown
from vae.train.module import VAEModule
from vae.train.preemption import Preemption
from vae.train.report import (
    UNITS,
    log_hparams,
    print_summary,
    silence_known_noise,
    with_bits_per_dim,
    written_figures,
)


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


@contextlib.contextmanager
def _user_error_exits(context: str = "") -> Iterator[None]:
    """A :class:`UserError` in the block (or the decorated function) becomes one
    ``error: <context><message>`` line on stderr and exit 2."""
    try:
        yield
    except UserError as err:
        print(f"error: {context}{err}", file=sys.stderr)
        sys.exit(2)


class CheckRunDir(Callback):
    """Before Hydra creates a directory: the config (:func:`validate_config`, so a rejected config
    leaves no stub run directory), every job of a sweep before the first starts, and that the run
    directory can be created where it is asked for."""

    @_user_error_exits()
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        validate_config(config)
        run_dir = Path(str(config.hydra.run.dir)).absolute()
        if config.get("ckpt_path") not in (None, "last"):  # a file that is no checkpoint of ours
            ckpt = resolve_ckpt_path(config.ckpt_path, run_dir)
            load_checkpoint(ckpt, name=f"ckpt_path={str(ckpt)!r}")  # the message train() gives
        existing = next(p for p in (run_dir, *run_dir.parents) if p.exists())
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            what = "not a directory" if not existing.is_dir() else "not writable"
            typed = any(o.startswith("hydra.run.dir=") for o in config.hydra.overrides.hydra)
            key, value = (
                ("hydra.run.dir", run_dir) if typed else ("paths.log_dir", config.paths.log_dir)
            )
            raise ConfigError(
                f"{key}={str(value)!r}: cannot create the run directory there ({existing} is "
                f"{what}); choose another location with {key}=<dir>"
            )

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
        from hydra.core.global_hydra import GlobalHydra
        from hydra.core.override_parser.overrides_parser import OverridesParser

        loader = GlobalHydra.instance().config_loader()
        # the override lists of the sweep's jobs, as Hydra's basic sweeper expands them
        parsed = OverridesParser.create().parse_overrides(list(config.hydra.overrides.task))
        jobs = [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]
        for n, overrides in enumerate(jobs):
            job = loader.load_sweep_config(config, overrides)
            with _user_error_exits(
                f"sweep job {n} of {len(jobs)} ({' '.join(overrides)}), so no job was started: "
            ):
                validate_config(job)


def _write_config(output_dir: Path, text: str) -> None:
    path, k = output_dir / "config.yaml", 0
    while path.exists() and path.read_text() != text:
        k += 1
        path = output_dir / f"config.{k}.yaml"
    path.write_text(text)


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


@contextlib.contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``<output_dir>/.lock`` for the run (global rank 0 only:
    the other DDP processes share its directory). A second live run into the same directory is a
    :class:`ConfigError` naming the holder's PID; the lock dies with its process (``kill -9`` too)."""
    if rank_zero_only.rank != 0:
        yield
        return
    with open(output_dir / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            raise ConfigError(
                f"run directory {str(output_dir)!r} is in use by another run (PID {holder}); "
                "wait for it to end, or choose another one with hydra.run.dir=<dir>"
            ) from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def resolve_ckpt_path(value: Any, output_dir: Path) -> Path | None:
    """``ckpt_path``: ``null`` (a new run), a path (relative to where the command started), or
    ``last``: ``<run dir>/checkpoints/last.ckpt`` if it exists, else a new run (so a requeued job
    can use one fixed command with ``hydra.run.dir=<dir> ckpt_path=last``)."""
    if value is None:
        return None
    if value == "last":
        last = output_dir / "checkpoints" / "last.ckpt"
        if last.is_file():
            return last.absolute()
        print(f"ckpt_path=last: no {last} yet, starting a new run", file=sys.stderr)
        return None
    return Path(value).expanduser().absolute()


def _resume_command(ckpt: Path, output_dir: Path, data_root: Path) -> str:
    """``python train.py <the same overrides> hydra.run.dir=<run> ckpt_path=<ckpt>``, with
    ``data.root=<absolute root>`` unless it was an override: a root from ``$VAE_DATA_DIR`` (maybe
    relative) would not be there in another shell or working directory."""
    from hydra.core.hydra_config import HydraConfig

    # not initialized when not under @hydra.main (train(cfg) from Python)
    task = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    keys = [o.lstrip("+~").split("=", 1)[0] for o in task]
    kept = [o for o, k in zip(task, keys, strict=True) if k not in ("ckpt_path", "hydra.run.dir")]
    root = [] if "data.root" in keys else [f"data.root={data_root}"]
    args = [*kept, *root, f"hydra.run.dir={output_dir}", f"ckpt_path={ckpt}"]
    return "python train.py " + " ".join(shlex.quote(a) for a in args)


def _write_metrics(path: Path, summary: dict[str, Any], *, resumed_from: Path | None) -> None:
    """Write ``metrics.json``; a resumed run keeps the metrics of the file it continues that it
    did not compute again (e.g. ``val/*`` when nothing was left to train), and says so."""
    if resumed_from is not None:
        if path.is_file():
            with contextlib.suppress(ValueError, KeyError, TypeError):
                summary["metrics"] = json.loads(path.read_text())["metrics"] | summary["metrics"]
        summary["resumed_from"] = str(resumed_from)
    path.write_text(json.dumps(summary, indent=2) + "\n")


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the model described by ``cfg``; return the final metrics (nats per image).

    Writes into ``cfg.paths.output_dir``: ``config.yaml`` (the composed config), ``tensorboard/``,
    ``checkpoints/`` (``last.ckpt`` and the best by ``val/loss``) and ``metrics.json``. SIGTERM or
    SIGINT save ``checkpoints/last.ckpt`` at the current step and raise :class:`RunInterrupted`.
    """
    silence_known_noise()
    validate_config(cfg)
    datamodule = _instantiate(cfg.data)  # checks the data.* keys (vae.train.data.DATA_RULES)
    output_dir = Path(cfg.paths.output_dir).absolute()
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is not None:
        check_resumable(
            ckpt_path,
            OmegaConf.to_container(cfg.model, resolve=True),
            OmegaConf.to_container(cfg.optim, resolve=True),
            data=dict(datamodule.hparams),
        )
    _ensure_writable(output_dir)
    with run_lock(output_dir):  # no other live run writes here: leftovers of a kill -9 can go
        remove_stale_temp_files(output_dir / "checkpoints")
        return _fit_and_test(cfg, datamodule, output_dir, ckpt_path)


def _as_recorded(cfg: DictConfig, *, data_root: str, output_dir: Path, ckpt: Path | None) -> str:
    """``config.yaml``: the resolved config with every path absolute (a relative path the user
    typed is relative to where the command started), so it means the same from anywhere."""
    recorded = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(recorded):
        recorded.data.root = data_root
        recorded.paths.output_dir = str(output_dir)
        recorded.paths.log_dir = str(Path(recorded.paths.log_dir).expanduser().absolute())
        recorded.ckpt_path = None if ckpt is None else str(ckpt)
    return OmegaConf.to_yaml(recorded)


def _fit_and_test(
    cfg: DictConfig, datamodule: Any, output_dir: Path, ckpt_path: Path | None
) -> dict[str, float]:
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    if not getattr(datamodule, "download", True):
        datamodule.prepare_data()
    module = build_module(cfg, datamodule.dims)
    if cfg.get("compile"):
        module.compile_networks()
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it cannot show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    preemption = Preemption()
    loggers = _instantiate_all(cfg.get("logger"))
    trainer = _build_trainer(
        cfg,
        callbacks=[*callbacks, preemption],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
    )
    asked = cfg.trainer.get("precision")
    if asked is not None and str(trainer.precision) != str(asked):  # Lightning swapped it quietly
        raise ConfigError(
            f"trainer.precision={asked!r} is not supported on {trainer.strategy.root_device.type} "
            f"(Lightning would run {trainer.precision} and the run's config would say {asked}); "
            "choose bf16-mixed or 32-true"
        )
    if trainer.strategy.root_device.type == "cpu":
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, which makes every torch.cuda.is_available()
        # probe NVML again (~0.1 ms; Adam asks at every step): on a CPU run ask the runtime once
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
    if trainer.is_global_zero:
        text = _as_recorded(
            cfg, data_root=datamodule.hparams["root"], output_dir=output_dir, ckpt=ckpt_path
        )
        _write_config(output_dir, text)

    try:
        with preemption.installed():
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            fit_seconds = time.perf_counter() - start
            metrics = {
                k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
            }
            test_seconds = None
            if cfg.get("test"):
                # the final weights: the model the figures show (best-by-val/loss is saved as well)
                start = time.perf_counter()
                results = trainer.test(module, datamodule=datamodule, verbose=False)
                test_seconds = round(time.perf_counter() - start, 2)
                metrics.update({k: float(v) for k, v in results[0].items()})
            metrics = with_bits_per_dim(metrics, datamodule.dims)
    except SIGTERMException:
        if preemption.saved is None or preemption.received is None:
            raise
        step, path = preemption.saved
        signum = preemption.received
        raise RunInterrupted(
            f"interrupted at step {step} ({signum.name}); resume with: "
            f"{_resume_command(path, output_dir, datamodule.hparams['root'])}",
            exit_code=128 + int(signum),
        ) from None

    if trainer.is_global_zero:
        summary = {
            "metrics": metrics,
            "units": UNITS,
            "epochs": trainer.current_epoch,
            "global_step": trainer.global_step,
            "fit_seconds": round(fit_seconds, 2),
            "test_seconds": test_seconds,
            "best_checkpoint": getattr(trainer.checkpoint_callback, "best_model_path", None),
            "environment": collect_environment(
                device=trainer.strategy.root_device, precision=str(trainer.precision)
            ),
        }
        _write_metrics(output_dir / "metrics.json", summary, resumed_from=ckpt_path)
        for logger in trainer.loggers:
            log_hparams(logger, cfg, metrics)  # the curated config with the final metrics
            if hasattr(logger.experiment, "add_text"):  # TensorBoard's text tab
                logger.experiment.add_text(
                    "environment", environment_markdown(summary["environment"])
                )
            logger.finalize("success")
        print_summary(cfg, metrics, output_dir, written_figures(trainer.callbacks))
    return metrics


@_user_error_exits()
def run_cli(cfg: DictConfig) -> float | None:
    """Run :func:`train` for the command line: a user error becomes one line on stderr and exit 2."""
    try:
        with disk_full_is_one_line(
            cfg.paths.output_dir,
            what="the run's files (TensorBoard events, figures, metrics.json)",
            kept="the checkpoints already written are intact",
            fix="or write the run elsewhere with paths.log_dir=<dir>",
        ):
            metrics = train(cfg)
    except RunInterrupted as stop:
        if rank_zero_only.rank == 0:
            print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    return metrics.get("test/loss", metrics.get("val/loss"))
