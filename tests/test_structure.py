"""One definition of each concept: defaults, rules and loaders exist once, and imports point one way."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import hydra.utils
import pytest
import torch
from conftest import CONFIG_DIR, ROOT, compose_config
from omegaconf import OmegaConf

from vae.core import config as hparams
from vae.core.likelihoods import build_likelihood
from vae.core.networks import build_vae
from vae.core.seeding import derive_seed
from vae.errors import ConfigError
from vae.train.data import DATA_RULES, DataConfig, MNISTDataModule
from vae.train.module import EVAL_NOISE_BLOCK, VAEModule
from vae.train.run import build_module
from vae.viz.figures import FigureOptions

PACKAGE = ROOT / "vae"


def _module_name(path: Path) -> str:
    """``vae/train/run.py`` → ``vae.train.run``; a package's ``__init__.py`` → the package."""
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The ``vae.*`` modules ``path`` imports, at the top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("vae"):
            for alias in node.names:  # `from vae.viz import plots` imports vae.viz.plots
                sub = f"{node.module}.{alias.name}"
                is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists()
                found.add(sub if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("vae.")}
    return found


GRAPH = {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}
#: each layer imports only the layers before it: the KL library and the foundations, then core,
#: then the training application, then the visualisation, the search (and the command entry points)
LAYERS = (
    ("vae.kl", "vae.errors", "vae.rules"),
    ("vae.core",),
    ("vae.train",),
    ("vae.viz", "vae.search", "vae.visualize", "vae.explore", "vae.losses", "vae"),
)


def _layer(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer")


def test_the_import_graph_has_no_cycle() -> None:
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for dep in sorted(GRAPH.get(node, ())):
            if state.get(dep) == "open":
                pytest.fail("import cycle: " + " → ".join([*stack, node, dep]))
            if dep not in state:
                visit(dep, [*stack, node])
        state[node] = "done"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module, [])
    assert GRAPH["vae.train.checkpointing"].isdisjoint({"vae.train.module", "vae.train.run"})


def test_imports_point_one_way_core_then_train_then_viz() -> None:
    upward = [
        f"{module} imports {dep}"
        for module, deps in GRAPH.items()
        if module != "vae"  # the package re-exports the KL library
        for dep in deps
        if _layer(dep) > _layer(module)
    ]
    assert upward == []
    assert GRAPH["vae.kl"] == set()  # the KL library stands alone


def test_the_torch_only_part_loads_no_training_stack() -> None:
    """``import vae.kl`` and the core load torch and nothing of the training or plotting stack."""
    code = (
        "import sys, vae.kl, vae.core.networks, vae.core.likelihoods, vae.core.config, "
        "vae.core.objective, vae.core.seeding; "
        "print(sorted(m for m in ('lightning', 'hydra', 'omegaconf', 'matplotlib', "
        "'torchvision', 'tensorboard') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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
        for p in PACKAGE.rglob("*.py")
        for node in ast.walk(ast.parse(p.read_text()))
        if isinstance(node, ast.ClassDef) and node.name.endswith("Error")
    ]
    assert all(name.startswith("errors.") for name in defined), defined


def test_a_module_built_in_python_is_the_module_train_py_builds(tmp_path: Path) -> None:
    """``VAEModule()`` (the "import it into your own code" use) is the default run's model."""
    cfg = compose_config(output_dir=tmp_path)
    from_config = build_module(cfg, MNISTDataModule().dims)
    from_python = VAEModule()
    assert dict(from_python.hparams) == dict(from_config.hparams)
    shapes = {k: v.shape for k, v in from_config.state_dict().items()}
    assert {k: v.shape for k, v in from_python.state_dict().items()} == shapes
    assert (from_python.iw_samples, from_python.iw_chunk) == (100, 10)  # the YAML's, not 1 / 16


def _yaml_section_values(section: str) -> list[tuple[str, str, object]]:
    """``(file, key, value)`` of every ``<section>.*`` value written in configs/: in the
    section's group files, and under ``<section>:`` in train.yaml and the experiment files."""
    found = []
    for path in sorted(CONFIG_DIR.rglob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path)) or {}
        group = path.parent.name
        body = (
            node
            if group == section
            else node.get(section)
            if group in ("configs", "experiment")
            else None
        )
        for key, value in (body or {}).items():
            if key != "defaults":
                found.append((str(path.relative_to(ROOT)), key, value))
    return found


@pytest.mark.parametrize(("section", "cls"), list(hparams.SECTIONS.items()))
def test_each_default_is_written_once_in_its_dataclass(
    section: str, cls: type, tmp_path: Path
) -> None:
    """The dataclass is the one place a ``model`` / ``optim`` / ``eval`` default is written: the
    composed config has its defaults (through the ConfigStore), and no YAML file repeats one."""
    defaults = hparams.as_dict(cls())
    cfg = compose_config(output_dir=tmp_path)
    assert OmegaConf.to_container(cfg[section], resolve=True) == defaults
    copies = [
        f"{file}: {section}.{key}={value}"
        for file, key, value in _yaml_section_values(section)
        if key in defaults and value == defaults[key]
    ]
    assert copies == []


def test_the_builders_take_no_default_of_their_own() -> None:
    """The network and likelihood builders read the config: no keyword default to keep in sync."""
    for builder in (build_vae, build_likelihood):
        params = inspect.signature(builder).parameters.values()
        assert [p.name for p in params if p.default is not p.empty] == [], builder.__name__


def test_every_model_field_has_a_rule_and_network_keys_derive_from_them() -> None:
    fields = {f.name: f for f in dataclasses.fields(hparams.ModelConfig)}
    assert all("rule" in f.metadata for f in fields.values())
    assert set(hparams.NETWORK_KEYS) == {n for n, f in fields.items() if f.metadata["network"]}
    assert "beta" not in hparams.NETWORK_KEYS
    assert "latent_dim" in hparams.NETWORK_KEYS


def test_the_data_rules_are_the_data_config_fields_and_the_yaml_keys(tmp_path: Path) -> None:
    params = [f.name for f in dataclasses.fields(DataConfig)]
    cfg = compose_config(output_dir=tmp_path)
    assert list(DATA_RULES) == params
    assert set(cfg.data) - {"_target_"} == set(params)


def test_each_data_default_is_written_once_in_its_dataclass(tmp_path: Path) -> None:
    """``DataConfig`` is the one place a ``data`` default is written: the composed config has its
    defaults (through the ConfigStore) but for the root (``$VAE_DATA_DIR``, as the module reads it)
    and the seed (the run's), and no YAML file repeats one (``ImageDataModule()`` in Python is the
    data of ``python train.py``)."""
    cfg = compose_config(output_dir=tmp_path)
    composed = OmegaConf.to_container(cfg.data, resolve=True)
    defaults = dataclasses.asdict(DataConfig())
    assert composed.pop("_target_") == "vae.train.data.ImageDataModule"
    assert composed.pop("seed") == cfg.seed
    assert composed.pop("root") == os.environ.get("VAE_DATA_DIR", "data")
    assert composed.pop("download") is False  # compose_config's: the tests never download
    del defaults["download"]
    assert composed == {k: v for k, v in defaults.items() if k not in ("seed", "root")}
    copies = [
        f"{file}: data.{key}={value}"
        for file, key, value in _yaml_section_values("data")
        if key in defaults and value == defaults[key] and not (key == "root" and "folder" in file)
    ]
    assert copies == []


def test_the_data_config_loads_no_torch() -> None:
    """The ConfigStore's defaults come from a module that imports no torch (``--help`` stays fast)."""
    code = (
        "import sys, vae.train.data_config, vae.train.config; "
        "print(sorted(m for m in ('torch', 'lightning') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


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


def test_the_figure_options_reach_the_callback_from_their_one_declaration(tmp_path: Path) -> None:
    """``callbacks.visualize`` gets FigureOptions' defaults from the ConfigStore (the YAML lists
    none of them), an override on the command line reaches the callback, and ``callbacks=none``
    leaves no figure keys behind."""
    yaml = OmegaConf.load(CONFIG_DIR / "callbacks" / "default.yaml").visualize
    options = {f.name: f.default for f in dataclasses.fields(FigureOptions)}
    assert not set(options) & set(yaml)
    cfg = compose_config(["callbacks.visualize.grid_size=7"], output_dir=tmp_path)
    visualize = OmegaConf.to_container(cfg.callbacks.visualize)
    assert {k: visualize[k] for k in options} == options | {"grid_size": 7}
    callback = hydra.utils.instantiate(cfg.callbacks.visualize)
    assert callback.options == FigureOptions(grid_size=7)
    assert "visualize" not in compose_config(["callbacks=none"], output_dir=tmp_path).callbacks


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


#: ways of writing a file other than :mod:`vae.train.files` (a regular expression per line of code)
_OTHER_WRITES = re.compile(
    r"\.write_(text|bytes)\("
    r"|\bopen\([^)]*['\"][rbt]*[wax+][rwxabt+]*['\"]"  # open / Path.open / os.fdopen / gzip.open
    r"|os\.open\([^)]*O_(WRONLY|RDWR|CREAT)"
    r"|\b(mkstemp|mkdtemp|NamedTemporaryFile|TemporaryFile)\("
    r"|os\.(replace|rename)\(|shutil\.(copy|copyfile|copy2|copytree|move)\("
    r"|\bjson\.dump\(|\bnp\.save\w*\(|torch\.save\([^,]+,\s*(?!(buffer|f)\b)\S"
    r"|(?<!torch)\.(savefig|save)\((?!f\b)\S"  # a figure or an image saved to a path, not to a file object
)
#: where a line may write otherwise, if it says why: ``# not vae.train.files: <reason>``
_EXEMPT = "# not vae.train.files:"


def test_every_file_is_written_through_the_one_atomic_writer() -> None:
    """Issue 23 §1: every file the package and the benchmarks write goes through
    ``vae.train.files`` (an exclusive temporary file, then a rename): a planted link is never
    followed and a crash or a full disk never leaves a cut file. Any other write must say why."""
    writer = PACKAGE / "train" / "files.py"
    found = []
    for path in sorted([*PACKAGE.rglob("*.py"), *(ROOT / "benchmarks").glob("*.py")]):
        if path == writer:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if _OTHER_WRITES.search(code) and _EXEMPT not in line:
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == [], "\n".join(found)
