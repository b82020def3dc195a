"""Find an image grid inside a rendered figure, with no knowledge of the figure's layout.

A reference tile (8-bit RGB, computed by the test from its own inputs) is searched for in the
figure's pixels; the grid's other tiles then lie at multiples of tile size + padding from it.
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def as_rgb8(images: np.ndarray) -> np.ndarray:
    """Images ``(N, C, H, W)`` (C = 1 or 3) in [0, 1] as 8-bit RGB ``(N, H, W, 3)``, rounded to the
    nearest level as torchvision's ``save_image`` rounds them for a PNG (in float32: ⌊x·255 + ½⌋),
    grey repeated to the three channels."""
    rgb = np.broadcast_to(images, (images.shape[0], 3, *images.shape[2:])).astype(np.float32)
    return np.floor(rgb * np.float32(255) + np.float32(0.5)).astype(np.uint8).transpose(0, 2, 3, 1)


def locate(pixels: np.ndarray, tile: np.ndarray) -> tuple[int, int]:
    """``(top, left)`` of the first place (top-most, then left-most) where ``tile`` ``(h, w, 3)``
    occurs in ``pixels`` ``(H, W, 3)``; fails if it does not occur (the first path of an
    interpolation starts where the last one ends: the caller checks the whole grid from there)."""
    h, w, _ = tile.shape
    rows = sliding_window_view(pixels, (w, 3), axis=(1, 2))[:, :, 0]  # (H, W − w + 1, w, 3)
    ys, xs = np.nonzero((rows == tile[0]).all(axis=(2, 3)))  # where the tile's first row is
    found = [
        (int(y), int(x))
        for y, x in zip(ys, xs, strict=True)
        if y + h <= pixels.shape[0] and np.array_equal(pixels[y : y + h, x : x + w], tile)
    ]
    assert found, "the tile does not occur"
    return min(found)


def tiles(
    pixels: np.ndarray,
    first: tuple[int, int],
    *,
    rows: int,
    cols: int,
    size: tuple[int, int],
    pad: int,
) -> np.ndarray:
    """The ``rows × cols`` tiles ``(rows, cols, h, w, 3)`` of a grid whose tile (0, 0) starts at
    ``first`` (top, left), tiles ``size`` = (h, w) apart by ``pad`` pixels."""
    (top, left), (h, w) = first, size
    out = np.empty((rows, cols, h, w, 3), dtype=pixels.dtype)
    for r in range(rows):
        for c in range(cols):
            y, x = top + r * (h + pad), left + c * (w + pad)
            out[r, c] = pixels[y : y + h, x : x + w]
    return out
