"""``python train.py`` as a user types it: Hydra's composition errors in our one-line style, and the
loggers (``logger=csv|mlflow|many|null``), each in a real subprocess."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, TINY
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vae.train.report import CURATED_KEYS, trial_name

NO_DOWNLOAD = ("data.download=false",)
MODEL_KEYS = (
    "activation, architecture, beta, channels, free_bits, gaussian_std, hidden_dims, "
    "init_output_bias, iw_train_samples, kl_warmup_steps, latent_dim, learn_std, likelihood, "
    "logvar_bound, norm"
)


def _train(*args: str, log_dir: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "train.py", f"paths.log_dir={log_dir}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "HYDRA_FULL_ERROR": "0"},
    )


# ---- §3: one error style ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (  # a typo without +: Hydra's "Key 'latentdim' is not in struct", exit 1, before
            ["model.latentdim=3"],
            "model.latentdim: no such key; did you mean model.latent_dim? the model keys are "
            + MODEL_KEYS,
        ),
        (  # the same in a sweep
            ["-m", "model.latentdim=2,3"],
            "model.latentdim: no such key; did you mean model.latent_dim? the model keys are "
            + MODEL_KEYS,
        ),
        (
            ["logger=tensorbord"],
            "logger=tensorbord: no such option; did you mean logger=tensorboard? the logger "
            "options are csv, many, mlflow, tensorboard",
        ),
        (
            ["model=cnn"],
            "model=cnn: no such option; did you mean model=conv? the model options are conv, mlp",
        ),
        (
            ["trainer.max_epochs=2", "callbacks.visualize.gridsize=3"],
            "callbacks.visualize.gridsize: no such key; did you mean "
            "callbacks.visualize.grid_size? the callbacks.visualize keys are every_n_epochs, "
            "grid_size, interpolation_steps, max_points, n_reconstructions, n_samples, png_dir, "
            "projection, projector, projector_points, seed",
        ),
        (
            ["hydra.job.chdirr=true"],
            "hydra.job.chdirr: no such key; did you mean hydra.job.chdir? the hydra.job keys are "
            "chdir, config, config_name, env_copy, env_set, id, name, num, override_dirname",
        ),
        (
            ["model.latent_dim=[1"],
            "model.latent_dim=[1: cannot be parsed (no viable alternative at input '[1')",
        ),
    ],
    ids=[
        "typo",
        "typo-sweep",
        "group-option",
        "model-option",
        "nested-typo",
        "hydra-key",
        "syntax",
    ],
)
def test_hydra_composition_errors_are_our_one_line(
    args: list[str], line: str, tmp_path: Path
) -> None:
    done = _train(*args, log_dir=tmp_path / "logs")
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"error: {line}\n"
    assert done.stdout == ""
    assert not (tmp_path / "logs").exists()  # nothing was created


@pytest.mark.parametrize(
    "value",
    [
        "/tmp/bäse",
        "/tmp/a b/it's",
        'x\\"y\\',
        "/tmp/a=b,c~d",
        "/tmp/${oc.env:HOME}",
        "a'b\"c",
        "plain",
    ],
)
def test_hydra_quote_round_trips_through_hydra_and_omegaconf(value: str) -> None:
    """What we print for Hydra reads back as the value itself (not a sweep, not interpolated)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from vae.train.shell import override

    parsed = OverridesParser.create().parse_overrides([override("a", value)])[0]
    assert not parsed.is_sweep_override()
    assert OmegaConf.create({"a": parsed.value()}).a == value


def test_an_unquoted_path_says_how_to_quote_it(tmp_path: Path) -> None:
    """Issue 23 §4: ``hydra.run.dir=/tmp/bäse`` ended in Hydra's ``LexerNoViableAltException``
    with no way out; the line now gives the override quoted for Hydra and the shell, and that,
    pasted into bash, is read as the path."""
    run = tmp_path / "bäse"
    done = _train(f"hydra.run.dir={run}", log_dir=tmp_path / "logs")
    assert done.returncode == 2, done.stderr
    quoted = f"'hydra.run.dir=\"{run}\"'"
    assert done.stderr == (
        f"error: hydra.run.dir={run}: cannot be parsed (LexerNoViableAltException: "
        f"hydra.run.dir={run}); quote the value for Hydra, inside the shell's quotes: {quoted}\n"
    )
    assert not run.exists()
    pasted = subprocess.run(
        ["bash", "-c", f"{sys.executable} train.py {quoted} --cfg hydra"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert pasted.returncode == 0, pasted.stderr
    assert yaml.safe_load(pasted.stdout)["hydra"]["run"]["dir"] == str(run)


def test_help_and_cfg_still_reach_hydra(tmp_path: Path) -> None:
    shown = _train("logger=null", "--cfg", "job", log_dir=tmp_path)
    assert shown.returncode == 0, shown.stderr
    cfg = yaml.safe_load(shown.stdout)
    assert "logger" not in cfg  # logger=null: no logger at all (Hydra itself cannot parse it)
    assert cfg["paths"]["run_name"] == "${data.dataset}_${model.architecture}-z${model.latent_dim}"


# ---- §2: the loggers -------------------------------------------------------------------------


def _cosine_lr(step: int, total: int, lr: float = 3e-3) -> float:
    return lr * 0.5 * (1 + math.cos(math.pi * step / total))


@pytest.fixture(scope="module")
def three_loggers(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real run logging to TensorBoard, CSV and MLflow at once; its log directory."""
    log_dir = tmp_path_factory.mktemp("loggers")
    extra = ["callbacks.visualize.projector=false", "callbacks.explorer.enabled=false"]
    done = _train("logger=[tensorboard,csv,mlflow]", *TINY, *extra, *NO_DOWNLOAD, log_dir=log_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    return log_dir


def test_every_logger_gets_the_curated_hparams_the_metrics_and_the_learning_rate(
    three_loggers: Path,
) -> None:
    (run_dir,) = (three_loggers / "train" / "runs").iterdir()
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    config = OmegaConf.load(run_dir / "config.yaml")
    curated = {k: OmegaConf.select(config, k) for k in CURATED_KEYS}
    total = 8  # TINY: one epoch of 8 steps, the cosine schedule's length

    # CSV: <run>/csv/metrics.csv (one row per logging step) and hparams.yaml
    rows = list(csv.DictReader((run_dir / "csv" / "metrics.csv").open()))
    final = {k: float(v) for row in rows for k, v in row.items() if v and "/" in k}
    for tag in ("test/loss", "test/nll_iw", "val/loss"):
        assert final[tag] == pytest.approx(metrics[tag], rel=1e-6), tag
    lr_rows = [(int(r["step"]), float(r["lr-Adam"])) for r in rows if r.get("lr-Adam")]
    assert lr_rows, "no learning rate in metrics.csv"
    for step, lr in lr_rows:
        assert lr == pytest.approx(_cosine_lr(step, total), rel=1e-6), step
    hparams = yaml.safe_load((run_dir / "csv" / "hparams.yaml").read_text())
    for key, value in curated.items():
        assert yaml.safe_load(str(hparams[key])) == value, key

    # TensorBoard: the same learning rate as a scalar
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    assert [e.step for e in acc.Scalars("lr-Adam")] == [s for s, _ in lr_rows]

    # MLflow: <log_dir>/mlflow.db, no server; the run named as in the HParams table
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{three_loggers / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("train")
    assert experiment.artifact_location == str(three_loggers / "mlflow-artifacts")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "mnist_mlp-z2"
    assert run.info.status == "FINISHED"
    for key, value in curated.items():
        assert yaml.safe_load(run.data.params[key]) == value, key
    for tag in ("test/loss", "test/nll_iw", "val/loss", "test/active_units"):
        assert run.data.metrics[tag] == pytest.approx(metrics[tag], rel=1e-6), tag
    history = client.get_metric_history(run.info.run_id, "lr-Adam")
    assert [(m.step, pytest.approx(m.value, rel=1e-6)) for m in history] == lr_rows


def test_logger_null_runs_without_any_logger(mnist_root: Path, tmp_path: Path) -> None:
    done = _train(
        "logger=null", *TINY, *NO_DOWNLOAD, "test=false", "callbacks=none", log_dir=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (tmp_path / "train" / "runs").iterdir()
    assert not (run_dir / "tensorboard").exists()
    assert not (run_dir / "csv").exists()
    assert "val/loss" in json.loads((run_dir / "metrics.json").read_text())["metrics"]


def test_logger_many_is_tensorboard_and_csv(tmp_path: Path) -> None:
    shown = _train("logger=many", "--cfg", "job", log_dir=tmp_path)
    assert shown.returncode == 0, shown.stderr
    loggers = yaml.safe_load(shown.stdout)["logger"]
    assert sorted(loggers) == ["csv", "tensorboard"]
    assert loggers["csv"]["_target_"] == "lightning.pytorch.loggers.CSVLogger"


@pytest.mark.parametrize(
    ("run_dir", "expected"),
    [
        ("logs/train/runs/2026-12-01_10-31-07_mnist_mlp-z2", "12-01 10:31:07 mnist_mlp-z2"),
        (
            "logs/train/multiruns/2026-12-01_11-02-40/1_mnist_mlp-z2",
            "#1 12-01 11:02:40 mnist_mlp-z2",
        ),
        ("/tmp/my-run", "my-run"),  # hydra.run.dir=...: the directory's own name
    ],
)
def test_trial_names_are_short_say_when_first_then_what_the_run_is(
    run_dir: str, expected: str
) -> None:
    cfg = OmegaConf.create({"paths": {"run_name": "mnist_mlp-z2"}})
    assert trial_name(cfg, Path(run_dir)) == expected
