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


def schedule_mismatch(max_epochs: Any, planned: int, t_max: int) -> ConfigError:
    """The refusal of a resume whose cosine schedule would plan ``planned`` steps, not ``t_max``."""
    return ConfigError(
        f"trainer.max_epochs={max_epochs} plans {planned} steps, but the checkpoint's cosine "
        f"schedule ends at step {t_max} (the run it continues planned that many): the learning "
        "rate would reach 0 and climb back. Resume with that run's trainer.max_epochs and "
        "data.batch_size (its config.yaml has them), or start a new run"
    )


def _plan_inputs(trainer: L.Trainer) -> dict[str, Any]:
    """What sets the number of steps an epoch has, besides the data (see :func:`check_schedule`)."""
    return {
        "limit_train_batches": trainer.limit_train_batches,
        "accumulate_grad_batches": trainer.accumulate_grad_batches,
        "max_steps": trainer.max_steps,
        "world_size": trainer.world_size,
        "batch_size": getattr(trainer.datamodule, "batch_size", None),
    }


def check_schedule(ckpt: dict[str, Any], trainer_cfg: dict[str, Any], batch_size: Any) -> None:
    """Before anything is written (the Hydra callback): the refusal of :class:`ResumeGuard`, from
    the plan the checkpoint records and the command's config. When the steps per epoch cannot be
    told from the config alone (another limit, batch size, accumulation or number of processes
    than the checkpoint's run), nothing is said here and :class:`ResumeGuard` checks in fit."""
    try:
        plan = ckpt["callbacks"]["ResumeGuard"]["plan"]
        t_max, inputs = ckpt["lr_schedulers"][0]["T_max"], dict(plan["inputs"])
        per_epoch = plan["steps"] // plan["max_epochs"]
    except (KeyError, IndexError, TypeError, ValueError, ZeroDivisionError):
        return  # no cosine schedule, or a checkpoint from before the plan was recorded
    max_epochs = trainer_cfg.get("max_epochs")
    if not all(isinstance(v, int) for v in (t_max, per_epoch, max_epochs)) or max_epochs < 1:
        return
    limit, max_steps = trainer_cfg.get("limit_train_batches"), trainer_cfg.get("max_steps")
    devices, nodes = trainer_cfg.get("devices"), trainer_cfg.get("num_nodes") or 1
    world = inputs.get("world_size")  # devices=auto: as the run it continues
    if isinstance(devices, (int, list)) and isinstance(nodes, int):
        world = (len(devices) if isinstance(devices, list) else devices) * nodes
    given = {
        "limit_train_batches": 1.0 if limit is None else limit,
        "accumulate_grad_batches": trainer_cfg.get("accumulate_grad_batches") or 1,
        "max_steps": -1 if max_steps is None else max_steps,
        "world_size": world,
        "batch_size": batch_size,
    }
    if given != inputs or given["max_steps"] != -1:
        return
    planned = max(1, per_epoch * max_epochs)
    if planned != t_max:
        raise schedule_mismatch(max_epochs, planned, t_max)


class ResumeGuard(L.Callback):
    """A resumed run trains as the run it continues would have. Its state in a checkpoint is the
    run's plan (the steps it planned for its epochs, and what set them), which
    :func:`check_schedule` reads before a resumed run writes anything."""

    def __init__(self) -> None:
        self.plan: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"plan": self.plan}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pass  # this run plans its own (on_train_start); the checkpoint's is read before fit

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
            raise schedule_mismatch(trainer.max_epochs, planned, t_max)
        self.plan = {
            "max_epochs": trainer.max_epochs,
            "steps": planned,
            "inputs": _plan_inputs(trainer),
        }
