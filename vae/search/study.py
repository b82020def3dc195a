"""The search loop: ask Optuna for trials, launch them as Hydra jobs, tell the study how they ended.

The study lives in a database (SQLite in the sweep directory unless ``storage`` names another,
e.g. a PostgreSQL URL shared by several machines). ``n_trials`` is the number of trials the study
should hold (complete, pruned or failed), so the same command continues an interrupted search
where it stopped: a trial that was running when the search was interrupted (or, on the same host,
killed) is recorded as failed and its parameters are tried again first.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from hydra.plugins.launcher import Launcher
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from optuna.trial import TrialState

from vae.errors import ConfigError
from vae.rules import check, int_at_least
from vae.search.pruning import CONFIG_KEY, MONITOR
from vae.search.space import SearchSpace, override_text
from vae.search.table import write_table
from vae.search.trial import Outcome
from vae.train.config import validate_config
from vae.train.run import user_error_exits, validate_sweep
from vae.train.shell import command, override

log = logging.getLogger(__name__)

#: what the search counts towards n_trials (a trial cut short by an interrupt is run again)
COUNTED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
STATES = {"complete": TrialState.COMPLETE, "pruned": TrialState.PRUNED, "fail": TrialState.FAIL}


@dataclass(frozen=True)
class StudySettings:
    """Where the study is and how far it goes (the sweeper's config, resolved)."""

    storage: str
    study_name: str
    n_trials: int
    n_jobs: int
    sweep_dir: Path
    table_rows: int


def _counted(study: optuna.Study) -> int:
    trials = study.get_trials(deepcopy=False, states=COUNTED)
    return sum(1 for t in trials if not t.user_attrs.get("interrupted"))


def _study_overrides(config: DictConfig, settings: StudySettings, trial_id: int) -> list[str]:
    """With the pruning callback configured: where the trial reports (the storage's ``trial_id``,
    as ``optuna.Trial(study, trial_id)`` takes it in the trial's process)."""
    if OmegaConf.select(config, CONFIG_KEY) is None:
        return []
    study = {"storage": settings.storage, "study_name": settings.study_name, "trial_id": trial_id}
    return [f"{CONFIG_KEY}.{k}={override_text(v)}" for k, v in study.items()]


def _tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> None:
    trial.set_user_attr("run_dir", outcome.run_dir)
    if outcome.error:
        trial.set_user_attr("error", outcome.error)
    if outcome.epochs is not None:
        trial.set_user_attr("epochs", outcome.epochs)
    state = STATES[outcome.state]
    study.tell(trial, outcome.value if state == TrialState.COMPLETE else None, state=state)
    value = "" if outcome.value is None else f", val/loss {outcome.value:.2f} nats per image"
    error = f": {outcome.error}" if outcome.error else ""
    log.info(f"trial {trial.number} {outcome.state}{value}{error} ({outcome.run_dir})")


def _outcome(job_return: Any, fallback_dir: str) -> Outcome:
    """The job's :class:`Outcome`; a job whose launch itself failed is a failed trial."""
    try:
        return job_return.return_value
    except Exception as err:
        return Outcome("fail", fallback_dir, error=f"{type(err).__name__}: {err}")


def _interrupted(study: optuna.Study, batch: Sequence[optuna.Trial]) -> None:
    """The trials a stopped search was running: failed, and queued to run again on resume."""
    for trial in batch:  # none was told yet: tell() follows the whole batch's launch
        trial.set_user_attr("interrupted", True)
        trial.set_user_attr("error", "interrupted: the search stopped while it ran")
        study.tell(trial, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _owner() -> str:
    """Who runs a trial: ``<host>:<pid>`` of the search process (the trial's ``sweeper`` attribute)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _dead(owner: str) -> bool:
    """Whether the search process ``owner`` is gone (only a process on this host can be told)."""
    host, _, pid = owner.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, someone else's
        return False
    return False


def reclaim_orphans(study: optuna.Study) -> None:
    """Trials left running by a search on this host that died without a word (``kill -9``, a
    crash): recorded as interrupted and queued again, like those of a search that was stopped."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    orphans = [t for t in running if _dead(str(t.user_attrs.get("sweeper", "")))]
    # optuna.Trial takes the storage's id of a trial, which FrozenTrial keeps as _trial_id
    _interrupted(study, [optuna.Trial(study, t._trial_id) for t in orphans])


def run_batch(
    study: optuna.Study,
    launcher: Launcher,
    batch: Sequence[optuna.Trial],
    overrides: Sequence[Sequence[str]],
    sweep_dir: Path,
) -> None:
    """Launch one batch of trials (in parallel where the launcher can) and tell their ends."""
    try:
        returns = launcher.launch(overrides, initial_job_idx=batch[0].number)
    except (KeyboardInterrupt, SystemExit):
        _interrupted(study, batch)
        raise
    except Exception as err:  # the launcher failed (e.g. a job was killed): the search goes on
        message = " ".join(f"{type(err).__name__}: {err}".split())
        outcomes = [Outcome("fail", str(sweep_dir), error=message) for _ in batch]
    else:
        outcomes = [_outcome(r, str(sweep_dir)) for r in returns]
    for trial, outcome in zip(batch, outcomes, strict=True):
        _tell(study, trial, outcome)


def search(
    config: DictConfig,
    launcher: Launcher,
    space: SearchSpace,
    settings: StudySettings,
    sampler: optuna.samplers.BaseSampler,
) -> optuna.Study:
    """Run the search until the study holds ``settings.n_trials`` trials; print and write the
    table of the best ones."""
    settings.sweep_dir.mkdir(parents=True, exist_ok=True)
    study = optuna.create_study(
        storage=settings.storage,
        study_name=settings.study_name,
        sampler=sampler,
        direction="minimize",
        load_if_exists=True,
    )
    reclaim_orphans(study)
    log.info(
        f"study {settings.study_name!r} in {settings.storage}: {_counted(study)} of "
        f"{settings.n_trials} trials so far, minimising val/loss (nats per image)"
    )
    while (left := settings.n_trials - _counted(study)) > 0:
        batch = [study.ask(space.distributions) for _ in range(min(settings.n_jobs, left))]
        for trial in batch:
            trial.set_user_attr("sweeper", _owner())
        overrides = [
            space.overrides(t.params) + _study_overrides(config, settings, t._trial_id)
            for t in batch
        ]
        run_batch(study, launcher, batch, overrides, settings.sweep_dir)
    write_table(study, settings.sweep_dir / "best_trials.md", rows=settings.table_rows)
    return study


def _check_trial(job: DictConfig) -> None:
    """A trial's config: the checks of every run, and a validation set to minimise val/loss on."""
    validate_config(job)
    if job.trainer.get("limit_val_batches") in (0, 0.0):
        raise ConfigError(
            f"trainer.limit_val_batches={job.trainer.limit_val_batches}: a search minimises "
            f"{MONITOR}, so its trials need validation batches (a number > 0, or null for all)"
        )


def _resume_command(config: DictConfig, sweep_dir: Path) -> str:
    """The command that continues this search (the same overrides, the same sweep directory)."""
    replaced = ("hydra.sweep.dir=", "hydra.mode=")
    hydra = [o for o in config.hydra.overrides.hydra if not o.startswith(replaced)]
    args = [*config.hydra.overrides.task, *hydra, override("hydra.sweep.dir", sweep_dir)]
    return command("python train.py -m", [str(a) for a in args])


def _settings(config: DictConfig, settings: Mapping[str, Any]) -> StudySettings:
    sweep_dir = Path(str(config.hydra.sweep.dir)).expanduser().absolute()
    for key in ("n_trials", "n_jobs", "table_rows"):
        check(f"hydra.sweeper.{key}", settings[key], int_at_least(1))
    return StudySettings(
        storage=settings["storage"] or f"sqlite:///{sweep_dir / 'optuna.db'}",
        study_name=str(settings["study_name"]),
        n_trials=settings["n_trials"],
        n_jobs=settings["n_jobs"],
        sweep_dir=sweep_dir,
        table_rows=settings["table_rows"],
    )


def run_sweep(
    config: DictConfig, launcher: Launcher, settings: Mapping[str, Any], arguments: Sequence[str]
) -> optuna.Study:
    """The sweeper's ``sweep``: check the space and every trial's config up front, then search.

    An interrupted search prints the command that resumes it and exits with the signal's status.
    """
    with user_error_exits():
        space = SearchSpace.parse(dict(settings["params"] or {}), arguments)
        study_settings = _settings(config, settings)
        if not space.dimensions:
            raise ConfigError(
                "hydra.sweeper.params: nothing to search (no choice, range or interval)"
            )
    corners = space.corner_jobs()
    validate_sweep(
        config,
        # the corners, then the first with the study's overrides (the pruning callback's keys)
        [*corners, corners[0] + _study_overrides(config, study_settings, 0)],
        what="search config",
        nothing="no trial was started",
        check=_check_trial,
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the search logs each trial itself
    sampler = instantiate(settings["sampler"])
    try:
        return search(config, launcher, space, study_settings, sampler)
    except (KeyboardInterrupt, SystemExit) as stop:
        status = stop.code if isinstance(stop, SystemExit) else 130
        resume = _resume_command(config, study_settings.sweep_dir)
        print(f"search interrupted; resume with: {resume}", file=sys.stderr)
        sys.exit(status)
