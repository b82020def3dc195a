"""SIGTERM and SIGINT end a run with a resumable checkpoint of the current step and a non-zero exit.

What a scheduler sends before preempting a job (SLURM, Kubernetes: SIGTERM) or a user's Ctrl-C
(SIGINT) must not look like success, nor lose what was trained since the last epoch. The
:class:`Preemption` callback makes both signals a request to stop at the next batch boundary:

- its handler only sets a flag (Lightning's own SIGTERM handler runs a ``dist.broadcast`` inside the
  handler, which under DDP is the 97-line gloo traceback); it is installed when training starts,
  replacing Lightning's. At the end of each training batch the flag becomes Lightning's
  ``received_sigterm``, under DDP after an all-reduce (max) of the processes' flags, so that every
  process stops after the same step whichever of them got the signal (Lightning checks its flag
  after the batch on each rank alone, and one rank stopping while another waits in the next step's
  collective is a hang);
- a validation inside fit runs to its end (seconds): Lightning would stop it at the next batch,
  and a checkpoint saved there resumes past the unfinished validation (the epoch's ``val/*`` and
  best checkpoint are lost, and after the last epoch nothing validates again). The flag becomes
  Lightning's at the validation's end, so the run stops at that epoch's end, after its checkpoints;
- in the test (after fit), or the validation of a resumed run that had nothing left to train, the
  same flag stops it at the next batch: the checkpoint fit saved is the trained model, and the
  printed command resumes from it, trains nothing and evaluates;
- Lightning then raises ``SIGTERMException`` on every rank, and :meth:`Preemption.on_exception`
  saves ``checkpoints/last.ckpt`` at that step (mid-epoch: :class:`vae.train.data.ResumableLoader` records
  where in the epoch it was, so the resumed run trains exactly the batches that were left), as the
  checkpoint callback's last checkpoint (else the resumed run, whose callback never saved one,
  would write ``last-v1.ckpt`` beside it and the printed command would resume the older file);
- :func:`vae.train.run.train` turns it into :class:`~vae.errors.RunInterrupted`, and the command line
  prints one line (``interrupted at step N; resume with: python train.py ... ckpt_path=...``) and
  exits with 128 + the signal's number: **143** for SIGTERM, **130** for SIGINT (the shell's
  convention, so a scheduler sees a failure and requeues).
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities.exceptions import SIGTERMException

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Preemption(L.Callback):
    """Stop at the next batch boundary on SIGTERM / SIGINT and save a checkpoint of that step.

    After the run, :attr:`received` is the signal (or None) and :attr:`saved` the checkpoint's
    ``(global_step, path)``.
    """

    def __init__(self) -> None:
        self.received: signal.Signals | None = None
        self.saved: tuple[int, Path] | None = None
        self._previous: dict[int, Any] = {}

    def _handler(self, signum: int, frame: FrameType | None) -> None:
        self.received = signal.Signals(signum)

    @contextlib.contextmanager
    def installed(self) -> Iterator[Preemption]:
        """Handle the signals for the duration of the block (e.g. ``trainer.fit``), then restore."""
        self._install()
        try:
            yield self
        finally:
            for signum, handler in self._previous.items():
                signal.signal(signum, handler)
            self._previous.clear()

    def _install(self, *_: Any) -> None:
        for signum in SIGNALS:
            self._previous.setdefault(signum, signal.signal(signum, self._handler))

    # again when fit and test start: Lightning registered its own SIGTERM handler for each since
    on_train_start = on_test_start = _install

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()  # Lightning registered its handler again for trainer.validate
        if trainer.state.fn == TrainerFn.FITTING:
            # Lightning's flag (set after the epoch's last batch, or by its own handler in the
            # sanity check) would stop this validation at its next batch: it runs to its end
            trainer._signal_connector.received_sigterm = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        in_fit = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
        if in_fit and self._stop_requested(trainer, pl_module):
            # Lightning stops after this epoch (or, mid-epoch, after the next batch)
            trainer._signal_connector.received_sigterm = True

    def _stop_requested(self, trainer: L.Trainer, pl_module: L.LightningModule) -> bool:
        """Whether any process got a signal (under DDP all agree, so all stop at the same batch)."""
        stop = self.received is not None
        if trainer.world_size > 1:  # one tiny all-reduce a step (Lightning broadcasts one too)
            flag = torch.tensor([float(stop)], device=pl_module.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            stop = bool(flag.item())
        return stop

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        if self._stop_requested(trainer, pl_module):
            # Lightning raises SIGTERMException right after this batch, on every rank
            trainer._signal_connector.received_sigterm = True

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any) -> None:
        # Lightning checks its flag in training only: a test (the IW bound can take minutes) would
        # run to its end while a scheduler waits to send SIGKILL. Nothing is trained here, so the
        # checkpoint fit wrote is what a resumed run tests (see on_exception).
        if self._stop_requested(trainer, pl_module):
            raise SIGTERMException

    def on_validation_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, *_: Any
    ) -> None:
        # trainer.validate (a resumed run with nothing left to train): as the test
        if trainer.state.fn == TrainerFn.VALIDATING:
            self.on_test_batch_end(trainer, pl_module)

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        if not isinstance(exception, SIGTERMException):
            return
        if self.received is None:  # Lightning's flag from elsewhere (e.g. SLURM's handler)
            self.received = signal.SIGTERM
        callback = trainer.checkpoint_callback
        last = getattr(callback, "last_model_path", "")
        if trainer.state.fn != TrainerFn.FITTING and last and Path(last).is_file():
            # stopped in the test (or the validation) after fit saved its last checkpoint: that
            # one is the trained model; resuming from it trains nothing and evaluates again
            self.saved = (trainer.global_step, Path(last))
            return
        path = Path(getattr(callback, "dirpath", None) or trainer.default_root_dir) / "last.ckpt"
        if isinstance(callback, ModelCheckpoint) and callback.save_last:
            # part of the state saved: the resumed run's callback then replaces this file
            callback.last_model_path = str(path)
        # weights_only (2nd argument) false: the whole state to resume from. Every rank calls it:
        # rank 0 writes, the others wait
        trainer.save_checkpoint(path, False)
        self.saved = (trainer.global_step, path)
