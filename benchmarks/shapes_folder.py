"""A generated folder of coloured shapes: ``<out>/<shape>/<n>.png``, RGB, ``size`` × ``size``.

    python benchmarks/shapes_folder.py --out /tmp/shapes --per-class 1000 --size 32

Three classes (circle, square, triangle), each shape of a random colour, size and position on a
random dark background: a small colour data set for ``data=folder`` (the tests and the README's
picture use it).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from vae.train.files import atomic_file

SHAPES = ("circle", "square", "triangle")


def draw(shape: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``shape`` of a random bright colour on a random dark background."""
    background = tuple(int(v) for v in rng.integers(0, 64, 3))
    colour = tuple(int(v) for v in rng.integers(96, 256, 3))
    im = Image.new("RGB", (size, size), background)
    r = rng.uniform(0.2, 0.35) * size
    cx, cy = rng.uniform(r, size - r, 2)
    pen = ImageDraw.Draw(im)
    if shape == "circle":
        pen.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif shape == "square":
        pen.rectangle((cx - r, cy - r, cx + r, cy + r), fill=colour)
    else:
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    return im


def make_shapes(out: str | Path, *, per_class: int, size: int = 32, seed: int = 0) -> Path:
    """Write ``per_class`` images of each shape under ``out``; returns ``out``."""
    out, rng = Path(out), np.random.default_rng(seed)
    for shape in SHAPES:
        (out / shape).mkdir(parents=True, exist_ok=True)
        for n in range(per_class):
            with atomic_file(out / shape / f"{n:05d}.png", durable=False) as f:
                draw(shape, size, rng).save(f, format="PNG")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--per-class", type=int, default=1000)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()
    print(make_shapes(args.out, per_class=args.per_class, size=args.size))
