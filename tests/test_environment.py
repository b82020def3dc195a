"""vae.train.environment records where a run ran: each field against what it names, asked independently."""

from __future__ import annotations

import json
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import hydra
import lightning
import pytest
import torch
import torchvision
from conftest import ROOT

from vae.train.environment import (
    collect_environment,
    environment_markdown,
    format_environment,
    git_state,
)

needs_git = pytest.mark.skipif(
    shutil.which("git") is None or not (ROOT / ".git").exists(), reason="needs git and a checkout"
)


def _git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def test_versions_are_those_of_the_imported_packages() -> None:
    env = collect_environment()
    assert env["python"] == ".".join(map(str, sys.version_info[:3]))
    assert env["torch"] == torch.__version__
    assert env["lightning"] == lightning.__version__
    assert env["torchvision"] == torchvision.__version__.split("+")[0]  # metadata has no local tag
    assert env["hydra-core"] == hydra.__version__


def test_device_threads_precision_and_command_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        env = collect_environment(device=torch.device("cpu"), precision="bf16-mixed")
    finally:
        torch.set_num_threads(threads)
    assert env["threads"] == 1
    assert env["device"] == "cpu"
    assert env["cuda"] is None
    assert env["cudnn"] is None  # not used on a CPU run, whatever the build has
    assert env["precision"] == "bf16-mixed"
    assert env["command"] == sys.argv
    assert collect_environment(argv=["train.py", "seed=3"])["command"] == ["train.py", "seed=3"]
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        models = re.findall(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), flags=re.MULTILINE)
        if models:
            assert env["cpu"] == env["device_name"] == models[0].strip()
    assert env["platform"] == platform.platform()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_fields_on_a_gpu() -> None:
    env = collect_environment(device="cuda:0")
    assert env["cuda"] == torch.version.cuda
    assert env["cudnn"] == torch.backends.cudnn.version()
    assert env["device_name"] == torch.cuda.get_device_name(0)


def test_the_dict_is_plain_json() -> None:
    env = collect_environment(precision="32-true")
    assert json.loads(json.dumps(env)) == env


@needs_git
def test_git_commit_is_the_checkout_s_head() -> None:
    state = collect_environment()["git"]
    assert state["commit"] == _git(ROOT, "rev-parse", "HEAD")
    tracked_changes = _git(ROOT, "status", "--porcelain", "--untracked-files=no")
    assert state["dirty"] is bool(tracked_changes)
    assert state["describe"].endswith("-dirty") is bool(tracked_changes)


@needs_git
def test_git_state_of_a_fresh_repository_follows_commits_and_edits(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    _git(tmp_path, "add", "a.txt")
    _git(tmp_path, "commit", "-q", "-m", "first")
    head = _git(tmp_path, "rev-parse", "HEAD")
    clean = git_state(tmp_path)
    assert clean["commit"] == head
    assert clean["dirty"] is False
    assert len(clean["describe"]) >= 7  # no tags: an abbreviated hash
    assert head.startswith(clean["describe"])
    (tmp_path / "a.txt").write_text("two\n")  # a tracked file changed: dirty
    assert git_state(tmp_path) == {
        "commit": head,
        "describe": f"{clean['describe']}-dirty",
        "dirty": True,
    }


def test_git_state_is_unknown_outside_a_checkout(tmp_path: Path) -> None:
    # a copy of the package without its repository (as a non-editable install would be)
    shutil.copytree(ROOT / "vae", tmp_path / "vae", ignore=shutil.ignore_patterns("__pycache__"))
    unknown = {"commit": "unknown", "describe": "unknown", "dirty": "unknown"}
    assert git_state(tmp_path) == unknown
    assert collect_environment(repo_dir=tmp_path)["git"] == unknown


@needs_git
def test_git_state_is_unknown_without_git(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", "")  # no git executable to be found: no failure either
    assert git_state(ROOT)["commit"] == "unknown"


def test_summary_line_and_markdown() -> None:
    env = collect_environment(precision="32-true")
    line = format_environment(env)
    assert "\n" not in line
    for part in (f"torch {torch.__version__}", f"lightning {lightning.__version__}", "32-true"):
        assert part in line
    assert f"{env['threads']} threads" in line
    assert line.startswith(f"vae {env['git']['describe']} · Python {env['python']}")
    table = environment_markdown(env)
    assert table.splitlines()[0] == line
    assert f"| torch | `{torch.__version__}` |" in table.splitlines()


def test_a_run_records_its_environment(make_cfg, mnist_root: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vae.train.run import train

    cfg = make_cfg("callbacks=none", f"data.root={mnist_root}")
    train(cfg)
    out = Path(cfg.paths.output_dir)
    env = json.loads((out / "metrics.json").read_text())["environment"]
    assert env["torch"] == torch.__version__
    assert env["device"] == "cpu"
    assert env["precision"] == str(cfg.trainer.precision) == "32-true"
    assert env["threads"] == torch.get_num_threads()
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0})
    events.Reload()
    tags = [t for t in events.Tags()["tensors"] if t.startswith("environment")]
    assert tags, f"no environment text in {events.Tags()['tensors']}"
    text = events.Tensors(tags[0])[0].tensor_proto.string_val[0].decode()
    assert format_environment(env) in text
