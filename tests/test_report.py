"""What a run shows its user: the curated HParams, the closing summary, a quiet console.

One real ``python train.py`` (tiny, as a user runs it, progress bar on) is shared by the tests that
read what it printed and wrote; the rest compose configs or call the functions directly.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from conftest import ROOT, TINY, compose_config
from grid_helpers import locate, tiles
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata

from vae.train.report import (
    CURATED_KEYS,
    HPARAM_METRICS,
    HPARAMS_PLUGIN_KEYS,
    _hparam_value,
    curated_hparams,
    summary_table,
)


# ---- the curated hparams -------------------------------------------------------------------------
def test_curated_hparams_are_the_config_values_tensorboard_can_show(tmp_path: Path) -> None:
    cfg = compose_config(
        ["model=conv", "model.latent_dim=10", "optim.lr=1e-3", "data=fashion_mnist", "seed=7"],
        output_dir=tmp_path,
    )
    assert curated_hparams(cfg) == {  # as the config writes them
        "model.latent_dim": "10",
        "model.architecture": "conv",
        "model.hidden_dims": "[256]",  # conv.yaml's
        "model.likelihood": "bernoulli",
        "model.beta": "1",
        "model.free_bits": "0",
        "model.norm": "layer",
        "optim.lr": "0.001",
        "optim.scheduler": "cosine",
        "data.dataset": "fashion_mnist",
        "data.binarize": "none",
        "data.batch_size": "128",
        "seed": "7",
        "trainer.max_epochs": "100",
    }
    assert list(curated_hparams(cfg)) == list(CURATED_KEYS)


def test_hparam_values_are_shown_as_written() -> None:
    # a bool is an int to torch's hparams(): TensorBoard would show 1.0000
    assert _hparam_value(True) == "true"
    assert _hparam_value(False) == "false"
    assert _hparam_value([512, 256]) == "[512, 256]"
    assert _hparam_value(None) is None  # left out: an empty cell, not a made-up value
    assert _hparam_value(3e-3) == "0.003"
    assert _hparam_value(2.5e-5) == "2.5e-05"
    assert _hparam_value(20) == "20"


def test_unset_keys_are_left_out(tmp_path: Path) -> None:
    cfg = compose_config(["trainer.max_epochs=null"], output_dir=tmp_path)
    assert "trainer.max_epochs" not in curated_hparams(cfg)


# ---- the summary table ---------------------------------------------------------------------------
def test_summary_table_without_test_metrics_shows_validation(tmp_path: Path) -> None:
    metrics = {"val/loss": 150.456, "val/recon": 140.0, "val/kl": 10.456, "val/active_units": 2.0}
    table = summary_table(metrics, tmp_path, [tmp_path / "a.png", tmp_path / "b.png"], latent_dim=2)
    lines = table.splitlines()
    assert lines[0] == "Validation set (nats per image):"
    assert lines[1].split() == ["−ELBO", "150.46", "val/loss"]
    assert lines[3].split() == ["KL", "10.46", "val/kl"]
    assert lines[4].split() == ["active", "units", "(of", "2)", "2", "val/active_units"]
    assert lines[5] == f"Run directory: {tmp_path.resolve()}"
    assert lines[6] == "Figures: a.png, b.png (in the run directory)"
    assert "IW" not in table  # no test set, no importance-weighted bound


# ---- one real run --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """``python train.py`` (tiny, with its progress bar) under ``paths.log_dir=<tmp>``."""
    log_dir = tmp_path_factory.mktemp("report")
    overrides = [o for o in TINY if not o.startswith("trainer.enable_progress_bar")]
    cmd = [
        sys.executable,
        "train.py",
        *overrides,
        "data.download=false",
        f"paths.log_dir={log_dir}",
    ]
    cmd += ["callbacks.visualize.projector=false"]
    env = {**os.environ, "VAE_DATA_DIR": str(mnist_root)}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    (run_dir,) = (log_dir / "train" / "runs").iterdir()
    return SimpleNamespace(run_dir=run_dir, out=done.stdout, err=done.stderr)


def test_run_directory_says_what_the_run_is(cli_run: SimpleNamespace) -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d_mnist_mlp-z2", cli_run.run_dir.name)


def test_stderr_has_no_warning_tip_or_banner(cli_run: SimpleNamespace) -> None:
    """What stays: whether a GPU was used, and why fitting stopped (TINY has no model summary)."""
    allowed = re.compile(r"GPU available: \w+.*, used: \w+|`Trainer\.fit` stopped: .*")
    unexpected = [line for line in cli_run.err.splitlines() if not allowed.fullmatch(line)]
    assert unexpected == [], cli_run.err


def test_the_run_ends_with_its_metrics_in_nats(cli_run: SimpleNamespace) -> None:
    metrics = json.loads((cli_run.run_dir / "metrics.json").read_text())["metrics"]
    lines = cli_run.out.replace("\r", "\n").splitlines()
    start = lines.index("Test set (nats per image, 500 images):")
    rows = {line.split()[-1]: line.split() for line in lines[start + 1 : start + 6]}
    for tag in ("test/loss", "test/recon", "test/kl", "test/nll_iw"):
        assert rows[tag][-2] == f"{metrics[tag]:.2f}", (tag, rows[tag])
    assert rows["test/nll_iw"][:4] == ["IW", "bound", "(K=4)", f"{metrics['test/nll_iw']:.2f}"]
    assert rows["test/active_units"][-2] == f"{metrics['test/active_units']:.0f}"
    bits = {line.split()[-1]: line.split() for line in lines[start + 6 : start + 8]}
    bits_per_image = 784 * math.log(2)  # nats per bit times the 1×28×28 values of an image
    for tag in ("test/loss", "test/nll_iw"):
        assert bits[f"{tag}_bpd"][-3] == "bits/dim"
        assert bits[f"{tag}_bpd"][-2] == f"{metrics[tag] / bits_per_image:.4f}"
    assert lines[start + 8] == f"Run directory: {cli_run.run_dir.resolve()}"
    assert lines[start + 9] == (
        "Figures: latent_space.png, manifold.png, reconstructions.png, samples.png, "
        "interpolation.png (in the run directory)"
    )
    assert start + 10 == len(lines)  # the last thing the run says


def test_progress_bar_shows_the_loss_to_two_decimals(cli_run: SimpleNamespace) -> None:
    shown = re.findall(r"\bloss=([-0-9.]+)", cli_run.out)
    assert shown, cli_run.out[-2000:]
    assert all(re.fullmatch(r"-?\d+\.\d\d", v) for v in shown), sorted(set(shown))


def test_train_log_holds_the_run_record(cli_run: SimpleNamespace) -> None:
    log = (cli_run.run_dir / "train.log").read_text()
    assert "GPU available: " in log
    assert "Test set (nats per image, 500 images):" in log
    assert "💡" not in log


def test_event_file_has_the_hparams_columns_that_fit_a_screen_and_no_hparams_scalars(
    cli_run: SimpleNamespace,
) -> None:
    acc = EventAccumulator(str(cli_run.run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    scalars = acc.Tags()["scalars"]
    assert not [t for t in scalars if t.startswith("hparams/")]
    content = acc.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    experiment = hparams_metadata.parse_experiment_plugin_data(
        content[hparams_metadata.EXPERIMENT_TAG]
    )
    start = hparams_metadata.parse_session_start_info_plugin_data(
        content[hparams_metadata.SESSION_START_INFO_TAG]
    )
    # three hparam columns (TensorBoard sorts them by name) and four metric columns: with the
    # trial name eight columns of 160 px beside the 385-px panel, all on a 1920-px screen
    plugin_keys = ["data.dataset", "model.architecture", "model.latent_dim"]
    plugin_metrics = ["test/loss", "test/nll_iw", "test/active_units", "val/loss"]
    assert [h.name for h in experiment.hparam_infos] == plugin_keys == list(HPARAMS_PLUGIN_KEYS)
    assert sorted(start.hparams) == plugin_keys
    assert [m.name.tag for m in experiment.metric_infos] == plugin_metrics == list(HPARAM_METRICS)
    # the trial's name: when it started (from the directory's name 2026-12-01_10-31-07_mnist_mlp-z2),
    # what the table's 128-px Trial ID cell shows, then dataset, model and latent size
    d = re.fullmatch(r"\d{4}-(\d\d-\d\d)_(\d\d)-(\d\d)-(\d\d)_mnist_mlp-z2", cli_run.run_dir.name)
    assert start.group_name == f"{d[1]} {d[2]}:{d[3]}:{d[4]} mnist_mlp-z2"
    written = {k: start.hparams[k].string_value for k in plugin_keys}
    assert written == {
        "data.dataset": "mnist",
        "model.architecture": "mlp",
        "model.latent_dim": "2",
    }
    config = yaml.safe_load((cli_run.run_dir / "config.yaml").read_text())
    for key, value in written.items():  # as the run's config.yaml says
        group, name = key.split(".")
        assert str(config[group][name]) == value, key
    # each metric column is a scalar the module logged: TensorBoard shows its last value
    metrics = json.loads((cli_run.run_dir / "metrics.json").read_text())["metrics"]
    for tag in plugin_metrics:
        assert acc.Scalars(tag)[-1].value == pytest.approx(metrics[tag], rel=1e-6), tag


def test_the_image_grids_of_a_run_say_what_they_show(
    cli_run: SimpleNamespace, mnist_root: Path
) -> None:
    """reconstructions.png as ``python train.py`` writes it: the first 32 test digits (read from the
    IDX file) pixel for pixel in the odd rows of the grid, with a title above the grid and labels
    left of it (their words are checked on the Figure, in test_plots and test_visualize)."""
    raw = gzip.decompress((mnist_root / "MNIST" / "raw" / "t10k-images-idx3-ubyte.gz").read_bytes())
    assert int.from_bytes(raw[:4], "big") == 2051  # IDX magic: unsigned bytes, 3 dimensions
    digits = np.frombuffer(raw, dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:32]
    digits = np.repeat(digits[..., None], 3, axis=-1)  # grey as RGB
    with Image.open(cli_run.run_dir / "reconstructions.png") as im:
        png = np.asarray(im.convert("RGB"))
    top, left = locate(png, digits[0])
    found = tiles(png, (top, left), rows=8, cols=8, size=(28, 28), pad=2)
    for k in range(32):
        np.testing.assert_array_equal(found[2 * (k // 8), k % 8], digits[k], err_msg=str(k))
    assert (png[: top - 2] < 128).any()  # dark text above the grid: the title
    assert (png[:, : left - 2] < 128).any()  # and left of it: "original", "reconstruction"


def test_model_summary_lists_the_layers_with_parameters_and_no_flops(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from lightning.pytorch.utilities.model_summary import summarize

    from vae.train.callbacks import ParameterSummary
    from vae.train.module import VAEModule

    module = VAEModule()
    summary = summarize(module, max_depth=1)
    assert "kl_objective" in summary.layer_names  # what Lightning's own summary lists
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.callbacks.model_summary"):
        ParameterSummary.summarize(
            summary._get_summary_data(),
            summary.total_parameters,
            summary.trainable_parameters,
            summary.model_size,
            summary.total_training_modes,
            total_flops=0,
        )
    table = caplog.records[-1].getMessage()
    rows = [line.split("|") for line in table.splitlines() if line.count("|") >= 3]
    names = [r[1].strip() for r in rows[1:]]
    assert names == [
        n
        for n in summary.layer_names
        if any(p.numel() for p in module.get_submodule(n).parameters())
    ]
    assert names == ["vae"]
    assert "FLOPs" not in table
    assert "Flops" not in table
    total = sum(p.numel() for p in module.parameters())
    assert total == summary.total_parameters
