"""``data=folder``: every layout, the shape rules, the cache and every bad input, on generated folders.

The images are written with Pillow (PNG is lossless, so the pixels read back are the pixels
written); the expected values come from the arrays the test wrote, never from the code under test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_explore import browser  # noqa: F401 (the headless Chromium fixture)

from vae.errors import ConfigError, DatasetError
from vae.train import folder as folder_mod
from vae.train.data import ImageDataModule
from vae.train.folder import load_folder, scan_folder

ROOT = Path(__file__).resolve().parents[1]


def _png(path: Path, array: np.ndarray) -> np.ndarray:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return array


def _grey(seed: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)


def _rgb(seed: int, size: tuple[int, int] = (8, 8)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` with its size and mtime: what "nothing is written" compares."""
    return {
        str(p.relative_to(root)): (p.lstat().st_size, p.lstat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
    }


def _dm(root: Path, cache: Path, **kw) -> ImageDataModule:
    return ImageDataModule(dataset="folder", root=str(root), cache_dir=str(cache), **kw)


# --------------------------------------------------------------------------------------------
# Layouts


def test_class_folders_give_labels_in_file_name_order(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    written = {}
    # names interleave the classes: the order is by file name, not class by class
    for i, cls in enumerate(["b", "a", "c", "a", "b", "c"]):
        written[i] = (_png(root / cls / f"{i:03d}.png", _grey(i)), cls)
    before = _snapshot(root)
    got = load_folder(root, cache_dir=tmp_path / "cache")
    assert got.class_names == ("a", "b", "c")
    assert got.images.shape == (6, 1, 8, 8)
    assert got.images.dtype == torch.uint8
    assert got.labels.tolist() == [("a", "b", "c").index(written[i][1]) for i in range(6)]
    for i in range(6):
        assert np.array_equal(got.images[i, 0].numpy(), written[i][0])
    assert got.test_start is None
    assert _snapshot(root) == before  # nothing written in the user's folder


def test_a_flat_folder_has_no_labels(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    arrays = [_png(root / f"img{i}.png", _rgb(i)) for i in range(6)]
    dm = _dm(root, tmp_path / "cache", val_size=1, test_size=2)
    assert dm.dims == (3, 8, 8)
    assert dm.class_names == ()
    dm.setup()
    assert (dm.train_dataset.labels == -1).all()
    assert len(dm.train_dataset) == 3
    got = load_folder(root, cache_dir=tmp_path / "cache").images
    for i, a in enumerate(arrays):
        assert np.array_equal(got[i].permute(1, 2, 0).numpy(), a)  # (C, H, W) of the (H, W, C)


def test_train_and_test_folders_are_the_split(tmp_path: Path) -> None:
    root = tmp_path / "split"
    train = [_png(root / "train" / c / f"{i}.png", _grey(i)) for i, c in enumerate("xyxyxyxy")]
    test = [_png(root / "test" / c / f"t{i}.png", _grey(100 + i)) for i, c in enumerate("xy")]
    dm = _dm(root, tmp_path / "cache", val_size=2)
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (6, 2, 2)
    assert np.array_equal(dm.test_dataset.images[:, 0].numpy(), np.stack(test))
    assert dm.test_dataset.labels.tolist() == [0, 1]
    seen = torch.cat([dm.train_dataset.images, dm.val_dataset.images])[:, 0].numpy()
    assert sorted(map(bytes, seen)) == sorted(map(bytes, train))  # train/ = train + val


def test_the_seeded_split_is_disjoint_complete_and_reproducible(tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(50):
        _png(root / f"{i:02d}.png", np.full((4, 4), i, np.uint8))  # pixel value = identity

    def split(seed: int) -> list[set[int]]:
        dm = _dm(root, tmp_path / "cache", val_size=0.2, test_size=5, seed=seed)
        dm.setup()
        ds = (dm.train_dataset, dm.val_dataset, dm.test_dataset)
        return [set(d.images[:, 0, 0, 0].tolist()) for d in ds]

    train, val, test = split(0)
    assert (len(train), len(val), len(test)) == (36, 9, 5)  # 5 test, then 20 % of 45
    assert train | val | test == set(range(50))
    assert split(0) == [train, val, test]
    assert split(1)[2] != test


def test_mixed_grey_and_colour_follow_the_documented_rule(tmp_path: Path) -> None:
    root = tmp_path / "mixed"
    grey = _png(root / "a.png", _grey(1))
    rgb = _png(root / "b.png", _rgb(2))
    three = load_folder(root, cache_dir=tmp_path / "c3").images
    assert three.shape == (2, 3, 8, 8)
    assert all(np.array_equal(three[0, c].numpy(), grey) for c in range(3))  # grey repeated
    one = load_folder(root, cache_dir=tmp_path / "c1", channels=1).images
    luma = rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # ITU-R 601-2
    assert np.abs(one[1, 0].numpy() - luma).max() <= 1.0
    assert np.array_equal(one[0, 0].numpy(), grey)


def test_image_size_scales_the_shorter_side_and_crops_the_centre(tmp_path: Path) -> None:
    root = tmp_path / "wide"
    img = np.zeros((20, 40, 3), np.uint8)  # 40 wide: red | green (middle half) | blue
    img[:, :10] = (255, 0, 0)
    img[:, 10:30] = (0, 255, 0)
    img[:, 30:] = (0, 0, 255)
    _png(root / "w.png", img)
    _png(root / "s.png", np.zeros((12, 12, 3), np.uint8))
    got = load_folder(root, cache_dir=tmp_path / "cache", image_size=10).images
    assert got.shape == (2, 3, 10, 10)
    # 40×20 → 20×10, the centre 10 columns are the original's 10..30: green (the outer columns
    # blend with red and blue: bilinear filtering spans a pixel either side)
    inner = got[1, :, :, 1:-1]
    assert inner[1].min() >= 250
    assert inner[0].max() <= 5
    assert inner[2].max() <= 5
    assert got[1, 0, :, 0].max() < 64
    assert got[1, 2, :, -1].max() < 64


# --------------------------------------------------------------------------------------------
# The cache


def test_the_cache_is_reused_and_rebuilt_when_the_folder_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    for i in range(3):
        _png(root / "k" / f"{i}.png", _grey(i))
    first = load_folder(root, cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert [f.rsplit(".", 1)[1] for f in files] == ["json", "npy"]  # one image file, no temp left

    real = folder_mod._decode
    monkeypatch.setattr(folder_mod, "_decode", lambda *a: pytest.fail("decoded again"))
    again = load_folder(root, cache_dir=cache)
    assert torch.equal(again.images, first.images)

    monkeypatch.setattr(folder_mod, "_decode", real)
    new = _png(root / "k" / "1.png", _grey(99))  # same name and size, new content and mtime
    os.utime(root / "k" / "1.png", ns=(1, 1))
    changed = load_folder(root, cache_dir=cache)
    assert np.array_equal(changed.images[1, 0].numpy(), new)
    assert len(list(cache.iterdir())) == 2  # the stale cache is gone
    assert changed.fingerprint != first.fingerprint


def test_the_cache_is_never_inside_the_folder(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "a.png", _grey(0))
    with pytest.raises(DatasetError, match=r"data.cache_dir=.* is inside data.root"):
        load_folder(tmp_path / "imgs", cache_dir=tmp_path / "imgs" / ".cache")
    assert not (tmp_path / "imgs" / ".cache").exists()


def test_a_corrupt_cache_is_rebuilt(tmp_path: Path) -> None:
    root, cache = tmp_path / "imgs", tmp_path / "cache"
    a = _png(root / "a.png", _grey(3))
    load_folder(root, cache_dir=cache)
    npy = next(cache.glob("*.npy"))
    npy.write_bytes(npy.read_bytes()[:100])  # truncated
    assert np.array_equal(load_folder(root, cache_dir=cache).images[0, 0].numpy(), a)


# --------------------------------------------------------------------------------------------
# Bad input: one DatasetError naming the file


def _truncated(root: Path) -> Path:
    path = root / "k" / "bad.png"
    _png(path, _grey(0, (32, 32)))
    path.write_bytes(path.read_bytes()[:60])
    return path


def _not_image(root: Path) -> Path:
    path = root / "k" / "notes.txt"
    path.parent.mkdir(parents=True)
    path.write_text("hello")
    return path


def _fake_png(root: Path) -> Path:
    path = root / "k" / "fake.png"
    path.parent.mkdir(parents=True)
    path.write_text("not a png")
    return path


def _empty(root: Path) -> Path:
    root.mkdir()
    return root


def _empty_class(root: Path) -> Path:
    (root / "empty").mkdir(parents=True)
    return root / "empty"


def _loop(root: Path) -> Path:
    (root / "k").mkdir(parents=True)
    (root / "k" / "again").symlink_to(root / "k")
    return root / "k" / "again"


def _self_link(root: Path) -> Path:
    (root / "k").mkdir(parents=True)
    link = root / "k" / "x.png"
    link.symlink_to(link)
    return link


BAD = {
    "truncated": (_truncated, "cannot decode the image"),
    "not an image": (_not_image, "not an image file"),
    "unreadable": (_fake_png, "cannot read it as an image"),
    "empty folder": (_empty, "no images in the folder"),
    "empty class": (_empty_class, "a class folder with no images"),
    "link loop": (_loop, "a symbolic link loop"),
    "self link": (_self_link, "a symbolic link loop"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_error_naming_the_file(case: str, tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    make, words = BAD[case]
    bad = make(root)
    if case not in ("empty folder", "empty class", "self link", "link loop"):
        _png(root / "k" / "good.png", _grey(1, (32, 32)))
    if case == "empty class":
        _png(root / "full" / "a.png", _grey(1))
    before = _snapshot(root)
    with pytest.raises(DatasetError) as err:
        load_folder(root, cache_dir=tmp_path / "cache")
    assert str(err.value).startswith(f"{bad}: {words}")
    assert "\n" not in str(err.value)
    assert _snapshot(root) == before


def test_images_too_small_for_the_size_are_named(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _png(root / "big.png", _grey(0, (16, 16)))
    _png(root / "small.png", _grey(0, (16, 8)))
    with pytest.raises(DatasetError, match=rf"^{root / 'small.png'}: 8×16 is smaller than"):
        load_folder(root, cache_dir=tmp_path / "c", image_size=12)
    with pytest.raises(DatasetError, match=r"^data.image_size: the images have 2 sizes"):
        load_folder(root, cache_dir=tmp_path / "c")
    assert load_folder(root, cache_dir=tmp_path / "c", image_size=8).images.shape == (2, 1, 8, 8)


def test_images_beside_class_folders_and_beside_the_split_are_refused(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _png(root / "a" / "1.png", _grey(0))
    _png(root / "stray.png", _grey(1))
    with pytest.raises(DatasetError, match=rf"^{root}: holds both images"):
        scan_folder(root)
    split = tmp_path / "split"
    for part in ("train", "test", "val"):
        _png(split / part / "1.png", _grey(0))
    with pytest.raises(DatasetError, match=rf"^{split / 'val'}: beside train/ and test/"):
        scan_folder(split)


def test_folder_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^data.root=None: data=folder"):
        ImageDataModule(dataset="folder")
    with pytest.raises(ConfigError, match=r"^data.channels=2: expected null or one of 1, 3"):
        ImageDataModule(dataset="folder", root="x", channels=2)
    for i in range(4):
        _png(tmp_path / "imgs" / f"{i}.png", _grey(i))
    dm = _dm(tmp_path / "imgs", tmp_path / "c", test_size=2, val_size=5)
    with pytest.raises(ConfigError, match=r"^data.val_size=5: the data has 2 images there"):
        dm.setup()


def test_train_py_prints_one_error_line_for_a_bad_image(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    bad = _truncated(root)
    before = _snapshot(root)
    out = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data=folder", f"data.root={root}",
         f"data.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}",
         "trainer.max_epochs=1", "trainer.accelerator=cpu"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("error:")]
    assert lines == [f"error: {bad}: cannot decode the image " + lines[0].split("image ", 1)[1]]
    assert _snapshot(root) == before


def _train_py(root: Path, tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), "data=folder", f"data.root={root}",
         f"data.cache_dir={tmp_path / 'cache'}", f"paths.log_dir={tmp_path / 'logs'}",
         "trainer.max_epochs=1", "trainer.accelerator=cpu", *overrides],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("count", "expected"),
    [
        (4, "error: data.test_size=0.1: 0 of the folder's 4 images (0.1 × 4 rounds to 0), but "
            "the test split needs at least 2 and training one; set data.test_size=2 (a count of "
            "images), or add images"),
        (2, "error: data.test_size=0.1: 0 of the folder's 2 images (0.1 × 2 rounds to 0), but "
            "the test split needs at least 2 and training one; add images (at least 3 in all)"),
    ],
)  # fmt: skip
def test_train_py_refuses_a_folder_too_small_for_its_splits(
    count: int, expected: str, tmp_path: Path
) -> None:
    for i in range(count):
        _png(tmp_path / "imgs" / f"{i}.png", _grey(i))
    out = _train_py(tmp_path / "imgs", tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert [ln for ln in out.stderr.splitlines() if ln.startswith("error:")] == [expected]
    assert "Traceback" not in out.stderr


def test_every_split_too_small_is_named(tmp_path: Path) -> None:
    for i in range(4):
        _png(tmp_path / "flat" / f"{i}.png", _grey(i))
    with pytest.raises(ConfigError, match=r"^data.test_size=0: 0 of the folder's 4 images, but"):
        _dm(tmp_path / "flat", tmp_path / "c", test_size=0).setup()
    with pytest.raises(ConfigError, match=r"^data.test_size=1: 1 of the folder's 4 images, but"):
        _dm(tmp_path / "flat", tmp_path / "c", test_size=1).setup()
    with pytest.raises(
        ConfigError,
        match=r"^data.val_size=0.1: 0 of the 2 training images \(0.1 × 2 rounds to 0\), but the "
        r"validation split needs an image and training one; set data.val_size=1 \(a count of "
        r"images\) or data.val_size=0 \(no validation\), or add images$",
    ):
        _dm(tmp_path / "flat", tmp_path / "c", test_size=2, val_size=0.1).setup()
    dm = _dm(tmp_path / "flat", tmp_path / "c", test_size=2, val_size=0)  # 2 test, 2 training
    dm.setup()
    assert (len(dm.train_dataset), len(dm.val_dataset), len(dm.test_dataset)) == (2, 0, 2)
    _png(tmp_path / "split" / "train" / "a.png", _grey(0))
    _png(tmp_path / "split" / "test" / "b.png", _grey(1))
    with pytest.raises(DatasetError, match=r"split/test: 1 image, but the test split needs at"):
        _dm(tmp_path / "split", tmp_path / "c", val_size=0).setup()


# --------------------------------------------------------------------------------------------
# The round trip: MNIST as a PNG folder trains exactly as MNIST


@pytest.fixture(scope="module")
def mnist_png(tmp_path_factory: pytest.TempPathFactory, mnist_root: Path) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from mnist_folder import export

    return export(mnist_root, tmp_path_factory.mktemp("mnist_png"))


@pytest.mark.slow
def test_mnist_exported_as_pngs_is_mnist(mnist_png: Path, mnist_root: Path, tmp_path: Path) -> None:
    """Every split holds the same images and labels in the same order as data=mnist's."""
    folder = _dm(mnist_png, tmp_path / "cache", val_size=5000)
    mnist = ImageDataModule(root=str(mnist_root), download=False)
    folder.setup()
    mnist.setup()
    assert folder.class_names == mnist.class_names
    for split in ("train_dataset", "val_dataset", "test_dataset"):
        a, b = getattr(folder, split), getattr(mnist, split)
        assert torch.equal(a.images, b.images), split
        assert torch.equal(a.labels, b.labels), split


@pytest.mark.slow
def test_the_round_trip_gives_the_same_test_elbo(mnist_png: Path, tmp_path: Path) -> None:
    from conftest import TINY, compose_config, run_metrics

    from vae.train.run import train

    short = [*TINY, "trainer.limit_test_batches=null", "~callbacks.visualize"]
    train(compose_config(short, output_dir=tmp_path / "mnist"))
    folder = ["data=folder", f"data.root={mnist_png}", f"data.cache_dir={tmp_path / 'cache'}"]
    train(compose_config([*short, *folder, "data.val_size=5000"], output_dir=tmp_path / "folder"))
    a, b = run_metrics(tmp_path / "mnist"), run_metrics(tmp_path / "folder")
    assert a["test/num_images"] == b["test/num_images"] == 10_000
    assert f"{a['test/loss']:.2f}" == f"{b['test/loss']:.2f}"
    assert a["test/loss"] == b["test/loss"]  # in fact bit for bit: the same batches, the same data


# --------------------------------------------------------------------------------------------
# Colour and unlabelled runs: every figure, the projector and the explorer page


FIGURES = ("latent_space", "manifold", "reconstructions", "samples", "interpolation")


def _folder_run(root: Path, run_dir: Path, *overrides: str) -> Path:
    from conftest import compose_config

    from vae.train.run import train

    base = [
        "trainer=cpu", "trainer.max_epochs=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1",
        "data=folder", f"data.root={root}", f"data.cache_dir={run_dir.parent / 'cache'}",
        "data.batch_size=32", "data.eval_batch_size=100", "eval.iw_samples=4",
    ]  # fmt: skip
    train(compose_config([*base, *overrides], output_dir=run_dir))
    return run_dir


@pytest.fixture(scope="module")
def rgb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from shapes_folder import make_shapes

    tmp = tmp_path_factory.mktemp("rgb")
    shapes = make_shapes(tmp / "shapes", per_class=40, size=32)
    return _folder_run(shapes, tmp / "run", "model=conv", "model.channels=[16,32]")


def test_a_colour_folder_trains_with_conv_and_draws_in_colour(rgb_run: Path) -> None:
    from conftest import run_metrics

    metrics = run_metrics(rgb_run)
    assert metrics["test/num_images"] == 12  # 10 % of 120
    assert metrics["test/loss_bpd"] == pytest.approx(metrics["test/loss"] / (3072 * np.log(2)))
    for name in FIGURES:
        assert (rgb_run / f"{name}.png").is_file(), name
    recon = np.asarray(Image.open(rgb_run / "reconstructions.png").convert("RGB")).astype(int)
    assert np.abs(recon[..., 0] - recon[..., 2]).max() > 60  # the originals' colours are there
    sprite = next((rgb_run / "tensorboard").rglob("sprite.png"))
    with Image.open(sprite) as im:
        assert im.mode == "RGB"
        assert im.size == (4 * 32, 4 * 32)  # ⌈√12⌉ = 4 tiles a side


def test_the_colour_explorer_page_renders_in_chromium(
    rgb_run: Path,
    browser: object,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    from test_explore import Page, _payload

    html = (rgb_run / "explorer.html").read_text()
    assert _payload(html)["class_names"] == ["circle", "square", "triangle"]
    page = Page(browser, html, tmp_path / "page.html")
    assert page.errors == []
    assert page.requests == [page.url]
    assert "circle (" in page.text("#legend")
    px, py = page.js("explorer.toPx(...explorer.xy(0))")
    box = page.box("#plane")
    page.page.mouse.click(box["x"] + px, box["y"] + py)
    index = int(page.text("#sel-info").split("#")[1].split()[0])
    dm = ImageDataModule(**_payload_free_hparams(rgb_run))
    dm.setup("test")
    original = dm.test_dataset.images[index].permute(1, 2, 0).numpy()  # (32, 32, 3) uint8
    shown = page.canvas("#sel-orig")
    h, w = shown.shape[:2]
    ys, xs = (
        ((np.arange(32) + 0.5) * h / 32).astype(int),
        ((np.arange(32) + 0.5) * w / 32).astype(int),
    )
    assert np.array_equal(shown[np.ix_(ys, xs)][..., :3], original)  # every channel, every pixel


def _payload_free_hparams(run_dir: Path) -> dict:
    """The run's data settings, read from its config.yaml (not from the page under test)."""
    from omegaconf import OmegaConf

    data = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml").data)
    return {k: v for k, v in data.items() if k != "_target_"}


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("flat")
    for i in range(60):
        _png(tmp / "flat" / f"{i:02d}.png", _grey(i, (12, 12)))
    return _folder_run(tmp / "flat", tmp / "run", "model.hidden_dims=[32]")


def test_an_unlabelled_folder_draws_every_view_in_one_colour(flat_run: Path) -> None:
    from test_explore import _payload

    for name in FIGURES:
        assert (flat_run / f"{name}.png").is_file(), name
    payload = _payload((flat_run / "explorer.html").read_text())
    assert payload["class_names"] == ["unlabelled"]
    metadata = next((flat_run / "tensorboard").rglob("metadata.tsv")).read_text().split()
    assert set(metadata) == {"unlabelled"}


def test_a_redraw_says_when_the_folder_has_changed(flat_run: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(flat_run.parent / "flat", copy)  # copy2: the same names, sizes and mtimes

    def redraw() -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "vae.visualize", str(flat_run), "--data-root", str(copy),
               "--out", str(tmp_path / "figs")]  # fmt: skip
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)

    same = redraw()
    assert same.returncode == 0, same.stderr
    assert "has changed" not in same.stderr
    _png(copy / "new.png", _grey(1000, (12, 12)))
    changed = redraw()
    assert changed.returncode == 0, changed.stderr
    assert f"note: {copy} has changed since the model was trained" in changed.stderr


def test_a_redraw_of_a_moved_or_reshaped_folder_says_what_to_pass(
    flat_run: Path, tmp_path: Path
) -> None:
    """The folder the run recorded is gone (moved): both commands name it and ``--data-root``;
    a folder whose images no longer have the trained shape is refused the same way."""
    folder = flat_run.parent / "flat"

    def run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", module, str(flat_run), *args]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT)

    fix = (
        "pass --data-root DIR for the folder of images the model was trained on (where it is "
        "now, if it moved)"
    )
    moved = folder.rename(flat_run.parent / "moved")
    try:
        for module, out in (("vae.visualize", "figs"), ("vae.explore", "page.html")):
            done = run(module, "--out", str(tmp_path / out))
            assert done.returncode == 2, done.stderr[-2000:]
            errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
            assert errors == [f"error: {folder}: no such file or directory; {fix}"], module
        again = run("vae.visualize", "--out", str(tmp_path / "figs"), "--data-root", str(moved))
        assert again.returncode == 0, again.stderr[-2000:]
        assert "has changed" not in again.stderr  # the same files: moving changes nothing
    finally:
        moved.rename(folder)
    bigger = tmp_path / "bigger"
    for i in range(20):
        _png(bigger / f"{i:02d}.png", _grey(i, (16, 16)))
    done = run("vae.explore", "--out", str(tmp_path / "p.html"), "--data-root", str(bigger))
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stderr.splitlines()[-1] == (
        f"error: {bigger}: its images are now 1×16×16 (channels×height×width), the model was "
        f"trained on 1×12×12; {fix}"
    )
