"""The one file writer (vae/train/files.py): nothing we write follows a planted link, a failed or
cut write leaves the old file, a full disk is one line; and every file a run writes goes through it.

The explorer's real-subprocess test (a link planted at the temporary name the page used to be
written to, ``.explorer.html.tmp``) is in tests/test_explore.py, beside the other CLI tests.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from pathlib import Path

import pytest

from vae.errors import ConfigError, DiskFullError
from vae.train import files
from vae.train.files import append_line, atomic_file, write_atomic
from vae.train.run import run_lock

VICTIM = b"the victim's content\n"


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the folder we write into, which a planted link points at."""
    path = tmp_path / "elsewhere" / "victim.txt"
    path.parent.mkdir()
    path.write_bytes(VICTIM)
    return path


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if files.TEMP_FILE.fullmatch(p.name))


def test_a_link_at_the_destination_is_replaced_and_its_target_untouched(
    tmp_path: Path, victim: Path
) -> None:
    out = tmp_path / "out" / "metrics.json"
    out.parent.mkdir()
    out.symlink_to(victim)
    write_atomic(out, '{"a": 1}\n')
    assert victim.read_bytes() == VICTIM
    assert not out.is_symlink()
    assert out.read_text() == '{"a": 1}\n'
    assert _temp_files(out.parent) == []


def test_a_link_planted_at_the_next_temporary_name_is_skipped(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The attacker guesses the temporary name: mkstemp's O_EXCL refuses it and draws another."""
    names = iter(["guessed1", "fresh002"])
    monkeypatch.setattr(tempfile, "_get_candidate_names", lambda: names)
    out = tmp_path / "page.html"
    planted = tmp_path / ".page.html.guessed1.tmp"
    planted.symlink_to(victim)
    write_atomic(out, "<html></html>")
    assert victim.read_bytes() == VICTIM
    assert planted.readlink() == victim  # left as it was
    assert out.read_text() == "<html></html>"
    assert not (tmp_path / ".page.html.fresh002.tmp").exists()  # renamed onto page.html


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    out = tmp_path / "sprite.png"
    out.write_bytes(b"old")

    def encoder_fails() -> None:
        with atomic_file(out) as f:
            f.write(b"half a PNG")
            raise RuntimeError("encoder failed")

    with pytest.raises(RuntimeError, match="encoder failed"):
        encoder_fails()
    assert out.read_bytes() == b"old"
    assert _temp_files(tmp_path) == []


def test_a_full_disk_is_one_disk_full_error_and_leaves_the_old_file(tmp_path: Path) -> None:
    out = tmp_path / "metrics.json"
    out.write_text("{}")

    def disk_fills() -> None:
        with atomic_file(out, needed=1234) as f:
            f.write(b"{")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(DiskFullError) as err:
        disk_fills()
    message = str(err.value)
    assert message.startswith(f"{out}: no space left on device while writing metrics.json (1.2 kB)")
    assert f"{out} is as it was (the partial file was removed)" in message
    assert "\n" not in message
    assert out.read_text() == "{}"
    assert _temp_files(tmp_path) == []


def test_written_files_get_the_mode_open_would_give_them(tmp_path: Path) -> None:
    mask = os.umask(0o022)
    os.umask(mask)
    out = write_atomic(tmp_path / "config.yaml", "a: 1\n")
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600


def test_append_line_adds_a_line_and_replaces_a_planted_link(tmp_path: Path, victim: Path) -> None:
    log = tmp_path / "epochs.jsonl"
    append_line(log, json.dumps({"epoch": 0}))
    append_line(log, json.dumps({"epoch": 1}))
    assert [json.loads(x)["epoch"] for x in log.read_text().splitlines()] == [0, 1]
    other = tmp_path / "other.jsonl"
    other.symlink_to(victim)
    append_line(other, "x")
    assert victim.read_bytes() == VICTIM
    assert other.read_text() == "x\n"  # the victim's content is not copied in either


def test_the_run_lock_refuses_a_planted_link(tmp_path: Path, victim: Path) -> None:
    (tmp_path / ".lock").symlink_to(victim)
    refused = r"cannot open its lock file \.lock \(a symbolic link\)"
    with pytest.raises(ConfigError, match=refused), run_lock(tmp_path):
        pass
    assert victim.read_bytes() == VICTIM


def test_a_run_writes_no_file_through_planted_links(make_cfg, tmp_path: Path, victim: Path) -> None:
    """A link at every name a run writes (config, metrics, figures, the page, the epoch log): each
    is replaced by the run's file, and the victim is untouched. (At ``last.ckpt`` Lightning finds
    a file and saves ``last-v1.ckpt`` instead: the victim is untouched there too.)"""
    from vae.train.run import train
    from vae.viz.figures import FIGURES

    pytest.importorskip("torchvision")
    if not os.environ.get("VAE_DATA_DIR"):
        pytest.skip("real MNIST not available: set VAE_DATA_DIR")
    run = tmp_path / "run"
    names = [
        "config.yaml",
        "metrics.json",
        "explorer.html",
        "epochs.jsonl",
        *(f"{f}.png" for f in FIGURES),
    ]
    for name in [*names, "checkpoints/last.ckpt"]:
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).symlink_to(victim)
    train(make_cfg(f"callbacks.epoch_timer.path={run / 'epochs.jsonl'}", "test=true"))
    assert victim.read_bytes() == VICTIM
    for name in names:
        assert not (run / name).is_symlink(), name
        assert (run / name).is_file(), name


def test_the_projector_files_are_written_through_the_writer(tmp_path: Path, victim: Path) -> None:
    import torch

    from vae.viz.figures import write_projector

    sub = tmp_path / "00000" / "points"
    sub.mkdir(parents=True)
    names = ["tensors.tsv", "metadata.tsv", "sprite.png"]
    for name in names:
        (sub / name).symlink_to(victim)
    (tmp_path / "projector_config.pbtxt").symlink_to(victim)
    images = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    write_projector(tmp_path, torch.ones(4, 3), list("abcd"), images, tag="points")
    assert victim.read_bytes() == VICTIM
    for path in [*(sub / n for n in names), tmp_path / "projector_config.pbtxt"]:
        assert not path.is_symlink(), path
        assert path.is_file(), path
    assert (sub / "metadata.tsv").read_text() == "a\nb\nc\nd\n"
