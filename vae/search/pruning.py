"""Pruning of search trials from the per-epoch ``val/loss``, through Optuna's pruner interface.

The sweeper tells each trial where its study is (``storage``, ``study_name``, ``trial_id``, as
overrides of ``callbacks.optuna_pruning``); the trial's process reports ``val/loss`` (the −ELBO, nats
per image) after every validation to the study's database and asks the configured pruner whether
to stop. A stopped trial raises :class:`optuna.TrialPruned`, which the sweeper records as pruned.
Outside a search (``trial_id`` null) the callback does nothing.
"""

from __future__ import annotations

import functools

import lightning as L
import optuna

#: the callback's key in the config: the sweeper sets its study fields for each trial
CONFIG_KEY = "callbacks.optuna_pruning"
#: what a trial reports and the search minimises: the −ELBO (β = 1), never the β-weighted objective
MONITOR = "val/loss"


class OptunaPruning(L.Callback):
    """Report ``val/loss`` per epoch to the trial ``trial_id`` of the study and stop the run when
    ``pruner`` says so (on global rank 0; the decision is broadcast, so every DDP process stops)."""

    def __init__(
        self,
        *,
        pruner: optuna.pruners.BasePruner | None = None,
        storage: str | None = None,
        study_name: str | None = None,
        trial_id: int | None = None,
    ) -> None:
        self.pruner = pruner or optuna.pruners.NopPruner()
        self.storage, self.study_name, self.trial_id = storage, study_name, trial_id

    @functools.cached_property
    def _trial(self) -> optuna.Trial:
        """The trial, loaded once (in the process that reports)."""
        study = optuna.load_study(
            study_name=self.study_name, storage=self.storage, pruner=self.pruner
        )
        return optuna.Trial(study, int(self.trial_id))

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        metrics = trainer.callback_metrics
        if self.trial_id is None or trainer.sanity_checking or MONITOR not in metrics:
            return
        epoch, value = trainer.current_epoch, float(metrics[MONITOR])
        prune = False
        if trainer.is_global_zero:
            self._trial.report(value, step=epoch)
            prune = self._trial.should_prune()
        if trainer.strategy.broadcast(prune, src=0):
            raise optuna.TrialPruned(
                f"pruned after epoch {epoch + 1}: {MONITOR} {value:.2f} nats per image"
            )
