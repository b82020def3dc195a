"""One definition of each concept: defaults, rules and loaders exist once, and imports point one way."""

from __future__ import annotations

import ast
import dataclasses
import inspect
from pathlib import Path

import pytest
import torch
from conftest import ROOT, compose_config
from omegaconf import OmegaConf

from vae import hparams
from vae.data import DATA_RULES, MNISTDataModule
from vae.errors import ConfigError
from vae.model import build_vae
from vae.module import EVAL_NOISE_BLOCK, VAEModule
from vae.seeding import derive_seed
from vae.training import build_module
from vae.visualize import FigureOptions

PACKAGE = ROOT / "vae"


def _imports(path: Path) -> set[str]:
    """The ``vae.*`` modules ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vae"):
            if node.module == "vae":  # from vae import plots
                found |= {
                    f"vae.{a.name}" for a in node.names if (PACKAGE / f"{a.name}.py").exists()
                }
            else:
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vae.")}
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = {f"vae.{p.stem}": _imports(p) for p in PACKAGE.glob("*.py") if p.stem != "__init__"}
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " → ".join([*stack, node, dep]))
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [])
    assert graph["vae.checkpointing"].isdisjoint({"vae.module", "vae.training"})
    assert "vae.data" not in graph["vae.rules"] | graph["vae.errors"]


def test_nothing_loads_with_weights_only_false() -> None:
    offenders = [
        f"{p.name}:{i}"
        for p in PACKAGE.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "weights_only=False" in line.replace(" ", "")
    ]
    assert offenders == []


def test_user_errors_are_defined_in_one_module() -> None:
    defined = [
        f"{p.stem}.{node.name}"
        for p in PACKAGE.glob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Error")
    ]
    assert all(name.startswith("errors.") for name in defined), defined


def test_a_module_built_in_python_is_the_module_train_py_builds(tmp_path: Path) -> None:
    """``VAEModule()`` (the "import it into your own code" use) is the default run's model."""
    cfg = compose_config(output_dir=tmp_path)
    from_config = build_module(cfg, MNISTDataModule.dims)
    from_python = VAEModule()
    assert dict(from_python.hparams) == dict(from_config.hparams)
    shapes = {k: v.shape for k, v in from_config.state_dict().items()}
    assert {k: v.shape for k, v in from_python.state_dict().items()} == shapes
    assert (from_python.iw_samples, from_python.iw_chunk) == (100, 10)  # the YAML's, not 1 / 16


@pytest.mark.parametrize(("section", "cls"), list(hparams.SECTIONS.items()))
def test_the_yaml_defaults_are_the_dataclass_defaults(
    section: str, cls: type, tmp_path: Path
) -> None:
    cfg = compose_config(output_dir=tmp_path)
    assert OmegaConf.to_container(cfg[section], resolve=True) == hparams.as_dict(cls())


def test_every_model_field_has_a_rule_and_network_keys_derive_from_them() -> None:
    fields = {f.name: f for f in dataclasses.fields(hparams.ModelConfig)}
    assert all("rule" in f.metadata for f in fields.values())
    assert set(hparams.NETWORK_KEYS) == {n for n, f in fields.items() if f.metadata["network"]}
    assert "beta" not in hparams.NETWORK_KEYS
    assert "latent_dim" in hparams.NETWORK_KEYS


def test_the_data_rules_are_the_data_module_arguments_and_the_yaml_keys(tmp_path: Path) -> None:
    params = list(inspect.signature(MNISTDataModule.__init__).parameters)[1:]
    cfg = compose_config(output_dir=tmp_path)
    assert list(DATA_RULES) == params
    assert set(cfg.data) - {"_target_"} == set(params)


def test_the_data_module_defaults_are_the_yaml_values() -> None:
    """``MNISTDataModule()`` in Python is the data of ``python train.py`` (``root`` aside: the YAML
    reads ``$VAE_DATA_DIR``, as the module does; ``seed`` is the run's ``seed``)."""
    yaml = OmegaConf.load(ROOT / "configs" / "data" / "mnist.yaml")
    yaml.seed = OmegaConf.load(ROOT / "configs" / "train.yaml").seed
    params = inspect.signature(MNISTDataModule.__init__).parameters
    defaults = {k: p.default for k, p in params.items() if k not in ("self", "root")}
    assert {k: yaml[k] for k in defaults} == defaults


def test_the_network_builder_defaults_are_the_model_config_defaults() -> None:
    """``build_vae`` cannot import :mod:`vae.hparams` (which imports the option lists from
    :mod:`vae.model`), so its keyword defaults are a second copy: this keeps them equal."""
    params = inspect.signature(build_vae).parameters
    config = hparams.as_dict(hparams.ModelConfig())
    defaults = {k: p.default for k, p in params.items() if k != "image_shape"}
    assert set(defaults) == set(hparams.NETWORK_KEYS)
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items()} == {
        k: config[k] for k in defaults
    }


def _sha256_seed(text: str) -> int:
    """The seed formula written out again: first 8 bytes of SHA-256, little-endian, 63 bits."""
    import hashlib

    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") % 2**63


def test_one_seed_function_keeps_the_streams_it_replaced() -> None:
    """``derive_seed`` replaced two formulas: the data module's (SHA-256 of the ``repr`` of the
    parts) and the module's (of the parts joined by ``/``). Both kinds of name give the seeds
    they gave before, so the shuffling and the evaluation noise of a checkpoint are unchanged."""
    assert derive_seed(("shuffle", 0, 3)) == _sha256_seed("('shuffle', 0, 3)")
    assert derive_seed("0/val/0") == _sha256_seed("0/val/0")
    module = VAEModule()
    expected = torch.randn(
        EVAL_NOISE_BLOCK, 2, generator=torch.Generator().manual_seed(_sha256_seed("0/val/1"))
    )
    index = torch.tensor([EVAL_NOISE_BLOCK + 7, EVAL_NOISE_BLOCK])
    assert torch.equal(module.eval_noise(index, "val"), expected[[7, 0]])


def test_the_visualize_yaml_lists_the_figure_option_defaults(tmp_path: Path) -> None:
    cfg = OmegaConf.to_container(compose_config(output_dir=tmp_path).callbacks.visualize)
    options = {f.name: f.default for f in dataclasses.fields(FigureOptions)}
    assert {k: cfg[k] for k in options} == options


def test_a_module_refuses_an_unknown_or_bad_key() -> None:
    # the same message as train.py's for +model.latnet_dim=3 (tests/test_errors.py)
    typo = r"^model\.latnet_dim: no such key; did you mean model\.latent_dim\? the model keys are "
    with pytest.raises(ConfigError, match=typo):
        VAEModule(model={"latnet_dim": 3})
    with pytest.raises(ConfigError, match=r"^model\.latent_dim=0: expected an integer ≥ 1$"):
        VAEModule(model={"latent_dim": 0})


def test_partial_mappings_keep_the_other_defaults() -> None:
    module = VAEModule(model={"latent_dim": 5}, optim={"lr": 1e-3})
    assert module.model_config == dataclasses.replace(hparams.ModelConfig(), latent_dim=5)
    assert module.optim_config.scheduler == "cosine"
    mu, _ = module.encode(torch.rand(3, 1, 28, 28))
    assert mu.shape == (3, 5)
