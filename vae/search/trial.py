"""One trial of a search, in the process that trains it (the sweeper's own, or a launcher's job).

:class:`TrialTask` wraps ``train.py``'s task function: the trial is an ordinary run (its run
directory has the checkpoints, figures and ``metrics.json``), and what the sweeper tells the study
comes back as an :class:`Outcome`: complete with its final ``val/loss``, pruned, or failed with its
one-line error. A failed trial does not end the search; an interrupted one (SIGINT, SIGTERM: exit
status 128 + signal) does.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import optuna
from hydra.core.hydra_config import HydraConfig
from hydra.types import TaskFunction
from omegaconf import DictConfig

from vae.search.pruning import MONITOR

log = logging.getLogger(__name__)

#: exit statuses from 128 on are a signal's (RunInterrupted): the search stops, it does not go on
FIRST_SIGNAL_STATUS = 128


@dataclass(frozen=True)
class Outcome:
    """``state``: complete | pruned | fail; ``value``: the final ``val/loss`` (nats per image) of
    a complete trial; ``error``: one line for a pruned or failed one."""

    state: str
    run_dir: str
    value: float | None = None
    epochs: int | None = None
    error: str | None = None


class _ErrorLine:
    """A stand-in for ``sys.stderr`` that passes everything through and keeps the last
    ``error: ...`` line, the one line a user error prints before its exit status 2."""

    def __init__(self, stream: TextIO) -> None:
        self.stream, self.line, self._partial = stream, None, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        self.line = next((ln for ln in reversed(lines) if ln.startswith("error: ")), self.line)
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # flush, fileno, isatty...: the real stream's
        return getattr(self.stream, name)


def _one_line(text: str) -> str:
    return " ".join(str(text).split()) or "(no message)"


def read_outcome(run_dir: Path) -> Outcome:
    """A finished run's :class:`Outcome` from its ``metrics.json``."""
    try:
        summary = json.loads((run_dir / "metrics.json").read_text())
        value = float(summary["metrics"][MONITOR])
    except (OSError, ValueError, KeyError, TypeError) as err:
        why = f"{type(err).__name__}: {_one_line(str(err))}"
        return Outcome("fail", str(run_dir), error=f"no {MONITOR} in its metrics.json ({why})")
    return Outcome("complete", str(run_dir), value=value, epochs=summary.get("epochs"))


class TrialTask:
    """The task function a launcher runs for each trial: ``task_function`` (``train.py``'s) with
    its end turned into an :class:`Outcome`."""

    def __init__(self, task_function: TaskFunction) -> None:
        self.task_function = task_function

    def __call__(self, cfg: DictConfig) -> Outcome:
        run_dir = Path(HydraConfig.get().runtime.output_dir)
        stderr = _ErrorLine(sys.stderr)
        try:
            with contextlib.redirect_stderr(stderr):  # type: ignore[type-var]
                self.task_function(cfg)
        except optuna.TrialPruned as pruned:
            return Outcome("pruned", str(run_dir), error=_one_line(str(pruned)))
        except SystemExit as stop:
            status = stop.code if isinstance(stop.code, int) else 1
            if status >= FIRST_SIGNAL_STATUS:
                raise  # interrupted: the sweeper records it and stops
            if status != 0:
                error = stderr.line or f"exited with status {stop.code}"
                return Outcome("fail", str(run_dir), error=error.removeprefix("error: "))
        except Exception as err:
            log.exception("trial failed")  # the traceback goes to the trial's train.log
            return Outcome("fail", str(run_dir), error=f"{type(err).__name__}: {_one_line(err)}")
        return read_outcome(run_dir)
