"""The table of a study's best trials: printed at the end of a search and written beside it.

Complete trials first, by their final ``val/loss`` (the −ELBO, nats per image); then the pruned
ones, by the last ``val/loss`` they reported; then the failed ones with their one-line errors.
"""

from __future__ import annotations

import math
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from vae.search.pruning import MONITOR
from vae.train.files import write_atomic

_ORDER = {TrialState.COMPLETE: 0, TrialState.PRUNED: 1, TrialState.FAIL: 2}


def _last_value(trial: FrozenTrial) -> float:
    """The final value of a complete trial, the last reported one of a pruned trial."""
    if trial.value is not None:
        return trial.value
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else math.inf


def ranked(study: optuna.Study) -> list[FrozenTrial]:
    """The finished trials, best first (complete, then pruned, then failed)."""
    trials = study.get_trials(deepcopy=False, states=tuple(_ORDER))
    return sorted(trials, key=lambda t: (_ORDER[t.state], _last_value(t), t.number))


def _cell(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value).replace("|", "\\|")


def markdown_table(study: optuna.Study, *, sweep_dir: Path, rows: int | None = None) -> str:
    """The first ``rows`` (all: None) of :func:`ranked` as a Markdown table."""
    trials = ranked(study)[:rows]
    names = sorted({name for t in trials for name in t.params})
    head = ["rank", "trial", "state", f"{MONITOR} (nats/image)", "epochs", *names, "run", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for rank, t in enumerate(trials, 1):
        value = _last_value(t)
        epochs = t.user_attrs.get("epochs", len(t.intermediate_values) or "")
        run = t.user_attrs.get("run_dir", "")
        if run and Path(run).is_relative_to(sweep_dir):
            run = str(Path(run).relative_to(sweep_dir))
        cells = [
            rank, t.number, t.state.name.lower(), "" if math.isinf(value) else f"{value:.2f}",
            epochs, *(_cell(t.params.get(n, "")) for n in names), run, t.user_attrs.get("error", ""),
        ]  # fmt: skip
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write_table(study: optuna.Study, path: Path, *, rows: int) -> Path:
    """Print the best ``rows`` trials and write all of them to ``path`` (atomically; a link
    planted at ``path`` is replaced, not followed)."""
    sweep_dir = path.parent
    best = "no trial completed"
    if any(t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)):
        best = f"best {MONITOR}: {study.best_value:.2f} nats per image (trial {study.best_trial.number})"
    shown = min(rows, len(ranked(study)))
    print(f"\n{best}; the best {shown} trials of study {study.study_name!r}:\n")
    print(markdown_table(study, sweep_dir=sweep_dir, rows=rows))
    text = f"# Study {study.study_name!r}: {best}\n\n" + markdown_table(study, sweep_dir=sweep_dir)
    write_atomic(path, text)
    print(f"all trials: {path}")
    return path
