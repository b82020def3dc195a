"""vae.train.data: IDX reading and verification, downloads (faked), the DataModule, on real MNIST too.

Nothing here touches the network: downloads go through a monkeypatched ``vae.train.idx._fetch``.
Real MNIST comes from ``$VAE_DATA_DIR`` (skipped when unset) and is loaded once per module; it is
checked against an independent numpy parser of the raw files (``idx_helpers.parse_idx_numpy``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import re
import urllib.error
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import lightning as L
import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from idx_helpers import (
    NAMES,
    broken_symlink,
    fake_mnist,
    file_is_a_directory,
    file_symlink_loop,
    idx_bytes,
    parse_idx_numpy,
    raw_is_a_file,
    raw_symlink_loop,
    root_is_a_file,
    sha256,
    write_fake_raw,
    write_file,
)
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, RandomSampler

from vae.core.seeding import derive_seed
from vae.train import data, idx
from vae.train.config import ConfigError, UserError
from vae.train.data import (
    DataHints,
    DatasetError,
    EpochShuffleSampler,
    FashionMNISTDataModule,
    IndexedTensorDataset,
    MNISTDataModule,
    collate_batch,
    load_split,
    locate_files,
    read_idx,
    to_float,
)

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


# ---------------------------------------------------------------------------------------------
# helpers


@pytest.fixture
def fake_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A data root with small random MNIST-shaped files, their checksums patched in."""
    arrays = fake_mnist(n_train=300, n_test=100)
    raw = tmp_path / "MNIST" / "raw"
    sums = write_fake_raw(raw, arrays)
    monkeypatch.setitem(data.SHA256, "mnist", sums)
    return SimpleNamespace(root=tmp_path, raw=raw, arrays=arrays, sums=sums)


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


def fake_trainer(*, training: bool, device: str = "cpu") -> SimpleNamespace:
    return SimpleNamespace(
        training=training, strategy=SimpleNamespace(root_device=torch.device(device))
    )


# ---------------------------------------------------------------------------------------------
# the IDX reader


@pytest.mark.parametrize("gz", [True, False])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)
    payload = idx_bytes(images)
    path = write_file(tmp_path / "x", payload, gz=gz)  # no .gz suffix: gzip found by its magic
    out = read_idx(path, sha256=sha256(payload))
    assert out.dtype == torch.uint8
    assert out.shape == (7, 28, 28)
    np.testing.assert_array_equal(out.numpy(), images)
    labels = np.arange(10, dtype=np.uint8)
    label_path = write_file(tmp_path / "y.gz", idx_bytes(labels), gz=gz)
    out = read_idx(label_path, sha256=sha256(idx_bytes(labels)))
    np.testing.assert_array_equal(out.numpy(), labels)


def test_read_idx_truncated_gzip(tmp_path: Path) -> None:
    good = gzip.compress(idx_bytes(np.arange(2000, dtype=np.uint8).reshape(-1, 1) % 251), mtime=0)
    path = tmp_path / "cut.gz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match="truncated") as err:
        read_idx(path, sha256="0" * 64)
    assert str(path) in str(err.value)


def test_read_idx_checksum_mismatch(tmp_path: Path) -> None:
    payload = idx_bytes(np.full((2, 28, 28), 7, np.uint8))
    path = write_file(tmp_path / "x.gz", payload, gz=True)
    wrong = "0" * 64
    with pytest.raises(DatasetError) as err:
        read_idx(path, sha256=wrong)
    msg = str(err.value)
    assert str(path) in msg
    assert f"is {sha256(payload)}, expected {wrong}" in msg


def test_checksum_mismatch_through_datamodule(fake_root: SimpleNamespace) -> None:
    data.SHA256["mnist"][NAMES[0]] = "f" * 64  # the fixture's monkeypatch restores the dict
    dm = MNISTDataModule(root=fake_root.root, download=False, val_size=10)
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz: SHA-256") as err:
        dm.setup("fit")
    assert fake_root.sums[NAMES[0]] in str(err.value)
    assert isinstance(err.value, UserError)  # the CLI prints it as one line


def test_uncompressed_files_are_read_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arrays = fake_mnist(n_train=40, n_test=10)
    sums = write_fake_raw(tmp_path / "MNIST" / "raw", arrays, gz=False)
    monkeypatch.setitem(data.SHA256, "mnist", sums)
    images, labels = load_split("mnist", tmp_path, train=True)
    np.testing.assert_array_equal(images.squeeze(1).numpy(), arrays[NAMES[0]])
    np.testing.assert_array_equal(labels.numpy(), arrays[NAMES[1]])


# ---------------------------------------------------------------------------------------------
# missing files and downloads (the network is never touched: _fetch is replaced)


def test_missing_files_without_download(tmp_path: Path) -> None:
    dm = MNISTDataModule(root=tmp_path / "nowhere", download=False)
    with pytest.raises(DatasetError) as err:
        dm.prepare_data()
    msg = str(err.value)
    for name in NAMES:
        assert f"{name}[.gz]" in msg
    assert str((tmp_path / "nowhere" / "MNIST" / "raw").resolve()) in msg
    assert "data.download is false" in msg
    assert "data.download=true" in msg  # fix 1
    assert "VAE_DATA_DIR" in msg  # fix 2
    assert "data.root" in msg
    assert not (tmp_path / "nowhere").exists()  # nothing created


def test_fashion_missing_lists_both_places(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(idx, "FASHION_SYSTEM_DIR", tmp_path / "system")
    with pytest.raises(DatasetError) as err:
        locate_files("fashion_mnist", tmp_path, download=False)
    msg = str(err.value)
    assert str(tmp_path / "FashionMNIST" / "raw") in msg
    assert str(tmp_path / "system") in msg
    assert "Fashion-MNIST files missing" in msg


def test_fashion_prefers_the_data_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = tmp_path / "system"
    write_fake_raw(system, fake_mnist(n_train=5, n_test=5, seed=1))
    ours = tmp_path / "root" / "FashionMNIST" / "raw"
    sums = write_fake_raw(ours, fake_mnist(n_train=30, n_test=10, seed=2), gz=False)
    monkeypatch.setattr(idx, "FASHION_SYSTEM_DIR", system)
    monkeypatch.setitem(data.SHA256, "fashion_mnist", sums)
    paths = locate_files("fashion_mnist", tmp_path / "root", download=False)
    assert paths == {name: ours / name for name in NAMES}
    (ours / NAMES[3]).unlink()  # a file missing from the root is taken from the system copy
    assert locate_files("fashion_mnist", tmp_path / "root", download=False)[NAMES[3]] == (
        system / f"{NAMES[3]}.gz"
    )


#: the fix at the end of every path message, as train.py spells it
ROOT_FIX = (
    "set data.root (default: the VAE_DATA_DIR environment variable, else ./data) to a directory "
    "holding MNIST/raw/."
)


@pytest.mark.parametrize(
    "breaker",
    [
        raw_is_a_file,
        root_is_a_file,
        file_is_a_directory,
        file_symlink_loop,
        raw_symlink_loop,
        broken_symlink,
    ],
)
def test_a_data_path_that_is_not_what_it_should_be_is_named(fake_root: SimpleNamespace, breaker):
    path, words = breaker(fake_root.raw)
    with pytest.raises(DatasetError) as err:
        locate_files("mnist", fake_root.root, download=True)  # nothing to download: it is there
    msg = str(err.value)
    assert msg.startswith(f"{path}: {words}"), msg
    assert msg.endswith(ROOT_FIX), msg
    with pytest.raises(DatasetError, match="^" + re.escape(f"{path}: {words}")):
        MNISTDataModule(root=fake_root.root, download=False).setup("test")  # the same through setup


@pytest.mark.parametrize("what", ["raw", "file"])
def test_an_unreadable_data_path_is_named_via_os_access(
    fake_root: SimpleNamespace, monkeypatch: pytest.MonkeyPatch, what: str
) -> None:
    """The permission check is ``os.access`` (root reads mode 000 anyway): here it says no."""
    path = fake_root.raw if what == "raw" else fake_root.raw / f"{NAMES[0]}.gz"
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: Path(p) != path and real_access(p, mode))
    with pytest.raises(DatasetError) as err:
        locate_files("mnist", fake_root.root)
    st = path.stat()
    kind, chmod = ("directory", "a+rx") if what == "raw" else ("file", "a+r")
    assert str(err.value) == (
        f"{path}: a {kind} you may not read (mode {st.st_mode & 0o777:03o}, owner uid "
        f"{st.st_uid}); make it readable (chmod {chmod}), or {ROOT_FIX}"
    )


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files of mode 000"
)
@pytest.mark.parametrize("what", ["raw", "file"])
def test_a_mode_000_data_path_is_named(fake_root: SimpleNamespace, what: str) -> None:
    path = fake_root.raw if what == "raw" else fake_root.raw / f"{NAMES[0]}.gz"
    path.chmod(0)
    try:
        with pytest.raises(DatasetError, match="^" + re.escape(f"{path}: a ")) as err:
            locate_files("mnist", fake_root.root)
    finally:
        path.chmod(0o755)
    assert "you may not read (mode 000" in str(err.value)


def test_read_idx_of_a_directory_names_it(tmp_path: Path) -> None:
    with pytest.raises(DatasetError) as err:
        read_idx(tmp_path, sha256="0" * 64)
    assert str(err.value).startswith(f"{tmp_path}: a directory, not a file; ")


def test_data_errors_spell_the_fix_of_the_calling_command(fake_root: SimpleNamespace) -> None:
    hints = DataHints(
        not_fetched="NOT-FETCHED",
        fetch="FETCH {mirrors}",
        refetch="REFETCH",
        root="ROOT {raw}",
        folder="FOLDER",
    )
    with pytest.raises(DatasetError) as err:
        locate_files("mnist", fake_root.root / "nowhere", hints=hints)
    msg = str(err.value)
    mirrors = ", ".join(idx.MNIST.mirrors)
    assert f"(NOT-FETCHED.) Fix it either way: (1) FETCH {mirrors}; or (2) put the four" in msg
    assert msg.endswith(", or ROOT MNIST/raw/.")
    path = fake_root.raw / f"{NAMES[1]}.gz"
    path.write_bytes(path.read_bytes()[:20])  # a truncated gzip stream
    dm = MNISTDataModule(root=fake_root.root, download=False)
    dm.hints = hints
    with pytest.raises(DatasetError, match=r"the gzip stream ends early .*; REFETCH\.$"):
        dm.setup("fit")
    assert "data." not in msg  # nothing of train.py's spelling is left


def serve(files: dict[str, bytes], calls: list[str]):
    """A fake ``_fetch`` that writes ``files[filename]`` like a download would."""

    def fetch(url: str, directory: Path, filename: str) -> None:
        calls.append(url)
        Path(directory, filename).write_bytes(files[filename])

    return fetch


def test_download_fetches_verifies_and_renames(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = fake_mnist(n_train=120, n_test=30)
    payloads = {name: idx_bytes(a) for name, a in arrays.items()}
    monkeypatch.setitem(data.SHA256, "mnist", {n: sha256(p) for n, p in payloads.items()})
    served = {f"{n}.gz": gzip.compress(p, mtime=0) for n, p in payloads.items()}
    calls: list[str] = []
    monkeypatch.setattr(idx, "_fetch", serve(served, calls))

    dm = MNISTDataModule(root=tmp_path, val_size=20)
    dm.prepare_data()
    raw = tmp_path / "MNIST" / "raw"
    assert leftovers(raw) == sorted(served)  # no staging directory or partial file
    assert calls == [f"{idx.MNIST.mirrors[0]}{n}.gz" for n in NAMES]
    dm.setup()
    assert len(dm.train_dataset) == 100
    assert len(dm.val_dataset) == 20
    assert len(dm.test_dataset) == 30
    dm.prepare_data()  # everything present now: no more fetching
    assert len(calls) == 4


def test_download_falls_back_to_the_next_mirror(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = fake_mnist(n_train=10, n_test=10)
    payloads = {name: idx_bytes(a) for name, a in arrays.items()}
    monkeypatch.setitem(data.SHA256, "mnist", {n: sha256(p) for n, p in payloads.items()})
    good = {f"{n}.gz": gzip.compress(p, mtime=0) for n, p in payloads.items()}

    def fetch(url: str, directory: Path, filename: str) -> None:
        if url.startswith(idx.MNIST.mirrors[0]):  # first mirror serves garbage
            Path(directory, filename).write_bytes(b"<html>not found</html>")
        else:
            Path(directory, filename).write_bytes(good[filename])

    monkeypatch.setattr(idx, "_fetch", fetch)
    paths = locate_files("mnist", tmp_path, download=True)
    assert sorted(p.name for p in paths.values()) == sorted(good)
    assert leftovers(tmp_path / "MNIST" / "raw") == sorted(good)


def test_download_offline_leaves_nothing_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def offline(url: str, directory: Path, filename: str) -> None:
        Path(directory, filename).write_bytes(b"\x1f\x8b\x08\x00partial")  # half a download
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(idx, "_fetch", offline)
    dm = MNISTDataModule(root=tmp_path, download=True)
    with pytest.raises(DatasetError) as err:
        dm.prepare_data()
    msg = str(err.value)
    assert "Download failed" in msg
    assert "Temporary failure in name resolution" in msg
    for mirror in idx.MNIST.mirrors:
        assert f"{mirror}train-images-idx3-ubyte.gz" in msg
    # issue 23 §4: it was already set, so the fix is the network, not data.download=true
    assert "data.download=true" not in msg
    assert "check this machine's network access to https://" in msg
    assert "VAE_DATA_DIR" in msg
    assert leftovers(tmp_path / "MNIST" / "raw") == []  # no partial file, no staging directory


def test_download_of_a_corrupt_file_is_rejected(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    arrays = fake_mnist(n_train=10, n_test=10)
    monkeypatch.setitem(data.SHA256, "mnist", dict.fromkeys(NAMES, "0" * 64))
    served = {f"{n}.gz": gzip.compress(idx_bytes(a), mtime=0) for n, a in arrays.items()}
    monkeypatch.setattr(idx, "_fetch", serve(served, []))
    with pytest.raises(DatasetError, match="SHA-256 of the IDX payload"):
        locate_files("mnist", tmp_path, download=True)
    assert leftovers(tmp_path / "MNIST" / "raw") == []


# ---------------------------------------------------------------------------------------------
# constructor validation


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("dataset", "cifar10", "one of mnist, fashion_mnist"),
        ("root", "", "a non-empty path"),
        ("batch_size", 0, "an integer ≥ 1"),
        ("batch_size", 12.0, "an integer ≥ 1"),
        ("eval_batch_size", -5, "an integer ≥ 1"),
        ("val_size", -1, "an image count ≥ 0 or a fraction in [0, 1)"),
        ("val_size", 1.0, "an image count ≥ 0 or a fraction in [0, 1)"),
        ("seed", -1, "an integer in [0, "),
        ("binarize", "threshold", "one of none, dynamic, static"),
        ("binarize", None, "one of none, dynamic, static"),
        ("download", "yes", "true or false"),
        ("num_workers", True, "an integer ≥ 0"),
        ("pin_memory", 1, "true or false"),
        ("device_resident", "no", "true or false"),
    ],
)
def test_constructor_rejects_bad_values(key: str, value: object, allowed: str) -> None:
    with pytest.raises(ConfigError) as err:
        MNISTDataModule(**{key: value})
    msg = str(err.value)
    assert msg.startswith(f"data.{key}={value!r}: expected ")
    assert allowed in msg
    assert isinstance(err.value, ValueError)


def test_defaults_and_metadata(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VAE_DATA_DIR", raising=False)
    dm = MNISTDataModule()
    assert (dm.batch_size, dm.eval_batch_size, dm.val_size, dm.seed) == (128, 1000, 5000, 0)
    assert (dm.binarize, dm.download, dm.num_workers, dm.pin_memory) == ("none", True, 0, False)
    assert dm.device_resident is False
    assert dm.root == Path.cwd() / "data"  # relative to where it started, stored absolute
    assert dm.hparams["root"] == str(Path.cwd() / "data")
    assert dm.dims == (1, 28, 28)
    assert dm.num_classes == 10
    assert dm.class_names == tuple("0123456789")
    monkeypatch.setenv("VAE_DATA_DIR", "/somewhere")
    fm = FashionMNISTDataModule()
    assert fm.root == Path("/somewhere")
    assert fm.dataset == "fashion_mnist"
    assert fm.class_names[0] == "T-shirt/top"
    assert fm.class_names[9] == "Ankle boot"
    assert len(fm.class_names) == 10


# ---------------------------------------------------------------------------------------------
# configs


def test_config_instantiates(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("VAE_DATA_DIR", str(tmp_path))
    yaml = OmegaConf.load(CONFIG_DIR / "data" / "mnist.yaml")
    cfg = OmegaConf.create({"seed": 7, "data": yaml})
    dm = instantiate(cfg.data)
    assert isinstance(dm, MNISTDataModule)
    assert (dm.dataset, dm.seed, dm.root) == ("mnist", 7, tmp_path)
    defaults = MNISTDataModule(root=tmp_path, seed=7)
    keys = set(yaml) - {"_target_"}
    assert {k: getattr(dm, k) for k in keys} == {k: getattr(defaults, k) for k in keys}
    monkeypatch.delenv("VAE_DATA_DIR")
    assert OmegaConf.create({"seed": 0, "data": yaml}).data.root == "data"


def test_fashion_config_changes_only_the_dataset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VAE_DATA_DIR", "/d")
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR)):
        mnist = compose("train", overrides=["data=mnist", "seed=3"])
        fashion = compose("train", overrides=["data=fashion_mnist", "seed=3", "data.batch_size=64"])
    mnist = OmegaConf.to_container(mnist.data, resolve=True)
    fashion = OmegaConf.to_container(fashion.data, resolve=True)
    assert fashion.pop("dataset") == "fashion_mnist"
    assert fashion.pop("batch_size") == 64
    assert mnist.pop("dataset") == "mnist"
    assert mnist.pop("batch_size") == 128
    assert fashion == mnist
    dm = instantiate({**fashion, "dataset": "fashion_mnist"})
    assert dm.dataset == "fashion_mnist"
    assert dm.seed == 3
    assert dm.root == Path("/d")


# ---------------------------------------------------------------------------------------------
# conversion, batching, shuffling (synthetic)


def test_to_float_modes() -> None:
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    grey = to_float(x)
    assert grey.dtype == torch.float32
    torch.testing.assert_close(grey.flatten(), torch.arange(256, dtype=torch.float32) / 255)
    static = to_float(x, binarize="static").flatten()
    assert static[:128].sum() == 0  # 127/255 < 0.5
    assert static[128:].sum() == 128  # 128/255 > 0.5
    torch.manual_seed(3)
    a = to_float(x, binarize="dynamic", train=True)
    torch.manual_seed(3)
    b = to_float(x, binarize="dynamic", train=True)
    c = to_float(x, binarize="dynamic", train=True)
    assert torch.equal(a, b)  # the global RNG drives training draws
    assert not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}
    assert a.flatten()[0] == 0  # p = 0
    assert a.flatten()[255] == 1  # p = 1
    # per grey level k, the fraction of ones over many draws is k / 255 (binomial standard error)
    n = 2000
    draws = to_float(x.flatten().repeat(n, 1), binarize="dynamic", train=True).mean(0).double()
    p = torch.arange(256, dtype=torch.float64) / 255
    se = (p * (1 - p) / n).sqrt().clamp_min(1e-12)
    assert float(((draws - p).abs() / se).max()) < 5
    e1 = to_float(x, binarize="dynamic", train=False)
    e2 = to_float(x, binarize="dynamic", train=False)
    assert torch.equal(e1, e2)  # evaluation draws are fixed


def test_dataset_batches_by_indexing_and_plain_dataloader() -> None:
    images = torch.arange(50, dtype=torch.uint8).view(50, 1, 1, 1).expand(50, 1, 28, 28).clone()
    labels = torch.arange(50) % 10
    ds = IndexedTensorDataset(images, labels)
    with mock.patch.object(ds, "__getitem__", side_effect=AssertionError("per-item path")):
        loader = DataLoader(ds, batch_size=8, shuffle=True, collate_fn=collate_batch)
        seen = []
        for x, y, _ in loader:
            assert x.dtype == torch.uint8
            assert y.dtype == torch.int64
            assert torch.equal(x[:, 0, 0, 0].long() % 10, y)
            seen += x[:, 0, 0, 0].tolist()
    assert sorted(seen) == list(range(50))
    x, y, i = ds[3]
    assert x.shape == (1, 28, 28)
    assert int(y) == 3
    assert i == 3
    assert collate_batch([ds[0], ds[1]])[0].shape == (2, 1, 28, 28)  # default_collate fallback


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 5), (1, 28, 27)])
def test_batch_gather_equals_plain_indexing(shape: tuple[int, ...]) -> None:
    """28x28 uint8 images are gathered as int64 words; other shapes the plain way: same batches."""
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (200, *shape), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (200,), generator=g)
    ds = IndexedTensorDataset(images, labels)
    idx = torch.randint(0, 200, (64,), generator=g).tolist()
    x, y, i = ds.__getitems__(idx)
    assert x.dtype == torch.uint8
    assert torch.equal(x, images[idx])
    assert torch.equal(y, labels[idx])
    assert i.tolist() == idx  # the positions travel with the batch


def test_epoch_shuffle_sampler_depends_only_on_seed_and_epoch() -> None:
    ds = IndexedTensorDataset(torch.zeros(100, 1, 28, 28, dtype=torch.uint8), torch.zeros(100))
    s = EpochShuffleSampler(ds, seed=5)
    assert isinstance(s, RandomSampler)  # what Lightning checks before swapping in DDP's sampler
    first, second = list(s), list(s)  # without set_epoch, each pass is the next epoch
    assert sorted(first) == list(range(100))
    assert first != second
    s.set_epoch(1)
    assert list(s) == second
    again = EpochShuffleSampler(ds, seed=5)
    again.set_epoch(0)
    assert list(again) == first
    other = EpochShuffleSampler(ds, seed=6)
    assert list(other) != first


def test_dynamic_eval_splits_are_drawn_a_chunk_at_a_time(
    fake_root: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ``dynamic`` the val/test draws convert ``CHUNK`` images at a time (a folder's split
    as float could exceed memory), and give the draws of one call over the whole split."""
    settings = {"root": fake_root.root, "download": False, "val_size": 50}
    grey = MNISTDataModule(**settings)
    grey.setup()
    sizes: list[int] = []
    convert = data.to_float

    def spy(images: torch.Tensor, **kwargs: object) -> torch.Tensor:
        sizes.append(images.shape[0])
        return convert(images, **kwargs)

    monkeypatch.setattr(data, "CHUNK", 16)
    monkeypatch.setattr(data, "to_float", spy)
    dm = MNISTDataModule(**settings, binarize="dynamic")
    dm.setup()
    assert max(sizes) == 16
    assert sum(sizes) == 50 + 100  # every val and test image once
    for split, drawn, plain in (
        ("val", dm.val_dataset, grey.val_dataset),
        ("test", dm.test_dataset, grey.test_dataset),
    ):
        # one draw over the whole split: U < x / 255 with U from the split's seeded generator
        g = torch.Generator().manual_seed(derive_seed(("binarize", split, 0)))
        u = torch.rand(plain.images.shape, generator=g)
        expected = (u < plain.images.to(torch.float32) / 255).to(torch.uint8) * 255
        assert torch.equal(drawn.images, expected), split
        assert torch.equal(drawn.labels, plain.labels)


def test_on_after_batch_transfer_train_vs_eval(fake_root: SimpleNamespace) -> None:
    dm = MNISTDataModule(
        root=fake_root.root, download=False, val_size=50, binarize="dynamic", batch_size=128
    )
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    x, y, _ = dm.on_after_batch_transfer(batch, 0)  # no trainer: evaluation
    assert torch.equal(x, dm.on_after_batch_transfer(batch, 0)[0])
    dm.trainer = fake_trainer(training=True)
    t1, _, _ = dm.on_after_batch_transfer(batch, 0)
    t2, _, _ = dm.on_after_batch_transfer(batch, 0)
    assert not torch.equal(t1, t2)
    assert t1.shape == (128, 1, 28, 28)
    assert t1.dtype == torch.float32
    assert y.dtype == torch.int64


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
def test_pixel_mean_is_the_mean_of_the_served_training_images(
    fake_root: SimpleNamespace, binarize: str
) -> None:
    dm = MNISTDataModule(root=fake_root.root, download=False, val_size=50, binarize=binarize)
    dm.setup("fit")
    # reference: numpy on the raw training array, the held-out images removed
    raw = fake_root.arrays["train-images-idx3-ubyte"].astype(np.float64)
    kept = np.delete(raw, dm.val_indices.numpy(), axis=0)
    served = (kept > 127.5) if binarize == "static" else kept / 255  # dynamic: E[draw] = grey level
    expected = served.mean(axis=0)[None]  # (1, 28, 28)
    mean = dm.pixel_mean()
    assert mean.dtype == torch.float64
    assert mean.shape == (1, 28, 28)
    np.testing.assert_allclose(mean.numpy(), expected, rtol=1e-12, atol=1e-15)


def test_device_resident_is_a_no_op_on_cpu(fake_root: SimpleNamespace) -> None:
    dm = MNISTDataModule(
        root=fake_root.root, download=False, val_size=50, device_resident=True, num_workers=1
    )
    dm.trainer = fake_trainer(training=False, device="cpu")
    dm.setup()
    assert dm.train_dataset.images.device.type == "cpu"
    assert dm.train_dataloader().num_workers == 1


def test_device_resident_moves_splits(fake_root: SimpleNamespace) -> None:
    """A stand-in accelerator: the 'meta' device (no data, but shapes and devices are real)."""
    dm = MNISTDataModule(
        root=fake_root.root,
        download=False,
        val_size=50,
        device_resident=True,
        num_workers=2,
        pin_memory=True,
        batch_size=128,
    )
    dm.trainer = fake_trainer(training=True, device="meta")
    dm.setup("fit")
    assert dm.test_dataset is None
    dm.setup("test")  # a later stage (trainer.test after fit) is moved too
    for ds in (dm.train_dataset, dm.val_dataset, dm.test_dataset):
        assert ds.images.device.type == "meta"
        assert ds.labels.device.type == "meta"
    loader = dm.train_dataloader()
    assert loader.num_workers == 0
    assert loader.pin_memory is False
    x, _, _ = next(iter(loader))
    assert x.device.type == "meta"
    assert x.shape == (128, 1, 28, 28)


def test_val_size_zero_means_no_validation(fake_root: SimpleNamespace) -> None:
    dm = MNISTDataModule(root=fake_root.root, download=False, val_size=0)
    dm.setup("fit")
    assert len(dm.train_dataset) == 300
    assert dm.val_dataloader() == []


def test_setup_before_use_message() -> None:
    with pytest.raises(RuntimeError, match=r"call setup\('test'\) first"):
        MNISTDataModule().test_dataloader()


class _Probe(L.LightningModule):
    """Records what the Trainer feeds it."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.train_seen: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        self.val_seen: list[tuple[int, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y, _ = batch
        self.train_seen.append((self.current_epoch, x.clone(), y.clone()))
        return self.w * x.mean()

    def validation_step(self, batch, batch_idx):
        self.val_seen.append((self.current_epoch, batch[0].clone()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.0)


def test_trainer_integration(fake_root: SimpleNamespace) -> None:
    dm = MNISTDataModule(
        root=fake_root.root,
        download=False,
        val_size=100,
        batch_size=64,
        eval_batch_size=100,
        binarize="dynamic",
        seed=11,
    )
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(probe, datamodule=dm)
    for _, x, y in probe.train_seen:
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape[1:] == (1, 28, 28)
        assert set(x.unique().tolist()) <= {0.0, 1.0}
    labels = {e: torch.cat([y for ep, _, y in probe.train_seen if ep == e]) for e in (0, 1)}
    for epoch, got in labels.items():  # the order is a function of (seed, epoch) only
        sampler = EpochShuffleSampler(dm.train_dataset, seed=11)
        sampler.set_epoch(epoch)
        assert torch.equal(got, dm.train_dataset.labels[list(sampler)])
    assert not torch.equal(labels[0], labels[1])
    val = {e: torch.cat([x for ep, x in probe.val_seen if ep == e]) for e in (0, 1)}
    assert val[0].shape == (100, 1, 28, 28)
    assert torch.equal(val[0], val[1])  # evaluation binarisation is fixed


# ---------------------------------------------------------------------------------------------
# real MNIST


@pytest.fixture(scope="module")
def real(mnist_root: Path) -> SimpleNamespace:
    """Real MNIST (``$VAE_DATA_DIR``, else skipped: conftest's ``mnist_root``), loaded once."""
    root = mnist_root
    raw = root / "MNIST" / "raw"
    splits = {
        train: load_split("mnist", root, train=train, download=False) for train in (True, False)
    }

    def make(**kwargs) -> MNISTDataModule:
        """A DataModule on the real files, reusing the splits loaded once for this module."""
        dm = MNISTDataModule(root=root, download=False, **kwargs)
        with mock.patch.object(data, "load_split", lambda *a, train, **k: splits[train]):
            dm.setup()
        return dm

    @functools.cache
    def ref(name: str) -> np.ndarray:
        return parse_idx_numpy(raw / f"{name}.gz")

    return SimpleNamespace(root=root, splits=splits, make=make, ref=ref, dm=make())


def test_real_files_match_the_independent_parser(real: SimpleNamespace) -> None:
    for train, (img_name, lbl_name) in ((True, NAMES[:2]), (False, NAMES[2:])):
        images, labels = real.splits[train]
        np.testing.assert_array_equal(images.squeeze(1).numpy(), real.ref(img_name))
        np.testing.assert_array_equal(labels.numpy(), real.ref(lbl_name))


def test_real_published_digit_counts(real: SimpleNamespace) -> None:
    """Per-digit counts from our loader equal those from the numpy parser and the published ones."""
    published_train = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    published_test = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    ref_train = np.bincount(real.ref(NAMES[1]), minlength=10).tolist()
    ref_test = np.bincount(real.ref(NAMES[3]), minlength=10).tolist()
    assert ref_train == published_train
    assert ref_test == published_test
    assert ref_train[1] == 6742
    assert ref_test[1] == 1135
    dm = real.dm
    train_val = torch.cat([dm.train_dataset.labels, dm.val_dataset.labels])
    assert torch.bincount(train_val, minlength=10).tolist() == published_train
    assert torch.bincount(dm.test_dataset.labels, minlength=10).tolist() == published_test


def test_real_shapes_dtypes_and_range(real: SimpleNamespace) -> None:
    dm = real.dm
    assert len(dm.train_dataset) == 55_000
    assert len(dm.val_dataset) == 5_000
    assert len(dm.test_dataset) == 10_000
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y, _ = dm.on_after_batch_transfer(next(iter(loader)), 0)
        assert x.dtype == torch.float32
        assert y.dtype == torch.int64
        assert x.shape[1:] == (1, 28, 28)
        assert float(x.min()) >= 0.0
        assert float(x.max()) <= 1.0
    x, _, _ = dm.on_after_batch_transfer(next(iter(dm.train_dataloader())), 0)
    assert x.shape[0] == dm.batch_size == 128  # DataConfig's default
    x, _, _ = dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)
    assert x.shape[0] == 1000
    # grey levels are exactly ToTensor's: uint8 / 255
    ref = torch.from_numpy(real.ref(NAMES[2])[:1000].astype(np.float32) / np.float32(255))
    torch.testing.assert_close(x, ref.unsqueeze(1), rtol=0, atol=0)


def test_real_split_disjoint_and_seeded(real: SimpleNamespace) -> None:
    dm = real.dm
    train_idx, val_idx = set(dm.train_indices.tolist()), set(dm.val_indices.tolist())
    assert not train_idx & val_idx
    assert train_idx | val_idx == set(range(60_000))
    ref_images = real.ref(NAMES[0])
    np.testing.assert_array_equal(
        dm.val_dataset.images.squeeze(1).numpy(), ref_images[dm.val_indices.numpy()]
    )
    same = real.make(seed=0)
    assert torch.equal(same.val_indices, dm.val_indices)
    other = real.make(seed=1)
    assert len(set(other.val_indices.tolist()) & val_idx) < 1000  # ≈ 5000²/60000 ≈ 417 by chance


def test_real_one_epoch_serves_every_training_image_once(real: SimpleNamespace) -> None:
    """A plain DataLoader pass (no Lightning): each of the 55,000 training images exactly once."""
    dm = real.dm
    loader = dm.train_dataloader()
    order = list(loader.sampler)
    assert sorted(order) == list(range(55_000))

    def fingerprints(images: torch.Tensor, labels: torch.Tensor) -> Counter:
        flat = images.reshape(images.shape[0], -1).numpy()
        return Counter(
            hashlib.blake2b(row.tobytes() + bytes([int(label)]), digest_size=16).digest()
            for row, label in zip(flat, labels.tolist(), strict=True)
        )

    served: Counter = Counter()
    n = 0
    for x, y, _ in loader:
        served.update(fingerprints(x, y))
        n += x.shape[0]
    assert n == 55_000
    ref_images = real.ref(NAMES[0])[dm.train_indices.numpy()]
    ref_labels = real.ref(NAMES[1])[dm.train_indices.numpy()]
    assert served == fingerprints(torch.from_numpy(ref_images), torch.from_numpy(ref_labels))


def test_real_dynamic_binarisation(real: SimpleNamespace) -> None:
    dm = real.make(binarize="dynamic")
    dm.trainer = fake_trainer(training=True)
    batch = dm.train_dataset.__getitems__(list(range(5000)))
    p = batch[0].double() / 255
    torch.manual_seed(0)
    epoch1, _, _ = dm.on_after_batch_transfer(batch, 0)
    epoch2, _, _ = dm.on_after_batch_transfer(batch, 0)
    assert set(epoch1.unique().tolist()) == {0.0, 1.0}
    # E[draw] = p; the sum of n independent Bernoulli(p_i) has variance Σ p_i(1 - p_i)
    n = p.numel()
    se = math.sqrt(float((p * (1 - p)).sum())) / n
    assert abs(float(epoch1.double().mean() - p.mean())) < 5 * se
    # two epochs differ exactly where the draws differ: P(differ) = 2 p (1 - p) per pixel
    frac = float((epoch1 != epoch2).double().mean())
    expected = float((2 * p * (1 - p)).mean())
    assert abs(frac - expected) < 5 * math.sqrt(expected / n)
    # seeded: the global RNG reproduces a training draw
    torch.manual_seed(0)
    assert torch.equal(dm.on_after_batch_transfer(batch, 0)[0], epoch1)


def test_real_dynamic_eval_sets_are_fixed(real: SimpleNamespace) -> None:
    a = real.make(binarize="dynamic")
    b = real.make(binarize="dynamic")
    for da, db in ((a.val_dataset, b.val_dataset), (a.test_dataset, b.test_dataset)):
        assert torch.equal(da.images, db.images)
        assert set(da.images.unique().tolist()) == {0, 255}
    grey = real.dm.test_dataset.images.double() / 255
    drawn = a.test_dataset.images.double() / 255
    se = math.sqrt(float((grey * (1 - grey)).sum())) / grey.numel()
    assert abs(float(drawn.mean() - grey.mean())) < 5 * se
    batch = next(iter(a.test_dataloader()))
    x1, _, _ = a.on_after_batch_transfer(batch, 0)
    x2, _, _ = a.on_after_batch_transfer(batch, 0)
    assert torch.equal(x1, x2)
    assert torch.equal(x1, batch[0].float() / 255)  # already binary: evaluation leaves it as is
    c = real.make(binarize="dynamic", seed=1)
    assert not torch.equal(c.test_dataset.images, a.test_dataset.images)


def test_real_static_binarisation(real: SimpleNamespace) -> None:
    dm = real.make(binarize="static")
    x, _, _ = dm.on_after_batch_transfer(next(iter(dm.test_dataloader())), 0)
    ref = (real.ref(NAMES[2])[:1000].astype(np.float64) / 255 > 0.5).astype(np.float32)
    np.testing.assert_array_equal(x.squeeze(1).numpy(), ref)


def test_real_fashion_mnist(tmp_path: Path) -> None:
    root = os.environ.get("VAE_DATA_DIR") or str(tmp_path)
    dirs = [Path(root) / "FashionMNIST" / "raw", idx.FASHION_SYSTEM_DIR]
    found = [d for d in dirs if (d / "train-labels-idx1-ubyte.gz").exists()]
    if not found:
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    dm = FashionMNISTDataModule(root=root, download=False)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (
        55_000,
        5_000,
        10_000,
    )
    ref_train = np.bincount(parse_idx_numpy(found[0] / "train-labels-idx1-ubyte.gz"), minlength=10)
    ref_test = np.bincount(parse_idx_numpy(found[0] / "t10k-labels-idx1-ubyte.gz"), minlength=10)
    assert ref_train.tolist() == [6000] * 10
    assert ref_test.tolist() == [1000] * 10
    train_val = torch.cat([dm.train_dataset.labels, dm.val_dataset.labels])
    assert torch.bincount(train_val, minlength=10).tolist() == ref_train.tolist()
    assert torch.bincount(dm.test_dataset.labels, minlength=10).tolist() == ref_test.tolist()
    ref_images = parse_idx_numpy(found[0] / "t10k-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(dm.test_dataset.images.squeeze(1).numpy(), ref_images)
