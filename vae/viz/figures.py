"""The figures of a trained model, and ``python -m vae.visualize`` to redraw them from a checkpoint.

:func:`render_figures` is used both by :class:`vae.viz.callbacks.LatentVisualizer` during training and by
the command line below, so a re-plot is the same picture::

    python -m vae.visualize logs/train/runs/<run>            # the run's last.ckpt → <run>/*.png
    python -m vae.visualize path/to/model.ckpt --out figs --grid-size 30 --max-points 5000

The test images are read from ``--data-root DIR`` if given, else ``$VAE_DATA_DIR`` if set, else the
data root stored in the checkpoint (absolute). A bad input (a target that is no checkpoint, weights
that are NaN or infinite, missing or broken data, an ``--out`` that is a file, a ``--device`` that
is no device or not on this machine, a full disk) is one ``error: …`` line and exit 2, before
anything is written.

Figures (all from the **test** split, posterior means E[z | x] for the scatter):

- ``latent_space``: the means coloured by class (PCA projection when latent_dim > 2);
- ``manifold``: decoder means over an n×n grid spaced by the prior's inverse CDF
  (Kingma & Welling 2013, fig. 4); over the first two principal directions when latent_dim > 2;
- ``reconstructions``: test images above their reconstructions (decoder mean of the posterior mean),
  rows labelled "original" and "reconstruction";
- ``samples``: decoder means of z ~ N(0, I) (fixed seed: the same z every epoch);
- ``interpolation``: straight latent paths from the first test image of digit k to one of digit k+1,
  each row labelled by its endpoints ("3 → 4"; "#3 → #4", test image indices, without classes).

The last three are :func:`vae.viz.plots.grid_figure`: the decoded grid pixel for pixel, titled.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from vae.errors import CheckpointError, ConfigError
from vae.train.boundary import Writes, error_line
from vae.train.checkpointing import load_checkpoint
from vae.train.data import DataHints, ImageDataModule
from vae.train.environment import format_environment
from vae.train.figure_config import FigureOptions
from vae.train.files import atomic_file, read_own, write_atomic
from vae.train.module import VAEModule
from vae.viz import plots

PROJECTOR_MIN_DIMS = 3
FIGURES = ("latent_space", "manifold", "reconstructions", "samples", "interpolation")


@contextlib.contextmanager
def eval_mode(module: Any) -> Iterator[None]:
    """``module`` in eval mode inside the block, and back in its previous mode after it."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


@torch.no_grad()
def encode_all(module: Any, images: Tensor, *, batch_size: int = 1000) -> tuple[Tensor, Tensor]:
    """Posterior (mu, logvar), each ``(N, d)`` float32 on the CPU, of float images ``(N, C, H, W)``
    (in batches on the module's device, in eval mode)."""
    with eval_mode(module):
        batches = [
            module.encode(images[i : i + batch_size].to(module.device))
            for i in range(0, images.shape[0], batch_size)
        ]
    mu, logvar = (torch.cat([b[k].float().cpu() for b in batches]) for k in (0, 1))
    return mu, logvar


def _project(mu: Tensor, projection: str) -> tuple[Tensor, Tensor, Tensor, Tensor, str]:
    """(2-D points, basis (2, d), center (d,), scale (2,), axis label stem) for the scatter/manifold."""
    d = mu.shape[1]
    if d <= 2:
        return mu, torch.eye(d), torch.zeros(d), torch.ones(2), "z"
    if projection == "axes":
        center = mu.mean(dim=0)  # the other coordinates at their mean
        center[:2] = 0.0
        return mu[:, :2], torch.eye(d)[:2], center, torch.ones(2), "z"
    pca = plots.pca_2d(mu)
    return pca.proj, pca.components, pca.mean, pca.proj.std(dim=0), "PC"


def _interpolation_ends(
    mu: Tensor, labels: Tensor, class_names: Sequence[str]
) -> tuple[Tensor, Tensor, list[str]]:
    """Posterior means of the first test image of class k and of class (k + 1) mod K, for each k;
    without classes (an unlabelled folder), of the first ten images and of the next one each.
    Third: each path's label, ``"3 → 4"`` (class names) or ``"#3 → #4"`` (test image indices)."""
    num_classes = len(class_names)
    firsts = [int((labels == k).nonzero()[0]) for k in range(num_classes) if (labels == k).any()]
    starts = torch.tensor(firsts) if firsts else torch.arange(min(10, mu.shape[0]))
    ends = torch.roll(starts, -1)
    names = [class_names[int(labels[i])] if firsts else f"#{int(i)}" for i in starts]
    paths = [f"{a} → {b}" for a, b in zip(names, names[1:] + names[:1], strict=True)]
    return mu[starts], mu[ends], paths


def _grid_figures(
    module: Any,
    images: Tensor,
    mu: Tensor,
    labels: Tensor,
    *,
    class_names: Sequence[str],
    options: FigureOptions,
) -> dict[str, Figure]:
    """The reconstructions, samples and interpolation of :func:`render_figures`, each a
    :func:`plots.grid_figure` with its title and row labels (call in eval mode, no grad)."""
    decode, device = module.decode, module.device
    n_rec = min(options.n_reconstructions, images.shape[0])
    x_hat = decode(mu[:n_rec].to(device)).float().cpu()  # decoder mean of the posterior mean
    cols = min(8, n_rec)
    pairs = math.ceil(n_rec / cols)
    recon = plots.reconstruction_grid(images[:n_rec].cpu(), x_hat, nrow=cols)
    generator = torch.Generator().manual_seed(options.seed)
    n = options.n_samples
    samples = plots.sample_grid(
        decode, n=n, latent_dim=mu.shape[1], generator=generator, device=device
    )
    starts, ends, paths = _interpolation_ends(mu, labels, class_names)
    steps = options.interpolation_steps
    lines = plots.interpolation_grid(decode, starts, ends, steps=steps, device=device)
    side = math.ceil(math.sqrt(n))  # sample_grid's columns
    return {
        "reconstructions": plots.grid_figure(
            recon,
            title="Test images and their reconstructions",
            rows=2 * pairs,
            cols=cols,
            row_labels=["original", "reconstruction"] * pairs,
        ),
        "samples": plots.grid_figure(
            samples, title=f"{n} samples decoded from z ~ N(0, I)", rows=-(-n // side), cols=side
        ),
        "interpolation": plots.grid_figure(
            lines,
            title="Straight latent paths between posterior means",
            rows=len(paths),
            cols=steps,
            row_labels=paths,
            column_labels=["start", *[""] * (steps - 2), "end"],
        ),
    }


@torch.no_grad()
def render_figures(
    module: Any,
    images: Tensor,
    labels: Tensor,
    *,
    class_names: Sequence[str] = tuple(str(d) for d in range(10)),
    options: FigureOptions = FigureOptions(),
) -> dict[str, Figure | Tensor]:
    """The five figures (see the module docstring) for float ``images`` ``(N, C, H, W)`` in [0, 1].

    Returns ``{name: Figure or image tensor (3, H, W)}`` keyed by :data:`FIGURES`. The module must
    provide ``encode(x) → (mu, logvar)``, ``decode(z) → images in [0, 1]`` and ``latent_dim``.
    Uses no global randomness (sampling is seeded by ``options.seed``). Render each returned
    Figure once (:func:`to_images`) and reuse those pixels: see there.
    """
    with eval_mode(module):
        mu = encode_all(module, images)[0]
        d = mu.shape[1]
        labels = labels.cpu()
        points, basis, center, scale, stem = _project(mu, options.projection)

        scatter = plots.latent_scatter(
            mu if options.projection == "pca" or d <= 2 else points,
            labels,
            class_names=tuple(class_names),
            max_points=options.max_points,
            seed=options.seed,
        )
        figures: dict[str, Figure | Tensor] = {"latent_space": scatter}
        if d >= 2:  # a 1-D latent space has no plane to draw
            coords = plots.manifold_grid_coords(options.grid_size)
            grid = plots.manifold(
                module.decode,
                n=options.grid_size,
                latent_dim=d,
                basis=basis,  # for d = 2: I₂, 0 and 1, the prior's grid
                center=center,
                scale=scale,
                device=module.device,
            )
            figures["manifold"] = plots.manifold_figure(
                grid,
                coords * scale,  # the plane's coordinates along its two directions
                xlabel=f"{stem}₁",
                ylabel=f"{stem}₂",
                title=f"decoder means over a {options.grid_size}×{options.grid_size} quantile grid",
            )
        figures.update(
            _grid_figures(module, images, mu, labels, class_names=class_names, options=options)
        )
        return figures


def to_images(figures: dict[str, Figure | Tensor]) -> dict[str, Tensor]:
    """Each figure as an RGB image tensor ``(3, H, W)`` in [0, 1], rendering every Figure once.

    Use these pixels for both TensorBoard and the PNGs: rendering the same matplotlib Figure a
    second time can move its axes (the manifold's constrained layout around a fixed-aspect image
    is not idempotent: each ``savefig`` shifts it by a few pixels), whereas the first rendering of
    a figure is deterministic, so the callback's PNGs and a re-plot by the CLI are identical.
    """
    return {
        name: plots.figure_to_tensor(fig) if isinstance(fig, Figure) else fig
        for name, fig in figures.items()
    }


def write_projector(
    log_dir: str | Path,
    embeddings: Tensor,
    labels: Sequence[str],
    images: Tensor,
    *,
    tag: str = "test_posterior_means",
    step: int = 0,
) -> Path:
    """Write a TensorBoard embedding-projector entry; returns its folder.

    ``embeddings`` ``(N, d)`` (padded with zero columns to 3 when d < 3, see below), one metadata
    ``labels`` string per row, and ``images`` ``(N, C, H, W)`` (C = 1: a grey sprite, 3: RGB)
    uint8 for the sprite (⌈√N⌉ × ⌈√N⌉ tiles of H × W, missing tiles black). The same files and layout
    as ``SummaryWriter.add_embedding`` (``<log_dir>/<step:05d>/<tag>/`` and the shared
    ``projector_config.pbtxt``), but the sprite stays uint8: add_embedding builds it in float64 and
    peaks at about 700 MB for the 10,000 test digits.
    """

    n = embeddings.shape[0]
    if len(labels) != n or images.shape[0] != n or images.dtype != torch.uint8:
        raise ValueError(
            f"need {n} labels and {n} uint8 images, got {len(labels)} and {images.shape}"
        )
    folder = Path(log_dir) / f"{step:05d}/{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    # TensorBoard's PCA always computes three components; for a 2-D (or 1-D) embedding the
    # missing ones come out NaN and no point is drawn. Zero columns give them zero variance.
    embeddings = F.pad(embeddings, (0, max(PROJECTOR_MIN_DIMS - embeddings.shape[1], 0)))
    rows = ("\t".join(f"{v:.7g}" for v in row) for row in embeddings.tolist())
    write_atomic(folder / "tensors.tsv", "\n".join(rows) + "\n")
    write_atomic(folder / "metadata.tsv", "\n".join(labels) + "\n")
    side = math.ceil(math.sqrt(n))
    tiles = torch.zeros(side * side, *images.shape[1:], dtype=torch.uint8)
    tiles[:n] = images.cpu()
    sprite = make_grid(tiles, nrow=side, padding=0)  # (3, side·H, side·W), still uint8
    pixels = sprite[0].numpy() if images.shape[1] == 1 else sprite.permute(1, 2, 0).numpy()
    with atomic_file(folder / "sprite.png") as f:
        Image.fromarray(np.ascontiguousarray(pixels)).save(f, format="PNG")  # grey or RGB

    _add_projector_entry(Path(log_dir), tag=tag, step=step, image_hw=images.shape[-2:])
    return folder


def _add_projector_entry(log_dir: Path, *, tag: str, step: int, image_hw: Sequence[int]) -> None:
    """Add (or replace) the entry ``<tag>:<step>`` of ``<log_dir>/projector_config.pbtxt``."""
    from google.protobuf import text_format
    from tensorboard.plugins.projector import projector_config_pb2

    sub = f"{step:05d}/{tag}"
    config_path = log_dir / "projector_config.pbtxt"
    config = projector_config_pb2.ProjectorConfig()
    earlier = read_own(config_path)  # the other tags' entries (not through a planted link)
    if earlier is not None:
        with contextlib.suppress(text_format.ParseError, UnicodeDecodeError):  # else rewritten
            text_format.Parse(earlier.decode("utf-8"), config)
    name = f"{tag}:{step:05d}"
    for replaced in [e for e in config.embeddings if e.tensor_name == name]:
        config.embeddings.remove(replaced)
    entry = config.embeddings.add()
    entry.tensor_name = name
    entry.tensor_path = f"{sub}/tensors.tsv"
    entry.metadata_path = f"{sub}/metadata.tsv"
    entry.sprite.image_path = f"{sub}/sprite.png"
    entry.sprite.single_image_dim.extend(list(image_hw))
    write_atomic(config_path, text_format.MessageToString(config))


def write_pngs(figures: dict[str, Figure | Tensor], directory: str | Path) -> list[Path]:
    """Save each figure as ``<directory>/<name>.png``; returns the paths."""
    return [plots.save_png(fig, Path(directory) / f"{name}.png") for name, fig in figures.items()]


# ---- command line --------------------------------------------------------------------------------
def cli_hints(prog: str) -> DataHints:
    """How the data errors of the command line ``prog`` spell the fixes: its ``--data-root`` or
    ``VAE_DATA_DIR``, and that it never downloads (vae.train.data's default names train.py's config
    keys, which such a command does not have)."""
    return DataHints(
        not_fetched=f"{prog} does not download",
        fetch="download them from {mirrors} (python train.py data.download=true does, before "
        "training)",
        refetch=f"replace it with the published file ({prog} does not download)",
        root="pass --data-root DIR (or set VAE_DATA_DIR) for a directory DIR holding {raw}",
        folder="pass --data-root DIR for the folder of images the model was trained on (where it "
        "is now, if it moved)",
    )


def _resolve_checkpoint(target: Path) -> Path:
    if target.is_dir():
        for candidate in (target / "checkpoints" / "last.ckpt", target / "last.ckpt"):
            if candidate.is_file():
                return candidate
        found = sorted(target.glob("**/*.ckpt"))
        if not found:
            raise FileNotFoundError(f"no checkpoint (*.ckpt) under {target}")
        return found[-1]
    if not target.is_file():
        raise FileNotFoundError(f"{target} is neither a run directory nor a checkpoint file")
    return target


def run_dir_of(path: Path) -> Path:
    """The run directory of a run directory or of a checkpoint (``<run>/checkpoints/*.ckpt`` or
    ``<run>/*.ckpt``)."""
    if path.is_dir():
        return path
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def run_environment(run_dir: Path) -> dict[str, Any] | None:
    """The ``environment`` record of ``<run_dir>/metrics.json`` (None when there is none)."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError, AttributeError):
        return dict(json.loads((run_dir / "metrics.json").read_text())["environment"])
    return None


def _check_out(out: Path) -> None:
    """``--out`` must be a folder this process can create or write into (checked before drawing)."""
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir():
        what = "a file, not a folder" if existing == out else f"{existing} is a file, not a folder"
        raise ConfigError(f"--out {out}: {what}; pass a folder for the figures with --out DIR")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"--out {out}: {existing} is not writable; choose another folder with --out DIR"
        )


def _check_device(text: str) -> torch.device:
    """The torch device ``--device`` names, refused unless it is usable on this machine."""
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ConfigError(
            f"--device {text!r}: not a torch device; use cpu, cuda, cuda:<index> or mps"
        ) from None
    try:
        torch.empty(1, device=device)  # the one check for every kind: cuda, cuda:7, mps, xpu
    except (RuntimeError, AssertionError, ValueError) as err:
        reason = " ".join(str(err).split()).split(". ")[0].rstrip(".")
        raise ConfigError(
            f"--device {text!r}: not available on this machine ({reason}); use --device cpu"
        ) from None
    return device


def _check_finite(module: Any, ckpt: Path) -> None:
    """Refuse weights with NaN or inf entries: every figure drawn from them would be blank."""
    tensors = {k: v for k, v in module.state_dict().items() if v.is_floating_point()}
    bad = {k: n for k, v in tensors.items() if (n := int((~torch.isfinite(v)).sum()))}
    if bad:
        first = next(iter(bad))
        raise CheckpointError(
            f"{ckpt}: {len(bad)} of {len(tensors)} weight tensors hold NaN or infinite values "
            f"({sum(bad.values()):,} values, first in {first}): the model had diverged when "
            "this checkpoint was written; redraw from an earlier checkpoint (such as the run's "
            "best-*.ckpt)"
        )


def load_test_split(
    checkpoint: dict[str, Any], data_root: str | None, *, prog: str
) -> ImageDataModule:
    """The checkpoint's data module with its test split loaded, never downloading, for the viewer
    ``prog`` (``python -m vae.visualize`` or ``python -m vae.explore``). Its root is ``data_root``
    if given, else (MNIST and Fashion-MNIST only: not a folder of images) ``$VAE_DATA_DIR`` if set.
    It keeps what the checkpoint recorded (a folder's fingerprint) and prints, on stderr, what
    :meth:`~ImageDataModule.changed_since_training` finds."""
    hparams = dict(checkpoint.get("datamodule_hyper_parameters") or {})
    is_folder = hparams.get("dataset") == "folder"
    root = data_root or (None if is_folder else os.environ.get("VAE_DATA_DIR"))
    overrides = {"download": False} | ({"root": root} if root else {})
    dm = ImageDataModule(**(hparams | overrides))
    dm.load_state_dict(checkpoint.get(ImageDataModule.__qualname__, {}))
    dm.hints = cli_hints(prog)
    dm.setup("test")
    if note := dm.changed_since_training():
        print(note, file=sys.stderr)
    return dm


def _parser() -> argparse.ArgumentParser:
    """``python -m vae.visualize``'s options: one flag per :class:`FigureOptions` field."""
    parser = argparse.ArgumentParser(
        prog="python -m vae.visualize",
        description="Redraw a trained model's figures (latent space, manifold, reconstructions, "
        "samples, interpolation) from a run directory or a checkpoint.",
    )
    parser.add_argument(
        "target", type=Path, help="run directory (uses checkpoints/last.ckpt) or .ckpt"
    )
    parser.add_argument("--out", type=Path, help="output folder (default: the run directory)")
    parser.add_argument(
        "--data-root",
        help="folder holding MNIST/raw, or the folder of images (default: $VAE_DATA_DIR if set "
        "and the run used MNIST, else the run's data.root)",
    )
    for f in dataclasses.fields(FigureOptions):  # one flag per option, e.g. --grid-size
        flag = "--" + f.name.replace("_", "-")
        shown = "" if f.default is None else f" (default: {f.default})"
        kwargs = {"default": f.default, "help": f.metadata["help"] + shown}
        parser.add_argument(flag, **kwargs, **f.metadata["flag"])
    parser.add_argument(
        "--device", default="cpu", help="where the model runs: cpu, cuda or mps (default: cpu)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    writes = None  # a full disk is the figures' only once they are being written
    try:
        device = _check_device(args.device)
        ckpt = _resolve_checkpoint(args.target)
        out = args.out or run_dir_of(ckpt)
        _check_out(out)
        checkpoint = load_checkpoint(ckpt, map_location=device)  # the one loader, read once
        module = VAEModule.from_checkpoint(checkpoint)
        _check_finite(module, ckpt)
        dm = load_test_split(checkpoint, args.data_root, prog="python -m vae.visualize")
        ds = dm.test_dataset
        options = FigureOptions(
            **{f.name: getattr(args, f.name) for f in dataclasses.fields(FigureOptions)}
        )
        figures = render_figures(
            module, dm.to_float(ds.images), ds.labels, class_names=dm.class_names, options=options
        )
        writes = Writes(
            out,
            what="the figures",
            kept="the checkpoint is intact",
            fix="or choose another folder with --out DIR",
        )
        paths = write_pngs(to_images(figures), out)
    except Exception as err:  # the error boundary (vae.train.boundary), returning the status
        if (line := error_line(err, writes=writes, also=(FileNotFoundError,))) is None:
            raise
        print(line, file=sys.stderr)
        return 2
    print(*paths, sep="\n")
    env = run_environment(run_dir_of(ckpt))
    with contextlib.suppress(KeyError, TypeError):  # a partial record: no line
        if env is not None:
            print(f"run measured on: {format_environment(env)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
