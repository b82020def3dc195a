"""The figures, end to end: TensorBoard images, PNGs, the embedding projector and the re-plot CLI.

Most tests share one tiny real run (2 epochs × 8 batches, figures every epoch, a 500-point
projector) and check what it wrote against references computed here independently: pixel sizes
from make_grid's padding formula, labels from the raw IDX file, posterior means from last.ckpt,
manifold coordinates from scipy's Φ⁻¹. The callback's scheduling and rank-zero behaviour are
checked with a stand-in trainer (no training), and the drawing with stand-in models.
"""

from __future__ import annotations

import errno
import gzip
import io
import json
import math
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from google.protobuf import text_format
from grid_helpers import as_rgb8, locate, tiles
from lightning.pytorch.loggers import TensorBoardLogger
from matplotlib import colormaps
from PIL import Image
from scipy.stats import norm
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.projector import projector_config_pb2
from torch import Tensor

from vae.errors import ConfigError
from vae.train.data import MNISTDataModule
from vae.train.environment import format_environment
from vae.train.module import VAEModule
from vae.train.run import build_module, train
from vae.viz import figures as visualize
from vae.viz import plots
from vae.viz.callbacks import LatentVisualizer
from vae.viz.figures import FIGURES, FigureOptions, render_figures, to_images

TILE, PAD = 28, 2  # MNIST tiles; make_grid padding of every grid in vae.viz.plots
EPOCHS = 2
PROJECTOR_POINTS = 500


def grid_px(rows: int, cols: int) -> tuple[int, int]:
    """(width, height) of make_grid's output for rows × cols tiles: n·(28 + 2) + 2 each way."""
    return cols * (TILE + PAD) + PAD, rows * (TILE + PAD) + PAD


#: (width, height) of the fixed-size figures, derived from the spec
EXPECTED_PX = {
    "latent_space": (700, 600),  # 7 × 6 in at 100 dpi
    "manifold": (600, 600),  # 6 × 6 in at 100 dpi
}
#: (rows, columns) of tiles in the grid figures with the callback's defaults (each figure is its
#: grid, pixel for pixel, with a title above and labels beside it)
GRID_TILES = {
    "reconstructions": (2 * math.ceil(32 / 8), 8),  # 32 images above their 32 recons
    "samples": (8, 8),  # 64 samples
    "interpolation": (10, 10),  # 10 pairs (0→1, …, 9→0) × 10 steps
}
SCALAR_TAGS = (
    "train/loss_step",
    "train/loss_epoch",
    "val/loss",
    "val/kl",
    "val/active_units",
    "test/loss",
    "test/nll_iw",
)


def _rgb(source: Path | bytes) -> np.ndarray:
    """A PNG (file or bytes) as an RGB uint8 array (H, W, 3)."""
    with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return np.asarray(im.convert("RGB"))


def _as_rgb_uint8(image: Tensor) -> np.ndarray:
    """An image tensor (3, H, W) in [0, 1] rounded to 8 bits like a PNG, as (H, W, 3)."""
    return image.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _steps_per_epoch() -> int:
    from conftest import TINY

    (value,) = [o.split("=")[1] for o in TINY if o.startswith("trainer.limit_train_batches=")]
    return int(value)


# ---- the shared tiny run -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(mnist_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny real run with images every epoch and a 500-point projector; its run directory."""
    from conftest import TINY, compose_config

    run_dir = tmp_path_factory.mktemp("visualize") / "run"
    cfg = compose_config(
        [
            *TINY,
            f"trainer.max_epochs={EPOCHS}",
            "callbacks.visualize.every_n_epochs=1",
            f"callbacks.visualize.projector_points={PROJECTOR_POINTS}",
        ],
        output_dir=run_dir,
    )
    train(cfg)
    return run_dir


@pytest.fixture(scope="module")
def test_split(mnist_root: Path) -> tuple[Tensor, Tensor]:
    """The 10,000 test images as the data module converts them (float in [0, 1]) and their labels."""
    dm = MNISTDataModule(root=mnist_root, download=False)
    dm.setup("test")
    return dm.to_float(dm.test_dataset.images), dm.test_dataset.labels


@pytest.fixture(scope="module")
def raw_test_labels(mnist_root: Path) -> np.ndarray:
    """The test labels read straight from the IDX file (8-byte header), independent of vae.train.data."""
    data = gzip.decompress(
        (mnist_root / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").read_bytes()
    )
    assert int.from_bytes(data[:4], "big") == 2049  # IDX magic: unsigned bytes, 1 dimension
    assert int.from_bytes(data[4:8], "big") == 10_000
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


@pytest.fixture(scope="module")
def final_model(tiny_run: Path) -> VAEModule:
    """The model at the end of training, reloaded from last.ckpt."""
    ckpt = tiny_run / "checkpoints" / "last.ckpt"
    return VAEModule.load_from_checkpoint(ckpt, map_location="cpu").eval()


@pytest.fixture(scope="module")
def final_mu(final_model: VAEModule, test_split: tuple[Tensor, Tensor]) -> np.ndarray:
    """Posterior means E[z | x] of the final model for the 10,000 test images, (10000, 2)."""
    with torch.no_grad():
        return final_model.encode(test_split[0])[0].numpy()


@pytest.fixture(scope="module")
def final_figures_grid7(final_model: VAEModule, test_split: tuple[Tensor, Tensor]) -> dict:
    """render_figures of the final model on the whole test set, with a 7 × 7 manifold."""
    images, labels = test_split
    return render_figures(final_model, images, labels, options=FigureOptions(grid_size=7))


# ---- 1. TensorBoard ------------------------------------------------------------------------------
def test_tensorboard_has_the_scalars_and_one_set_of_images_per_epoch(tiny_run: Path) -> None:
    acc = EventAccumulator(str(tiny_run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    missing = [t for t in SCALAR_TAGS if t not in tags["scalars"]]
    assert not missing, f"scalars missing: {missing}; found {sorted(tags['scalars'])}"
    assert sorted(tags["images"]) == sorted(f"images/{name}" for name in FIGURES)
    assert len(acc.Scalars("val/loss")) == EPOCHS

    epoch_ends = [(e + 1) * _steps_per_epoch() for e in range(EPOCHS)]  # global_step: 8, 16
    for name in FIGURES:
        events = acc.Images(f"images/{name}")
        assert [e.step for e in events] == epoch_ends, name  # exactly one image per epoch
        with Image.open(tiny_run / f"{name}.png") as im:
            width, height = im.size
        assert EXPECTED_PX.get(name, (width, height)) == (width, height), name
        for event in events:
            assert (event.width, event.height) == (width, height), name
            assert _rgb(event.encoded_image_string).shape == (height, width, 3), name
        # the final image shows what the PNG shows, pixel for pixel
        np.testing.assert_array_equal(
            _rgb(events[-1].encoded_image_string), _rgb(tiny_run / f"{name}.png"), err_msg=name
        )
    # the first epoch's images come from the first epoch's model, not the final one
    first, last = acc.Images("images/samples")
    assert first.encoded_image_string != last.encoded_image_string


# ---- 2. the embedding projector ------------------------------------------------------------------
def test_projector_holds_the_test_posterior_means_labels_and_sprite(
    tiny_run: Path,
    test_split: tuple[Tensor, Tensor],
    raw_test_labels: np.ndarray,
    final_mu: np.ndarray,
) -> None:
    logdir = tiny_run / "tensorboard"
    config = text_format.Parse(
        (logdir / "projector_config.pbtxt").read_text(), projector_config_pb2.ProjectorConfig()
    )
    (embedding,) = config.embeddings
    final_step = EPOCHS * _steps_per_epoch()
    assert embedding.tensor_name == f"test_posterior_means:{final_step:05d}"
    folder = logdir / Path(embedding.tensor_path).parent
    assert sorted(p.name for p in folder.iterdir()) == ["metadata.tsv", "sprite.png", "tensors.tsv"]
    assert logdir / embedding.metadata_path == folder / "metadata.tsv"
    assert logdir / embedding.sprite.image_path == folder / "sprite.png"
    assert list(embedding.sprite.single_image_dim) == [TILE, TILE]

    n = PROJECTOR_POINTS
    metadata = (folder / "metadata.tsv").read_text().splitlines()
    assert len(metadata) == n
    np.testing.assert_array_equal([int(k) for k in metadata], raw_test_labels[:n])

    tensors = np.loadtxt(folder / "tensors.tsv", delimiter="\t", ndmin=2)
    # the 2-D means, and a zero third column (TensorBoard's PCA needs three)
    assert tensors.shape == (n, 3)
    np.testing.assert_allclose(tensors[:, :2], final_mu[:n], rtol=0, atol=1e-5)
    assert not tensors[:, 2].any()

    with Image.open(folder / "sprite.png") as im:
        side = math.ceil(math.sqrt(n)) * TILE
        assert im.size == (side, side)
        sprite = np.asarray(im.convert("L")).astype(int)
    # tile k at row k // 23, column k % 23 is test image k (8-bit, truncated); the rest is blank
    per_row = side // TILE
    digits = np.zeros((per_row * per_row, TILE, TILE))
    digits[:n] = test_split[0][:n, 0].numpy() * 255
    expected = digits.reshape(per_row, per_row, TILE, TILE).transpose(0, 2, 1, 3)
    assert np.abs(sprite - expected.reshape(side, side)).max() <= 1


# ---- 3. the latent scatter -----------------------------------------------------------------------
def test_scatter_shows_every_posterior_mean_coloured_by_digit(
    final_figures_grid7: dict, test_split: tuple[Tensor, Tensor], final_mu: np.ndarray
) -> None:
    fig = final_figures_grid7["latent_space"]
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == [str(k) for k in range(10)]
    ax = fig.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z₁", "z₂")
    assert "PCA" not in ax.get_title()
    (points,) = ax.collections
    offsets = np.asarray(points.get_offsets())
    colours = np.asarray(points.get_facecolors())[:, :3]
    labels = test_split[1].numpy()
    assert offsets.shape == (len(labels), 2)
    # points are drawn in a shuffled order: match them to the means by sorting both
    by_point = np.lexsort((offsets[:, 1], offsets[:, 0]))
    by_mean = np.lexsort((final_mu[:, 1], final_mu[:, 0]))
    np.testing.assert_allclose(offsets[by_point], final_mu[by_mean], rtol=0, atol=1e-6)
    tab10 = np.asarray(colormaps["tab10"].colors)
    np.testing.assert_allclose(colours[by_point], tab10[labels[by_mean]], atol=1e-6)


def test_scatter_of_a_3d_latent_is_its_pca_projection() -> None:
    from conftest import compose_config

    # an untrained latent_dim=3 VAEModule built from the config, on random images
    module = build_module(compose_config(["model.latent_dim=3"]), (1, 28, 28))
    images = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(200) % 10
    figures = render_figures(module, images, labels, options=FigureOptions(grid_size=3))
    ax = figures["latent_space"].axes[0]
    assert "PCA projection of the 3-D latent" in ax.get_title()
    assert ax.get_xlabel().startswith("PC₁")
    assert ax.get_ylabel().startswith("PC₂")
    assert figures["manifold"].axes[0].get_xlabel() == "PC₁"
    # the points are the means projected on their top two principal directions (up to sign)
    with torch.no_grad():
        mu = module.encode(images)[0].double().numpy()
    centred = mu - mu.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    proj = centred @ vt[:2].T
    offsets = np.asarray(ax.collections[0].get_offsets())
    by_point = np.lexsort((np.abs(offsets[:, 1]), np.abs(offsets[:, 0])))
    by_mean = np.lexsort((np.abs(proj[:, 1]), np.abs(proj[:, 0])))
    np.testing.assert_allclose(
        np.abs(offsets[by_point]), np.abs(proj[by_mean]), rtol=1e-4, atol=1e-5
    )


# ---- 4. the manifold -----------------------------------------------------------------------------
class PixelCodeVAE(torch.nn.Module):
    """A stand-in model whose pictures can be read back as numbers.

    ``encode`` reads the posterior mean off the first ``d`` pixels (mapped [0, 1] → [-2, 2]);
    ``decode`` paints z_k as the grey level (z_k + 8) / 16 of horizontal band k of the 28 × 28 tile.
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.band = math.ceil(TILE / latent_dim)
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu = (x.flatten(1)[:, : self.latent_dim] - 0.5) * 4
        return mu, torch.zeros_like(mu)

    def decode(self, z: Tensor) -> Tensor:
        rows = ((z + 8) / 16).repeat_interleave(self.band, dim=1)[:, :TILE]  # (n, 28)
        return rows[:, None, :, None].expand(-1, 1, TILE, TILE).contiguous()

    def read_tile(self, tile: np.ndarray) -> np.ndarray:
        """The z a decoded tile (28, 28) was painted from."""
        return tile[:: self.band, 0][: self.latent_dim] * 16 - 8


def _unit_sign(v: np.ndarray) -> np.ndarray:
    """Flip a direction so that its entry of largest magnitude is positive (pca_2d's convention)."""
    return v * np.sign(v[np.argmax(np.abs(v))])


@pytest.mark.parametrize(("latent_dim", "n"), [(2, 20), (3, 7)])
def test_manifold_tiles_decode_the_inverse_cdf_quantile_grid(latent_dim: int, n: int) -> None:
    model = PixelCodeVAE(latent_dim)
    gen = torch.Generator().manual_seed(1)
    spread = torch.tensor([1.5, 0.7, 0.3][:latent_dim])
    images = torch.rand(300, 1, TILE, TILE, generator=gen)
    images[:, 0, 0, :latent_dim] = torch.randn(300, latent_dim, generator=gen) * spread / 4 + 0.5
    images = images.clamp(0, 1)
    labels = torch.arange(300) % 10
    figures = render_figures(model, images, labels, options=FigureOptions(grid_size=n))
    ax = figures["manifold"].axes[0]
    grid = np.asarray(ax.images[0].get_array())  # the decoded grid as drawn
    assert grid.shape[:2] == (n * (TILE + PAD) + PAD,) * 2

    quantiles = norm.ppf((np.arange(n) + 0.5) / n)  # Φ⁻¹ of the cell midpoints
    mu = model.encode(images)[0].double().numpy()
    if latent_dim == 2:
        center, basis, scale = np.zeros(2), np.eye(2), np.ones(2)
        assert [t.get_text() for t in ax.get_xticklabels()] == [f"{q:.2f}" for q in quantiles]
        assert [t.get_text() for t in ax.get_yticklabels()] == [f"{q:.2f}" for q in quantiles[::-1]]
    else:  # the plane of the means' top two principal directions, scaled by their std
        center = mu.mean(axis=0)
        _, _, vt = np.linalg.svd(mu - center, full_matrices=False)
        basis = np.stack([_unit_sign(vt[0]), _unit_sign(vt[1])])
        scale = ((mu - center) @ basis.T).std(axis=0, ddof=1)
    for i in range(n):
        for j in range(n):
            top, left = PAD + i * (TILE + PAD), PAD + j * (TILE + PAD)
            tile = grid[top : top + TILE, left : left + TILE, 0]
            # z₁ grows left → right, z₂ bottom → top
            plane = np.array([quantiles[j], quantiles[n - 1 - i]]) * scale
            expected = center + plane @ basis
            np.testing.assert_allclose(model.read_tile(tile), expected, atol=1e-5)


def _tile(grid: np.ndarray, i: int, j: int) -> np.ndarray:
    """Tile (row i, column j) of a make_grid image (H, W[, C]) with 28 px tiles, 2 px padding."""
    top, left = PAD + i * (TILE + PAD), PAD + j * (TILE + PAD)
    return grid[top : top + TILE, left : left + TILE]


def _grid_tiles(pixels: np.ndarray, name: str, first: np.ndarray) -> np.ndarray:
    """The tiles ``(rows, cols, 28, 28, 3)`` of grid figure ``name`` found in its rendered
    ``pixels`` (H, W, 3) uint8: where tile (0, 0), ``first`` (28, 28, 3), is, and at 30 px steps."""
    rows, cols = GRID_TILES[name]
    return tiles(pixels, locate(pixels, first), rows=rows, cols=cols, size=(TILE, TILE), pad=PAD)


def test_reconstructions_samples_and_interpolations_decode_the_right_latents() -> None:
    model = PixelCodeVAE(2)
    gen = torch.Generator().manual_seed(2)
    images = torch.rand(100, 1, TILE, TILE, generator=gen)
    labels = torch.randperm(100, generator=gen) % 10
    figures = to_images(render_figures(model, images, labels, options=FigureOptions(seed=5)))
    drawn = {name: _as_rgb_uint8(image) for name, image in figures.items()}  # as the PNGs hold
    mu = model.encode(images)[0]
    # the pixels of a tile decoded from z, 8-bit, and the z read back from a drawn tile (a grey
    # level is exact to half a level: 0.5 / 255 · 16 in z)
    decoded = lambda z: as_rgb8(model.decode(torch.as_tensor(z, dtype=torch.float32)).numpy())  # noqa: E731
    read = lambda tile: model.read_tile(tile[..., 0] / 255.0)  # noqa: E731
    atol = 0.5 / 255 * 16 + 1e-6

    originals = as_rgb8(images[:32].numpy())
    recon = _grid_tiles(drawn["reconstructions"], "reconstructions", originals[0])
    for k in range(32):  # 4 pairs of rows × 8: originals over their reconstructions
        row, col = divmod(k, 8)
        np.testing.assert_array_equal(recon[2 * row, col], originals[k])
        np.testing.assert_array_equal(recon[2 * row + 1, col], decoded(mu[k : k + 1])[0])
        np.testing.assert_allclose(read(recon[2 * row + 1, col]), mu[k].numpy(), atol=atol)

    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(5))  # seeded by options.seed
    samples = _grid_tiles(drawn["samples"], "samples", decoded(z[:1])[0])
    for k in range(64):
        np.testing.assert_array_equal(samples[divmod(k, 8)], decoded(z[k : k + 1])[0])
        np.testing.assert_allclose(read(samples[divmod(k, 8)]), z[k].numpy(), atol=atol)

    firsts = [int(np.flatnonzero(labels.numpy() == k)[0]) for k in range(10)]
    paths = _grid_tiles(drawn["interpolation"], "interpolation", decoded(mu[firsts[0]][None])[0])
    for k in range(10):  # row k: first digit k → first digit (k + 1) % 10
        start, end = mu[firsts[k]].double().numpy(), mu[firsts[(k + 1) % 10]].double().numpy()
        np.testing.assert_array_equal(paths[k, 0], decoded(start[None])[0])  # the endpoints
        np.testing.assert_array_equal(paths[k, -1], decoded(end[None])[0])
        for t, s in enumerate(np.linspace(0, 1, 10)):
            np.testing.assert_allclose(read(paths[k, t]), (1 - s) * start + s * end, atol=atol)


def test_grid_figures_say_what_they_show() -> None:
    names = ("T-shirt/top", "Trouser", "Pullover")
    labels = torch.tensor([2, 0, 1, 0, 2, 1] * 5)
    images = torch.rand(30, 1, TILE, TILE, generator=torch.Generator().manual_seed(0))
    figures = render_figures(PixelCodeVAE(2), images, labels, class_names=names)

    def texts(name: str) -> list[str]:
        fig = figures[name]
        return [t.get_text() for t in fig.texts if t is not fig._suptitle]

    assert figures["reconstructions"].get_suptitle() == "Test images and their reconstructions"
    assert texts("reconstructions") == ["original", "reconstruction"] * 4  # 30 images, 8 a row
    assert figures["samples"].get_suptitle() == "64 samples decoded from z ~ N(0, I)"
    assert texts("samples") == []
    assert figures["interpolation"].get_suptitle() == (
        "Straight latent paths between posterior means"
    )
    assert texts("interpolation") == [
        "T-shirt/top → Trouser",  # the first image of each class to the first of the next
        "Trouser → Pullover",
        "Pullover → T-shirt/top",
        "start",
        "end",
    ]
    unlabelled = render_figures(PixelCodeVAE(2), images, torch.full((30,), -1), class_names=())
    rows = [t.get_text() for t in unlabelled["interpolation"].texts[1:]]
    assert rows[:10] == [f"#{k} → #{(k + 1) % 10}" for k in range(10)]  # test image indices


def test_png_files_of_the_run_have_the_expected_sizes_and_test_digits(
    tiny_run: Path, test_split: tuple[Tensor, Tensor]
) -> None:
    for name, size in EXPECTED_PX.items():
        with Image.open(tiny_run / f"{name}.png") as im:
            assert im.size == size, name
    # the upper row of each pair in reconstructions.png: the first 32 test images, 8 per row,
    # found in the PNG pixel for pixel
    digits = as_rgb8(test_split[0][:32].numpy())
    recon = _grid_tiles(_rgb(tiny_run / "reconstructions.png"), "reconstructions", digits[0])
    for k in range(32):
        row, col = divmod(k, 8)
        np.testing.assert_array_equal(recon[2 * row, col], digits[k])


def test_manifold_figure_renders_the_same_pixels_twice() -> None:
    n = 20
    image = torch.rand(3, *grid_px(n, n), generator=torch.Generator().manual_seed(0))
    fig = plots.manifold_figure(image, plots.manifold_grid_coords(n))
    first = plots.figure_to_tensor(fig)
    assert torch.equal(plots.figure_to_tensor(fig), first)


# ---- 5. the command line -------------------------------------------------------------------------
def test_cli_redraws_the_run_pngs_from_last_ckpt(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], final_figures_grid7: dict
) -> None:
    out = tmp_path / "replot"
    assert visualize.main([str(tiny_run), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out.split()
    assert sorted(printed) == sorted(str(out / f"{name}.png") for name in FIGURES)
    # the environment the run's numbers were measured in, as metrics.json records it
    env = json.loads((tiny_run / "metrics.json").read_text())["environment"]
    assert captured.err.splitlines()[-1] == f"run measured on: {format_environment(env)}"
    assert f"torch {torch.__version__}" in captured.err
    for name in FIGURES:
        redrawn = _rgb(out / f"{name}.png")
        width, height = EXPECTED_PX.get(name, redrawn.shape[1::-1])
        assert redrawn.shape == (height, width, 3), name
        np.testing.assert_array_equal(redrawn, _rgb(tiny_run / f"{name}.png"), err_msg=name)

    out7 = tmp_path / "grid7"
    assert (
        visualize.main(
            [str(tiny_run / "checkpoints" / "last.ckpt"), "--out", str(out7), "--grid-size", "7"]
        )
        == 0
    )
    capsys.readouterr()
    manifold7 = _rgb(out7 / "manifold.png")
    assert manifold7.shape == (600, 600, 3)
    assert not np.array_equal(manifold7, _rgb(out / "manifold.png"))
    # it is the 7 × 7 manifold of the final model, and nothing else changed
    reference = plots.figure_to_tensor(final_figures_grid7["manifold"])
    np.testing.assert_array_equal(manifold7, _as_rgb_uint8(reference))
    for name in ("latent_space", "reconstructions", "samples", "interpolation"):
        np.testing.assert_array_equal(_rgb(out7 / f"{name}.png"), _rgb(out / f"{name}.png"))


@pytest.mark.parametrize("what", ["missing", "empty_dir", "not_a_checkpoint"])
def test_cli_bad_target_is_one_error_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], what: str
) -> None:
    target = tmp_path / "target"
    if what == "empty_dir":
        target.mkdir()
    elif what == "not_a_checkpoint":
        target = tmp_path / "model.ckpt"
        target.write_text("not a checkpoint\n")
    assert visualize.main([str(target), "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert str(target) in lines[0]
    assert not (tmp_path / "out").exists()


def _one_error_line(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``visualize.main(argv)`` must return 2 with one ``error: …`` line and no output; → it."""
    capsys.readouterr()
    assert visualize.main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: "), lines[0]
    return lines[0]


@pytest.mark.parametrize("under", [False, True])
def test_cli_out_that_is_a_file_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], under: bool
) -> None:
    blocker = tmp_path / "figures"
    blocker.write_text("keep me\n")
    out = blocker / "sub" if under else blocker
    line = _one_error_line([str(tiny_run), "--out", str(out)], capsys)
    what = f"{blocker} is a file, not a folder" if under else "a file, not a folder"
    assert line == f"error: --out {out}: {what}; pass a folder for the figures with --out DIR"
    assert blocker.read_text() == "keep me\n"


@pytest.mark.parametrize("device", ["gpu0", "cuda:", "cuda", "cuda:99"])
def test_cli_bad_or_absent_device_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], device: str
) -> None:
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --device cuda is valid here")
    out = tmp_path / "out"
    line = _one_error_line([str(tiny_run), "--out", str(out), "--device", device], capsys)
    if device in ("gpu0", "cuda:"):  # torch.device() refuses the string itself
        with pytest.raises(RuntimeError):
            torch.device(device)
        assert line == (
            f"error: --device {device!r}: not a torch device; use cpu, cuda, cuda:<index> or mps"
        )
    else:
        assert line.startswith(f"error: --device {device!r}: not available on this machine (")
        assert line.endswith("); use --device cpu")
    assert not out.exists()


def test_cli_refuses_a_checkpoint_with_non_finite_weights(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    state = ckpt["state_dict"]
    floats = [k for k, v in state.items() if v.is_floating_point()]
    first, other = floats[0], floats[3]
    state[first].view(-1)[:5] = float("nan")
    state[other].view(-1)[0] = float("inf")
    path = tmp_path / "diverged.ckpt"
    torch.save(ckpt, path)
    out = tmp_path / "out"
    line = _one_error_line([str(path), "--out", str(out)], capsys)
    assert line == (
        f"error: {path}: 2 of {len(floats)} weight tensors hold NaN or infinite values (6 values, "
        f"first in {first}): the model had diverged when this checkpoint was written; redraw "
        "from an earlier checkpoint (such as the run's best-*.ckpt)"
    )
    assert not out.exists()


def test_cli_full_disk_is_one_line(
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    out = tmp_path / "out"

    def full(obj: object, path: Path) -> Path:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # what savefig/PIL raise then

    monkeypatch.setattr(plots, "save_png", full)
    line = _one_error_line([str(tiny_run), "--out", str(out), "--grid-size", "2"], capsys)
    assert re.fullmatch(
        re.escape(
            f"error: {out}: no space left on device while writing the figures; the file system mounted at "
        )
        + r".+ has [0-9.]+ (bytes|kB|MB|GB|TB) free; the checkpoint is intact; free space there, "
        r"or choose another folder with --out DIR",
        line,
    ), line


def test_cli_data_errors_name_the_cli_options(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = tmp_path / "nowhere"
    line = _one_error_line(
        [str(tiny_run), "--out", str(tmp_path / "o"), "--data-root", str(nowhere)], capsys
    )
    assert line.startswith("error: MNIST files missing: ")
    assert (
        f"looked in {nowhere / 'MNIST' / 'raw'}. (python -m vae.visualize does not download.)"
        in line
    )
    assert line.endswith(
        "or pass --data-root DIR (or set VAE_DATA_DIR) for a directory DIR holding MNIST/raw/."
    )
    assert "data.root" not in line
    assert "set data.download" not in line  # this command has no such option
    raw = tmp_path / "bad" / "MNIST" / "raw"
    raw.parent.mkdir(parents=True)
    raw.write_text("not a folder\n")
    line = _one_error_line(
        [str(tiny_run), "--out", str(tmp_path / "o"), "--data-root", str(raw.parents[1])], capsys
    )
    assert line == (
        f"error: {raw}: a regular file, not a directory; move it away and put the files in a "
        "directory there, or pass --data-root DIR (or set VAE_DATA_DIR) for a directory DIR "
        "holding MNIST/raw/."
    )
    assert not (tmp_path / "o").exists()


def test_cli_data_root_precedence_flag_then_environment_then_checkpoint(
    tiny_run: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    stored = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)[
        "datamodule_hyper_parameters"
    ]["root"]
    assert Path(stored).is_absolute()
    from_env, from_flag = tmp_path / "env", tmp_path / "flag"
    monkeypatch.setenv("VAE_DATA_DIR", str(from_env))
    out = str(tmp_path / "o")
    assert f"looked in {from_env / 'MNIST' / 'raw'}." in _one_error_line(
        [str(tiny_run), "--out", out], capsys
    )
    line = _one_error_line([str(tiny_run), "--out", out, "--data-root", str(from_flag)], capsys)
    assert f"looked in {from_flag / 'MNIST' / 'raw'}." in line
    # neither: the checkpoint's absolute root, from any working directory
    monkeypatch.delenv("VAE_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    assert visualize.main([str(tiny_run), "--out", out, "--grid-size", "2"]) == 0
    assert sorted(p.name for p in Path(out).iterdir()) == sorted(f"{n}.png" for n in FIGURES)


def test_cli_redraws_a_run_trained_with_a_relative_data_dir_from_elsewhere(
    mnist_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README's form, ``VAE_DATA_DIR=../shared/datasets``: the run stores the root absolute,
    so ``python -m vae.visualize`` finds the data from another directory, without the variable."""
    from conftest import TINY, compose_config

    data_dir = mnist_root.resolve()
    monkeypatch.chdir(data_dir.parent)
    monkeypatch.setenv("VAE_DATA_DIR", data_dir.name)  # relative to the working directory
    run = tmp_path / "run"
    cfg = compose_config(
        [*TINY, "trainer.limit_train_batches=2", "test=false", "~callbacks.visualize"],
        output_dir=run,
    )
    assert cfg.data.root == data_dir.name
    train(cfg)
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["datamodule_hyper_parameters"]["root"] == str(data_dir)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "VAE_DATA_DIR"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(visualize.__file__).parents[1]), env.get("PYTHONPATH", "")]
    )
    done = subprocess.run(
        [sys.executable, "-m", "vae.visualize", str(run), "--out", "figs", "--grid-size", "2"],
        cwd=elsewhere,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert sorted(done.stdout.split()) == sorted(f"figs/{n}.png" for n in FIGURES)
    assert all((elsewhere / "figs" / f"{n}.png").is_file() for n in FIGURES)


def test_cli_rejects_a_grid_size_below_one(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        visualize.main(["somewhere", "--grid-size", "0"])
    assert exit_info.value.code == 2
    assert re.search(r"--grid-size: expected an integer ≥ 1, got '0'", capsys.readouterr().err)


# ---- 6. no global randomness, rank zero only -----------------------------------------------------
def _global_rng_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()  # noqa: NPY002


@pytest.mark.parametrize("latent_dim", [1, 2, 3])
def test_drawing_leaves_the_global_rngs_alone(latent_dim: int) -> None:
    from conftest import compose_config

    module = build_module(compose_config([f"model.latent_dim={latent_dim}"]), (1, 28, 28))
    images = torch.rand(100, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    torch.manual_seed(123)
    before = _global_rng_states()
    figures = render_figures(
        module, images, torch.arange(100) % 10, options=FigureOptions(grid_size=4)
    )
    to_images(figures)
    after = _global_rng_states()
    assert torch.equal(before[0], after[0])
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2] == after[2]
    assert module.training  # put back in the mode it was in


class _StubDataModule:
    class_names = tuple(str(k) for k in range(10))

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        images = (torch.rand(40, 1, 28, 28, generator=gen) * 255).to(torch.uint8)
        self.test_dataset = SimpleNamespace(images=images, labels=torch.arange(40) % 10)

    @staticmethod
    def to_float(images: Tensor) -> Tensor:
        return images.float() / 255


def _fake_fit(
    callback: LatentVisualizer,
    tmp_path: Path,
    *,
    epochs_run: int,
    max_epochs: int,
    rank: int = 0,
    steps_per_epoch: int = 8,
) -> tuple[list[int], list[int]]:
    """Call the hooks as Lightning does for a fit that stops after ``epochs_run`` epochs.

    Returns (global steps at which figures were drawn, steps of the images/samples events).
    """
    logger = TensorBoardLogger(tmp_path, name="tb", version="")
    trainer = SimpleNamespace(
        is_global_zero=rank == 0,
        sanity_checking=False,
        current_epoch=0,
        global_step=0,
        max_epochs=max_epochs,
        loggers=[logger],
        datamodule=_StubDataModule(),
        default_root_dir=str(tmp_path),
    )
    drawn: list[int] = []

    def draw(trainer: SimpleNamespace, module: object) -> dict[str, Tensor]:
        drawn.append(trainer.global_step)
        return {"samples": torch.full((3, 6, 6), trainer.global_step / 100)}

    callback._draw = draw  # the drawing itself is tested above; here: when it happens
    module = PixelCodeVAE(2)
    callback.on_fit_start(trainer, module)
    for epoch in range(epochs_run):
        trainer.current_epoch = epoch
        trainer.global_step = (epoch + 1) * steps_per_epoch
        callback.on_train_epoch_end(trainer, module)
    callback.on_fit_end(trainer, module)
    logger.finalize("success")
    acc = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    acc.Reload()
    events = acc.Images("images/samples") if "images/samples" in acc.Tags()["images"] else []
    return drawn, [e.step for e in events]


@pytest.mark.parametrize(
    ("every_n", "max_epochs", "epochs_run", "logged"),
    [
        (1, 3, 3, [8, 16, 24]),
        (1, -1, 2, [8, 16]),  # max_epochs=-1 (stopped by max_steps): every epoch still gets images
        (1, 10, 2, [8, 16]),  # early stopping: the last epoch is not logged twice
        (2, 3, 3, [16, 24]),  # epoch 2 is not due; the end of training is
        (2, 4, 4, [16, 32]),
        (0, 3, 3, [24]),  # only at the end
    ],
)
def test_each_due_epoch_and_the_end_get_exactly_one_set_of_images(
    tmp_path: Path, every_n: int, max_epochs: int, epochs_run: int, logged: list[int]
) -> None:
    callback = LatentVisualizer(every_n_epochs=every_n, projector=False)
    drawn, steps = _fake_fit(callback, tmp_path, epochs_run=epochs_run, max_epochs=max_epochs)
    assert steps == logged
    due = [8 * (e + 1) for e in range(epochs_run) if every_n and (e + 1) % every_n == 0]
    assert set(drawn) == {*due, 8 * epochs_run}
    assert drawn[-1] == 8 * epochs_run  # the PNGs are drawn from the final model
    png = _rgb(tmp_path / "samples.png")
    assert png.shape == (6, 6, 3)
    assert np.all(png == round(255 * 8 * epochs_run / 100))


@pytest.mark.parametrize(
    ("epoch_s", "draw_s"),
    [(1.0, 3.0), (10.0, 0.1), (1.0, 100.0)],  # figures: 3 epochs' cost, a tiny one, a huge one
)
def test_auto_cadence_keeps_drawing_within_its_share_of_the_fit(
    epoch_s: float, draw_s: float
) -> None:
    """every_n_epochs=auto on a clock where an epoch takes ``epoch_s`` and a set of figures
    ``draw_s``: the first epoch is drawn; every later draw keeps the time spent on figures within
    5 % of the fit; and no epoch that could have been drawn within it was skipped."""
    now = [0.0]
    callback = LatentVisualizer(projector=False)  # every_n_epochs="auto" by default
    callback._clock = lambda: now[0]

    def draw(trainer: SimpleNamespace, module: object) -> dict[str, Tensor]:
        now[0] += draw_s
        return {}

    callback._draw = draw
    trainer = SimpleNamespace(is_global_zero=True, sanity_checking=False, loggers=[])
    callback.on_fit_start(trainer, None)
    drawn, spent = [], 0.0
    for epoch in range(300):
        now[0] += epoch_s
        trainer.current_epoch, trainer.global_step = epoch, epoch + 1
        would_fit = spent + draw_s <= 0.05 * (now[0] + draw_s)  # drawing now stays within 5 %
        callback.on_train_epoch_end(trainer, None)
        if now[0] > (epoch + 1) * epoch_s + spent:  # the clock moved: it drew
            drawn.append(epoch)
            spent += draw_s
            assert epoch == 0 or spent <= 0.05 * now[0] + 1e-9, (epoch, spent, now[0])
        else:
            assert not would_fit, epoch
    assert drawn[0] == 0
    if draw_s <= 0.05 * epoch_s:  # cheap figures: every epoch, as every_n_epochs=1
        assert drawn == list(range(300))
    else:
        assert 1 < len(drawn) < 300 or draw_s > 0.05 * 300 * epoch_s, drawn


def test_every_n_epochs_takes_auto_or_a_count() -> None:
    assert LatentVisualizer().every_n_epochs == "auto"
    for bad in (-1, "sometimes", 1.5):
        with pytest.raises(
            ConfigError,
            match=rf"^callbacks\.visualize\.every_n_epochs={bad!r}: expected auto or an integer ≥ 0$",
        ):
            LatentVisualizer(every_n_epochs=bad)
    with pytest.raises(
        ConfigError, match=r"^callbacks\.visualize\.grid_size=0: expected an integer ≥ 1$"
    ):
        LatentVisualizer(grid_size=0)


def test_only_global_rank_zero_draws_or_writes(tmp_path: Path) -> None:
    callback = LatentVisualizer(every_n_epochs=1, projector=True)
    drawn, steps = _fake_fit(callback, tmp_path, epochs_run=2, max_epochs=2, rank=1)
    assert drawn == []
    assert steps == []
    assert not list(tmp_path.glob("*.png"))
    assert not list(tmp_path.rglob("projector_config.pbtxt"))


def test_help_describes_every_option_with_its_default(capsys: pytest.CaptureFixture[str]) -> None:
    from vae.viz.figures import FigureOptions, main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    for option in ("grid_size", "n_samples", "n_reconstructions", "interpolation_steps", "seed"):
        flag = "--" + option.replace("_", "-")
        default = getattr(FigureOptions(), option)
        assert re.search(rf"{flag} \S+ [^-]+\(default: {default}\)", text), option
    assert "--device DEVICE where the model runs: cpu, cuda or mps (default: cpu)" in text
