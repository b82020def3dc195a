"""An interactive latent-space explorer: one self-contained HTML page per model.

``python -m vae.explore <run dir | checkpoint> [--out FILE] [--serve]`` writes ``explorer.html``
(by default into the run directory); :class:`vae.viz.callbacks.ExplorerWriter` writes it at the end of
every run. The page works offline from ``file://``: it makes no network request. Everything is
inlined: the JavaScript (``vae/viz/explorer/model.js``, the forward pass; ``vae/viz/explorer/explorer.js``,
the page) and a JSON payload with

- the encoder's and decoder's layers as a list of ops and every weight in one base64 blob,
  float16 by default (the page of the default model is then ~5 MB) or float32;
- the test images (uint8, gzip'd, inflated in the page by ``DecompressionStream``), their labels,
  their posterior means projected on the plane of ``latent_space.png`` and their KL in nats;
- the projection (the PCA plane through the mean of the posterior means when latent_dim > 2),
  the run's key numbers (nats per image) and a config summary.

Precision (``tests/test_explore.py``, against ``VAEModule`` in float32): the page computes in
float64 on the embedded weights, so with float32 weights it matches torch to ~1e-6 (tested ≤ 1e-4
in pixels and in mu, logvar). float16 weights (each rounded to nearest, relative error ≤ 2⁻¹¹) halve
the weights' share of the page and move decoded pixels by up to 7e-4 and mu, logvar by up to 6e-4
on the 3-epoch default model (tested ≤ 2e-3 and ≤ 5e-3 on random models; a grey level is
1/255 ≈ 4e-3); the float16 page equals torch with float16-rounded weights to ≤ 1e-4.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import gzip
import hashlib
import http.server
import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from html import escape
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import torch
from torch import Tensor, nn

from vae.core.networks import ACTIVATIONS
from vae.errors import ConfigError, ExplorerError
from vae.kl import gaussian_kl_per_dim
from vae.rules import positive_int_arg
from vae.train.boundary import error_line
from vae.train.checkpointing import load_checkpoint
from vae.train.environment import format_environment
from vae.train.files import write_atomic
from vae.train.module import VAEModule
from vae.viz import figures as visualize
from vae.viz import plots

PRECISIONS = ("float16", "float32")
DEFAULT_PRECISION = "float16"
#: the activations of vae.core.networks.ACTIVATIONS, by torch class name → the page's name
_ACTIVATION_NAMES = {cls.__name__: name for name, cls in ACTIVATIONS.items()}
#: the run's key numbers shown in the page's corner: (metrics key stem, label)
METRIC_ROWS = (
    ("loss", "−ELBO"),
    ("nll_iw", "IW bound"),
    ("recon", "reconstruction"),
    ("kl", "KL"),
    ("active_units", "active units"),
)
FILENAME = "explorer.html"
#: where ``--serve`` listens by default: this machine only
LOOPBACK = "127.0.0.1"


# ---- the model as ops ----------------------------------------------------------------------------
class _Blob:
    """Collects tensors into one flat float32 vector; ``add`` returns a tensor's name."""

    def __init__(self) -> None:
        self.parts: list[Tensor] = []
        self.index: dict[str, dict[str, Any]] = {}
        self.size = 0

    def add(self, name: str, t: Tensor) -> str:
        flat = t.detach().to("cpu", torch.float32).reshape(-1)  # any shape -> (numel,)
        self.index[name] = {"offset": self.size, "size": flat.numel(), "shape": list(t.shape)}
        self.parts.append(flat)
        self.size += flat.numel()
        return name

    def vector(self) -> Tensor:
        return torch.cat(self.parts) if self.parts else torch.zeros(0)


def _pair(v: int | Sequence[int]) -> list[int]:
    return [int(v), int(v)] if isinstance(v, int) else [int(x) for x in v]


def _weights(layer: nn.Module, name: str, blob: _Blob) -> dict[str, str]:
    """The ``weight`` and ``bias`` of ``layer`` into ``blob``: the op's entries naming them."""
    return {k: blob.add(f"{name}.{k}", getattr(layer, k)) for k in ("weight", "bias")}


def _layer_op(layer: nn.Module, name: str, blob: _Blob, x: Tensor) -> dict[str, Any]:
    """One layer → its op (weights into ``blob``); ``x`` is its input ``(1, …)``, for the shapes."""
    kind = type(layer).__name__
    if isinstance(layer, nn.Linear):
        return {
            "op": "linear",
            **_weights(layer, name, blob),
            "in": layer.in_features,
            "out": layer.out_features,
        }
    if isinstance(layer, nn.LayerNorm):
        if len(layer.normalized_shape) != 1 or not layer.elementwise_affine or layer.bias is None:
            raise ExplorerError(f"{name}: only a 1-D affine LayerNorm is supported")
        return {"op": "layernorm", **_weights(layer, name, blob), "eps": float(layer.eps)}
    if kind in _ACTIVATION_NAMES:
        op: dict[str, Any] = {"op": "act", "fn": _ACTIVATION_NAMES[kind]}
        if isinstance(layer, nn.GELU) and layer.approximate != "none":
            raise ExplorerError(f"{name}: only the exact (erf) GELU is supported")
        if isinstance(layer, nn.ELU):
            op["alpha"] = float(layer.alpha)
        if isinstance(layer, nn.LeakyReLU):
            op["alpha"] = float(layer.negative_slope)
        return op
    if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)):
        if layer.groups != 1 or _pair(layer.dilation) != [1, 1] or layer.padding_mode != "zeros":
            raise ExplorerError(f"{name}: only groups=1, dilation=1, zero padding are supported")
        out = layer(x)  # (_ops runs without grad)
        return {
            "op": "conv2d" if isinstance(layer, nn.Conv2d) else "conv_transpose2d",
            **_weights(layer, name, blob),
            "in_shape": list(x.shape[1:]),
            "out_shape": list(out.shape[1:]),
            "kernel": _pair(layer.kernel_size),
            "stride": _pair(layer.stride),
            "padding": _pair(layer.padding),
        }
    raise ExplorerError(f"{name}: the page has no forward pass for {kind}")


def _ops(
    layers: Sequence[tuple[str, nn.Module]], x: Tensor, blob: _Blob, *, conv_shape: Sequence[int]
) -> list[dict[str, Any]]:
    """The ops of ``layers`` applied in order to ``x`` ``(1, …)``. The page's activations are flat
    (C·H·W, torch's flatten order): a Linear flattens its input, and a convolution reads a flat
    input as ``conv_shape`` ``(C, H, W)`` (the decoder's unflatten)."""
    ops = []
    with torch.no_grad():
        for name, layer in layers:
            if isinstance(layer, nn.Linear):
                x = x.flatten(start_dim=1)  # (1, C, H, W) -> (1, C·H·W)
            elif isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) and x.ndim == 2:
                x = x.unflatten(-1, tuple(conv_shape))  # (1, C·H·W) -> (1, C, H, W)
            ops.append(_layer_op(layer, name, blob, x))
            x = layer(x)
    return ops


def _named(prefix: str, seq: nn.Sequential) -> list[tuple[str, nn.Module]]:
    return [(f"{prefix}.{i}", layer) for i, layer in enumerate(seq)]


def _in_precision(vector: Tensor, precision: str, option: str) -> Tensor:
    """The page's weights in ``precision``; a weight float16 cannot hold is an
    :class:`ExplorerError` naming the caller's ``option`` (``--precision {}``)."""
    converted = vector.to(getattr(torch, precision))
    if precision == "float16" and not torch.isfinite(converted).all():
        raise ExplorerError(
            f"{option.format('float16')}: a weight of the model is {vector.abs().max().item():.3g}, "
            "beyond float16's range (±65504): its training diverged, though the loss stayed "
            f"finite (a learning rate too high does that); use {option.format('float32')}, or "
            "train with a lower optim.lr"
        )
    return converted


def model_payload(
    module: Any, *, precision: str = DEFAULT_PRECISION, option: str = "precision={}"
) -> dict[str, Any]:
    """The page's description of ``module`` (a :class:`vae.train.module.VAEModule`): ops and weights.

    Returns ``{"encoder": ops, "decoder": ops, "tensors": {name: {offset, size, shape}},
    "weights": {"dtype", "base64", "gzip"}, "latent_dim", "image_shape", "likelihood",
    "logvar_bound", "prob_eps"}``. The encoder's last op outputs ``2·latent_dim`` values: mu, then
    the raw logvar, which the page soft-clamps (``logvar_bound · tanh(raw / logvar_bound)``).
    ``option`` spells the caller's precision setting in a message (``--precision {}``).
    """
    if precision not in PRECISIONS:
        raise ExplorerError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    vae = module.vae
    enc, dec = vae.encoder, vae.decoder
    shape = tuple(int(s) for s in module.image_shape)
    blob = _Blob()
    if module.model_config.architecture == "conv":  # else mlp (vae.core.networks)
        enc_layers = [*_named("encoder.conv", enc.conv), *_named("encoder.body", enc.body)]
        dec_layers = [*_named("decoder.body", dec.body), *_named("decoder.deconv", dec.deconv)]
        start = dec.start_shape
    else:
        enc_layers, start = _named("encoder.body", enc.body), shape
        dec_layers = _named("decoder.net", dec.net)
    enc_layers.append(("encoder.head.proj", enc.head.proj))
    dtype = next(module.parameters()).dtype
    with visualize.eval_mode(module):
        x = torch.zeros(1, *shape, dtype=dtype, device=module.device)
        z = torch.zeros(1, module.latent_dim, dtype=dtype, device=module.device)
        encoder_ops = _ops(enc_layers, x, blob, conv_shape=shape)
        decoder_ops = _ops(dec_layers, z, blob, conv_shape=start)
    vector = _in_precision(blob.vector(), precision, option)
    return {
        "encoder": encoder_ops,
        "decoder": decoder_ops,
        "tensors": blob.index,
        "weights": {"dtype": precision, "gzip": False, "base64": _b64(vector.numpy().tobytes())},
        "latent_dim": int(module.latent_dim),
        "image_shape": list(shape),
        "likelihood": module.model_config.likelihood,  # model.js has each of LIKELIHOODS
        "logvar_bound": float(enc.head.logvar_bound),
        # ContinuousBernoulli clamps λ to [eps, 1 − eps] of the model's dtype (clamp_probs)
        "prob_eps": float(torch.finfo(dtype).eps),
    }


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _blob(t: Tensor, *, compress: bool = False) -> dict[str, Any]:
    """A tensor as ``{"base64", "gzip"}`` of its little-endian bytes (``mtime=0``: deterministic)."""
    data = t.contiguous().numpy().tobytes()
    if compress:
        data = gzip.compress(data, compresslevel=6, mtime=0)  # level 9: benchmarks/README.md
    return {"base64": _b64(data), "gzip": compress}


# ---- the test points -----------------------------------------------------------------------------
def _sub(i: int) -> str:
    return str(i).translate(str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉"))


def projection_payload(mu: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, Any]]:
    """The plane of ``latent_space.png``: (points ``(N, 2)``, ``{"basis" (2, d), "center" (d,),
    "axis_labels", "description"}``), z = center + u·basis[0] + v·basis[1] on the plane.

    latent_dim 2: the latent axes; > 2: the PCA plane of the posterior means through their mean
    (:func:`vae.viz.figures._project`; the other coordinates at the mean); 1: z₁ against the class
    index with a seeded jitter, as the strip plot (the vertical axis does not move z).
    """
    d = mu.shape[1]
    if d == 1:
        jitter = torch.rand(mu.shape[0], generator=torch.Generator().manual_seed(0)) - 0.5
        points = torch.stack([mu[:, 0], labels.float() + 0.6 * jitter], dim=1)  # (N, 2)
        basis, center = torch.tensor([[1.0], [0.0]]), torch.zeros(1)
        axis, text = ["z₁", "class (jittered)"], "z₁ against the class"
    else:  # the latent plane, or for d > 2 the PCA plane
        points, basis, center, _, _ = visualize._project(mu, "pca")
        axis, text = ["z₁", "z₂"], "the latent plane (z₁, z₂)"
    if d > 2:
        ratio = plots.pca_2d(mu).explained_variance_ratio.tolist()
        axis = [f"PC{_sub(k + 1)} ({100 * r:.0f} % of the variance)" for k, r in enumerate(ratio)]
        text = f"PCA plane of the {d}-D means (other directions at their mean)"
    return points.float(), {
        "basis": basis.double().tolist(),
        "center": center.double().tolist(),
        "axis_labels": axis,
        "description": text,
    }


def points_payload(
    module: Any,
    images: Tensor,
    labels: Tensor,
    *,
    max_points: int | None = None,
    seed: int = 0,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(points, projection) of the page: the test set's posterior means on the plane.

    ``points``: ``n`` shown of ``total``; blobs ``xy`` float32 ``(n, 2)``, ``kl`` float32 ``(n,)``
    (KL(q(z|x) ‖ N(0, I)) in nats, closed form), ``labels`` uint8 ``(n,)``, ``images`` uint8
    ``(n, C, H, W)`` (gzip) and, when subsampled, ``indices`` int32 ``(n,)`` into the test set.
    Points are stored in a seeded random order (drawn in that order, so no class is painted over
    another); the projection is computed from all ``images``.
    """
    labels = labels.cpu().long()
    if labels.min() < 0 or labels.max() > 255:
        raise ExplorerError("labels must be class indices in [0, 255]")
    mu, logvar = visualize.encode_all(module, images)
    kl = gaussian_kl_per_dim(mu, logvar).sum(dim=-1)  # (N, d) -> (N,)
    xy, projection = projection_payload(mu, labels)
    total = images.shape[0]
    order = torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:max_points]
    points = {
        "n": int(order.numel()),
        "total": int(total),
        "xy": _blob(xy[order].contiguous()),
        "kl": _blob(kl[order].float()),
        "labels": _blob(labels[order].to(torch.uint8)),
        "images": _blob(
            images[order].cpu().float().mul(255).round().clamp(0, 255).to(torch.uint8),
            compress=True,
        ),
        "indices": _blob(order.to(torch.int32)),
    }
    return points, projection


# ---- the page ------------------------------------------------------------------------------------
def _format(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}"  # also "inf", "-inf", "nan"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(map(str, v)) + "]"
    return str(v)


def metric_rows(metrics: Mapping[str, float] | None) -> list[list[str]]:
    """The corner's numbers: ``test/…`` when present (else ``val/…``), nats per image."""
    metrics = metrics or {}
    rows = []
    for stem, label in METRIC_ROWS:
        split = next((s for s in ("test", "val") if f"{s}/{stem}" in metrics), None)
        if split is not None:
            value = float(metrics[f"{split}/{stem}"])
            text = f"{value:.0f}" if stem == "active_units" else f"{value:.2f} nats"
            rows.append([f"{split} {label}", text])
    return rows or [["metrics", "not available (no metrics.json)"]]


def config_summary(
    module: Any,
    datamodule_hparams: Mapping[str, Any] | None = None,
    *,
    environment: Mapping[str, Any] | None = None,
) -> dict[str, str]:
    """A short, flat summary of the model, optimiser and data of a :class:`VAEModule`, and where
    its numbers were measured (``environment``: :func:`vae.train.environment.collect_environment`, the
    same line ``metrics.json`` and ``python -m vae.visualize`` show)."""
    hp = module.hparams
    model, optim = dict(hp.get("model", {})), dict(hp.get("optim", {}))
    data = dict(datamodule_hparams or {})
    out = {"dataset": data.get("dataset")}
    keys = ["architecture", "latent_dim", "hidden_dims", "activation", "norm", "likelihood", "beta"]
    if model.get("architecture") == "conv":
        keys.insert(3, "channels")
    out |= {k: model.get(k) for k in keys}
    if "optimizer" in optim or "lr" in optim:
        out["optimizer"] = f"{optim.get('optimizer', 'adam')}, lr {optim.get('lr')}"
    out["binarize"] = data.get("binarize")
    summary = {k: _format(v) for k, v in out.items() if v is not None}
    if environment:
        summary["measured on"] = format_environment(dict(environment))
    return summary


def _asset(name: str) -> str:
    return (resources.files("vae.viz") / "explorer" / name).read_text(encoding="utf-8")


def _script_safe(text: str) -> str:
    if "</script" in text.lower():
        raise ValueError("an inlined script contains '</script'")
    return text


def page_payload(
    module: Any,
    *,
    images: Tensor,
    labels: Tensor,
    class_names: Sequence[str],
    metrics: Mapping[str, float] | None = None,
    config: Mapping[str, str] | None = None,
    precision: str = DEFAULT_PRECISION,
    max_points: int | None = None,
    option: str = "precision={}",
) -> dict[str, Any]:
    """Everything the page shows, as JSON-ready data (:func:`render_html` makes it the page).

    ``images`` float ``(N, C, H, W)`` in [0, 1] (the test split as the model sees it), ``labels``
    ``(N,)`` class indices into ``class_names`` (no class names: an unlabelled folder, whose points
    the page shows in one colour as "unlabelled"); ``metrics`` e.g. ``{"test/loss": …}`` (nats per
    image); ``config`` the corner's summary (default :func:`config_summary`); ``precision`` of the
    embedded weights (:data:`PRECISIONS`); ``max_points`` subsamples the test points (seeded).
    ``option`` spells the caller's precision setting in a message (``--precision {}``).
    """
    if images.ndim != 4 or images.shape[0] != labels.shape[0] or images.shape[0] < 2:
        raise ExplorerError(
            f"need images (N, C, H, W) with N ≥ 2 and N labels, got {tuple(images.shape)} "
            f"and {tuple(labels.shape)}"
        )
    if not class_names:
        class_names, labels = ["unlabelled"], torch.zeros_like(labels)
    if int(labels.max()) >= len(class_names):
        raise ExplorerError(
            f"labels reach {int(labels.max())} but there are only {len(class_names)} class names"
        )
    points, projection = points_payload(module, images, labels, max_points=max_points)
    return {
        "version": 1,
        "model": model_payload(module, precision=precision, option=option),
        "points": points,
        "projection": projection,
        "class_names": list(class_names),
        "metrics": metric_rows(metrics),
        "config": [[k, v] for k, v in (config or config_summary(module)).items()],
        "title": _title(module, config),
    }


def _title(module: Any, config: Mapping[str, str] | None) -> str:
    dataset = (config or {}).get("dataset")
    names = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "folder": "your images"}
    name = names.get(dataset, dataset)
    return f"VAE latent space{f' of {name}' if name else ''}: latent_dim {module.latent_dim}"


def render_html(payload: Mapping[str, Any]) -> str:
    """The page of a :func:`page_payload`: the template with the scripts and the payload inlined."""
    # "</" cannot end the JSON's <script> element once escaped as "<\/" (still valid JSON)
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":")).replace("</", "<\\/")
    html = _asset("explorer.html")
    # the payload goes in last, so nothing in it can be mistaken for a placeholder
    for key, value in (
        ("{{TITLE}}", escape(str(payload["title"]), quote=False)),
        ("{{MODEL_JS}}", _script_safe(_asset("model.js"))),
        ("{{EXPLORER_JS}}", _script_safe(_asset("explorer.js"))),
    ):
        html = html.replace(key, value)
    return html.replace("{{PAYLOAD}}", text, 1)


def weights_fingerprint(module: Any) -> str:
    """SHA-256 of every tensor of ``module.state_dict()`` (names, shapes, dtypes and bytes)."""
    digest = hashlib.sha256()
    for name, t in module.state_dict().items():
        digest.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        digest.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---- reading a run -------------------------------------------------------------------------------
def _load_run(target: Path) -> tuple[Any, dict[str, Any], dict[str, float]]:
    """(module on the CPU, the checkpoint, test metrics) of a run directory or a checkpoint; all
    checkpoint reading of this module is here.

    The metrics come from the run directory's ``metrics.json`` (``{"metrics": {...}}``) when
    there is one beside ``checkpoints/``; otherwise they are empty.
    """
    ckpt = visualize._resolve_checkpoint(target)
    checkpoint = load_checkpoint(ckpt)  # the one loader: data only, every field checked
    module = VAEModule.from_checkpoint(checkpoint)
    return module, checkpoint, read_metrics(visualize.run_dir_of(ckpt))


def read_metrics(run_dir: Path) -> dict[str, float]:
    """The ``metrics`` of ``<run_dir>/metrics.json`` (empty when absent or unreadable)."""
    path = Path(run_dir) / "metrics.json"
    try:
        metrics = json.loads(path.read_text()).get("metrics", {})
    except (OSError, ValueError, AttributeError):
        return {}
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}


def write_page(path: Path, html: str) -> Path:
    """Write ``html`` to ``path`` with the one atomic writer (:func:`vae.train.files.write_atomic`:
    a planted link is never followed, a full disk leaves the old page)."""
    return write_atomic(
        path, html, what="the explorer page", fix="or choose another file with --out"
    )


class _PageHandler(http.server.BaseHTTPRequestHandler):
    """Answers ``GET``/``HEAD /<page name>`` with the page and anything else with 404: no listing,
    no other file of its folder (the checkpoints, config.yaml), no path outside it."""

    page_path = "/"
    body = b""

    def do_GET(self) -> None:
        """The page (``HEAD``: its headers only) or 404."""
        # the raw request path, compared as typed: %-encodings, "..", "//" or a query never match
        if self.path != self.page_path:
            self.send_error(404, "only the explorer page is served here")
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(self.body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command == "GET":
            self.wfile.write(self.body)

    do_HEAD = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass


def open_server(*, host: str = LOOPBACK, port: int = 0) -> http.server.ThreadingHTTPServer:
    """A server listening on ``host:port`` (port 0: any free one), not serving yet. Opened before
    the page is built, so a port in use or an address that is not this machine's is refused before
    anything is written; a host that is not a loopback address gets a warning on stderr."""
    try:
        server = http.server.ThreadingHTTPServer((host, port), _PageHandler)
    except (OSError, OverflowError) as err:
        reason = (getattr(err, "strerror", None) or " ".join(str(err).split())).rstrip(".")
        raise ConfigError(
            f"--host {host} --port {port}: cannot listen there ({reason}); choose a free port with "
            "--port N (0 picks one) or an address of this machine with --host"
        ) from None
    if not _is_loopback(host):
        print(
            f"warning: --host {host} is not a loopback address: anyone who can reach this machine "
            "on that address can read the page (the model's weights and the test images)",
            file=sys.stderr,
        )
    return server


def _is_loopback(host: str) -> bool:
    with contextlib.suppress(ValueError):  # a host name: only "localhost" stays on this machine
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    return False


def serve(path: Path, server: http.server.ThreadingHTTPServer) -> None:
    """Serve the page at ``path`` (read once, now) and nothing else on ``server``
    (:func:`open_server`); print its address and block until interrupted (Ctrl-C, SIGTERM)."""
    path = Path(path)
    name = quote(path.name)
    server.RequestHandlerClass = type(
        "PageHandler", (_PageHandler,), {"page_path": f"/{name}", "body": path.read_bytes()}
    )
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"serving http://{shown}:{port}/{name} (Ctrl-C to stop)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m vae.explore",
        description="Write the interactive latent-space explorer (one offline HTML file) of a "
        "run directory or checkpoint.",
    )
    parser.add_argument("target", type=Path, help="run directory (its last.ckpt) or a .ckpt file")
    parser.add_argument("--out", type=Path, help=f"output file (default: <run dir>/{FILENAME})")
    parser.add_argument(
        "--data-root",
        help="folder holding MNIST/raw, or the folder of images (default: $VAE_DATA_DIR if set "
        "and the run used MNIST, else the run's data.root)",
    )
    parser.add_argument("--precision", choices=PRECISIONS, default=DEFAULT_PRECISION)
    parser.add_argument(
        "--max-points", type=positive_int_arg, default=None, help="subsample the test points"
    )
    parser.add_argument(
        "--serve", action="store_true", help="serve the page (only it) and print its address"
    )
    parser.add_argument(
        "--host",
        default=LOOPBACK,
        help=f"with --serve: the address to listen on (default: {LOOPBACK}, this machine only)",
    )
    parser.add_argument("--port", type=int, default=0, help="with --serve (default: a free port)")
    return parser


def _write_explorer(args: argparse.Namespace) -> Path:
    """Build the page of ``args.target`` and write it; returns its path."""
    module, checkpoint, metrics = _load_run(args.target)
    run_dir = visualize.run_dir_of(args.target)  # the page's default folder
    dm = visualize.load_test_split(checkpoint, args.data_root, prog="python -m vae.explore")
    hparams = checkpoint.get("datamodule_hyper_parameters")
    ds = dm.test_dataset
    payload = page_payload(
        module,
        images=dm.to_float(ds.images),
        labels=ds.labels,
        class_names=dm.class_names,
        metrics=metrics,
        config=config_summary(module, hparams, environment=visualize.run_environment(run_dir)),
        precision=args.precision,
        max_points=args.max_points,
        option="--precision {}",
    )
    return write_page(args.out or run_dir / FILENAME, render_html(payload))


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    with contextlib.ExitStack() as stack:
        try:
            server = None
            if args.serve:  # listening before the page is built: a port in use writes nothing
                server = stack.enter_context(open_server(host=args.host, port=args.port))
            out = _write_explorer(args)
        except Exception as err:  # the error boundary (vae.train.boundary), returning the status
            if (line := error_line(err, also=(OSError,))) is None:
                raise
            print(line, file=sys.stderr)
            return 2
        print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")
        if server is not None:
            serve(out, server)
    return 0


if __name__ == "__main__":
    sys.exit(main())
