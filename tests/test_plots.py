"""Tests for vae.viz.plots, with numbers checked against independent references (numpy, scipy, PIL).

No model: fake decoders write their latent code into pixel intensities, so each tile can be traced
back to the latent point it was decoded from.
"""

from __future__ import annotations

import ast
import inspect

import matplotlib
import numpy as np
import pytest
import torch
from grid_helpers import as_rgb8, locate, tiles
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image
from scipy.stats import norm

from vae.viz import plots

TILE = 28
PAD = 2  # the documented grid padding
LO, HI = -4.0, 4.0  # range a fake decoder can encode into [0, 1]


def grid_size(rows: int, cols: int, tile: int = TILE, pad: int = PAD) -> tuple[int, int, int]:
    """(3, H, W) of a make_grid image, from the padding formula (not from make_grid)."""
    return (3, rows * (tile + pad) + pad, cols * (tile + pad) + pad)


def tile_at(grid: torch.Tensor, i: int, j: int, tile: int = TILE, pad: int = PAD) -> torch.Tensor:
    top, left = pad + i * (tile + pad), pad + j * (tile + pad)
    return grid[:, top : top + tile, left : left + tile]


def encode_z(z: torch.Tensor) -> torch.Tensor:
    """Fake decoder: (n, d) → (n, 1, 28, 28); image row k (k < d) holds (z_k − LO)/(HI − LO)."""
    n, d = z.shape
    assert d <= TILE
    assert bool(((z > LO) & (z < HI)).all())
    img = torch.zeros(n, 1, TILE, TILE)
    img[:, 0, :d, :] = ((z - LO) / (HI - LO))[:, :, None].float()
    return img


def decode_tile(tile: torch.Tensor, d: int) -> np.ndarray:
    """Inverse of :func:`encode_z` for one (3, 28, 28) tile → z (d,)."""
    return tile[0, :d, :].double().mean(dim=1).numpy() * (HI - LO) + LO


class CountingDecoder:
    def __init__(self, fn=encode_z) -> None:
        self.fn = fn
        self.batches: list[int] = []
        self.inputs: list[torch.Tensor] = []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        assert not torch.is_grad_enabled()
        self.batches.append(z.shape[0])
        self.inputs.append(z.clone())
        return self.fn(z)


def smooth_decoder(z: torch.Tensor) -> torch.Tensor:
    """A nonlinear fake decoder with values in (0, 1): sigmoid of a fixed random projection."""
    w = torch.Generator().manual_seed(123)
    proj = torch.randn(z.shape[1], TILE * TILE, generator=w)
    return torch.sigmoid(z.float() @ proj).reshape(-1, 1, TILE, TILE)


def labelled_points(n: int = 300, d: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """z whose first coordinate encodes the label: floor(z₁) == label. Every class present."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    rng.shuffle(labels)
    z = rng.normal(size=(n, d))
    z[:, 0] = labels + rng.uniform(0.05, 0.95, size=n)
    return z, labels


# ---- PCA -----------------------------------------------------------------------------------------
def test_pca_2d_matches_numpy_svd_and_covariance() -> None:
    rng = np.random.default_rng(1)
    z = rng.normal(size=(400, 5)) @ rng.normal(size=(5, 5)) + rng.normal(size=5) * 3
    proj, comps, mean, ratio = plots.pca_2d(torch.from_numpy(z))

    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(mean.numpy(), z.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(ratio.numpy(), s[:2] ** 2 / np.sum(s**2), rtol=1e-10)
    eig = np.linalg.eigvalsh(np.cov(z, rowvar=False))[::-1]  # an independent route to the ratio
    np.testing.assert_allclose(ratio.numpy(), eig[:2] / eig.sum(), rtol=1e-8)

    for k in range(2):  # same direction up to sign; the sign follows the documented convention
        sign = np.sign(vt[k] @ comps[k].numpy())
        np.testing.assert_allclose(comps[k].numpy(), sign * vt[k], atol=1e-10)
        np.testing.assert_allclose(proj[:, k].numpy(), sign * (centred @ vt[k]), atol=1e-9)
        pivot = np.argmax(np.abs(comps[k].numpy()))
        assert comps[k, pivot] > 0
    np.testing.assert_allclose(comps.numpy() @ comps.numpy().T, np.eye(2), atol=1e-12)


def test_pca_2d_dtype_determinism_and_validation() -> None:
    z = torch.randn(100, 4, generator=torch.Generator().manual_seed(0))
    a, b = plots.pca_2d(z), plots.pca_2d(z.clone())
    assert a.proj.dtype == torch.float32
    assert a.proj.shape == (100, 2)
    assert a.components.shape == (2, 4)
    assert a.mean.shape == (4,)
    assert a.explained_variance_ratio.shape == (2,)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
    with pytest.raises(ValueError, match="N ≥ 2 and d ≥ 2"):
        plots.pca_2d(torch.randn(10, 1))
    with pytest.raises(ValueError, match="N ≥ 2 and d ≥ 2"):
        plots.pca_2d(torch.randn(1, 3))


# ---- latent scatter ------------------------------------------------------------------------------
def test_latent_scatter_2d_points_colours_legend_and_labels() -> None:
    z, labels = labelled_points(n=300)
    fig = plots.latent_scatter(z, labels)
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert len(ax.collections) == 1
    coll = ax.collections[0]
    offsets = np.asarray(coll.get_offsets())
    assert offsets.shape == (300, 2)
    # the same rows as z (drawing order is shuffled)
    np.testing.assert_allclose(offsets[np.lexsort(offsets.T)], z[np.lexsort(z.T)])

    legend = fig.legends[0]
    assert [t.get_text() for t in legend.get_texts()] == [str(k) for k in range(10)]
    handle_colours = [to_rgba(h.get_color()) for h in legend.legend_handles]
    assert all(h.get_alpha() in (None, 1.0) for h in legend.legend_handles)
    assert len(set(handle_colours)) == 10
    tab10 = [to_rgba(c) for c in matplotlib.colormaps["tab10"].colors]
    assert handle_colours == tab10

    # each point's face colour is its class's legend colour (label recovered from floor(z₁))
    faces = coll.get_facecolors()
    assert faces.shape == (300, 4)
    point_labels = np.floor(offsets[:, 0]).astype(int)
    for point_rgba, label in zip(faces, point_labels, strict=True):
        np.testing.assert_allclose(point_rgba[:3], handle_colours[label][:3])
    assert len({tuple(np.round(f[:3], 6)) for f in faces}) == 10

    assert ax.get_xlabel() == "z₁"
    assert ax.get_ylabel() == "z₂"
    assert "PCA" not in ax.get_title()


FASHION_NAMES = (  # torchvision's FashionMNIST.classes, written out
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip


def _extent(fig: Figure, artist: object) -> object:
    """The artist's drawn box in figure fractions (after a real Agg draw)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return artist.get_window_extent(canvas.get_renderer()).transformed(fig.transFigure.inverted())


@pytest.mark.parametrize("d", [1, 2])
def test_fashion_legend_says_class_and_shows_every_name_in_full(d: int) -> None:
    z, labels = labelled_points(n=300, d=d)
    fig = plots.latent_scatter(z, labels, class_names=FASHION_NAMES)
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "class"
    assert tuple(t.get_text() for t in legend.get_texts()) == FASHION_NAMES
    box = _extent(fig, legend)
    assert box.x0 >= 0.0, box
    assert box.x1 <= 1.0, box  # nothing cut at the figure's edge
    axes = _extent(fig, fig.axes[0].patch)
    assert axes.x1 < box.x0  # the axes end before the legend starts
    ticks = _extent(fig, fig.axes[0].yaxis)  # the class names of the strip plot (d = 1)
    assert ticks.x0 >= 0.0, ticks
    if d == 1:
        shown = [t.get_text() for t in fig.axes[0].get_yticklabels()]
        assert shown == list(FASHION_NAMES)


def test_digit_legend_keeps_its_title_and_layout() -> None:
    z, labels = labelled_points(n=300)
    fig = plots.latent_scatter(z, labels)
    assert fig.legends[0].get_title().get_text() == "digit"
    np.testing.assert_allclose(fig.axes[0].get_position().bounds, plots.SCATTER_AXES)
    assert _extent(fig, fig.legends[0]).x1 <= 1.0


def test_latent_scatter_subsample_is_seeded() -> None:
    z, labels = labelled_points(n=500)
    fig_a = plots.latent_scatter(z, labels, max_points=60, seed=3)
    fig_b = plots.latent_scatter(z, labels, max_points=60, seed=3)
    fig_c = plots.latent_scatter(z, labels, max_points=60, seed=4)
    off_a, off_b, off_c = (
        np.asarray(f.axes[0].collections[0].get_offsets()) for f in (fig_a, fig_b, fig_c)
    )
    assert off_a.shape == (60, 2)
    np.testing.assert_array_equal(off_a, off_b)
    assert not np.array_equal(off_a, off_c)
    rows = {tuple(r) for r in z}
    assert all(tuple(r) in rows for r in off_a)  # a subset of the input rows, no duplicates
    assert len({tuple(r) for r in off_a}) == 60
    assert "60 of 500" in fig_a.axes[0].get_title()
    assert len(fig_a.legends[0].get_texts()) == 10  # every class in the legend regardless


def test_latent_scatter_pca_for_high_dim() -> None:
    z, labels = labelled_points(n=300, d=6)
    z[:, 1] *= 5.0  # make the leading direction clear
    fig = plots.latent_scatter(z, labels, title="epoch 3")
    ax = fig.axes[0]
    assert ax.get_title().startswith("epoch 3")
    assert "PCA projection of the 6-D latent" in ax.get_title()

    centred = z - z.mean(axis=0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    pct = 100 * s[:2] ** 2 / np.sum(s**2)
    assert ax.get_xlabel() == f"PC₁ ({pct[0]:.1f} % var.)"
    assert ax.get_ylabel() == f"PC₂ ({pct[1]:.1f} % var.)"
    offsets = np.asarray(ax.collections[0].get_offsets())
    assert offsets.shape == (300, 2)
    for k in range(2):  # same projected values up to the sign convention
        np.testing.assert_allclose(
            np.sort(np.abs(offsets[:, k])), np.sort(np.abs(centred @ vt[k])), atol=1e-9
        )


def test_latent_scatter_1d_is_a_jittered_strip() -> None:
    rng = np.random.default_rng(2)
    labels = np.arange(200) % 10
    z = rng.normal(size=(200, 1))
    fig = plots.latent_scatter(z, labels)
    ax = fig.axes[0]
    offsets = np.asarray(ax.collections[0].get_offsets())
    assert offsets.shape == (200, 2)
    np.testing.assert_allclose(np.sort(offsets[:, 0]), np.sort(z[:, 0]))
    # y is the class index ± jitter < 0.5, so rounding recovers the class
    idx = np.argsort(offsets[:, 0])
    np.testing.assert_array_equal(np.round(offsets[idx, 1]), labels[np.argsort(z[:, 0])])
    assert ax.get_xlabel() == "z₁"
    assert [t.get_text() for t in ax.get_yticklabels()] == [str(k) for k in range(10)]


def test_latent_scatter_validates_labels() -> None:
    z = np.zeros((5, 2))
    with pytest.raises(ValueError, match="labels must lie in"):
        plots.latent_scatter(z, np.array([0, 1, 2, 3, 10]))
    with pytest.raises(ValueError, match="shape"):
        plots.latent_scatter(z, np.array([0, 1, 2]))


# ---- manifold ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 2, 7, 20])
def test_manifold_grid_coords_are_normal_quantiles(n: int) -> None:
    coords = plots.manifold_grid_coords(n)
    assert coords.shape == (n, n, 2)
    assert coords.dtype == torch.float32
    g = norm.ppf((np.arange(n) + 0.5) / n)
    for i in range(n):
        for j in range(n):
            np.testing.assert_allclose(coords[i, j].numpy(), [g[j], g[n - 1 - i]], atol=1e-6)
    if n > 1:
        assert bool((coords[:, 1:, 0] > coords[:, :-1, 0]).all())  # z₁ grows left → right
        assert bool((coords[1:, :, 1] < coords[:-1, :, 1]).all())  # z₂ falls top → bottom
        assert bool((coords[:, 1:, 1] == coords[:, :-1, 1]).all())  # rows share z₂
        assert bool((coords[1:, :, 0] == coords[:-1, :, 0]).all())  # columns share z₁


def test_manifold_grid_coords_with_eps() -> None:
    coords = plots.manifold_grid_coords(15, eps=0.05, dtype=torch.float64)
    g = norm.ppf(np.linspace(0.05, 0.95, 15))
    np.testing.assert_allclose(coords[0, :, 0].numpy(), g, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(coords[:, 0, 1].numpy(), g[::-1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="eps"):
        plots.manifold_grid_coords(5, eps=0.5)


def test_manifold_2d_shape_padding_and_tile_provenance() -> None:
    n = 7
    decoder = CountingDecoder()
    grid = plots.manifold(decoder, n=n, batch_size=10)
    assert grid.shape == grid_size(n, n)
    assert grid.dtype == torch.float32
    assert decoder.batches == [10, 10, 10, 10, 9]  # chunked, n² codes in all
    # white padding: first/last pixel rows and columns, and the gutter between tiles
    assert bool((grid[:, :PAD, :] == 1).all())
    assert bool((grid[:, -PAD:, :] == 1).all())
    assert bool((grid[:, :, PAD + TILE : 2 * PAD + TILE] == 1).all())

    g = norm.ppf((np.arange(n) + 0.5) / n)
    for i in range(n):
        for j in range(n):
            expected = [g[j], g[n - 1 - i]]  # z₁ right, z₂ up
            np.testing.assert_allclose(decode_tile(tile_at(grid, i, j), 2), expected, atol=1e-5)


def test_single_tile_grids_are_padded_like_any_grid() -> None:
    assert plots.manifold(encode_z, n=1).shape == grid_size(1, 1)
    one = plots.sample_grid(smooth_decoder, n=1, latent_dim=2)
    assert one.shape == grid_size(1, 1)
    assert bool((one[:, :PAD, :] == plots.GRID_PAD_VALUE).all())


def test_manifold_high_dim_uses_pca_plane_and_scale() -> None:
    d, n = 5, 4
    rng = np.random.default_rng(3)
    basis = np.linalg.qr(rng.normal(size=(d, 2)))[0].T  # (2, d) orthonormal rows
    center = rng.uniform(-0.5, 0.5, size=d)
    scale = np.array([0.8, 0.3])
    grid = plots.manifold(
        encode_z,
        n=n,
        latent_dim=d,
        basis=torch.from_numpy(basis),
        center=torch.from_numpy(center),
        scale=torch.from_numpy(scale),
    )
    assert grid.shape == grid_size(n, n)
    g = norm.ppf((np.arange(n) + 0.5) / n)
    for i in range(n):
        for j in range(n):
            expected = center + (scale * np.array([g[j], g[n - 1 - i]])) @ basis
            np.testing.assert_allclose(decode_tile(tile_at(grid, i, j), d), expected, atol=1e-5)

    with pytest.raises(ValueError, match="basis"):
        plots.manifold(encode_z, n=n, latent_dim=d, basis=basis, center=center)  # no scale
    with pytest.raises(ValueError, match="basis must have shape"):
        plots.manifold(encode_z, n=n, latent_dim=d, basis=basis[:, :3], center=center, scale=1.0)


def test_manifold_high_dim_with_pca_of_posterior_means() -> None:
    """The intended use: the plane of pca_2d(mu), other coordinates at the means' mean."""
    mu = torch.randn(200, 3, generator=torch.Generator().manual_seed(5)) * torch.tensor(
        [1.0, 0.5, 0.1]
    )
    pca = plots.pca_2d(mu)
    grid = plots.manifold(
        encode_z,
        n=3,
        latent_dim=3,
        basis=pca.components,
        center=pca.mean,
        scale=pca.proj.std(dim=0),
    )
    centre_tile = decode_tile(tile_at(grid, 1, 1), 3)  # middle quantile ½ → Φ⁻¹ = 0 → the mean
    np.testing.assert_allclose(centre_tile, pca.mean.numpy(), atol=1e-5)


def test_manifold_figure_ticks_and_size() -> None:
    n = 5
    grid = plots.manifold(encode_z, n=n)
    coords = plots.manifold_grid_coords(n)
    fig = plots.manifold_figure(grid, coords, title="manifold")
    ax = fig.axes[0]
    g = norm.ppf((np.arange(n) + 0.5) / n)
    centres = [PAD + k * (TILE + PAD) + (TILE - 1) / 2 for k in range(n)]
    np.testing.assert_allclose(ax.get_xticks(), centres)
    np.testing.assert_allclose(ax.get_yticks(), centres)
    assert [t.get_text() for t in ax.get_xticklabels()] == [f"{v:.2f}" for v in g]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"{v:.2f}" for v in g[::-1]]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("z₁", "z₂")
    assert plots.figure_to_tensor(fig).shape == (3, 600, 600)


# ---- image grids ---------------------------------------------------------------------------------
def constant_images(values: np.ndarray) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)[:, None, None, None].expand(-1, 1, TILE, TILE)


@pytest.mark.parametrize(("n", "nrow"), [(12, 4), (10, 4), (3, 8)])
def test_reconstruction_grid_pairs_rows(n: int, nrow: int) -> None:
    x = constant_images(np.linspace(0.0, 0.45, n))
    x_hat = constant_images(np.linspace(0.55, 1.0, n))
    grid = plots.reconstruction_grid(x, x_hat, nrow=nrow)
    cols = min(nrow, n)
    pairs = -(-n // cols)
    assert grid.shape == grid_size(2 * pairs, cols)
    assert grid.min() >= 0.0
    assert grid.max() <= 1.0
    for k in range(n):
        p, j = divmod(k, cols)
        assert torch.equal(tile_at(grid, 2 * p, j), x[k].expand(3, -1, -1))
        assert torch.equal(tile_at(grid, 2 * p + 1, j), x_hat[k].expand(3, -1, -1))
    for k in range(n, pairs * cols):  # a short last pair is padded with blank tiles
        p, j = divmod(k, cols)
        assert bool((tile_at(grid, 2 * p, j) == plots.GRID_PAD_VALUE).all())


def test_image_grids_reject_out_of_range_values() -> None:
    x = torch.rand(4, 1, TILE, TILE)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.reconstruction_grid(x, x * 10 - 5)  # logits, say
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plots.sample_grid(lambda z: encode_z(z) * 2 - 1, n=4)


def test_sample_grid_is_seeded_and_decodes_prior_draws() -> None:
    before = torch.get_rng_state()
    decoder = CountingDecoder(smooth_decoder)
    a = plots.sample_grid(decoder, n=64, latent_dim=2, generator=torch.Generator().manual_seed(7))
    b = plots.sample_grid(
        smooth_decoder, n=64, latent_dim=2, generator=torch.Generator().manual_seed(7)
    )
    c = plots.sample_grid(
        smooth_decoder, n=64, latent_dim=2, generator=torch.Generator().manual_seed(8)
    )
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is left alone
    assert a.shape == grid_size(8, 8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.min() >= 0.0
    assert a.max() <= 1.0
    expected_z = torch.randn(64, 2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.cat(decoder.inputs), expected_z)
    tile = smooth_decoder(expected_z[2 * 8 + 5][None])[0]  # tile (2, 5) of the 8 × 8 grid
    torch.testing.assert_close(tile_at(a, 2, 5), tile.expand(3, -1, -1))

    odd = plots.sample_grid(smooth_decoder, n=10, latent_dim=3, nrow=5)
    assert odd.shape == grid_size(2, 5)


def test_interpolation_grid_endpoints_and_midpoint() -> None:
    gen = torch.Generator().manual_seed(0)
    z_start, z_end = torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)
    steps = 11
    decoder = CountingDecoder(smooth_decoder)
    grid = plots.interpolation_grid(decoder, z_start, z_end, steps=steps, batch_size=8)
    assert grid.shape == grid_size(3, steps)
    assert grid.min() >= 0.0
    assert grid.max() <= 1.0
    paths = torch.cat(decoder.inputs).reshape(3, steps, 4)  # row-major: pair r, step t
    assert torch.equal(paths[:, 0], z_start)  # endpoints exactly
    assert torch.equal(paths[:, -1], z_end)
    torch.testing.assert_close(paths[:, steps // 2], (z_start + z_end) / 2)
    # tiles: equal up to float round-off (a matmul's result may depend on the batch it is in)
    first, last = smooth_decoder(z_start), smooth_decoder(z_end)
    mid = smooth_decoder((z_start + z_end) / 2)
    for r in range(3):
        torch.testing.assert_close(tile_at(grid, r, 0), first[r].expand(3, -1, -1))
        torch.testing.assert_close(tile_at(grid, r, steps - 1), last[r].expand(3, -1, -1))
        torch.testing.assert_close(tile_at(grid, r, steps // 2), mid[r].expand(3, -1, -1))

    # the path is a straight line: encode_z lets us read every latent back
    z0, z1 = torch.tensor([[-1.0, 2.0]]), torch.tensor([[3.0, -2.0]])
    line = plots.interpolation_grid(encode_z, z0, z1, steps=5)
    for t, s in enumerate(np.linspace(0, 1, 5)):
        expected = (1 - s) * z0[0].numpy() + s * z1[0].numpy()
        np.testing.assert_allclose(decode_tile(tile_at(line, 0, t), 2), expected, atol=1e-5)


# ---- grid figures: the grid's pixels, a title, row labels ------------------------------------
def _png_pixels(fig: Figure, path) -> np.ndarray:
    """The figure as written by save_png, read back by PIL: (H, W, 3) uint8."""
    plots.save_png(fig, path)
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _text_box(fig: Figure, text) -> tuple[float, float, float, float]:
    """(left, top, right, bottom) of a Text in pixels from the figure's top-left corner."""
    renderer = fig.canvas.get_renderer()
    box = text.get_window_extent(renderer)
    height = fig.bbox.height
    return box.x0, height - box.y1, box.x1, height - box.y0


@pytest.mark.parametrize("channels", [1, 3])
def test_grid_figure_holds_the_grid_pixel_for_pixel(channels: int, tmp_path) -> None:
    gen = torch.Generator().manual_seed(3)
    h, w, n, cols = 11, 9, 10, 4  # tiles that are neither square nor MNIST's
    x = torch.rand(n, channels, h, w, generator=gen)
    x_hat = torch.rand(n, channels, h, w, generator=gen)
    grid = plots.reconstruction_grid(x, x_hat, nrow=cols)
    pairs = -(-n // cols)
    fig = plots.grid_figure(
        grid,
        title="Test images and their reconstructions",
        rows=2 * pairs,
        cols=cols,
        row_labels=["original", "reconstruction"] * pairs,
    )
    pixels = _png_pixels(fig, tmp_path / "grid.png")
    assert pixels.shape == (*plots.figure_to_tensor(fig).shape[1:], 3)
    assert pixels.shape[0] > grid.shape[1]  # room for the title
    assert pixels.shape[1] > grid.shape[2]  # and the labels
    originals, recons = as_rgb8(x.numpy()), as_rgb8(x_hat.numpy())  # the reference pixels
    first = locate(pixels, originals[0])
    found = tiles(pixels, first, rows=2 * pairs, cols=cols, size=(h, w), pad=PAD)
    for k in range(n):
        p, j = divmod(k, cols)
        np.testing.assert_array_equal(found[2 * p, j], originals[k], err_msg=f"original {k}")
        np.testing.assert_array_equal(found[2 * p + 1, j], recons[k], err_msg=f"recon {k}")
    if channels == 3:
        assert np.abs(found[..., 0].astype(int) - found[..., 2]).max() > 200  # in colour
    # the padding around and between the tiles stays white
    top, left = first[0] - PAD, first[1] - PAD
    block = pixels[top : top + grid.shape[1], left : left + grid.shape[2]]
    assert bool((block[:PAD] == 255).all() and (block[:, :PAD] == 255).all())
    assert bool((block[PAD + h : 2 * PAD + h] == 255).all())


def test_grid_figure_has_a_title_and_a_label_beside_each_row(tmp_path) -> None:
    steps, labels = 6, ["0 → 1", "1 → 2", "T-shirt/top → Trouser"]
    starts = torch.randn(3, 2, generator=torch.Generator().manual_seed(0))
    grid = plots.interpolation_grid(smooth_decoder, starts, -starts, steps=steps)
    columns = ["start", "", "", "", "", "end"]
    title = "Straight latent paths between posterior means"
    fig = plots.grid_figure(
        grid, title=title, rows=3, cols=steps, row_labels=labels, column_labels=columns
    )
    pixels = _png_pixels(fig, tmp_path / "interpolation.png")
    first_tile = as_rgb8(smooth_decoder(starts[:1]).numpy())[0]
    top, left = locate(pixels, first_tile)  # tile (0, 0): the first path's start
    stride = TILE + PAD

    assert fig.get_suptitle() == title
    texts = {t.get_text(): t for t in fig.texts if t is not fig._suptitle}
    assert sorted(texts) == sorted([*labels, "start", "end"])  # no empty Text for no label
    t_left, t_top, t_right, t_bottom = _text_box(fig, fig._suptitle)
    assert t_top >= 0
    assert t_left >= 0
    assert t_right <= pixels.shape[1]
    assert t_bottom <= top - PAD  # above the grid
    for r, label in enumerate(labels):
        l_left, l_top, l_right, l_bottom = _text_box(fig, texts[label])
        assert l_left >= 0, label  # inside the figure, even the longest
        assert l_right <= left - PAD, label  # left of the grid
        centre = (l_top + l_bottom) / 2
        assert top + r * stride <= centre <= top + r * stride + TILE, label  # beside its row
    for c, label in ((0, "start"), (steps - 1, "end")):
        l_left, _, l_right, l_bottom = _text_box(fig, texts[label])
        assert left + c * stride <= (l_left + l_right) / 2 <= left + c * stride + TILE
        assert t_bottom <= l_bottom <= top - PAD  # between the title and the grid
    assert not bool((pixels[: top - PAD] == 255).all())  # the title band holds text
    assert not bool((pixels[:, : left - PAD] == 255).all())  # and so does the label column


def test_grid_figure_refuses_a_grid_it_cannot_label() -> None:
    grid = plots.sample_grid(smooth_decoder, n=6, nrow=3)  # 2 rows × 3 columns
    with pytest.raises(ValueError, match="3 row labels for 2 rows"):
        plots.grid_figure(grid, title="t", rows=2, cols=3, row_labels=["a", "b", "c"])
    with pytest.raises(ValueError, match="is not 7 rows × 3 columns"):
        plots.grid_figure(grid, title="t", rows=7, cols=3)
    fig = plots.grid_figure(grid, title="6 samples", rows=2, cols=3)  # no labels: just a title
    assert [t.get_text() for t in fig.texts] == ["6 samples"]  # the title alone
    assert fig.get_suptitle() == "6 samples"


# ---- figure → tensor, PNG files ------------------------------------------------------------------
def test_figure_to_tensor_and_save_png_round_trip(tmp_path) -> None:
    z, labels = labelled_points(n=100)
    fig = plots.latent_scatter(z, labels)
    img = plots.figure_to_tensor(fig)
    assert img.shape == (3, 600, 700)  # 7 × 6 in at 100 dpi
    assert img.dtype == torch.float32
    assert img.min() >= 0.0
    assert img.max() <= 1.0
    assert img.min() < 0.5 < img.max()  # something was drawn

    path = plots.save_png(fig, tmp_path / "sub" / "scatter.png")
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.size == (700, 600)
        rgb = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    assert torch.equal(rgb.float() / 255, img)  # figure_to_tensor shows exactly what is saved

    grid = plots.reconstruction_grid(
        torch.rand(6, 1, TILE, TILE), torch.rand(6, 1, TILE, TILE), nrow=3
    )
    path = plots.save_png(grid, tmp_path / "grid.png")
    with Image.open(path) as im:
        assert im.size == (grid.shape[2], grid.shape[1])
        pixels = np.asarray(im.convert("RGB")).transpose(2, 0, 1)
    np.testing.assert_array_equal(pixels, np.floor(grid.numpy() * 255 + 0.5).astype(np.uint8))

    with pytest.raises(TypeError):
        plots.save_png(np.zeros((3, 4, 4)), tmp_path / "bad.png")


def test_module_does_not_use_pyplot() -> None:
    """Figures come from the object API, so no pyplot global state and no GUI backend."""
    imported: set[str] = set()
    for node in ast.walk(ast.parse(inspect.getsource(plots))):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            imported.add(node.module)
    assert "matplotlib.pyplot" not in imported
    assert "lightning" not in {name.split(".")[0] for name in imported}
