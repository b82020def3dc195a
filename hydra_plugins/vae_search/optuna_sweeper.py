"""``hydra/sweeper=vae_optuna``: a Hydra Sweeper that searches with Optuna's ask/tell interface.

Hydra imports every module under ``hydra_plugins`` at start-up, so this one imports nothing heavy:
the search itself is :mod:`vae.search` (Optuna, the training stack), imported when a sweep starts.
``configs/hparams_search/optuna.yaml`` selects it: ``python train.py -m hparams_search=optuna``.
"""

# no `from __future__ import annotations`: Hydra's plugin scan runs this module before it is in
# sys.modules, where dataclasses look up string annotations
import sys
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


@dataclass
class OptunaSweeperConf:
    """``hydra.sweeper``: what a search minimises is fixed (``val/loss``, nats per image)."""

    _target_: str = "hydra_plugins.vae_search.optuna_sweeper.OptunaSweeper"
    # the sampler is built when the search starts, after the check that Optuna is installed
    _recursive_: bool = False
    # null: sqlite:///<hydra.sweep.dir>/optuna.db; or any SQLAlchemy URL (postgresql://...)
    storage: Optional[str] = None  # noqa: UP045 (OmegaConf's structured configs need Optional)
    study_name: str = "vae"
    # the trials the study should hold (complete, pruned, failed): the same command resumes
    n_trials: int = 20
    # trials launched at once (in parallel with a launcher that can, e.g. hydra/launcher=slurm)
    n_jobs: int = 1
    sampler: Any = field(
        default_factory=lambda: {"_target_": "optuna.samplers.TPESampler", "seed": None}
    )
    # key: sweep in Hydra's grammar, e.g. optim.lr: tag(log, interval(1e-4, 1e-2))
    params: dict[str, str] = field(default_factory=dict)
    # rows of the table printed at the end (<sweep dir>/best_trials.md has every trial)
    table_rows: int = 10


ConfigStore.instance().store(
    group="hydra/sweeper", name="vae_optuna", node=OptunaSweeperConf, provider="vae"
)


#: modules of the ``search`` extra (pyproject.toml): a missing one is a user error
SEARCH_EXTRA = {"optuna", "sqlalchemy", "alembic"}


class OptunaSweeper(Sweeper):
    """Asks the study for trials, runs them through the configured launcher, tells their ends."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: DictConfig | None = None
        self.launcher: Any = None

    def setup(
        self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig
    ) -> None:
        try:
            from vae.search.trial import TrialTask
        except ModuleNotFoundError as err:
            if (err.name or "").split(".")[0] not in SEARCH_EXTRA:
                raise
            print(
                f"error: hydra/sweeper=vae_optuna (hparams_search=optuna) needs the search extra "
                f"({err.name!r} is not installed): pip install -e '.[search]' (or make install)",
                file=sys.stderr,
            )
            sys.exit(2)
        self.config, self.hydra_context = config, hydra_context
        self.launcher = Plugins.instance().instantiate_launcher(
            hydra_context=hydra_context, task_function=TrialTask(task_function), config=config
        )

    def sweep(self, arguments: list[str]) -> Any:
        from vae.search.study import run_sweep

        assert self.config is not None
        return run_sweep(self.config, self.launcher, self.settings, arguments)
