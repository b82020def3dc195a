"""The guards :class:`vae.train.module.VAEModule` brings to every ``Trainer`` that fits it
(``configure_callbacks``): training stops with one line instead of writing a broken model
(:class:`NonFiniteGuard`), and a resumed run continues the run it resumes (:class:`ResumeGuard`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L

from vae.errors import ConfigError, NonFiniteLossError


class NonFiniteGuard(L.Callback):
    """Stop training with :class:`NonFiniteLossError`, naming the first step and term that went
    NaN/inf, when the module's :class:`~vae.train.metrics.TrainTerms` saw one: at every logging
    interval (the one host sync there is anyway), at the end of a training epoch and before
    validation, so no checkpoint is written from a broken model."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: Any, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if pl_module.global_step % trainer.log_every_n_steps == 0:
            self.check(trainer, pl_module)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "fit":
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.check(trainer, pl_module)

    def check(self, trainer: L.Trainer, pl_module: Any) -> None:
        """Raise :class:`NonFiniteLossError` if a training term went NaN/inf; say what is kept."""
        bad = pl_module.train_terms.first_non_finite()
        if bad is None:
            return
        step, names = bad
        callback = trainer.checkpoint_callback
        ckpt = getattr(callback, "last_model_path", "")
        dirpath = getattr(callback, "dirpath", None)
        if ckpt:
            kept = f"the last good checkpoint is {ckpt}"
        elif dirpath and any(Path(dirpath).glob("*.ckpt")):
            kept = f"this run wrote no checkpoint; those already in {dirpath} are untouched"
        else:
            kept = "no checkpoint had been written yet"
        raise NonFiniteLossError(
            f"training stopped: the loss became non-finite at step {step} "
            f"(term: {', '.join(names)}; optim.lr={pl_module.optim_config.lr}); {kept}. "
            "Lower optim.lr or clip gradients (trainer.gradient_clip_val=1.0)"
        )


class ResumeGuard(L.Callback):
    """A resumed run trains as the run it continues would have."""

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: Any, checkpoint: dict[str, Any]
    ) -> None:
        # trainer.max_time budgets each invocation: the Timer of the run that was stopped by it is
        # not restored (it would end the resumed run at once, having trained nothing); every
        # callback's on_load_checkpoint runs before any callback's state is loaded
        for key in [k for k in checkpoint.get("callbacks", {}) if str(k).startswith("Timer")]:
            del checkpoint["callbacks"][key]

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """A resumed cosine schedule must plan the same number of steps as this run: a larger
        ``trainer.max_epochs`` would keep the old ``T_max``, so the learning rate would fall to 0
        and climb back to its peak. Refused, naming the key."""
        planned = max(1, int(trainer.estimated_stepping_batches))
        t_max = getattr(pl_module.lr_schedulers(), "T_max", planned)
        if t_max != planned:
            raise ConfigError(
                f"trainer.max_epochs={trainer.max_epochs} plans {planned} steps, but the "
                f"checkpoint's cosine schedule ends at step {t_max} (the run it continues planned "
                "that many): the learning rate would reach 0 and climb back. Resume with that "
                "run's trainer.max_epochs and data.batch_size (its config.yaml has them), or "
                "start a new run"
            )
