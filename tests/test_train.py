"""Short real training runs through ``train(cfg)``: files written, loss lowered, resume, bad values."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from vae.train.config import ConfigError
from vae.train.module import VAEModule
from vae.train.run import build_module, train

pytestmark = pytest.mark.usefixtures("mnist_root")


def _event_scalars(run_dir: Path) -> dict[str, list[float]]:
    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def loss_at_step_zero(cfg) -> float:
    """−ELBO (nats per image) of ``cfg``'s model before its first step, on a validation batch.

    Same seed and order as ``train(cfg)``, so the same initial weights, and the mean-image output
    bias when ``model.init_output_bias`` is on (as ``VAEModule.setup`` sets it).
    """
    L.seed_everything(cfg.seed, verbose=False)
    dm = instantiate(cfg.data)
    untrained = build_module(cfg, dm.dims)
    dm.setup("fit")
    if cfg.model.init_output_bias:
        untrained.vae.init_output_bias(dm.pixel_mean())
    x, _, _ = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        return untrained.elbo_terms(dm.to_float(x))["loss"].mean().item()


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, float], float]:
    """One tiny real run (2 epochs × 8 batches) shared by the tests below; also the loss before it."""
    from conftest import TINY, compose_config

    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    cfg = compose_config([*TINY, "trainer.max_epochs=2"], output_dir=run_dir)
    loss_before = loss_at_step_zero(cfg)
    metrics = train(cfg)
    return run_dir, metrics, loss_before


def test_run_writes_its_files(tiny_run: tuple[Path, dict[str, float], float]) -> None:
    run_dir, metrics, _ = tiny_run
    assert (run_dir / "config.yaml").is_file()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "checkpoints").glob("best-*.ckpt")), "no best checkpoint"
    summary = json.loads((run_dir / "metrics.json").read_text())
    assert summary["units"].startswith("nats per image (keys ending in _bpd: bits per dimension")
    dims = 784 * math.log(2)  # an MNIST image: 1×28×28 values
    assert summary["metrics"]["test/loss_bpd"] == pytest.approx(
        summary["metrics"]["test/loss"] / dims
    )
    for key in ("test/loss", "test/recon", "test/kl", "test/nll_iw", "val/loss"):
        assert math.isfinite(summary["metrics"][key]), key
        assert summary["metrics"][key] == pytest.approx(metrics[key])
    # −ELBO = recon + KL, per image
    m = summary["metrics"]
    assert m["test/loss"] == pytest.approx(m["test/recon"] + m["test/kl"], rel=1e-5)
    scalars = _event_scalars(run_dir)
    for tag in ("train/loss_step", "train/loss_epoch", "val/loss", "val/kl", "val/active_units"):
        assert tag in scalars, f"{tag} missing from TensorBoard: {sorted(scalars)}"
    assert "val/kl_dim/0" in scalars
    assert "val/kl_dim/1" in scalars


def test_training_lowers_the_loss(tiny_run: tuple[Path, dict[str, float], float]) -> None:
    _, metrics, loss_before = tiny_run
    # the decoder starts at the mean image (≈ 214 nats here, not the ≈ 543 = 784 · ln 2 of a
    # decoder at ½ everywhere), so 16 steps gain less: 6.7 nats when this was written
    assert metrics["val/loss"] < loss_before - 3, (metrics["val/loss"], loss_before)


def test_checkpoint_reloads_a_working_model(tiny_run: tuple[Path, dict[str, float], float]) -> None:
    run_dir, _, _ = tiny_run
    model = VAEModule.load_from_checkpoint(
        run_dir / "checkpoints" / "last.ckpt", map_location="cpu"
    )
    model.eval()
    x = torch.rand(5, 1, 28, 28)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, 2)
    images = model.decode(mu)
    assert images.shape == (5, 1, 28, 28)
    assert images.min() >= 0
    assert images.max() <= 1
    samples = model.sample(7, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (7, 1, 28, 28)
    again = model.sample(7, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(samples, again)


def test_resume_continues_from_the_checkpoint_step(make_cfg) -> None:
    """A finished run trained further: one more epoch on top of its steps (a constant rate; the
    cosine schedule refuses a longer run, tests/test_errors.py)."""
    first = make_cfg("trainer.max_epochs=1", "optim.scheduler=none", "test=false", name="first")
    train(first)
    last = Path(first.paths.output_dir) / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert (ckpt["global_step"], ckpt["epoch"]) == (8, 0)
    cfg = make_cfg(
        "trainer.max_epochs=2",
        "optim.scheduler=none",
        f"ckpt_path={last}",
        "test=false",
        name="resumed",
    )
    train(cfg)
    resumed = torch.load(cfg.paths.output_dir + "/checkpoints/last.ckpt", weights_only=True)
    # one more epoch of 8 batches on top of the 8 steps already taken
    assert (resumed["global_step"], resumed["epoch"]) == (16, 1)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.latent_dim=0", "model.latent_dim=0: expected an integer ≥ 1"),
        ("model.latent_dim=-3", "model.latent_dim=-3: expected an integer ≥ 1"),
        ("model.latent_dim=abc", "model.latent_dim='abc': expected an integer ≥ 1"),
        ("model.latent_dim=2.5", "model.latent_dim=2.5: expected an integer ≥ 1"),
        ("model.likelihood=poisson", "model.likelihood='poisson': expected one of bernoulli"),
        ("optim.lr=-1", "optim.lr=-1: expected a finite number > 0"),
        ("model.beta=-0.5", "model.beta=-0.5: expected a finite number ≥ 0"),
        ("eval.iw_samples=0", "eval.iw_samples=0: expected an integer ≥ 1"),
    ],
)
def test_bad_values_fail_before_training(make_cfg, override: str, message: str) -> None:
    cfg = make_cfg(override)
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert str(err.value).startswith(message), str(err.value)
    assert not (Path(cfg.paths.output_dir) / "checkpoints").exists()


def test_bf16_mixed_precision_path_runs_on_cpu(make_cfg) -> None:
    """The GPU preset's precision, exercised on the CPU: autocast must not break the loss terms."""
    # without the mean-image start the untrained model scores ≈ 558 nats, so 8 steps show clearly
    cfg = make_cfg("trainer.precision=bf16-mixed", "model.init_output_bias=false")
    before = loss_at_step_zero(cfg)
    metrics = train(cfg)
    for key in ("val/loss", "test/loss", "test/nll_iw"):
        assert math.isfinite(metrics[key]), key
    assert metrics["val/loss"] < before - 100, (metrics["val/loss"], before)


def test_bf16_runs_report_the_float32_numbers_of_their_weights(make_cfg) -> None:
    """Under bf16-mixed only training steps run in bfloat16: the test numbers a run reports are
    those a float32 trainer computes from its final weights (last.ckpt), to float32 rounding."""
    cfg = make_cfg("trainer.precision=bf16-mixed", "callbacks.visualize.projector=false")
    reported = train(cfg)
    module = VAEModule.load_from_checkpoint(Path(cfg.paths.output_dir) / "checkpoints/last.ckpt")
    datamodule = instantiate(cfg.data)
    checker = L.Trainer(
        accelerator="cpu", precision="32-true", logger=False, limit_test_batches=2,
        enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    (float32,) = checker.test(module, datamodule=datamodule, verbose=False)
    for key in ("test/loss", "test/recon", "test/kl", "test/nll_iw"):
        assert reported[key] == pytest.approx(float32[key], rel=1e-6, abs=1e-4), key


@pytest.mark.slow
def test_default_run_reaches_the_target(make_cfg) -> None:
    """The default 2-D run (100 epochs, ~15 min on 2 CPU cores): test −ELBO ≤ 137 nats per image.

    The importance-weighted bound is a tighter bound on −log p(x), so it must come out below it.
    """
    metrics = train(make_cfg(tiny=False, name="default"))
    assert metrics["test/loss"] <= 137.0, metrics
    assert metrics["test/nll_iw"] <= metrics["test/loss"], metrics
    assert metrics["test/num_images"] == 10_000


def test_multirun_sweeps_latent_dims(tmp_path: Path) -> None:
    """`python train.py -m model.latent_dim=1,3`: one run directory and one metrics.json per value."""
    import subprocess
    import sys

    from conftest import ROOT, TINY

    sweep = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "train.py"), "-m", "model.latent_dim=1,3", *TINY]
    cmd += [
        "data.download=false",
        "callbacks.visualize.projector=false",
        f"hydra.sweep.dir={sweep}",
    ]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for job, latent_dim in ((0, 1), (1, 3)):
        # the job's directory says what it is: <job number>_<dataset>_<architecture>-z<latent_dim>
        job_dir = sweep / f"{job}_mnist_mlp-z{latent_dim}"
        summary = json.loads((job_dir / "metrics.json").read_text())
        assert summary["metrics"][f"test/kl_dim/{latent_dim - 1}"] >= 0
        assert f"test/kl_dim/{latent_dim}" not in summary["metrics"]


class _BiasAtStart(L.Callback):
    """Records the decoder's output bias when training starts (after setup and any restore)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: VAEModule) -> None:
        self.bias = pl_module.vae.decoder.net[-1].bias.detach().clone()
        trainer.should_stop = True


def _bias_at_fit_start(module: VAEModule, cfg) -> torch.Tensor:
    record = _BiasAtStart()
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, datamodule=instantiate(cfg.data))
    return record.bias


def test_fresh_weights_start_at_the_mean_image_trained_ones_keep_their_bias(
    tiny_run: tuple[Path, dict[str, float], float], make_cfg
) -> None:
    run_dir, _, _ = tiny_run
    cfg = make_cfg()
    assert cfg.model.init_output_bias
    dm = instantiate(cfg.data)
    dm.setup("fit")
    # reference: the logit of the training split's mean grey level per pixel, clipped to [1e-3, 1 − 1e-3]
    images = dm.train_dataset.images.double() / 255  # (N, 1, 28, 28)
    expected = torch.logit(images.mean(0).clamp(1e-3, 1 - 1e-3)).flatten().float()
    fresh = build_module(cfg, dm.dims)
    torch.testing.assert_close(_bias_at_fit_start(fresh, cfg), expected, rtol=0, atol=1e-5)
    # a model loaded from a checkpoint (fine-tuning) keeps its trained bias
    loaded = VAEModule.load_from_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    trained = loaded.vae.decoder.net[-1].bias.detach().clone()
    assert not torch.allclose(trained, expected, atol=1e-3)
    torch.testing.assert_close(_bias_at_fit_start(loaded, cfg), trained, rtol=0, atol=0)


def test_relative_paths_are_recorded_absolute(
    make_cfg, mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative ``data.root`` / ``paths.log_dir`` means relative to where the command started;
    ``config.yaml`` and the checkpoint store them absolute, so both work from anywhere."""
    start = tmp_path / "start"
    (start / "data").mkdir(parents=True)
    (start / "data" / "MNIST").symlink_to((mnist_root / "MNIST").absolute())
    monkeypatch.chdir(start)
    cfg = make_cfg("data.root=data", "paths.log_dir=logs", "test=false", "~callbacks.visualize")
    train(cfg)
    run_dir = Path(cfg.paths.output_dir)
    recorded = OmegaConf.load(run_dir / "config.yaml")
    assert recorded.data.root == str(start / "data")
    assert recorded.paths.log_dir == str(start / "logs")
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["root"] == str(start / "data")


def test_the_run_records_the_commit_it_started_from(
    make_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit (or checkout) while the run trains changes the repository, not the code that ran:
    metrics.json and explorer.html name the git state of the start. Each asks once at the start
    and again (as before the fix) at the end; the answers differ here as a mid-run commit makes them."""
    import vae.train.environment as environment
    import vae.train.summary as summary
    import vae.viz.callbacks as viz_callbacks

    start = {"commit": "start", "describe": "start-describe", "dirty": False}
    end = {"commit": "end", "describe": "end-describe", "dirty": False}
    for where in (summary, viz_callbacks):
        states = iter([start])
        monkeypatch.setattr(
            where, "git_state", lambda *a, s=states, **k: next(s, end), raising=False
        )
    monkeypatch.setattr(environment, "git_state", lambda *a, **k: end)
    cfg = make_cfg("callbacks.explorer.enabled=true")
    train(cfg)
    recorded = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert recorded["environment"]["git"]["commit"] == "start"
    page = (Path(cfg.paths.output_dir) / "explorer.html").read_text()
    assert "vae start-describe" in page
    assert "end-describe" not in page
