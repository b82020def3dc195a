"""Hyperparameter search (``python train.py -m hparams_search=optuna``) and launches through
submitit's local executor (what ``hydra/launcher=slurm`` does on a cluster).

The searches run real tiny trainings against an SQLite study; what the study says is checked
against the trials' own run directories (their ``metrics.json``), and the pruner's decision against
the median rule it implements.
"""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, TINY, compose_config, run_metrics, train_py
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

optuna = pytest.importorskip("optuna", reason="the search extra: pip install -e '.[search]'")
from optuna.distributions import (  # noqa: E402
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState  # noqa: E402

from vae.errors import ConfigError  # noqa: E402
from vae.search.space import SearchSpace  # noqa: E402
from vae.search.study import _check_trial, _settings, reclaim_orphans, run_batch  # noqa: E402

#: a trial small enough for a test: 2 epochs of 8 batches, no test set, no figures, no explorer
TRIAL = (
    *TINY,
    "trainer.max_epochs=2",
    "test=false",
    "callbacks.visualize=null",
    "callbacks.explorer=null",
    "data.download=false",
)
GOOD = {"optim.lr": 3e-3, "model.beta": 1.0, "model.hidden_dims": "[512,256]"}


# ---- the search space --------------------------------------------------------------------------
def test_space_reads_hydra_sweep_grammar_as_optuna_distributions() -> None:
    space = SearchSpace.parse(
        {
            "optim.lr": "tag(log, interval(1e-4, 1e-2))",
            "model.beta": "interval(0.5, 2.0)",
            "model.hidden_dims": "choice([512,256],[256,128])",
        },
        ["model.latent_dim=choice(2,4,8)", "seed=range(0,10,3)", "model.beta=1.5", "test=false"],
    )
    assert space.distributions == {
        "optim.lr": FloatDistribution(1e-4, 1e-2, log=True),
        "model.hidden_dims": CategoricalDistribution(["[512,256]", "[256,128]"]),
        "model.latent_dim": CategoricalDistribution([2, 4, 8]),
        "seed": IntDistribution(0, 9, step=3),
    }
    assert space.fixed == ("model.beta=1.5", "test=false")  # a fixed value replaces the sweep
    params = {"optim.lr": 1e-3, "model.hidden_dims": "[256,128]", "model.latent_dim": 4, "seed": 6}
    overrides = OverridesParser.create().parse_overrides(space.overrides(params))
    assert {o.key_or_group: o.value() for o in overrides} == {
        "model.beta": 1.5,
        "test": False,
        "optim.lr": 1e-3,
        "model.hidden_dims": [256, 128],  # the list again, not the string Optuna stores
        "model.latent_dim": 4,
        "seed": 6,
    }
    # every combination of choices and interval ends: 2 · 2 · 3 · 2 configs checked up front
    jobs = space.corner_jobs()
    assert len(jobs) == 24
    assert len({tuple(j) for j in jobs}) == 24
    assert all("optim.lr=0.0001" in j or "optim.lr=0.01" in j for j in jobs)


def test_a_search_needs_validation_batches() -> None:
    _check_trial(compose_config([*TINY]))  # passes
    with pytest.raises(ConfigError, match=r"^trainer.limit_val_batches=0: a search minimises"):
        _check_trial(compose_config([*TINY, "trainer.limit_val_batches=0"]))


@pytest.mark.parametrize("key", ["n_trials", "n_jobs", "table_rows"])
def test_the_sweeper_counts_must_be_positive(key: str) -> None:
    config = OmegaConf.create({"hydra": {"sweep": {"dir": "/nonexistent/sweep"}}})
    settings = {"storage": None, "study_name": "vae", "n_trials": 3, "n_jobs": 1, "table_rows": 5}
    assert _settings(config, settings).storage == "sqlite:////nonexistent/sweep/optuna.db"
    with pytest.raises(ConfigError, match=rf"^hydra.sweeper.{key}=0: expected an integer ≥ 1$"):
        _settings(config, settings | {key: 0})


def test_a_bad_trial_config_is_refused_before_any_trial_starts(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    done = train_py(
        "-m", "hparams_search=optuna", *TRIAL, f"hydra.sweep.dir={sweep}",
        "model.latent_dim=choice(2,0)",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "so no trial was started: model.latent_dim=0: expected an integer ≥ 1" in errors[0]
    assert not sweep.exists()  # no study, no run directory


# ---- an interrupted batch ----------------------------------------------------------------------
class _Interrupted:
    def launch(self, overrides: object, initial_job_idx: int) -> None:
        raise KeyboardInterrupt


def test_an_interrupted_trial_is_failed_and_queued_again(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    trial = study.ask({"x": FloatDistribution(0, 1)})
    with pytest.raises(KeyboardInterrupt):
        run_batch(study, _Interrupted(), [trial], [["x=0.5"]], tmp_path)
    first, again = study.get_trials()
    assert first.state == TrialState.FAIL
    assert first.user_attrs["interrupted"] is True
    assert again.state == TrialState.WAITING
    assert study.ask({"x": FloatDistribution(0, 1)}).params == first.params  # tried again first


def test_trials_of_a_killed_search_are_reclaimed_on_resume(tmp_path: Path) -> None:
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'optuna.db'}", study_name="s")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a PID that no process has now
    host = socket.gethostname()
    orphan, alive = (study.ask({"x": FloatDistribution(0, 1)}) for _ in range(2))
    orphan.set_user_attr("sweeper", f"{host}:{gone.pid}")  # kill -9'd while it ran this trial
    alive.set_user_attr("sweeper", f"{host}:{os.getpid()}")  # still running it
    reclaim_orphans(study)
    first, second, again = study.get_trials()
    assert (first.state, second.state, again.state) == (
        TrialState.FAIL, TrialState.RUNNING, TrialState.WAITING,
    )  # fmt: skip
    assert first.user_attrs["interrupted"] is True
    assert again.user_attrs["retry_of"] == first.number


# ---- real searches -------------------------------------------------------------------------------
def _search(sweep: Path, mnist_root: Path, n_trials: int, *extra: str) -> str:
    done = train_py(
        "-m", "hparams_search=optuna", *TRIAL, f"data.root={mnist_root}",
        f"hydra.sweep.dir={sweep}", f"hydra.sweeper.n_trials={n_trials}",
        "hydra.sweeper.sampler.seed=0", "optim.lr=tag(log, interval(1e-6, 1e-2))",
        # the median rule from the first epoch on, once one trial has completed
        "callbacks.optuna_pruning.pruner.n_startup_trials=1",
        "callbacks.optuna_pruning.pruner.n_warmup_steps=0",
        *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _val_loss(trial: optuna.trial.FrozenTrial) -> float:
    return run_metrics(Path(trial.user_attrs["run_dir"]))["val/loss"]


def test_search_prunes_fails_and_resumes_one_sqlite_study(tmp_path: Path, mnist_root: Path) -> None:
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    storage = f"sqlite:///{sweep / 'optuna.db'}"
    seeded = optuna.create_study(storage=storage, study_name="vae", direction="minimize")
    seeded.enqueue_trial(GOOD)  # trial 0 completes
    seeded.enqueue_trial(GOOD | {"optim.lr": 1e-6})  # trial 1 barely learns: worse than the median
    seeded.enqueue_trial(GOOD | {"model.beta": 0.5})  # trial 2 finds its run directory in use
    (sweep / "2_mnist_mlp-z2").mkdir()
    with open(sweep / "2_mnist_mlp-z2" / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        out = _search(sweep, mnist_root, 3)

    study = optuna.load_study(study_name="vae", storage=storage)
    done, pruned, failed = study.get_trials()
    assert [t.state for t in (done, pruned, failed)] == [
        TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL,
    ]  # fmt: skip
    # the complete trial: its value is its run's final val/loss, reported after each epoch
    assert done.value == _val_loss(done)
    assert sorted(done.intermediate_values) == [0, 1]
    assert done.intermediate_values[1] == done.value
    # pruned after its first epoch because it was worse than the median (the one complete trial)
    assert list(pruned.intermediate_values) == [0]
    assert pruned.intermediate_values[0] > done.intermediate_values[0]
    assert pruned.user_attrs["error"].startswith("pruned after epoch 1: val/loss")
    assert not (Path(pruned.user_attrs["run_dir"]) / "metrics.json").exists()
    # failed with the run's one-line error, and the search went on
    assert f"is in use by another run (PID {os.getpid()})" in failed.user_attrs["error"]
    assert study.best_value == _val_loss(done)
    assert f"best val/loss: {done.value:.2f} nats per image (trial 0)" in out
    table = (sweep / "best_trials.md").read_text()
    assert [row.split(" | ")[2] for row in table.splitlines()[4:]] == ["complete", "pruned", "fail"]

    # the same command with more trials continues the study where it stopped
    _search(sweep, mnist_root, 4)
    study = optuna.load_study(study_name="vae", storage=storage)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2, 3]
    assert trials[:3] == [done, pruned, failed]  # unchanged
    assert trials[3].state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert Path(trials[3].user_attrs["run_dir"]) == sweep / "3_mnist_mlp-z2"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert study.best_value == min(_val_loss(t) for t in complete)


def test_search_through_the_local_executor_runs_two_jobs(tmp_path: Path, mnist_root: Path) -> None:
    """Two trials at once, each a subprocess job of submitit's local executor, reporting each
    epoch to the one SQLite study."""
    sweep = tmp_path / "sweep"
    _search(
        sweep, mnist_root, 2, "hydra/launcher=local", "hydra.sweeper.n_jobs=2",
        "trainer.max_epochs=1",
    )  # fmt: skip
    jobs = sorted(p for p in (sweep / ".submitit").iterdir() if p.name.isdigit())
    assert len(jobs) == 2
    runs = set()
    for job in jobs:  # a process of its own (submitit's job id is its PID): result, log, run
        assert (job / f"{job.name}_0_result.pkl").is_file()
        log = (job / f"{job.name}_0_log.out").read_text()
        runs |= {line.split(": ", 1)[1] for line in log.splitlines() if "Run directory: " in line}
    assert runs == {str(sweep / "0_mnist_mlp-z2"), str(sweep / "1_mnist_mlp-z2")}
    study = optuna.load_study(study_name="vae", storage=f"sqlite:///{sweep / 'optuna.db'}")
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    for trial in trials:  # reported from the job's process, equal to what its run wrote
        assert trial.intermediate_values == {0: _val_loss(trial)} == {0: trial.value}


def test_without_the_search_extra_a_search_is_one_line(tmp_path: Path) -> None:
    code = (
        "import runpy, sys; sys.modules['optuna'] = None; "  # import optuna: ModuleNotFoundError
        f"sys.argv = ['train.py', '-m', 'hparams_search=optuna', 'hydra.sweep.dir={tmp_path}/s']; "
        "runpy.run_path('train.py', run_name='__main__')"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1] == (
        "error: hydra/sweeper=vae_optuna (hparams_search=optuna) needs the search extra "
        "('optuna' is not installed): pip install -e '.[search]' (or make install)"
    )
    assert not (tmp_path / "s").exists()


# ---- the SLURM launcher ------------------------------------------------------------------------
def test_the_slurm_config_asks_sbatch_for_what_the_readme_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hydra/launcher=slurm`` through submitit up to the sbatch script (no cluster: a stand-in
    ``srun`` on the PATH, and the submission itself replaced)."""
    submitit = pytest.importorskip("submitit")
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "srun").write_text("#!/bin/sh\nexit 0\n")
    (tmp_path / "bin" / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    executors = []
    monkeypatch.setattr(
        submitit.AutoExecutor, "map_array", lambda ex, *a: executors.append(ex) or []
    )
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu",
                 "hydra.launcher.gpus_per_node=4", f"hydra.sweep.dir={tmp_path / 'sweep'}"]  # fmt: skip
    with initialize_config_dir(version_base="1.3", config_dir=str(ROOT / "configs")):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    before = HydraConfig.instance().cfg
    HydraConfig.instance().set_config(cfg)  # ${hydra.job.name} in the launcher's config
    try:
        launcher = instantiate(cfg.hydra.launcher)
        launcher.config = cfg
        launcher.launch([["seed=0"]], initial_job_idx=0)
    finally:
        HydraConfig.instance().cfg = before  # other tests see no Hydra run
    script = executors[0]._executor._make_submission_file_text("CMD", "uid")
    sbatch = {line.removeprefix("#SBATCH ") for line in script.splitlines() if "#SBATCH" in line}
    assert {
        "--partition=gpu", "--time=240", "--nodes=1", "--gpus-per-node=4",
        "--ntasks-per-node=4",  # one task per GPU, following gpus_per_node
        "--cpus-per-task=8", "--mem=32GB", "--signal=USR2@120",
    } <= sbatch  # fmt: skip
    assert executors[0]._executor.max_num_timeout == 3
