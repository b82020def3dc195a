"""Every config group option composes and instantiates; the composed values are what they claim."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONFIG_DIR, compose_config
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from vae.train.callbacks import EpochTimer, ParameterSummary, RoundedProgressBar
from vae.train.config import validate_config
from vae.train.data import MNISTDataModule
from vae.train.environment import cpu_has_native_bf16
from vae.train.run import _instantiate_all, build_module, build_trainer
from vae.viz.callbacks import ExplorerWriter, LatentVisualizer


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


def test_the_groups_hold_the_documented_options() -> None:
    assert _options("data") == ["fashion_mnist", "folder", "mnist"]
    assert _options("model") == ["conv", "mlp"]
    assert _options("trainer") == ["cpu", "ddp", "ddp_cpu", "default", "gpu"]
    assert _options("callbacks") == ["default", "none"]
    assert _options("experiment") == [
        "canonical",
        "gpu_fast",
        "iwae_paper_k5",
        "iwae_paper_k50",
        "iwae_paper_vae",
    ]


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    cfg = compose_config(output_dir=tmp_path)
    validate_config(cfg)
    assert cfg.model.latent_dim == 2
    assert list(cfg.model.hidden_dims) == [512, 256]
    assert cfg.model.likelihood == "bernoulli"
    assert cfg.trainer.accelerator == "auto"
    assert cfg.trainer.max_epochs == 100
    assert cfg.optim.lr == 3e-3
    assert cfg.data.batch_size == 128
    assert cfg.data.val_size == 5000
    assert cfg.data.binarize == "none"
    assert cfg.data.seed == cfg.seed == cfg.eval.seed


@pytest.mark.parametrize("option", ["mnist", "fashion_mnist"])
def test_data_options_instantiate(option: str, tmp_path: Path) -> None:
    dm = instantiate(compose_config([f"data={option}"], output_dir=tmp_path).data)
    assert isinstance(dm, MNISTDataModule)
    assert dm.dataset == option
    assert dm.batch_size == 128
    assert dm.download is False  # the test config never touches the network


@pytest.mark.parametrize("option", ["mlp", "conv"])
@pytest.mark.parametrize("latent_dim", [1, 2, 10])
def test_model_options_build_working_networks(option: str, latent_dim: int, tmp_path: Path) -> None:
    cfg = compose_config([f"model={option}", f"model.latent_dim={latent_dim}"], output_dir=tmp_path)
    module = build_module(cfg, (1, 28, 28))
    x = torch.rand(3, 1, 28, 28)
    terms = module.elbo_terms(x)
    assert terms["mu"].shape == (3, latent_dim)
    assert module(x).shape == x.shape
    has_conv = any(isinstance(m, torch.nn.Conv2d) for m in module.modules())
    assert has_conv == (option == "conv")


@pytest.mark.parametrize(
    ("option", "accelerator", "devices", "strategy"),
    [("default", "cpu", 1, None), ("cpu", "cpu", 1, None), ("ddp_cpu", "cpu", 2, DDPStrategy)],
)
def test_trainer_options_instantiate_on_cpu(
    option: str, accelerator: str, devices: int, strategy: type | None, tmp_path: Path
) -> None:
    cfg = compose_config([f"trainer={option}", "trainer.precision=auto"], output_dir=tmp_path)
    trainer, _ = build_trainer(cfg)  # precision=auto is resolved there, not by Lightning
    if not torch.cuda.is_available():
        assert type(trainer.accelerator).__name__ == "CPUAccelerator"
        assert str(trainer.precision) == ("bf16-mixed" if cpu_has_native_bf16() else "32-true")
    assert trainer.num_devices == devices or option == "default"
    if strategy is not None:
        assert isinstance(trainer.strategy, strategy)


@pytest.mark.parametrize("option", ["gpu", "ddp"])
def test_gpu_trainer_options_compose(option: str, tmp_path: Path) -> None:
    cfg = compose_config([f"trainer={option}", "trainer.num_nodes=3"], output_dir=tmp_path)
    assert cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.num_nodes == 3
    if torch.cuda.is_available():
        assert isinstance(build_trainer(cfg)[0], L.Trainer)


@pytest.mark.parametrize(
    ("flags", "native"),
    [("fpu sse avx512f avx512_bf16 avx512_vnni", True), ("fpu amx_bf16 amx_tile", True),
     ("fpu sse avx2 avx512f avx512bw", False)],
)  # fmt: skip
def test_auto_precision_is_bf16_only_where_the_cpu_computes_it(
    flags: str, native: bool, tmp_path: Path
) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\n")
    assert cpu_has_native_bf16(cpuinfo) is native
    assert cpu_has_native_bf16(tmp_path / "absent") is False  # not Linux: float32


def test_callbacks_and_logger_instantiate(tmp_path: Path) -> None:
    cfg = compose_config(output_dir=tmp_path)
    callbacks = _instantiate_all(cfg.callbacks)
    assert {type(c) for c in callbacks} == {
        ModelCheckpoint,
        LatentVisualizer,
        EpochTimer,
        RoundedProgressBar,
        ExplorerWriter,
        LearningRateMonitor,
        ParameterSummary,
    }
    checkpoint = next(c for c in callbacks if isinstance(c, ModelCheckpoint))
    assert checkpoint.monitor == "val/loss"
    assert Path(checkpoint.dirpath) == tmp_path / "checkpoints"
    (logger,) = _instantiate_all(cfg.logger)
    assert isinstance(logger, TensorBoardLogger)
    assert Path(logger.log_dir) == tmp_path / "tensorboard"
    assert _instantiate_all(compose_config(["callbacks=none"], output_dir=tmp_path).callbacks) == []


def test_experiments_change_only_what_they_list(tmp_path: Path) -> None:
    base = compose_config(output_dir=tmp_path)
    canonical = compose_config(["experiment=canonical"], output_dir=tmp_path)
    assert list(canonical.model.hidden_dims) == [400]
    assert canonical.model.latent_dim == 20
    assert canonical.optim.scheduler == "none"
    assert canonical.model.likelihood == base.model.likelihood
    assert canonical.trainer == base.trainer
    fast = compose_config(["experiment=gpu_fast"], output_dir=tmp_path)
    assert fast.trainer.accelerator == "gpu"
    assert fast.trainer.precision == "bf16-mixed"
    assert fast.data.device_resident is True
    assert fast.compile is True
    assert fast.model == base.model


def test_unknown_group_option_is_refused_with_the_options(tmp_path: Path) -> None:
    from hydra.errors import MissingConfigException

    with pytest.raises(MissingConfigException, match="trainer") as err:
        compose_config(["trainer=tpu"], output_dir=tmp_path)
    assert "ddp_cpu" in str(err.value)  # lists what is available
