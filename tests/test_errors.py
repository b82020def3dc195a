"""A catalogue of bad inputs (docs/errors.md): what the user sees, and that nothing is lost.

Every case goes through the user-facing path: ``vae.train.run.run_cli(cfg)`` in-process (a
``UserError`` becomes ``SystemExit(2)`` and one ``error: ...`` line on stderr), and a few real
``python train.py ...`` subprocesses prove the whole command line prints one line and no traceback.
The subprocesses are started when this module's first test runs and collected by the CLI tests, so
their ~6 s of imports overlap with the in-process tests.

The function-level data errors (``read_idx``, ``load_split``, ``locate_files``) are tested in
tests/test_data.py; here the same failures are reached through ``run_cli``. Files are built in
``tmp_path``: copies of ``$VAE_DATA_DIR/MNIST/raw/*`` (the shared originals are only read) or small
synthetic IDX files with their checksums patched in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import gzip
import hashlib
import io
import json
import os
import re
import runpy
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import pytest
import torch
from conftest import TINY, compose_config
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from idx_helpers import (
    NAMES,
    fake_mnist,
    file_is_a_directory,
    file_symlink_loop,
    raw_is_a_file,
    write_fake_raw,
)
from omegaconf import DictConfig, OmegaConf

from vae.core.config import ModelConfig
from vae.errors import DiskFullError
from vae.kl import discrete_kl
from vae.train import data
from vae.train.checkpointing import AtomicCheckpointIO, check_resumable, remove_stale_temp_files
from vae.train.config import ConfigError
from vae.train.diskspace import file_system, format_bytes
from vae.train.guards import NonFiniteGuard
from vae.train.module import VAEModule
from vae.train.run import build_module, run_cli, train

REPO = Path(__file__).resolve().parents[1]
TRAINER_OPTIONS = sorted(p.stem for p in (REPO / "configs" / "trainer").glob("*.yaml"))
#: the absurd learning rate of the non-finite case: the loss is inf/NaN from the second step on
ABSURD_LR = "1e30"
#: what a message that tells the user how to fix a data file contains (one of them)
DATA_FIX_WORDS = ("data.download=true", "download it again", "replace it")


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models on a busy 2-core machine: one thread is ~5x faster than two fighting over it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def error_line(cfg: DictConfig, capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``run_cli(cfg)``, expect exit 2 and exactly one stderr line ``error: ...``; return it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        run_cli(cfg)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


def snapshot(directory: Path) -> dict[str, str]:
    """SHA-256 of every file under ``directory``, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def tiny(*overrides: str, output_dir: Path) -> DictConfig:
    return compose_config([*TINY, *overrides], output_dir=output_dir)


def first_nonfinite_step(cfg: DictConfig) -> tuple[int, list[str]] | None:
    """Reproduce ``cfg``'s training by hand (seed, init, data order, Adam) without Lightning.

    Returns the first step whose recon / kl / objective is not finite, and the bad terms. ``cfg``
    must use ``optim.scheduler=none`` (the cosine schedule needs a Trainer).
    """
    assert cfg.optim.scheduler == "none"
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = instantiate(cfg.data)
    module = build_module(cfg, dm.dims)
    dm.setup("fit")
    if cfg.model.init_output_bias:
        module.vae.init_output_bias(dm.pixel_mean())
    optimizer = module.configure_optimizers()
    for step, batch in enumerate(dm.train_dataloader()):
        if step >= cfg.trainer.limit_train_batches:
            return None
        t = module.elbo_terms(dm.to_float(batch[0], train=True))
        objective = t["recon"].mean() + module.kl_objective(t["mu"], t["logvar"])
        # batch means: a NaN/inf image makes its term's mean non-finite too
        bad = [k for k in ("recon", "kl") if not torch.isfinite(t[k].mean())]
        if bad or not torch.isfinite(objective):
            return step, bad or ["objective"]
        optimizer.zero_grad()
        objective.backward()
        optimizer.step()
    return None


# ---------------------------------------------------------------------------------------------
# bad config values (checked before anything is built: no data needed)


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("model.latent_dim=0", "error: model.latent_dim=0: expected an integer ≥ 1"),
        ("model.latent_dim=-3", "error: model.latent_dim=-3: expected an integer ≥ 1"),
        ("model.latent_dim=abc", "error: model.latent_dim='abc': expected an integer ≥ 1"),
        ("model.latent_dim=2.5", "error: model.latent_dim=2.5: expected an integer ≥ 1"),
        ("data.batch_size=0", "error: data.batch_size=0: expected an integer ≥ 1"),
        ("optim.lr=-1", "error: optim.lr=-1: expected a finite number > 0"),
        (
            "model.likelihood=poisson",
            "error: model.likelihood='poisson': expected one of bernoulli, "
            "continuous_bernoulli, gaussian",
        ),
        ("model.norm=batch", "error: model.norm='batch': expected one of none, layer"),
        (
            "data.binarize=yes",
            "error: data.binarize='yes': expected one of none, dynamic, static",
        ),
    ],
)
def test_bad_config_value_is_one_line(
    override: str, line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert error_line(tiny(override, output_dir=tmp_path / "run"), capsys) == line
    assert not (tmp_path / "run").exists()  # rejected before the run directory is made


def test_bad_trainer_argument_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    sums = write_fake_raw(tmp_path / "data" / "MNIST" / "raw", fake_mnist(n_train=300, n_test=100))
    monkeypatch.setitem(data.SHA256, "mnist", sums)  # valid data: only the Trainer is wrong
    cfg = tiny("trainer.devices=0", f"data.root={tmp_path}/data", output_dir=tmp_path / "run")
    assert "devices=0" in error_line(cfg, capsys)


# ---------------------------------------------------------------------------------------------
# the data: missing, corrupt, inconsistent files


def _copy_real(mnist_root: Path, root: Path) -> Path:
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in NAMES:
        shutil.copyfile(mnist_root / "MNIST" / "raw" / f"{name}.gz", raw / f"{name}.gz")
    return raw


def _one_file_missing(raw: Path) -> Path:
    (raw / f"{NAMES[3]}.gz").unlink()
    return raw / NAMES[3]


def _wrong_checksum(raw: Path) -> Path:
    path = raw / f"{NAMES[1]}.gz"  # one label changed: a valid file, not the published one
    payload = bytearray(gzip.decompress(path.read_bytes()))
    payload[100] = (payload[100] + 1) % 10
    path.write_bytes(gzip.compress(bytes(payload), mtime=0))
    return path


def _truncated_gzip(raw: Path) -> Path:
    path = raw / f"{NAMES[0]}.gz"
    path.write_bytes(path.read_bytes()[:1_000_000])
    return path


def _corrupt_gzip(raw: Path) -> Path:
    path = raw / f"{NAMES[0]}.gz"
    blob = bytearray(path.read_bytes())
    blob[5000:5100] = bytes(100)  # zeros in the middle of the deflate stream
    path.write_bytes(bytes(blob))
    return path


#: case → (files: "real" copies, how to break them, start of the error line). A wrong IDX header
#: or count cannot pass the SHA-256 check, so those cases are the checksum case here.
DATA_CASES = {
    "one_file_missing": ("real", _one_file_missing, "error: MNIST files missing: "),
    "wrong_checksum": ("real", _wrong_checksum, "SHA-256 of the IDX payload is "),
    "truncated_gzip": ("real", _truncated_gzip, "the gzip stream ends early"),
    "corrupt_gzip": ("real", _corrupt_gzip, "cannot decompress"),
}


def _broken_data(
    case: str, tmp_path: Path, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> tuple[DictConfig, Path, str]:
    _, breaker, expected = DATA_CASES[case]
    root = tmp_path / "data"
    path = breaker(_copy_real(request.getfixturevalue("mnist_root"), root))
    cfg = tiny(f"data.root={root}", output_dir=tmp_path / "run")
    return cfg, path, expected


def test_missing_data_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tiny(f"data.root={tmp_path}/nowhere", output_dir=tmp_path / "run")
    line = error_line(cfg, capsys)
    assert line.startswith("error: MNIST files missing: train-images-idx3-ubyte[.gz], ")
    assert str(tmp_path / "nowhere" / "MNIST" / "raw") in line
    assert "data.download=true" in line
    assert "data.root" in line
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("case", DATA_CASES)
def test_bad_data_file_is_one_line_naming_the_file(
    case: str,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cfg, path, expected = _broken_data(case, tmp_path, request, monkeypatch)
    before = snapshot(path.parent)
    line = error_line(cfg, capsys)
    assert expected in line
    # the file is named (a missing one by its name: it may be .gz or not)
    assert (path.name if case == "one_file_missing" else str(path)) in line
    assert any(word in line for word in DATA_FIX_WORDS), line  # and how to fix it
    assert snapshot(path.parent) == before  # the broken files are reported, never deleted


@pytest.mark.parametrize("breaker", [raw_is_a_file, file_is_a_directory, file_symlink_loop])
def test_a_data_path_of_the_wrong_kind_is_one_line_naming_it(
    breaker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "data"
    raw = root / "MNIST" / "raw"
    write_fake_raw(raw, fake_mnist(n_train=20, n_test=10))  # found before the checksums matter
    path, words = breaker(raw)
    line = error_line(tiny(f"data.root={root}", output_dir=tmp_path / "run"), capsys)
    assert line.startswith(f"error: {path}: {words}"), line
    assert line.endswith(
        "or set data.root (default: the VAE_DATA_DIR environment variable, "
        "else ./data) to a directory holding MNIST/raw/."
    ), line
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads directories of mode 000"
)
def test_an_unreadable_raw_dir_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    raw = tmp_path / "data" / "MNIST" / "raw"
    write_fake_raw(raw, fake_mnist(n_train=20, n_test=10))
    raw.chmod(0)
    try:
        line = error_line(
            tiny(f"data.root={raw.parent.parent}", output_dir=tmp_path / "run"), capsys
        )
    finally:
        raw.chmod(0o755)
    assert line.startswith(f"error: {raw}: a directory you may not read (mode 000, "), line


# ---------------------------------------------------------------------------------------------
# the output directory


def test_output_dir_under_a_regular_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A path under a regular file cannot be created, even by root (chmod does not stop root)."""
    blocker = tmp_path / "afile"
    blocker.write_text("keep me\n")
    out = blocker / "sub"
    line = error_line(tiny(output_dir=out), capsys)
    assert line == (
        f"error: paths.output_dir={str(out)!r}: not writable (Not a directory); "
        "choose another location with paths.log_dir=<dir>"
    )
    assert blocker.read_text() == "keep me\n"


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes to read-only directories"
)
def test_read_only_output_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        line = error_line(tiny(output_dir=locked / "run"), capsys)
    finally:
        locked.chmod(0o700)
    assert line.startswith(f"error: paths.output_dir={str(locked / 'run')!r}: not writable")
    assert "(Permission denied)" in line
    assert list(locked.iterdir()) == []


# ---------------------------------------------------------------------------------------------
# a full disk: a checkpoint, TensorBoard, through run_cli; on a real small file system where
# this machine lets the tests mount one (root), else with the failing write patched in


def _serialised_size(checkpoint: dict) -> int:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return len(buffer.getvalue())


def _df(path: Path) -> tuple[str, str, int]:
    """(mount point, type, bytes available) of ``path``'s file system, as coreutils' df sees it."""
    out = subprocess.run(
        ["df", "--block-size=1", "--output=target,fstype,avail", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()[1]
    target, fstype, avail = out.rsplit(maxsplit=2)
    return target, fstype, int(avail)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator:
    """``small_fs("1m")``: a fresh tmpfs of that size mounted under tmp_path (skips where the
    tests cannot mount one: not root, or no ``mount``); unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        point = tmp_path / f"fs-{size}"
        point.mkdir()
        if shutil.which("mount") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
            pytest.skip("mounting a small file system needs root and mount(8)")
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", str(point)], check=False)


def test_format_bytes_worked_examples() -> None:
    assert [format_bytes(n) for n in (0, 999, 16_214, 999_949, 12_913_664, 3_100_000_000)] == [
        "0 bytes",
        "999 bytes",
        "16.2 kB",
        "999.9 kB",
        "12.9 MB",
        "3.1 GB",
    ]


def test_file_system_is_the_one_df_reports(tmp_path: Path) -> None:
    mount, fstype, _ = _df(tmp_path)
    assert file_system(tmp_path / "not" / "yet" / "there") == (Path(mount), fstype)


FREE = r"has [0-9.]+ (bytes|kB|MB|GB|TB) free"


@pytest.mark.parametrize("fails_at", ["write", "fsync"])
def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_old_one_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails_at: str
) -> None:
    directory = tmp_path / "checkpoints"
    target = directory / "last.ckpt"
    saver = AtomicCheckpointIO()
    saver.save_checkpoint({"w": torch.ones(10)}, target)
    before = target.read_bytes()
    big = {"w": torch.zeros(300_000)}
    # the temp file's writes fail as on a full disk: after 4 kB (write) or when flushed (fsync)
    temp_fds: set[int] = set()
    real_mkstemp, real_write, real_fsync = tempfile.mkstemp, os.write, os.fsync
    enospc = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def mkstemp(*args, **kwargs):
        fd, name = real_mkstemp(*args, **kwargs)
        temp_fds.add(fd)
        return fd, name

    def write(fd: int, data) -> int:
        if fd in temp_fds and fails_at == "write" and os.fstat(fd).st_size >= 4096:
            raise enospc
        return real_write(fd, data[:4096] if fd in temp_fds else data)

    def fsync(fd: int) -> None:
        if fd in temp_fds and fails_at == "fsync":
            raise enospc
        real_fsync(fd)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    monkeypatch.setattr(os, "write", write)
    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(DiskFullError) as err:
        saver.save_checkpoint(big, target)
    monkeypatch.undo()
    mount, fstype, _ = _df(directory)
    size = format_bytes(_serialised_size(big))
    assert re.fullmatch(
        re.escape(
            f"{target}: no space left on device while writing the checkpoint ({size}); the file "
            f"system mounted at {mount} ({fstype}) "
        )
        + FREE
        + re.escape(
            f"; the checkpoints already in {directory} are intact (the partial file was removed); "
        )
        + r"free (at least [0-9.]+ \S+ )?(space )?there, or write the run elsewhere with "
        r"paths\.log_dir=<dir>",
        str(err.value),
    ), str(err.value)
    assert sorted(p.name for p in directory.iterdir()) == ["last.ckpt"]  # no temp file left
    assert target.read_bytes() == before


def test_a_checkpoint_on_a_real_full_file_system(small_fs) -> None:
    fs = small_fs("1m")
    target = fs / "checkpoints" / "last.ckpt"
    saver = AtomicCheckpointIO()
    saver.save_checkpoint({"w": torch.ones(10)}, target)
    before = target.read_bytes()
    big = {"w": torch.zeros(500_000)}  # 2 MB on a 1 MB file system
    with pytest.raises(DiskFullError) as err:
        saver.save_checkpoint(big, target)
    mount, fstype, avail = _df(fs)
    assert (mount, fstype) == (str(fs), "tmpfs")
    needed = _serialised_size(big)
    assert str(err.value) == (
        f"{target}: no space left on device while writing the checkpoint "
        f"({format_bytes(needed)}); the file system mounted at {fs} (tmpfs) has "
        f"{format_bytes(avail)} free; the checkpoints already in {target.parent} are intact (the "
        f"partial file was removed); free at least {format_bytes(needed - avail)} there, or write "
        "the run elsewhere with paths.log_dir=<dir>"
    )
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert target.read_bytes() == before


def test_a_run_whose_checkpoint_fills_the_disk_is_one_line(
    small_fs, mnist_root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the fix: 66 to 105 lines of traceback ending in ``RuntimeError: … unexpected pos``."""
    fs = small_fs("1m")  # room for config.yaml, not for a 12.9 MB checkpoint
    run = fs / "run"
    cfg = tiny("test=false", "~callbacks.visualize", "~logger.tensorboard", output_dir=run)
    line = error_line(cfg, capsys)
    assert re.match(
        re.escape(f"error: {run}/checkpoints/")
        + r"(best-epoch000|last)\.ckpt: no space left on device while writing the checkpoint "
        + r"\([0-9.]+ MB\); "
        + re.escape(f"the file system mounted at {fs} (tmpfs) has "),
        line,
    ), line
    assert list((run / "checkpoints").iterdir()) == []  # no partial file, no temp file


def test_a_full_disk_under_tensorboard_is_one_line(
    tmp_path: Path,
    mnist_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """TensorBoard writes its events from a thread: its error used to print that thread's traceback,
    then Lightning's wrapped ``ValueError: you tried to log … which is currently not supported``."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    def full(self, data: bytes) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(RecordWriter, "write", full)
    # Python's own hook, which prints a thread's traceback to stderr (pytest's would only warn)
    monkeypatch.setattr(threading, "excepthook", threading.__excepthook__)
    run = tmp_path / "run"
    line = error_line(tiny("test=false", "~callbacks.visualize", output_dir=run), capsys)
    mount, fstype, _ = _df(tmp_path)
    assert re.fullmatch(
        re.escape(
            f"error: {run}: no space left on device while writing the run's files (TensorBoard "
            f"events, figures, metrics.json); the file system mounted at {mount} ({fstype}) "
        )
        + FREE
        + re.escape(
            "; the checkpoints already written are intact; free space there, or write the run "
            "elsewhere with paths.log_dir=<dir>"
        ),
        line,
    ), line


def test_a_full_disk_while_metrics_json_is_written_is_one_line_and_keeps_the_old_file(
    tmp_path: Path,
    mnist_root: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Issue 23 §5: the disk fills exactly while ``metrics.json`` is written (ENOSPC from the
    writes to its temporary file), at the end of a resumed run into its own directory: one line,
    the earlier ``metrics.json`` byte-identical, no temporary file left."""
    run = tmp_path / "run"
    train(tiny("test=false", output_dir=run))
    before = (run / "metrics.json").read_bytes()
    write = os.write

    def full_at_metrics(fd: int, data: bytes) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(run / ".metrics.json.")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return write(fd, data)

    monkeypatch.setattr(os, "write", full_at_metrics)
    last = run / "checkpoints" / "last.ckpt"
    line = error_line(tiny("test=false", f"ckpt_path={last}", output_dir=run), capsys)
    mount, fstype, _ = _df(tmp_path)
    assert re.fullmatch(
        re.escape(
            f"error: {run / 'metrics.json'}: no space left on device while writing metrics.json ("
        )
        + r"[0-9.]+ (bytes|kB)\)"
        + re.escape(f"; the file system mounted at {mount} ({fstype}) ")
        + FREE
        + re.escape(f"; {run / 'metrics.json'} is as it was (the partial file was removed); free ")
        + r"(space|at least .+)"
        + re.escape(" there, or write the run elsewhere with paths.log_dir=<dir>"),
        line,
    ), line
    assert (run / "metrics.json").read_bytes() == before
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


# ---------------------------------------------------------------------------------------------
# ckpt_path: missing, not a checkpoint, not of this model (no trained model needed)

HINT = "pass a checkpoint written by train.py, such as logs/train/runs/<run>/checkpoints/last.ckpt"


def _write_bad_checkpoint(kind: str, path: Path) -> None:
    if kind == "text_file":
        path.write_text("hello, not a checkpoint\n")
    elif kind == "empty_file":
        path.write_bytes(b"")
    elif kind == "other_dict":
        torch.save({"weights": torch.zeros(3)}, path)
    elif kind == "a_list":
        torch.save([1, 2, 3], path)
    elif kind == "other_lightning_model":
        torch.save({"state_dict": {}, "hyper_parameters": {"lr": 0.1}}, path)
    elif kind == "directory":
        path.mkdir()


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("missing", "no such file"),
        ("directory", "a directory, not a file"),
        (
            "text_file",
            "not a readable checkpoint (it is not a zip archive): "
            "the file is truncated, corrupt or not written by torch.save",
        ),
        (
            "empty_file",
            "not a readable checkpoint (the file is empty): the file is truncated, "
            "corrupt or not written by torch.save",
        ),
        (
            "other_dict",
            "not a checkpoint of vae.train.module.VAEModule (it holds a dict with keys weights, "
            "no state_dict)",
        ),
        ("a_list", "not a checkpoint of vae.train.module.VAEModule (it holds a list)"),
        (
            "other_lightning_model",
            "not a checkpoint of vae.train.module.VAEModule (a Lightning checkpoint of another model: "
            "its hyper_parameters have no model config)",
        ),
    ],
)
def test_bad_ckpt_path_is_one_line(
    kind: str, problem: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = tmp_path / f"{kind}.ckpt"
    _write_bad_checkpoint(kind, ckpt)
    before = snapshot(tmp_path)
    line = error_line(tiny(f"+ckpt_path={ckpt}", output_dir=tmp_path / "run"), capsys)
    assert line == f"error: ckpt_path={str(ckpt)!r}: {problem}; {HINT}"
    assert snapshot(tmp_path) == before  # nothing written, the file left as it was


def test_a_save_killed_before_its_rename_leaves_a_temp_file_the_next_start_removes(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "checkpoints"
    directory.mkdir()
    code = (
        "import os, signal, sys, torch\n"
        "from vae.train.checkpointing import AtomicCheckpointIO\n"
        "os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # killed mid-save\n"
        "AtomicCheckpointIO().save_checkpoint({'w': torch.zeros(1000)}, sys.argv[1])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(directory / "last.ckpt")], capture_output=True, text=True
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    (leftover,) = directory.iterdir()
    assert re.fullmatch(r"\.last\.ckpt\.[a-z0-9_]{8}\.tmp", leftover.name), leftover.name
    assert leftover.stat().st_size == _serialised_size({"w": torch.zeros(1000)})
    # what is not a leftover of ours stays
    keep = ["last.ckpt", ".last.ckpt.tmp", "notes.tmp", "x.ckpt.abcdefgh.tmp"]
    for name in keep:
        (directory / name).write_text("keep\n")
    (directory / ".best.ckpt.abcdefgh.tmp").mkdir()
    assert remove_stale_temp_files(directory) == [leftover]
    assert sorted(p.name for p in directory.iterdir()) == sorted([*keep, ".best.ckpt.abcdefgh.tmp"])
    assert remove_stale_temp_files(directory) == []
    assert remove_stale_temp_files(tmp_path / "no such dir") == []


# ---------------------------------------------------------------------------------------------
# after a real run: a truncated checkpoint, a different model, a loss that becomes non-finite


@pytest.fixture(scope="module")
def first_run(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    """A tiny real run (8 steps) that wrote checkpoints/last.ckpt into its run directory."""
    run_dir = tmp_path_factory.mktemp("first") / "run"
    cfg = tiny("test=false", "~callbacks.visualize", output_dir=run_dir)
    with contextlib.redirect_stdout(io.StringIO()):
        run_cli(cfg)
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


def test_truncated_real_checkpoint(
    first_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = first_run / "checkpoints" / "last.ckpt"
    before = last.read_bytes()
    cut = tmp_path / "cut.ckpt"
    cut.write_bytes(before[: len(before) // 2])
    line = error_line(tiny(f"+ckpt_path={cut}", output_dir=tmp_path / "run"), capsys)
    assert line == (
        f"error: ckpt_path={str(cut)!r}: not a readable checkpoint (RuntimeError: "
        "PytorchStreamReader failed reading zip archive: failed finding central directory): "
        f"the file is truncated, corrupt or not written by torch.save; {HINT}"
    )
    assert last.read_bytes() == before


def test_resume_with_a_different_latent_dim(
    first_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = first_run / "checkpoints" / "last.ckpt"
    before = snapshot(first_run)
    cfg = tiny(f"+ckpt_path={last}", "model.latent_dim=5", output_dir=first_run)
    assert error_line(cfg, capsys) == (
        f"error: ckpt_path={str(last)!r} was trained with model.latent_dim=2 but the config says "
        "model.latent_dim=5; resume with the same model settings (the run's config.yaml has them)"
    )
    assert snapshot(first_run) == before


def test_check_resumable_refuses_a_different_optimizer_setting(first_run: Path) -> None:
    """Resuming restores the optimizer's state (its lr included): a new optim.lr would not apply."""
    last = first_run / "checkpoints" / "last.ckpt"
    cfg = compose_config(["optim.lr=1e-5"])
    model = OmegaConf.to_container(cfg.model, resolve=True)
    optim = OmegaConf.to_container(cfg.optim, resolve=True)
    trained_lr = torch.load(last, map_location="cpu", weights_only=True)["hyper_parameters"][
        "optim"
    ]["lr"]
    assert trained_lr == compose_config().optim.lr  # the first run used the default
    check_resumable(last, model)  # the network matches
    with pytest.raises(ConfigError) as err:
        check_resumable(last, model, optim)
    assert str(err.value) == (
        f"ckpt_path={str(last)!r} was trained with optim.lr={trained_lr!r} but the config says "
        "optim.lr=1e-05, which a resumed run would not apply (it restores the checkpoint's "
        "optimizer and schedule); resume with the same optim settings (the run's config.yaml "
        "has them), or start a new run"
    )
    check_resumable(last, model, {**optim, "lr": trained_lr})


def test_resume_with_a_different_lr_is_one_line(
    first_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    last = first_run / "checkpoints" / "last.ckpt"
    # max_epochs=1: the checkpoint is at the end of epoch 0, so today nothing is trained (exit 0)
    cfg = tiny(
        f"+ckpt_path={last}",
        "optim.lr=1e-5",
        "test=false",
        "~callbacks.visualize",
        output_dir=tmp_path / "run",
    )
    assert "optim.lr=1e-05" in error_line(cfg, capsys)


NONFINITE = (f"optim.lr={ABSURD_LR}", "optim.scheduler=none", "test=false", "~callbacks.visualize")


@contextlib.contextmanager
def recording_stops() -> Iterator[list[int]]:
    """Patch ``NonFiniteGuard.check`` to record the global step at which it stopped training."""
    stopped_at: list[int] = []
    check = NonFiniteGuard.check

    def recording(self: NonFiniteGuard, trainer: Any, module: VAEModule) -> None:
        try:
            check(self, trainer, module)
        except Exception:
            stopped_at.append(module.global_step)
            raise

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(NonFiniteGuard, "check", recording)
        yield stopped_at


@pytest.fixture(scope="module")
def nonfinite(first_run: Path) -> SimpleNamespace:
    """A second run with an absurd lr into the first run's directory: what it said and left."""
    before = snapshot(first_run)
    err = io.StringIO()
    with (
        recording_stops() as stopped_at,
        contextlib.redirect_stderr(err),
        pytest.raises(SystemExit) as exc,
    ):
        run_cli(tiny(*NONFINITE, output_dir=first_run))
    return SimpleNamespace(
        code=exc.value.code,
        lines=err.getvalue().splitlines(),
        before=before,
        after=snapshot(first_run),
        stopped_at=stopped_at,
    )


def _error_lines(lines: list[str]) -> list[str]:
    return [line for line in lines if line.startswith("error: ")]


def test_nonfinite_loss_stops_with_one_line(nonfinite: SimpleNamespace) -> None:
    assert nonfinite.code == 2
    (line,) = _error_lines(nonfinite.lines)
    assert line == nonfinite.lines[-1]
    assert line.startswith(
        "error: training stopped: the loss became non-finite at step 1 "
        "(term: recon, kl; optim.lr=1e+30); "
    )
    assert line.endswith(". Lower optim.lr or clip gradients (trainer.gradient_clip_val=1.0)")


def test_nonfinite_step_is_the_first_bad_step(nonfinite: SimpleNamespace, tmp_path: Path) -> None:
    (line,) = _error_lines(nonfinite.lines)
    match = re.search(r"non-finite at step (\d+) \(term: ([a-z, ]+);", line)
    step, terms = int(match[1]), match[2].split(", ")
    assert first_nonfinite_step(tiny(*NONFINITE, output_dir=tmp_path)) == (step, terms)
    (stopped_at,) = nonfinite.stopped_at
    assert step <= stopped_at  # the guard reads its record every few steps, not at every step


def test_nonfinite_first_bad_step_later_than_the_first_update(
    mnist_root: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unbounded log-variances blow up a few steps in: the step named is the first bad one, not
    the step at which the guard noticed."""
    # the plain MLP: LayerNorm and the mean-image start keep this lr from blowing up in a few steps
    plain = ("model.norm=none", "model.init_output_bias=false")
    overrides = ("optim.lr=0.1", "model.logvar_bound=1e30", *plain, *NONFINITE[1:])
    with recording_stops() as stopped_at:
        line = error_line(tiny(*overrides, output_dir=tmp_path / "run"), capsys)
    expected = first_nonfinite_step(tiny(*overrides, output_dir=tmp_path / "manual"))
    assert expected is not None
    step, terms = expected
    assert step > 1  # not the first update
    assert step < stopped_at[0]  # reported as the step it happened, not the step it was seen
    assert line.startswith(
        f"error: training stopped: the loss became non-finite at step {step} "
        f"(term: {', '.join(terms)}; optim.lr=0.1); no checkpoint had been written yet."
    )
    assert not list((tmp_path / "run" / "checkpoints").glob("*"))


def test_nonfinite_keeps_the_last_good_checkpoint(
    nonfinite: SimpleNamespace, first_run: Path
) -> None:
    before, after = nonfinite.before, nonfinite.after
    kept = {
        k for k in before if k != "config.yaml"
    }  # config.yaml: a second config.<k>.yaml is written instead
    assert {k: after.get(k) for k in kept} == {k: before[k] for k in kept}
    assert not [k for k in set(after) - set(before) if k.startswith("checkpoints/")]
    assert "checkpoints/last.ckpt" in before
    model = VAEModule.load_from_checkpoint(
        first_run / "checkpoints" / "last.ckpt", map_location="cpu"
    )
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_keeps_config_yaml(nonfinite: SimpleNamespace) -> None:
    assert nonfinite.after["config.yaml"] == nonfinite.before["config.yaml"]


def test_nonfinite_message_points_at_the_kept_checkpoint(
    nonfinite: SimpleNamespace, first_run: Path
) -> None:
    (line,) = _error_lines(nonfinite.lines)
    assert str(first_run / "checkpoints") in line


# ---------------------------------------------------------------------------------------------
# discrete KL inputs (vae.kl.discrete_kl): a ValueError naming the problem


@pytest.mark.parametrize(
    ("p", "q", "message"),
    [
        ([0.5, -0.1, 0.6], [0.3, 0.3, 0.4], "p has negative entries (min -0.1)"),
        ([0.5, 0.5, 0.0], [0.3, -0.3, 1.0], "q has negative entries (min -0.3)"),
        (
            [0.5, 0.4, 0.0],
            [0.3, 0.3, 0.4],
            "p does not sum to 1 along dim=-1: max |sum - 1| = 0.1 exceeds the tolerance "
            "0.00035 for torch.float32",
        ),
        (
            [0.5, 0.5],
            [0.3, 0.3, 0.4],
            "p and q do not broadcast: shapes (2,) and (3,) (torch's broadcasting rules apply)",
        ),
        ([], [], "p is empty (shape (0,))"),
        (torch.zeros(2, 0), torch.zeros(2, 0), "p is empty (shape (2, 0))"),
    ],
)
def test_discrete_kl_bad_inputs(p: object, q: object, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        discrete_kl(torch.as_tensor(p), torch.as_tensor(q))


# ---------------------------------------------------------------------------------------------
# the command line, in real subprocesses (started with this module's first test, in parallel;
# collected here, at the end, so that their imports overlap with the tests above)


def _cli_cases(tmp: Path) -> dict[str, list[str]]:
    return {
        "bad_value": ["model.latent_dim=abc", f"hydra.run.dir={tmp}/bad_value"],
        "no_data": [
            f"data.root={tmp}/nowhere",
            "data.download=false",
            "trainer=cpu",
            f"hydra.run.dir={tmp}/no_data",
        ],
        "unknown_option": ["trainer=tpu", f"hydra.run.dir={tmp}/unknown_option"],
    }


@pytest.fixture(scope="module", autouse=True)
def cli(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimpleNamespace]:
    """``cli.result(name)`` → (returncode, stdout, stderr) of ``python train.py <case>``."""
    tmp = tmp_path_factory.mktemp("cli")
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    procs = {
        name: subprocess.Popen(
            [sys.executable, "train.py", *args],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, args in _cli_cases(tmp).items()
    }
    results: dict[str, tuple[int, str, str]] = {}

    def result(name: str) -> tuple[int, str, str]:
        if name not in results:
            out, err = procs[name].communicate(timeout=180)
            results[name] = (procs[name].returncode, out, err)
        return results[name]

    yield SimpleNamespace(result=result, tmp=tmp)
    for proc in procs.values():
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_cli_bad_value_is_one_line(cli: SimpleNamespace) -> None:
    code, out, err = cli.result("bad_value")
    assert code == 2
    assert err.splitlines() == ["error: model.latent_dim='abc': expected an integer ≥ 1"]
    assert out == ""


def test_cli_missing_data_root_names_the_fix(cli: SimpleNamespace) -> None:
    code, _, err = cli.result("no_data")
    assert code == 2
    assert "Traceback" not in err
    lines = err.splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert errors == [lines[-1]], err
    missing = cli.tmp / "nowhere" / "MNIST" / "raw"
    assert errors[0].startswith("error: MNIST files missing: train-images-idx3-ubyte[.gz], ")
    assert str(missing) in errors[0]
    assert "data.download=true" in errors[0]
    assert "data.root" in errors[0]
    assert not (cli.tmp / "nowhere").exists()  # nothing created where the data was looked for


def test_cli_missing_data_root_is_the_only_line(cli: SimpleNamespace) -> None:
    code, _, err = cli.result("no_data")
    assert code == 2
    assert len(err.splitlines()) == 1, err


def test_cli_unknown_group_option_is_our_one_line(cli: SimpleNamespace) -> None:
    """``trainer=tpu`` used to be Hydra's own multi-line message and exit 1: now our line, exit 2."""
    code, out, err = cli.result("unknown_option")
    assert code == 2
    assert out == ""
    assert err == (
        "error: trainer=tpu: no such option; did you mean trainer=gpu? the trainer options are "
        f"{', '.join(sorted(TRAINER_OPTIONS))}\n"
    )
    assert not (cli.tmp / "unknown_option").exists()


def test_cli_unwritable_log_dir_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``train.py`` run in-process (runpy): it fails before Hydra configures logging."""
    blocker = tmp_path / "afile"
    blocker.write_text("a regular file, not a directory\n")
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", f"paths.log_dir={blocker}/sub"])
    capsys.readouterr()
    try:
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(REPO / "train.py"), run_name="__main__")  # python train.py ...
    finally:
        GlobalHydra.instance().clear()
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert str(blocker) in lines[0]
    assert "log_dir" in lines[0] or "hydra.run.dir" in lines[0]


# ---------------------------------------------------------------------------------------------
# no key silently ignored or changed: checked by the Hydra callback before any directory exists


def _train_py(argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys) -> tuple[int, str]:
    """``python train.py <argv>`` in-process (runpy): its exit status and stderr."""
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py", *argv])
    capsys.readouterr()
    try:  # (conftest's autouse fixture puts the loggers Hydra configures back afterwards)
        with pytest.raises(SystemExit) as exc:
            runpy.run_path(str(REPO / "train.py"), run_name="__main__")
    finally:
        GlobalHydra.instance().clear()
    return exc.value.code, capsys.readouterr().err


MODEL_KEYS = ", ".join(sorted(f.name for f in dataclasses.fields(ModelConfig)))


@pytest.mark.parametrize(
    ("override", "line"),
    [
        (
            "+model.latnet_dim=3",
            "error: model.latnet_dim: no such key; did you mean model.latent_dim? the model keys "
            f"are {MODEL_KEYS}",
        ),
        (
            "+trainer.max_epoch=3",
            "error: trainer.max_epoch: no such key; did you mean trainer.max_epochs? the trainer "
            "keys are ",
        ),
        (
            "+callbacks.visualize.gridsize=3",
            "error: callbacks.visualize.gridsize: no such key; did you mean "
            "callbacks.visualize.grid_size? ",
        ),
        ("+sede=1", "error: sede: no such key; did you mean seed? the top-level keys are "),
        ("paths.log_dir=", "error: paths.log_dir='': expected a non-empty path"),
        (
            "trainer.gradient_clip_val=-1",
            "error: trainer.gradient_clip_val=-1: expected null or a finite number ≥ 0",
        ),
        (
            "trainer.limit_train_batches=0",
            "error: trainer.limit_train_batches=0: expected null (all), an integer ≥ 1 (batches) "
            "or a fraction in (0, 1]",
        ),
        (
            "callbacks.visualize.grid_size=0",
            "error: callbacks.visualize.grid_size=0: expected an integer ≥ 1",
        ),
        (  # was Hydra's InstantiationException, after the run directory was made
            "callbacks.explorer.precision=int8",
            "error: callbacks.explorer.precision='int8': expected one of float16, float32",
        ),
        (
            "ckpt_path=''",
            "error: ckpt_path='': expected null (a new run), last (the run directory's "
            "checkpoints/last.ckpt) or a checkpoint's path",
        ),
        (
            "trainer.precision=16",
            "error: trainer.precision=16: expected one of auto, 64-true, 32-true, 16-mixed, bf16-mixed, "
            "16-true, bf16-true, transformer-engine",
        ),
    ],
)
def test_a_key_that_would_be_ignored_or_changed_is_refused_before_any_directory(
    override: str, line: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    run_dir = tmp_path / "run"
    code, err = _train_py([override, f"hydra.run.dir={run_dir}"], monkeypatch, capsys)
    assert code == 2, err
    assert len(err.splitlines()) == 1, err
    assert err.splitlines()[0].startswith(line), err
    assert not run_dir.exists()  # no stub run directory


def test_a_sweep_with_one_bad_job_starts_none(tmp_path: Path) -> None:
    argv = ["-m", "model.latent_dim=2,0", "trainer.max_epochs=1", f"hydra.sweep.dir={tmp_path}/m"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    done = subprocess.run(
        [sys.executable, "train.py", *argv], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines()[-1] == (
        "error: sweep job 1 of 2 (model.latent_dim=0 trainer.max_epochs=1), so no job was "
        "started: model.latent_dim=0: expected an integer ≥ 1"
    )
    assert "Traceback" not in done.stderr
    assert not list((tmp_path / "m").glob("*/config.yaml"))  # no job ran


def test_fp16_on_cpu_is_refused_not_swapped(tmp_path: Path, capsys) -> None:
    cfg = tiny("trainer.precision=16-mixed", output_dir=tmp_path / "run")
    line = error_line(cfg, capsys)
    assert line == (
        "error: trainer.precision='16-mixed' is not supported on cpu (Lightning would run "
        "bf16-mixed and the run's config would say 16-mixed); choose bf16-mixed or 32-true"
    )


def test_the_run_dir_error_names_hydra_run_dir_when_that_was_typed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("a file\n")
    code, err = _train_py([f"hydra.run.dir={blocker}/run"], monkeypatch, capsys)
    assert code == 2
    assert err.splitlines() == [
        f"error: hydra.run.dir='{blocker}/run': cannot create the run directory there "
        f"({blocker} is not a directory); choose another location with hydra.run.dir=<dir>"
    ]


# ---------------------------------------------------------------------------------------------
# a resume that would change the experiment says so


def test_resume_with_another_split_is_refused(first_run: Path, tmp_path: Path, capsys) -> None:
    last = first_run / "checkpoints" / "last.ckpt"
    cfg = tiny(f"+ckpt_path={last}", "data.val_size=4000", output_dir=tmp_path / "run")
    assert error_line(cfg, capsys) == (
        f"error: ckpt_path={str(last)!r} was trained with data.val_size=5000 but the config "
        "says data.val_size=4000: a different split would put images the model trained on into "
        "validation; resume with the same seed and data settings (the run's config.yaml has "
        "them), or start a new run"
    )
    cfg = tiny(f"+ckpt_path={last}", "seed=3", output_dir=tmp_path / "run")
    assert (
        "was trained with data.seed=0 but the config says data.seed=3 (data.seed follows seed)"
        in (error_line(cfg, capsys))
    )


def test_resume_with_more_epochs_under_a_cosine_schedule_is_refused(
    first_run: Path, tmp_path: Path, capsys
) -> None:
    last = first_run / "checkpoints" / "last.ckpt"
    t_max = torch.load(last, map_location="cpu", weights_only=True)["lr_schedulers"][0]["T_max"]
    assert t_max == 8  # 1 epoch × 8 batches
    cfg = tiny(f"+ckpt_path={last}", "trainer.max_epochs=3", output_dir=tmp_path / "run")
    assert error_line(cfg, capsys) == (
        "error: trainer.max_epochs=3 plans 24 steps, but the checkpoint's cosine schedule ends "
        "at step 8 (the run it continues planned that many): the learning rate would reach 0 "
        "and climb back. Resume with that run's trainer.max_epochs and data.batch_size (its "
        "config.yaml has them), or start a new run"
    )


def test_a_run_stopped_by_max_time_trains_again_when_resumed(tmp_path: Path) -> None:
    """``trainer.max_time`` budgets each invocation (the stopped run's Timer is not restored)."""
    run_dir = tmp_path / "run"
    slow = ("+callbacks.slow._target_=test_reliability.Sleep", "+callbacks.slow.seconds=0.5")
    budget = ("trainer.max_time=00:00:00:02", "trainer.max_epochs=3", "optim.scheduler=none")
    train(compose_config([*TINY, *budget, *slow, "test=false"], output_dir=run_dir))
    first = json.loads((run_dir / "metrics.json").read_text())["global_step"]
    assert 0 < first < 24  # stopped by the clock
    last = run_dir / "checkpoints" / "last.ckpt"
    train(
        compose_config(
            [*TINY, *budget, *slow, "test=false", f"ckpt_path={last}"], output_dir=run_dir
        )
    )
    assert json.loads((run_dir / "metrics.json").read_text())["global_step"] > first


def test_a_resume_with_nothing_left_keeps_the_earlier_metrics(
    first_run: Path, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(first_run, run_dir)
    earlier = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert any(k.startswith("val/") for k in earlier)
    last = run_dir / "checkpoints" / "last.ckpt"
    with contextlib.redirect_stdout(io.StringIO()):
        run_cli(tiny(f"+ckpt_path={last}", "~callbacks.visualize", output_dir=run_dir))
    merged = json.loads((run_dir / "metrics.json").read_text())
    assert {k: merged["metrics"][k] for k in earlier if k.startswith("val/")} == {
        k: v for k, v in earlier.items() if k.startswith("val/")
    }
    assert "test/loss" in merged["metrics"]
    assert merged["resumed_from"] == str(last)
