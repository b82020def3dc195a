"""``train(cfg)``: build everything from the composed Hydra config, fit, test, write the run's files.

``train.py`` at the repository root is the thin ``@hydra.main`` wrapper around :func:`run_cli`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import os
import sys
import tempfile
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning as L
from hydra.errors import InstantiationException
from hydra.experimental.callback import Callback
from hydra.utils import instantiate
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import LearningRateMonitor, ModelSummary, ProgressBar
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from vae.errors import ConfigError, RunInterrupted, UserError
from vae.rules import check, path
from vae.train.boundary import Writes, user_error_exits
from vae.train.checkpointing import AtomicCheckpointIO, check_resumable, remove_stale_temp_files
from vae.train.cli import sweep_jobs
from vae.train.config import validate_config
from vae.train.data import data_config
from vae.train.environment import auto_precision
from vae.train.files import FILE_MODE, read_own, write_atomic
from vae.train.module import VAEModule
from vae.train.preemption import Preemption
from vae.train.report import silence_known_noise, with_bits_per_dim
from vae.train.rundir import run_dir_gone_is_one_line
from vae.train.shell import command, override
from vae.train.summary import RunSummary


def _ensure_writable(directory: Path) -> None:
    try:
        directory.mkdir(parents=True, exist_ok=True)
        # a unique name (DDP ranks probe at once), never kept
        with tempfile.TemporaryFile(dir=directory):  # not vae.train.files: a probe
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
        # a TypeError too: Lightning checks some values' types by using them (devices=[0, 1] on
        # a CPU accelerator is "'list' object cannot be interpreted as an integer")
        if isinstance(cause, (MisconfigurationException, ValueError, TypeError)):
            raise ConfigError(f"trainer: {' '.join(str(cause).split())}") from None
        raise


def _check_creatable(config: DictConfig, directory: Any, *, key: str, what: str) -> None:
    """Create ``directory`` now (Hydra would next), or a :class:`ConfigError` naming ``key`` if the
    user typed it, else ``paths.log_dir`` (the key its default derives from): the one test the OS
    cannot fool (``os.access`` says a folder under ``/proc`` is writable)."""
    value = directory
    if not any(o.startswith(f"{key}=") for o in config.hydra.overrides.hydra):  # not typed
        key, value = "paths.log_dir", config.paths.log_dir
    directory = Path(directory).absolute()
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        existing = next(p for p in (directory, *directory.parents) if p.exists())
        reason = f"{existing} is not a directory" if not existing.is_dir() else err.strerror
        if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and existing.is_dir():
            reason = f"{existing} is not writable"
        raise ConfigError(
            f"{key}={str(value)!r}: cannot create {what} there ({reason}); choose another "
            f"location with {key}=<dir>"
        ) from None


def _check_resume(config: DictConfig, run_dir: Path) -> None:
    """What ``train()`` refuses of a resume (a file that is no checkpoint of ours, another network,
    optimiser or split, a cosine schedule that would not end where the checkpoint's does), here
    before Hydra writes ``.hydra/`` and ``train.log``: a refused command leaves the run directory
    it names byte-identical (and its recorded config, which ``ckpt_path=last`` compares, as it
    was). The messages are ``train()``'s."""
    value = config.get("ckpt_path")
    last = run_dir / "checkpoints" / "last.ckpt"
    if value is None or (value == "last" and not last.is_file()):
        return  # a new run (train() says so for ckpt_path=last)
    ckpt = last if value == "last" else resolve_ckpt_path(value, run_dir)
    data = dict(OmegaConf.to_container(config.data, resolve=True))
    data.pop("_target_", None)
    # the keys that set the schedule's plan (default_root_dir needs Hydra's run directory)
    plan = {k: OmegaConf.select(config.trainer, k) for k in _PLAN_KEYS}
    _check_resumable(config, ckpt, data=dataclasses.asdict(data_config(data)), trainer_cfg=plan)


def _check_resumable(
    cfg: DictConfig, ckpt: Path, *, data: Mapping[str, Any], trainer_cfg: Mapping[str, Any]
) -> None:
    """:func:`check_resumable` of ``ckpt`` against ``cfg.model`` and ``cfg.optim`` (validated
    already: resolving them cannot fail), the data module's arguments and the ``trainer`` keys."""
    model, optim = (OmegaConf.to_container(cfg[s], resolve=True) for s in ("model", "optim"))
    check_resumable(ckpt, model, optim, data=data, trainer_cfg=trainer_cfg)


#: the ``trainer`` keys :func:`vae.train.guards.check_schedule` reads
_PLAN_KEYS = (
    "max_epochs",
    "max_steps",
    "limit_train_batches",
    "accumulate_grad_batches",
    "devices",
    "num_nodes",
)


class CheckRunDir(Callback):
    """Before Hydra creates a directory: the config (:func:`validate_config`, so a rejected config
    leaves no stub run directory), every job of a sweep before the first starts, and that the run
    directory can be created where it is asked for."""

    @user_error_exits()
    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        validate_config(config)
        run_dir = Path(str(config.hydra.run.dir)).absolute()
        _check_resume(config, run_dir)
        _check_creatable(config, run_dir, key="hydra.run.dir", what="the run directory")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.sweeper.get("_target_") != BASIC_SWEEPER:
            return  # another sweeper (hparams_search=optuna) validates its own trials up front
        jobs = sweep_jobs(list(config.hydra.overrides.task))
        validate_sweep(config, jobs, what="sweep job", nothing="no job was started")
        with user_error_exits():
            sweep_dir = check("hydra.sweep.dir", config.hydra.sweep.dir, path())  # '' writes to .
            _check_creatable(config, sweep_dir, key="hydra.sweep.dir", what="the sweep directory")


#: ``hydra.sweeper._target_`` of Hydra's own sweeper (``-m key=a,b``)
BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def validate_sweep(
    config: DictConfig,
    jobs: list[list[str]],
    *,
    what: str,
    nothing: str,
    check: Callable[[DictConfig], None] = validate_config,
) -> None:
    """``check`` the config of each job of a sweep (its override list) before any starts; the
    first problem is one ``error: <what> n of N (<overrides>), so <nothing>: ...`` line, exit 2."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    for n, overrides in enumerate(jobs):
        job = loader.load_sweep_config(config, overrides)
        with user_error_exits(f"{what} {n} of {len(jobs)} ({' '.join(overrides)}), so {nothing}: "):
            check(job)


def _write_config(output_dir: Path, text: str) -> None:
    path, k = output_dir / "config.yaml", 0
    while (earlier := read_own(path)) is not None and earlier != text.encode():
        k += 1
        path = output_dir / f"config.{k}.yaml"
    write_atomic(path, text)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a config group that has a ``_target_`` (callbacks, loggers)."""
    if not group:
        return []
    return [
        _instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c
    ]


def build_module(cfg: DictConfig, image_shape: tuple[int, int, int]) -> VAEModule:
    """The :class:`VAEModule` described by ``cfg.model``, ``cfg.optim`` and ``cfg.eval``
    (its training loss compiled if ``cfg.compile``)."""
    module = VAEModule(
        model=OmegaConf.to_container(cfg.model, resolve=True),
        optim=OmegaConf.to_container(cfg.optim, resolve=True),
        evaluation=OmegaConf.to_container(cfg.eval, resolve=True),
        image_shape=tuple(image_shape),
    )
    if cfg.get("compile"):
        module.compile_networks()
    return module


def build_trainer(cfg: DictConfig) -> tuple[L.Trainer, Preemption]:
    """The ``Trainer`` of ``cfg.trainer`` with the configured callbacks and loggers, the
    preemption handler (returned too) and atomic checkpoint writes."""
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):  # Lightning refuses a bar it cannot show
        callbacks = [c for c in callbacks if not isinstance(c, ProgressBar)]
    if not cfg.trainer.get("enable_model_summary", True):  # and a summary it was told not to print
        callbacks = [c for c in callbacks if not isinstance(c, ModelSummary)]
    preemption = Preemption()
    loggers = _instantiate_all(cfg.get("logger"))
    if not loggers:  # logger=null: Lightning refuses a learning-rate monitor with nothing to log to
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    asked = cfg.trainer.get("precision")
    if asked == "auto":  # what this device computes fastest (vae.train.environment.auto_precision)
        asked = auto_precision(str(cfg.trainer.get("accelerator", "auto")))
    trainer = _build_trainer(
        cfg,
        callbacks=[*callbacks, preemption],
        logger=loggers or False,
        plugins=[AtomicCheckpointIO()],
        **({"precision": asked} if asked is not None else {}),
    )
    if asked is not None and str(trainer.precision) != str(asked):  # Lightning swapped it quietly
        raise ConfigError(
            f"trainer.precision={asked!r} is not supported on {trainer.strategy.root_device.type} "
            f"(Lightning would run {trainer.precision} and the run's config would say {asked}); "
            "choose bf16-mixed or 32-true"
        )
    if trainer.strategy.root_device.type == "cpu":
        # Lightning sets PYTORCH_NVML_BASED_CUDA_CHECK=1, which makes every torch.cuda.is_available()
        # probe NVML again (Adam asks at every step: benchmarks/README.md); a CPU run asks the
        # runtime once
        os.environ["PYTORCH_NVML_BASED_CUDA_CHECK"] = "0"
    return trainer, preemption


@contextlib.contextmanager
def run_lock(output_dir: Path) -> Iterator[None]:
    """Hold an exclusive ``fcntl`` lock on ``<output_dir>/.lock`` for the run (global rank 0 only:
    the other DDP processes share its directory). A second live run into the same directory is a
    :class:`ConfigError` naming the holder's PID; the lock dies with its process (``kill -9`` too).
    The file is removed when the run ends (a ``kill -9`` leaves it, unlocked: harmless)."""
    if rank_zero_only.rank != 0:
        yield
        return
    # O_NOFOLLOW: a link planted at .lock is refused, not truncated through
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW
    try:  # not vae.train.files: the lock must stay one inode
        fd = os.open(output_dir / ".lock", flags, FILE_MODE)  # not vae.train.files: the lock
    except OSError as err:
        raise ConfigError(
            f"run directory {str(output_dir)!r}: cannot open its lock file .lock ("
            f"{'a symbolic link' if err.errno == errno.ELOOP else err.strerror}); remove it, or "
            "choose another run directory with hydra.run.dir=<dir>"
        ) from None
    with open(fd, "r+") as f:  # not vae.train.files: the lock (the PID in it)
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
            (output_dir / ".lock").unlink(missing_ok=True)  # still locked: the next run makes one
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
    root = [] if "data.root" in keys else [override("data.root", data_root)]
    args = [*kept, *root, override("hydra.run.dir", output_dir), override("ckpt_path", ckpt)]
    return command("python train.py", args)  # quoted for Hydra, then the shell: paste it as is


@contextlib.contextmanager
def interrupt_says_how_to_resume(
    preemption: Preemption, *, output_dir: Path, data_root: Path
) -> Iterator[None]:
    """Lightning's ``SIGTERMException`` after :class:`Preemption` saved a checkpoint becomes
    :class:`RunInterrupted`: the step, the signal and the command that resumes the run."""
    try:
        yield
    except SIGTERMException:
        if preemption.saved is None or preemption.received is None:
            raise
        step, path = preemption.saved
        signum = preemption.received
        raise RunInterrupted(
            f"interrupted at step {step} ({signum.name}); resume with: "
            f"{_resume_command(path, output_dir, data_root)}",
            exit_code=128 + int(signum),
        ) from None


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


def _validated(
    trainer: L.Trainer, module: VAEModule, datamodule: Any, *, resumed: bool
) -> dict[str, float]:
    """The ``val/*`` metrics of the fit; a resumed run with nothing left to train (it was stopped
    after its last epoch, e.g. in the test) validated nothing, so it validates the restored model
    now: the same numbers as the run it continues (the evaluation noise is a function of the
    image), so its ``metrics.json`` lacks none of them."""

    def val() -> dict[str, float]:
        return {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}

    if not val() and resumed and trainer.limit_val_batches:
        trainer.validate(module, datamodule=datamodule, verbose=False)
    return val()


def train(cfg: DictConfig) -> dict[str, float]:
    """Train (and test) the model described by ``cfg``; return the final metrics (nats per image).

    Writes into ``cfg.paths.output_dir``: ``config.yaml`` (the composed config), ``tensorboard/``,
    ``checkpoints/`` (``last.ckpt`` and the best by ``val/loss``) and ``metrics.json``. SIGTERM or
    SIGINT save ``checkpoints/last.ckpt`` at the current step and raise :class:`RunInterrupted`.
    """
    silence_known_noise()
    validate_config(cfg)
    datamodule = _instantiate(cfg.data)  # checks the data.* keys (vae.train.data_config.DATA_RULES)
    data_root = datamodule.hparams["root"]
    output_dir = Path(cfg.paths.output_dir).absolute()
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), output_dir)
    if ckpt_path is not None:
        trainer_cfg = OmegaConf.to_container(cfg.trainer, resolve=True)
        _check_resumable(cfg, ckpt_path, data=dict(datamodule.hparams), trainer_cfg=trainer_cfg)
    _ensure_writable(output_dir)
    with run_lock(output_dir):  # no other live run writes here: leftovers of a kill -9 can go
        remove_stale_temp_files(output_dir / "checkpoints")
        L.seed_everything(cfg.seed, workers=True, verbose=False)
        if not getattr(datamodule, "download", True):
            datamodule.prepare_data()
        module = build_module(cfg, datamodule.dims)
        trainer, preemption = build_trainer(cfg)
        if trainer.is_global_zero:
            recorded = _as_recorded(cfg, data_root=data_root, output_dir=output_dir, ckpt=ckpt_path)
            _write_config(output_dir, recorded)
        summary = RunSummary(cfg, output_dir=output_dir, resumed_from=ckpt_path)
        with (
            interrupt_says_how_to_resume(preemption, output_dir=output_dir, data_root=data_root),
            preemption.installed(),
        ):
            with summary.timed("fit"):
                trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
                metrics = _validated(trainer, module, datamodule, resumed=ckpt_path is not None)
            if cfg.get("test"):
                # the final weights: the model the figures show (best-by-val/loss is saved as well)
                with summary.timed("test"):
                    results = trainer.test(module, datamodule=datamodule, verbose=False)
                metrics.update({k: float(v) for k, v in results[0].items()})
            metrics = with_bits_per_dim(metrics, datamodule.dims)
        summary.finish(trainer, metrics)
        return metrics


def run_cli(cfg: DictConfig) -> float | None:
    """Run :func:`train` for the command line, inside the error boundary
    (:func:`~vae.train.boundary.user_error_exits`): a user error, a full disk or a run directory
    deleted mid-run becomes one line on stderr and exit 2."""
    with user_error_exits():  # the value itself may be refused (an interpolation that fails)
        output_dir = cfg.paths.output_dir
    writes = Writes(
        output_dir,
        what="the run's files (TensorBoard events, figures, metrics.json)",
        kept="the checkpoints already written are intact",
        fix="or write the run elsewhere with paths.log_dir=<dir>",
    )
    try:
        with user_error_exits(writes=writes), run_dir_gone_is_one_line(output_dir):
            metrics = train(cfg)
    except RunInterrupted as stop:
        if rank_zero_only.rank == 0:
            print(stop, file=sys.stderr)
        sys.exit(stop.exit_code)
    return metrics.get("test/loss", metrics.get("val/loss"))
