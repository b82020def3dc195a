"""Pure plotting helpers: tensors / arrays in, a matplotlib ``Figure`` or an image tensor out.

Conventions (shared by every function here):

* **Image grids** are built by :func:`torchvision.utils.make_grid` and returned as float32 CPU
  tensors in [0, 1] of shape ``(3, H, W)`` (make_grid repeats a single channel to RGB), ready for
  TensorBoard's ``add_image`` (``dataformats="CHW"``) or :func:`save_png`. Every grid uses
  :data:`GRID_PADDING` = 2 px of white padding (:data:`GRID_PAD_VALUE` = 1.0, which separates the
  black MNIST backgrounds), so ``r`` rows × ``c`` columns of ``h × w`` tiles give
  ``(3, r·(h+2)+2, c·(w+2)+2)``; e.g. the 20 × 20 MNIST manifold is ``(3, 602, 602)``. A single
  tile is padded the same way (make_grid alone would return it unpadded).
* **Figures** are :class:`matplotlib.figure.Figure` objects built directly (no pyplot global state,
  so nothing leaks between calls and no display is needed) at :data:`DPI` = 100 with a fixed size,
  and PNGs are written without bbox cropping, so pixel sizes are ``figsize × dpi``:
  :func:`latent_scatter` 7 × 6 in → 700 × 600 px (legend outside on the right),
  :func:`manifold_figure` 6 × 6 in → 600 × 600 px. :func:`grid_figure` (the reconstructions,
  samples and interpolation) is sized to its grid instead: the grid's pixels 1:1, a title above,
  row labels left of it (see there).
* **Decoders**: functions that need the model take ``decode: Callable[[Tensor], Tensor]`` mapping
  latent codes ``(n, d)`` to decoder-mean images in [0, 1] of shape ``(n, C, H, W)`` (e.g.
  ``VAEModule.decode``). It is called under ``torch.no_grad()`` in chunks of ``batch_size`` codes
  (latents are moved to ``device`` first when given; outputs come back to the CPU as float32).
  Outputs more than 1e-3 outside [0, 1] raise (logits or standardised pixels passed by mistake);
  smaller round-off is clamped.
* No randomness from the global RNG: sampling and subsampling use explicit seeds / generators.
* No file system access except :func:`save_png` (through :func:`vae.train.files.atomic_file`).

TensorBoard projector sprites need no helper here: ``SummaryWriter.add_embedding(mat,
label_img=images)`` with ``images`` ``(N, C, H, W)`` in [0, 1] tiles them into ``sprite.png`` itself
(``torch.utils.tensorboard._embedding.make_sprite``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg, RendererAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from torch import Tensor
from torchvision.utils import make_grid, save_image

from vae.train.files import atomic_file

__all__ = [
    "DPI",
    "GRID_PADDING",
    "GRID_PAD_VALUE",
    "MANIFOLD_FIGSIZE",
    "PCA2D",
    "SCATTER_FIGSIZE",
    "decode_batched",
    "figure_to_tensor",
    "grid_figure",
    "interpolation_grid",
    "latent_scatter",
    "manifold",
    "manifold_figure",
    "manifold_grid_coords",
    "manifold_latents",
    "pca_2d",
    "reconstruction_grid",
    "sample_grid",
    "save_png",
]

DPI = 100
SCATTER_FIGSIZE = (7.0, 6.0)  # inches → 700 × 600 px at DPI
MANIFOLD_FIGSIZE = (6.0, 6.0)  # inches → 600 × 600 px at DPI
# axes rectangles (left, bottom, width, height in figure fractions) of the fixed layouts
SCATTER_AXES = (0.09, 0.08, 0.72, 0.84)
SCATTER_LEGEND_AT = (0.83, 0.92)  # the legend's upper-left corner, right of the axes
SCATTER_MARGIN = 0.01  # room kept right of a legend that needs more than the default place
MANIFOLD_AXES = (0.13, 0.12, 0.83, 0.81)
GRID_PADDING = 2
GRID_PAD_VALUE = 1.0  # white
GRID_TITLE_SIZE = 10.0  # points: grid_figure's title
GRID_LABEL_SIZE = 8.0  # points: its row and column labels
GRID_MARGIN = 6  # px of white around a grid_figure's content
GRID_LABEL_GAP = 4  # px between a label and the grid
DEFAULT_BATCH_SIZE = 1024
DEFAULT_CLASS_NAMES: tuple[str, ...] = tuple(str(k) for k in range(10))
_RANGE_TOL = 1e-3

Decoder = Callable[[Tensor], Tensor]
ArrayLike = Tensor | np.ndarray


# ---- helpers -------------------------------------------------------------------------------------
def _as_tensor(x: ArrayLike | Sequence[float]) -> Tensor:
    """A detached CPU tensor view of ``x`` (tensor, numpy array or sequence)."""
    t = x if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t.detach().cpu()


def _as_images(images: ArrayLike, *, name: str) -> Tensor:
    """Validate ``(N, C, H, W)`` images in [0, 1] and return them as float32 CPU, clamped."""
    t = _as_tensor(images)
    if t.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(t.shape)}")
    if t.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    t = t.to(torch.float32)
    if not bool(((t >= -_RANGE_TOL) & (t <= 1 + _RANGE_TOL)).all()):
        raise ValueError(
            f"{name} must lie in [0, 1] (got min {t.min().item():.4g}, max {t.max().item():.4g}); "
            "pass pixel intensities / the decoder mean, not logits or standardised pixels"
        )
    return t.clamp(0.0, 1.0)


def _grid(images: Tensor, *, nrow: int) -> Tensor:
    """make_grid with the module's padding; a single tile is padded too. → ``(3, H, W)``."""
    grid = make_grid(images, nrow=nrow, padding=GRID_PADDING, pad_value=GRID_PAD_VALUE)
    if images.shape[0] == 1:  # make_grid returns a lone image unpadded; pad it like any grid
        grid = F.pad(grid, (GRID_PADDING,) * 4, value=GRID_PAD_VALUE)
    return grid


def decode_batched(
    decode: Decoder,
    z: ArrayLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> Tensor:
    """Decode latent codes ``z`` ``(n, d)`` in chunks of ``batch_size`` under ``torch.no_grad()``.

    Returns float32 CPU images ``(n, C, H, W)`` in [0, 1] (validated, see the module docstring).
    """
    z = _as_tensor(z)
    if z.ndim != 2 or z.shape[0] == 0:
        raise ValueError(f"z must have shape (n, d) with n ≥ 1, got {tuple(z.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
    outs: list[Tensor] = []
    with torch.no_grad():
        for chunk in z.split(batch_size):
            if device is not None:
                chunk = chunk.to(device)
            out = decode(chunk)
            if out.ndim != 4 or out.shape[0] != chunk.shape[0]:
                raise ValueError(
                    f"decode must map (n, d) to (n, C, H, W); got {tuple(chunk.shape)} → "
                    f"{tuple(out.shape)}"
                )
            outs.append(out.detach().to("cpu", torch.float32))
    return _as_images(torch.cat(outs), name="decoded images")


# ---- PCA -----------------------------------------------------------------------------------------
class PCA2D(NamedTuple):
    """Result of :func:`pca_2d`; unpacks as ``proj, components, mean, explained_variance_ratio``."""

    proj: Tensor
    """``(N, 2)`` coordinates of the centred data on the two components."""
    components: Tensor
    """``(2, d)`` orthonormal principal directions, largest variance first."""
    mean: Tensor
    """``(d,)`` mean of the data (the centre of the projection)."""
    explained_variance_ratio: Tensor
    """``(2,)`` fraction of the total variance along each component."""


def pca_2d(z: ArrayLike) -> PCA2D:
    """Exact PCA of ``z`` ``(N, d)`` onto its top two principal directions (N ≥ 2, d ≥ 2).

    Computed in float64 by a thin SVD of the centred data (deterministic, unlike the randomised
    ``torch.pca_lowrank``); outputs use ``z``'s floating dtype (float32 for integer input).

    Sign convention: each component is flipped so that its entry of largest absolute value is
    positive (the first such entry on ties), so the result does not depend on the SVD backend.
    ``proj = (z - mean) @ components.T``; ``explained_variance_ratio[k] = s_k² / Σ_j s_j²``
    (zero when all rows are identical).
    """
    z = _as_tensor(z)
    if z.ndim != 2 or z.shape[0] < 2 or z.shape[1] < 2:
        raise ValueError(
            f"pca_2d needs z of shape (N, d) with N ≥ 2 and d ≥ 2, got {tuple(z.shape)}"
        )
    dtype = z.dtype if z.is_floating_point() else torch.float32
    z64 = z.to(torch.float64)
    mean = z64.mean(dim=0)
    centred = z64 - mean
    _, s, vh = torch.linalg.svd(centred, full_matrices=False)
    components = vh[:2]
    pivot = components.abs().argmax(dim=1)
    signs = torch.sign(components[torch.arange(2), pivot])
    components = components * torch.where(signs == 0, 1.0, signs)[:, None]
    variance = s.square()
    total = variance.sum()
    ratio = variance[:2] / total if total > 0 else torch.zeros(2, dtype=torch.float64)
    proj = centred @ components.T
    return PCA2D(proj.to(dtype), components.to(dtype), mean.to(dtype), ratio.to(dtype))


# ---- latent scatter ------------------------------------------------------------------------------
def _palette(n_classes: int) -> list[tuple[float, float, float, float]]:
    """``n_classes`` distinct categorical colours: 'tab10' up to 10 classes, 'tab20' up to 20."""
    if n_classes > 20:
        raise ValueError(f"at most 20 classes can get distinct colours, got {n_classes}")
    colors = colormaps["tab10" if n_classes <= 10 else "tab20"].colors
    return [(*colors[k][:3], 1.0) for k in range(n_classes)]


def latent_scatter(
    z: ArrayLike,
    labels: ArrayLike,
    *,
    class_names: Sequence[str] = DEFAULT_CLASS_NAMES,
    legend_title: str | None = None,
    title: str | None = None,
    max_points: int | None = None,
    seed: int = 0,
    point_size: float = 4.0,
    alpha: float = 0.5,
) -> Figure:
    """Scatter plot of posterior means ``z`` ``(N, d)`` coloured by integer ``labels`` ``(N,)``.

    One ``PathCollection`` (``fig.axes[0].collections[0]``) holds every plotted point: ``N`` of
    them, or ``max_points`` drawn without replacement (seeded by ``seed``) when ``N > max_points``,
    in a seeded random order so no class is systematically painted over another. Class ``k`` gets
    colour ``k`` of 'tab10' ('tab20' beyond 10 classes) and a legend entry ``class_names[k]``
    (opaque markers, titled ``legend_title``: "digit" for the names "0" … "9", else "class"; right
    of the axes: ``fig.legends[0]``). Names are shown in full: a wider legend (Fashion-MNIST's
    "T-shirt/top") moves left to end at the figure's edge, and the axes narrow. No ``class_names``
    (an unlabelled folder, labels −1): every point in one colour, no legend, and the title says
    so. ``title`` defaults to "Posterior means in latent space", plus a line for a PCA projection
    and one ("m of N points shown") when subsampled. Figure: :data:`SCATTER_FIGSIZE` at
    :data:`DPI` (700 × 600 px).

    * ``d == 2``: axes z₁, z₂ with equal aspect.
    * ``d > 2``: the points are projected on the top two principal directions of *all* ``N`` rows
      (:func:`pca_2d`, so the plane matches :func:`manifold` given the same ``pca_2d(z)``); axes
      "PC₁ (x % var.)", "PC₂ (y % var.)" (explained variance) and the title adds "PCA projection of
      the d-D latent (x+y % of variance)".
    * ``d == 1``: a strip plot, z₁ horizontally against the class index plus uniform jitter in
      ±0.3 (seeded) vertically, y-ticks named by ``class_names``.
    """
    z, labels = _scatter_input(z, labels, n_classes=len(class_names), max_points=max_points)
    n = z.shape[0]
    unlabelled = len(class_names) == 0
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(n, generator=generator)[:max_points]  # [:None] keeps all

    fig = Figure(figsize=SCATTER_FIGSIZE, dpi=DPI)  # a fixed layout: faster, the same every time
    ax = fig.add_axes(SCATTER_AXES)
    base_title = title if title is not None else "Posterior means in latent space"
    xy, projected = _scatter_plane(ax, z, labels, class_names=class_names, generator=generator)
    base_title += projected
    shown = f"\n{len(order):,} of {n:,} points shown" if len(order) < n else ""
    ax.set_title(base_title + shown + ("\nunlabelled images: one colour" if unlabelled else ""))

    palette = _palette(max(len(class_names), 1))  # unlabelled: one colour
    colors = np.asarray(palette)[labels[order].numpy()]
    points = xy[order].numpy()  # (m, 2)
    ax.scatter(*points.T, c=colors, s=point_size, alpha=alpha, linewidths=0, rasterized=True)
    ax.grid(alpha=0.3)
    if not unlabelled:
        _class_legend(fig, ax, palette, class_names=class_names, title=legend_title)
    return fig


def _class_legend(
    fig: Figure, ax: Axes, palette: list, *, class_names: Sequence[str], title: str | None
) -> None:
    """:func:`latent_scatter`'s legend: one opaque marker per class, right of the axes."""
    handles = [
        Line2D([], [], marker="o", linestyle="none", markersize=7, color=palette[k], label=name)
        for k, name in enumerate(class_names)
    ]
    if title is None:
        title = "digit" if tuple(class_names) == DEFAULT_CLASS_NAMES else "class"
    legend = fig.legend(
        handles=handles, loc="upper left", bbox_to_anchor=SCATTER_LEGEND_AT, title=title
    )
    _fit_legend(fig, ax, legend)


def _scatter_input(
    z: ArrayLike, labels: ArrayLike, *, n_classes: int, max_points: int | None
) -> tuple[Tensor, Tensor]:
    """:func:`latent_scatter`'s ``z`` as float64 ``(N, d)`` and ``labels`` as long ``(N,)``
    class indices, or a ``ValueError`` saying what is wrong."""
    z = _as_tensor(z)
    labels = _as_tensor(labels)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"z must have shape (N, d) with N, d ≥ 1, got {tuple(z.shape)}")
    n = z.shape[0]
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), got {tuple(labels.shape)}")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise ValueError("labels must be integer class indices")
    labels = labels.to(torch.long)
    if n_classes == 0:  # unlabelled: one colour for all, class 0 of a one-class palette
        labels, n_classes = torch.zeros_like(labels), 1
    if bool(((labels < 0) | (labels >= n_classes)).any()):
        raise ValueError(f"labels must lie in [0, {n_classes}) (one per class name)")
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be ≥ 1, got {max_points}")
    return z.to(torch.float64), labels


def _scatter_plane(
    ax: Axes, z: Tensor, labels: Tensor, *, class_names: Sequence[str], generator: torch.Generator
) -> tuple[Tensor, str]:
    """The plotted coordinates ``(N, 2)`` of :func:`latent_scatter` (d = 1: a jittered strip,
    d = 2: z, d > 2: the PCA plane) with ``ax``'s labels set, and the title's added line."""
    n, d = z.shape
    if d == 1:
        jitter = (torch.rand(n, generator=generator, dtype=torch.float64) - 0.5) * 0.6
        ax.set(xlabel="z₁", ylabel="class (jittered)")
        ax.set_yticks(range(max(len(class_names), 1)), labels=list(class_names) or ["all"])
        return torch.stack([z[:, 0], labels.to(torch.float64) + jitter], dim=1), ""
    ax.set_aspect("equal", adjustable="datalim")
    if d == 2:
        ax.set(xlabel="z₁", ylabel="z₂")
        return z, ""
    pca = pca_2d(z)
    pct = (100 * pca.explained_variance_ratio).tolist()
    ax.set(xlabel=f"PC₁ ({pct[0]:.1f} % var.)", ylabel=f"PC₂ ({pct[1]:.1f} % var.)")
    return pca.proj, f"\nPCA projection of the {d}-D latent ({sum(pct):.1f} % of variance)"


def _fit_legend(fig: Figure, ax: Axes, legend: Legend) -> None:
    """Keep the scatter's legend and tick labels inside the figure, whatever the class names.

    Both are measured (Agg, at the figure's dpi). A legend whose right edge would pass
    ``1 − SCATTER_MARGIN`` (figure fraction) is moved left to end there and the axes narrow to
    keep the default gap before it; y tick labels (the class names of a 1-D latent's strip plot)
    that would start left of ``SCATTER_MARGIN`` move the axes' left edge right by the excess.
    """
    renderer = FigureCanvasAgg(fig).get_renderer()
    to_fraction = fig.transFigure.inverted()  # pixels → figure fractions
    left, bottom, width, height = SCATTER_AXES
    right = left + width
    box = legend.get_window_extent(renderer).transformed(to_fraction)
    if box.x1 > 1.0 - SCATTER_MARGIN:
        x0 = 1.0 - SCATTER_MARGIN - box.width
        legend.set_bbox_to_anchor((x0, SCATTER_LEGEND_AT[1]))
        right = x0 - (SCATTER_LEGEND_AT[0] - right)
    labels = ax.get_tightbbox(renderer).transformed(to_fraction)
    if labels.x0 < SCATTER_MARGIN:
        left += SCATTER_MARGIN - labels.x0
    if (left, right) != (SCATTER_AXES[0], SCATTER_AXES[0] + SCATTER_AXES[2]):
        ax.set_position((left, bottom, right - left, height))


# ---- 2-D manifold --------------------------------------------------------------------------------
def manifold_grid_coords(
    n: int, *, eps: float | None = None, dtype: torch.dtype = torch.float32
) -> Tensor:
    """Grid of ``n × n`` latent points ``(n, n, 2)`` spaced by the standard-normal inverse CDF.

    Kingma & Welling 2013, fig. 4: evenly spaced quantiles q are mapped through Φ⁻¹
    (``torch.special.ndtri``, evaluated in float64), so each tile stands for an equal slice of
    prior mass. Quantiles: by default the midpoints ``q_i = (i + ½) / n`` (each of the n cells of
    (0, 1) is represented by its centre; n = 20 gives ±1.96 at the ends); with ``eps`` given,
    ``linspace(eps, 1 − eps, n)`` instead (n = 1 gives q = ½ either way).

    Orientation, like a plot: ``coords[i, j] = (z₁, z₂) = (Φ⁻¹(q_j), Φ⁻¹(q_{n−1−i}))``, i.e. z₁
    increases left → right along a row and z₂ *decreases* top → bottom down a column, so a
    row-major image of the grid has z₂ increasing upwards.
    """
    if n < 1:
        raise ValueError(f"n must be ≥ 1, got {n}")
    if n == 1:
        q = torch.full((1,), 0.5, dtype=torch.float64)
    elif eps is None:
        q = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    else:
        if not 0.0 < eps < 0.5:
            raise ValueError(f"eps must lie in (0, 0.5), got {eps}")
        q = torch.linspace(eps, 1.0 - eps, n, dtype=torch.float64)
    g = torch.special.ndtri(q)
    return torch.stack(torch.meshgrid(g, g.flip(0), indexing="xy"), dim=-1).to(dtype)


def manifold_latents(
    n: int = 20,
    *,
    latent_dim: int = 2,
    basis: ArrayLike | None = None,
    center: ArrayLike | None = None,
    scale: ArrayLike | float | None = None,
    eps: float | None = None,
) -> Tensor:
    """The ``n²`` latent codes ``(n·n, latent_dim)`` behind :func:`manifold`, row-major.

    Row ``i·n + j`` is ``center + (scale ⊙ coords[i, j]) @ basis`` with ``coords`` from
    :func:`manifold_grid_coords` (so it becomes tile (i, j) of the image).

    * ``latent_dim == 2``: defaults ``basis = I₂``, ``center = 0``, ``scale = 1``: the N(0, 1)
      quantile grid of the prior, as in Kingma & Welling's fig. 4.
    * ``latent_dim > 2``: ``basis`` ``(2, d)``, ``center`` ``(d,)`` and ``scale`` ``(2,)`` are
      required. The intended values come from the posterior means ``mu``: ``pca = pca_2d(mu)``;
      ``basis=pca.components, center=pca.mean, scale=pca.proj.std(dim=0)``. The grid then lies in
      the plane of the two leading principal directions through the means' centre (all other
      coordinates at their mean), and along each direction it spans the same quantiles of a
      Gaussian fitted to the projected means (±1.96 std for n = 20), i.e. where the encoded data
      lies. Scaling by the means' std rather than by the prior's unit std avoids decoding large
      stretches of the plane no test image is encoded to (the means' spread along a direction is
      below the prior's 1 because part of the aggregate posterior's variance is the encoder's
      own σ²). Pass ``scale=1.0`` for the prior's quantiles instead.
    """
    if latent_dim < 2:
        raise ValueError(f"a 2-D manifold needs latent_dim ≥ 2, got {latent_dim}")
    if latent_dim > 2 and (basis is None or center is None or scale is None):
        raise ValueError(
            "for latent_dim > 2 pass basis (2, d), center (d,) and scale (2,), e.g. from "
            "pca = pca_2d(mu): basis=pca.components, center=pca.mean, scale=pca.proj.std(dim=0)"
        )
    f64 = torch.float64
    b = torch.eye(2, dtype=f64) if basis is None else _as_tensor(basis).to(f64)
    c = torch.zeros(latent_dim, dtype=f64) if center is None else _as_tensor(center).to(f64)
    s = torch.ones(2, dtype=f64) if scale is None else _as_tensor(scale).to(f64)
    s = s.expand(2) if s.ndim == 0 else s
    if b.shape != (2, latent_dim):
        raise ValueError(f"basis must have shape (2, {latent_dim}), got {tuple(b.shape)}")
    if c.shape != (latent_dim,):
        raise ValueError(f"center must have shape ({latent_dim},), got {tuple(c.shape)}")
    if s.shape != (2,):
        raise ValueError(f"scale must be a scalar or have shape (2,), got {tuple(s.shape)}")
    coords = manifold_grid_coords(n, eps=eps, dtype=f64).reshape(n * n, 2)
    return (c + (coords * s) @ b).to(torch.float32)


def manifold(
    decode: Decoder,
    *,
    n: int = 20,
    latent_dim: int = 2,
    basis: ArrayLike | None = None,
    center: ArrayLike | None = None,
    scale: ArrayLike | float | None = None,
    eps: float | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> Tensor:
    """Decoded ``n × n`` latent grid as one image ``(3, n·(H+2)+2, n·(W+2)+2)`` in [0, 1].

    Tile (i, j) is ``decode`` of row ``i·n + j`` of :func:`manifold_latents` (same arguments):
    z₁ grows to the right and z₂ upwards. For ``latent_dim > 2`` see :func:`manifold_latents` for
    the PCA plane and the scaling by the posterior means' std. :func:`manifold_figure` adds axes.
    """
    z = manifold_latents(n, latent_dim=latent_dim, basis=basis, center=center, scale=scale, eps=eps)
    return _grid(decode_batched(decode, z, batch_size=batch_size, device=device), nrow=n)


def manifold_figure(
    image: Tensor,
    coords: Tensor,
    *,
    xlabel: str = "z₁",
    ylabel: str = "z₂",
    title: str | None = None,
    max_ticks: int = 20,
) -> Figure:
    """Show a :func:`manifold` image ``(3, H, W)`` with ticks giving the latent value of each tile.

    ``coords`` ``(n, n, 2)`` are the in-plane coordinates of the tiles: :func:`manifold_grid_coords`
    output, times ``scale`` for the PCA plane (then label the axes "PC₁", "PC₂"). Ticks sit at
    tile centres (every tile for n ≤ ``max_ticks``, else ``max_ticks`` evenly spread tiles
    including both ends; labels ``f"{v:.2f}"``): x ticks give z₁ of column j, y ticks z₂ of row i.

    Figure: :data:`MANIFOLD_FIGSIZE` 6 × 6 in at :data:`DPI` 100 → 600 × 600 px.
    """
    image = _as_tensor(image)
    coords = _as_tensor(coords)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (1 or 3, H, W), got {tuple(image.shape)}")
    if coords.ndim != 3 or coords.shape[0] != coords.shape[1] or coords.shape[2] != 2:
        raise ValueError(f"coords must have shape (n, n, 2), got {tuple(coords.shape)}")
    n = coords.shape[0]
    _, height, width = image.shape
    stride_h, rem_h = divmod(height - GRID_PADDING, n)  # tile height + padding
    stride_w, rem_w = divmod(width - GRID_PADDING, n)
    if rem_h or rem_w or stride_h <= GRID_PADDING or stride_w <= GRID_PADDING:
        raise ValueError(f"image {tuple(image.shape)} is not an {n} × {n} grid with padding 2")
    # at most max_ticks tiles, evenly spread and always both ends (symmetric for symmetric grids)
    m = max(1, min(n, max_ticks))
    idx = sorted({round(k * (n - 1) / max(m - 1, 1)) for k in range(m)})
    # tile k covers pixels pad + k·stride … pad + k·stride + (stride − pad) − 1; imshow centres
    # pixel p on coordinate p, so the tile's centre is at its first pixel + (stride − pad − 1) / 2
    x_centres = [GRID_PADDING + k * stride_w + (stride_w - GRID_PADDING - 1) / 2 for k in idx]
    y_centres = [GRID_PADDING + k * stride_h + (stride_h - GRID_PADDING - 1) / 2 for k in idx]

    fig = Figure(figsize=MANIFOLD_FIGSIZE, dpi=DPI)  # fixed layout, as for the scatter plot
    ax = fig.add_axes(MANIFOLD_AXES)
    pixels = image.to(torch.float32).clamp(0, 1).permute(1, 2, 0).squeeze(2)  # grey: (H, W)
    ax.imshow(pixels.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(x_centres, labels=[f"{coords[0, k, 0].item():.2f}" for k in idx], rotation=90)
    ax.set_yticks(y_centres, labels=[f"{coords[k, 0, 1].item():.2f}" for k in idx])
    ax.tick_params(labelsize=8)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    if title is not None:
        ax.set_title(title)
    return fig


# ---- image grids ---------------------------------------------------------------------------------
def reconstruction_grid(x: ArrayLike, x_hat: ArrayLike, *, nrow: int = 8) -> Tensor:
    """Originals above their reconstructions: ``(3, 2r·(H+2)+2, nrow·(W+2)+2)``, r = ⌈N / nrow⌉.

    ``x`` and ``x_hat`` are ``(N, C, H, W)`` in [0, 1]. Image rows come in pairs: row 2k holds
    originals ``x[k·nrow : (k+1)·nrow]`` and row 2k+1 their reconstructions, tile under tile.
    ``nrow`` is capped at N; a short last pair is filled with blank (padding-coloured) tiles.
    """
    x = _as_images(x, name="x")
    x_hat = _as_images(x_hat, name="x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x {tuple(x.shape)} and x_hat {tuple(x_hat.shape)} differ in shape")
    if nrow < 1:
        raise ValueError(f"nrow must be ≥ 1, got {nrow}")
    n = x.shape[0]
    nrow = min(nrow, n)
    pairs = math.ceil(n / nrow)
    missing = pairs * nrow - n
    if missing:
        blank = torch.full((missing, *x.shape[1:]), GRID_PAD_VALUE)
        x, x_hat = torch.cat([x, blank]), torch.cat([x_hat, blank])
    rows = torch.stack([x.unflatten(0, (pairs, nrow)), x_hat.unflatten(0, (pairs, nrow))], dim=1)
    return _grid(rows.flatten(0, 2), nrow=nrow)


def sample_grid(
    decode: Decoder,
    *,
    n: int = 64,
    latent_dim: int = 2,
    generator: torch.Generator | None = None,
    nrow: int | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> Tensor:
    """Decoder means of ``n`` prior draws z ~ N(0, I) as a grid ``(3, H, W)`` in [0, 1].

    ``z = torch.randn(n, latent_dim, generator=generator)`` on the generator's device, so a
    generator seeded the same way gives the same grid; ``generator=None`` means a fresh one seeded
    with 0 (the global RNG is never touched). ``nrow`` defaults to ⌈√n⌉ (8 × 8 for n = 64).
    """
    if n < 1 or latent_dim < 1:
        raise ValueError(f"n and latent_dim must be ≥ 1, got {n}, {latent_dim}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    z = torch.randn(n, latent_dim, generator=gen, device=gen.device)
    images = decode_batched(decode, z, batch_size=batch_size, device=device)
    return _grid(images, nrow=nrow if nrow is not None else math.ceil(math.sqrt(n)))


def interpolation_grid(
    decode: Decoder,
    z_start: ArrayLike,
    z_end: ArrayLike,
    *,
    steps: int = 10,
    batch_size: int = DEFAULT_BATCH_SIZE,
    device: torch.device | str | None = None,
) -> Tensor:
    """Straight-line latent paths, one image row per pair: ``(3, k·(H+2)+2, steps·(W+2)+2)``.

    ``z_start``, ``z_end``: ``(k, d)`` (or ``(d,)`` for one pair). Column t of row r decodes
    ``(1 − s_t)·z_start[r] + s_t·z_end[r]`` with ``s = linspace(0, 1, steps)``, so the first and
    last columns are exactly ``decode(z_start)`` and ``decode(z_end)`` and, for odd ``steps``, the
    middle column is the midpoint.
    """
    z0, z1 = (_as_tensor(z).to(torch.float32) for z in (z_start, z_end))
    z0, z1 = (z[None] if z.ndim == 1 else z for z in (z0, z1))
    if z0.ndim != 2 or z0.shape != z1.shape:
        raise ValueError(f"z_start {tuple(z0.shape)} and z_end {tuple(z1.shape)} must be (k, d)")
    if steps < 2:
        raise ValueError(f"steps must be ≥ 2 (both endpoints), got {steps}")
    s = torch.linspace(0.0, 1.0, steps)  # exactly 0 and 1 at the ends
    path = (1 - s)[None, :, None] * z0[:, None, :] + s[None, :, None] * z1[:, None, :]
    images = decode_batched(decode, path.flatten(0, 1), batch_size=batch_size, device=device)
    return _grid(images, nrow=steps)


# ---- a grid with its title and labels ------------------------------------------------------------
class _GridLayout(NamedTuple):
    """Where :func:`grid_figure` puts things, in pixels from the figure's top-left corner."""

    width: int
    height: int
    left: int  # the grid's left edge
    top: int  # the grid's top edge
    stride: tuple[int, int]  # tile height and width + padding


def _text_px(text: str, *, size: float) -> tuple[float, float]:
    """(width, height) in pixels of one line of ``text`` at ``size`` points, drawn at :data:`DPI`."""
    width, height, _ = RendererAgg(1, 1, DPI).get_text_width_height_descent(
        text, FontProperties(size=size), ismath=False
    )
    return width, height


def _grid_layout(
    shape: tuple[int, int],
    *,
    rows: int,
    cols: int,
    title: str,
    row_labels: Sequence[str],
    column_labels: Sequence[str],
) -> _GridLayout:
    """:func:`grid_figure`'s layout for a grid of ``shape`` (H, W) px: title band, label column."""
    height, width = shape
    stride_h, rem_h = divmod(height - GRID_PADDING, rows)
    stride_w, rem_w = divmod(width - GRID_PADDING, cols)
    if rem_h or rem_w or min(stride_h, stride_w) <= GRID_PADDING:
        raise ValueError(f"a grid of {height} × {width} px is not {rows} rows × {cols} columns")
    gap = GRID_LABEL_GAP
    labels_w = max((_text_px(t, size=GRID_LABEL_SIZE)[0] for t in row_labels), default=-gap)
    labels_h = max((_text_px(t, size=GRID_LABEL_SIZE)[1] for t in column_labels), default=-gap)
    title_w, title_h = _text_px(title, size=GRID_TITLE_SIZE)
    content_w = math.ceil(labels_w) + gap + width
    fig_w = max(content_w, math.ceil(title_w)) + 2 * GRID_MARGIN
    top = GRID_MARGIN + math.ceil(title_h) + gap + math.ceil(labels_h) + gap
    return _GridLayout(
        width=fig_w,
        height=top + height + GRID_MARGIN,
        left=(fig_w - content_w) // 2 + content_w - width,
        top=top,
        stride=(stride_h, stride_w),
    )


def _inches(px: int) -> float:
    """``px / DPI``, nudged up so that Agg (which truncates ``inches · dpi``) draws ``px`` pixels."""
    return math.nextafter(px / DPI, math.inf)


def grid_figure(
    grid: Tensor,
    *,
    title: str,
    rows: int,
    cols: int,
    row_labels: Sequence[str] = (),
    column_labels: Sequence[str] = (),
) -> Figure:
    """An image grid ``(3 or 1, H, W)`` in [0, 1] (:func:`reconstruction_grid`, :func:`sample_grid`,
    :func:`interpolation_grid`, grey or colour) as a Figure that says what it shows.

    The grid is drawn pixel for pixel (``figimage``, no resampling), rounded to 8 bits as
    :func:`save_png` rounds a tensor, so the PNG holds exactly the decoded pixels. Above it the title
    (``fig.get_suptitle()``, :data:`GRID_TITLE_SIZE` pt); left of image row r, centred on it, the
    right-aligned ``row_labels[r]`` (one per row, or none); above column c ``column_labels[c]``
    (one per column, or none; an empty string is no label), :data:`GRID_LABEL_SIZE` pt. The
    figure is as large as that needs (text measured by Agg at :data:`DPI`), with
    :data:`GRID_MARGIN` px of white around, and the grid's ``rows × cols`` tiles must tile it
    with the padding of every grid here.
    """
    image = _as_tensor(grid)
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"grid must have shape (1 or 3, H, W), got {tuple(image.shape)}")
    for labels, n, what in ((row_labels, rows, "row"), (column_labels, cols, "column")):
        if labels and len(labels) != n:
            raise ValueError(f"{len(labels)} {what} labels for {n} {what}s")
    shape = (image.shape[1], image.shape[2])
    lay = _grid_layout(
        shape, rows=rows, cols=cols, title=title, row_labels=row_labels, column_labels=column_labels
    )
    pixels = _as_images(image[None], name="grid")[0].expand(3, -1, -1)
    rgb = pixels.mul(255).add(0.5).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
    fig = Figure(figsize=(_inches(lay.width), _inches(lay.height)), dpi=DPI, facecolor="white")
    fig.figimage(rgb, xo=lay.left, yo=lay.height - lay.top - shape[0], origin="upper")
    fig.suptitle(
        title, x=0.5, y=1 - GRID_MARGIN / lay.height, ha="center", va="top", size=GRID_TITLE_SIZE
    )
    first = GRID_PADDING + (lay.stride[0] - GRID_PADDING) / 2  # centre of the first tile
    for r, text in enumerate(row_labels):
        y = 1 - (lay.top + first + r * lay.stride[0]) / lay.height
        x = (lay.left - GRID_LABEL_GAP) / lay.width
        fig.text(x, y, text, ha="right", va="center", size=GRID_LABEL_SIZE)
    first = GRID_PADDING + (lay.stride[1] - GRID_PADDING) / 2
    for c, text in enumerate(column_labels):
        if not text:
            continue
        x = (lay.left + first + c * lay.stride[1]) / lay.width
        y = 1 - (lay.top - GRID_LABEL_GAP) / lay.height
        fig.text(x, y, text, ha="center", va="bottom", size=GRID_LABEL_SIZE)
    return fig


# ---- figures → tensors / files -------------------------------------------------------------------
def figure_to_tensor(fig: Figure) -> Tensor:
    """Render ``fig`` to float32 RGB in [0, 1], ``(3, H, W)`` with (W, H) = figsize × dpi.

    Drawn once by Agg into memory (no PNG round trip); :func:`save_png` writes exactly these
    pixels. Pass to ``SummaryWriter.add_image(tag, img)``.
    """
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[:, :, :3]
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).to(torch.float32) / 255.0


def save_png(obj: Figure | Tensor, path: str | Path) -> Path:
    """Write a Figure or an image tensor to ``path`` as PNG (parent folders created); → the path.

    * ``Figure``: saved at its own dpi without cropping (:data:`SCATTER_FIGSIZE` → 700 × 600 px).
    * Tensor ``(C, H, W)`` with C ∈ {1, 3} or ``(H, W)``, float in [0, 1] or uint8: W × H px,
      floats rounded to the nearest of 256 levels (torchvision ``save_image``).
    """
    path = Path(path)
    if isinstance(obj, Figure):
        obj = figure_to_tensor(obj)
    if not isinstance(obj, Tensor):
        raise TypeError(f"save_png takes a matplotlib Figure or a torch Tensor, got {type(obj)}")
    img = obj.detach().cpu()
    img = img[None] if img.ndim == 2 else img
    if img.ndim != 3 or img.shape[0] not in (1, 3):
        raise ValueError(f"image tensor must be (C, H, W) with C in (1, 3), got {tuple(obj.shape)}")
    img = img.to(torch.float32) / 255.0 if img.dtype == torch.uint8 else img
    with atomic_file(path, what=f"the figure {path.name}") as f:  # never a cut PNG, nor a link
        save_image(_as_images(img[None], name="image")[0], f, format="png")
    return path
