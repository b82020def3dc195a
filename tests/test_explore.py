"""The latent-space explorer (vae/viz/explore.py): its JavaScript forward pass against torch, in Node
and in a real (headless Debian Chromium) browser, the page's interactions, the CLI and the callback.

References are torch itself: ``VAEModule.decode`` / ``encode`` in float32 for the page with float32
weights (≤ 1e-4), the same module with its weights rounded to float16 for the float16 page (≤ 1e-4:
the page adds nothing to the rounding), and ``torch.distributions.ContinuousBernoulli`` in float64
for that likelihood's mean (its float32 formula cancels catastrophically next to the Taylor region
λ ∈ (0.499, 0.501]: torch's own float32 mean is off by up to ~4e-3 there, so float64 is the
reference). The browser tests skip, with the reason, when /usr/bin/chromium or the ``playwright``
package is missing; the Node tests then still check the same model.js.
"""

from __future__ import annotations

import base64
import errno
import gzip
import http.client
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor
from torch.distributions import ContinuousBernoulli

from vae.core.networks import ACTIVATIONS
from vae.kl import gaussian_kl_per_dim
from vae.train.environment import collect_environment, format_environment
from vae.train.module import VAEModule
from vae.viz import explore

ROOT = Path(__file__).resolve().parents[1]
MODEL_JS = ROOT / "vae" / "viz" / "explorer" / "model.js"
CHROMIUM = Path("/usr/bin/chromium")
NODE = shutil.which("node")
TOL = 1e-4  # float32 weights: page vs torch, pixels and mu / logvar
F16_PIXEL_TOL = 2e-3  # float16 weights vs the float32 model: half a grey level (1/255 ≈ 3.9e-3)
F16_LATENT_TOL = 5e-3
EPS32 = torch.finfo(torch.float32).eps
DIGITS = tuple(str(d) for d in range(10))

needs_node = pytest.mark.skipif(NODE is None, reason="node is not installed")


# ---- models and images ---------------------------------------------------------------------------
def make_module(
    *,
    architecture: str = "mlp",
    activation: str = "relu",
    norm: str = "layer",
    likelihood: str = "bernoulli",
    latent_dim: int = 2,
    hidden_dims: tuple[int, ...] = (48, 24),
    seed: int = 0,
) -> VAEModule:
    """A small VAEModule with random weights (LayerNorm's affine parameters randomised too, so a
    swapped weight and bias would show)."""
    torch.manual_seed(seed)
    module = VAEModule(
        model={
            "architecture": architecture,
            "latent_dim": latent_dim,
            "hidden_dims": list(hidden_dims),
            "channels": [4, 8],
            "activation": activation,
            "norm": norm,
            "likelihood": likelihood,
        },
        optim={"lr": 1e-3},
        evaluation={},
    )
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, torch.nn.LayerNorm):
                layer.weight.normal_(1.0, 0.5)
                layer.bias.normal_(0.0, 0.5)
    return module.eval()


def _synthetic_images(n: int, seed: int = 0) -> Tensor:
    """Blurry random strokes ``(n, 1, 28, 28)`` in [0, 1] (when real MNIST is not available)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(28.0), torch.arange(28.0), indexing="ij")
    centres = 6 + 16 * torch.rand(n, 3, 2, generator=g)
    d2 = (yy - centres[..., 0, None, None]) ** 2 + (xx - centres[..., 1, None, None]) ** 2
    return torch.exp(-d2 / 6).amax(dim=1, keepdim=True).clamp(0, 1)  # (n, 3, 28, 28) -> (n, 1, ..)


@pytest.fixture(scope="module")
def test_images() -> tuple[Tensor, Tensor]:
    """300 MNIST test images and labels from VAE_DATA_DIR, else synthetic ones (never skips)."""
    root = os.environ.get("VAE_DATA_DIR")
    if root and (Path(root) / "MNIST" / "raw").is_dir():
        from vae.train.data import load_split, to_float

        images, labels = load_split("mnist", root, train=False, download=False)
        return to_float(images[:300]), labels[:300]
    return _synthetic_images(300), torch.arange(300) % 10


def _latents(d: int, n: int = 12, seed: int = 1) -> Tensor:
    z = 1.5 * torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    z[0] = 0.0
    z[1] = 3.5  # far out: saturated activations and likelihood means
    return z


def _cb_mean_reference(module: VAEModule, z: Tensor) -> Tensor:
    """E[x | z] of the continuous Bernoulli in float64 from torch's decoder output (λ clamped at
    float32's eps as the float32 model's ContinuousBernoulli clamps it)."""
    with torch.no_grad():
        logits = module.vae.decode(z).double()
    probs = torch.sigmoid(logits).clamp(EPS32, 1 - EPS32)
    return ContinuousBernoulli(probs=probs, validate_args=False).mean


def _decode_reference(module: VAEModule, z: Tensor) -> Tensor:
    if module.hparams["model"]["likelihood"] == "continuous_bernoulli":
        return _cb_mean_reference(module, z).flatten(1)
    with torch.no_grad():
        return module.decode(z).flatten(1).double()


def _rounded_to_float16(module: VAEModule) -> VAEModule:
    """A copy of ``module`` whose float32 weights are the float16 page's (rounded to nearest)."""
    copy = make_module(**_kwargs(module))
    copy.load_state_dict(module.state_dict())
    with torch.no_grad():
        for p in copy.parameters():
            p.copy_(p.half().float())
    return copy.eval()


def _kwargs(module: VAEModule) -> dict[str, Any]:
    m = module.hparams["model"]
    keys = ("architecture", "activation", "norm", "likelihood", "latent_dim")
    return {k: m[k] for k in keys} | {"hidden_dims": tuple(m["hidden_dims"])}


# ---- Node -------------------------------------------------------------------------------------
NODE_DRIVER = r"""
const M = require(process.argv[2]);
const cases = JSON.parse(require("fs").readFileSync(process.argv[3], "utf8"));
(async () => {
  const out = [];
  for (const c of cases) {
    if (c.fn) { out.push(c.x.map((v) => M[c.fn](v, c.eps))); continue; }
    const m = await M.loadModel(c.model);
    out.push({
      decode: c.z.map((z) => Array.from(m.decode(z))),
      encode: c.x.map((x) => { const r = m.encode(x); return [Array.from(r.mu), Array.from(r.logvar)]; }),
    });
  }
  process.stdout.write(JSON.stringify(out));
})().catch((e) => { console.error(e); process.exit(1); });
"""


def run_node(cases: list[dict[str, Any]], tmp: Path) -> list[Any]:
    """Each case through model.js under Node: ``{model, z, x}`` → decodes and encodes;
    ``{fn, x, eps}`` → ``fn`` (erf, cbMean) of each x."""
    driver, data = tmp / "driver.js", tmp / "cases.json"
    driver.write_text(NODE_DRIVER)
    data.write_text(json.dumps(cases))
    done = subprocess.run(
        [NODE, str(driver), str(MODEL_JS), str(data)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
#: (architecture, activation, norm, likelihood, latent_dim): every activation with LayerNorm, every
#: likelihood without, for both architectures; and a 1-D and a 5-D latent space
CASES = [
    *[(arch, act, "layer", "bernoulli", 2) for arch in ("mlp", "conv") for act in ACTIVATIONS],
    *[(arch, "relu", "none", lik, 3) for arch in ("mlp", "conv") for lik in LIKELIHOODS],
    ("mlp", "gelu", "layer", "continuous_bernoulli", 1),
    ("conv", "elu", "none", "gaussian", 5),
]


@pytest.fixture(scope="module")
def node_results(
    test_images: tuple[Tensor, Tensor], tmp_path_factory: pytest.TempPathFactory
) -> dict[tuple, tuple[VAEModule, Tensor, Tensor, dict, dict]]:
    """Every case of CASES, float32 and float16, decoded and encoded by model.js in one Node run."""
    if NODE is None:
        pytest.skip("node is not installed")
    x = test_images[0][:6]
    cases, index = [], {}
    for case in CASES:
        arch, act, norm, lik, d = case
        module = make_module(
            architecture=arch, activation=act, norm=norm, likelihood=lik, latent_dim=d
        )
        z = _latents(d)
        for precision in explore.PRECISIONS:
            payload = explore.model_payload(module, precision=precision)
            cases.append({"model": payload, "z": z.tolist(), "x": x.flatten(1).tolist()})
        index[case] = (module, z, x)
    out = run_node(cases, tmp_path_factory.mktemp("node"))
    results = {}
    for k, case in enumerate(CASES):
        module, z, xx = index[case]
        results[case] = (module, z, xx, out[2 * k], out[2 * k + 1])  # float16, float32 (PRECISIONS)
    return results


def _errors(module: VAEModule, z: Tensor, x: Tensor, out: dict) -> tuple[float, float]:
    decoded = torch.tensor(out["decode"], dtype=torch.float64)
    pixel = (decoded - _decode_reference(module, z)).abs().max().item()
    with torch.no_grad():
        mu, logvar = module.encode(x)
    mu_js = torch.tensor([e[0] for e in out["encode"]], dtype=torch.float64)
    lv_js = torch.tensor([e[1] for e in out["encode"]], dtype=torch.float64)
    latent = max((mu_js - mu).abs().max().item(), (lv_js - logvar).abs().max().item())
    return pixel, latent


@needs_node
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_node_forward_pass_matches_torch_with_float32_weights(
    case: tuple, node_results: dict
) -> None:
    module, z, x, _, out32 = node_results[case]
    pixel, latent = _errors(module, z, x, out32)
    assert pixel <= TOL, f"decoded pixels differ by {pixel:.2e}"
    assert latent <= TOL, f"mu / logvar differ by {latent:.2e}"


@needs_node
@pytest.mark.parametrize(
    "case", CASES[:: max(1, len(CASES) // 6)], ids=lambda c: "-".join(map(str, c))
)
def test_node_float16_page_is_the_float16_rounded_model(case: tuple, node_results: dict) -> None:
    """The float16 page computes exactly the model with float16-rounded weights (≤ 1e-4), and is
    within the stated bound of the float32 model."""
    module, z, x, out16, _ = node_results[case]
    pixel, latent = _errors(_rounded_to_float16(module), z, x, out16)
    assert pixel <= TOL, f"float16 page vs float16-rounded model: pixels differ by {pixel:.2e}"
    assert latent <= TOL, f"float16 page vs float16-rounded model: mu / logvar {latent:.2e}"
    pixel, latent = _errors(module, z, x, out16)
    assert pixel <= F16_PIXEL_TOL, f"float16 moves pixels by {pixel:.2e}"
    assert latent <= F16_LATENT_TOL, f"float16 moves mu / logvar by {latent:.2e}"


@needs_node
def test_node_erf_and_continuous_bernoulli_mean(tmp_path: Path) -> None:
    """erf against math.erf; the CB mean on both sides of λ = 0.499 / 0.501 and at extreme logits
    (clamped λ) against torch's ContinuousBernoulli in float64."""
    xs = [*np.linspace(-6, 6, 121).tolist(), 1e-9, -1e-9, 30.0]
    p = np.array([1e-12, 0.03, 0.3, 0.4989, 0.499, 0.4995, 0.5, 0.5005, 0.501, 0.5011, 0.8, 0.97])
    logits = np.concatenate([np.log(p / (1 - p)), [-100.0, -20.0, -16.0, 16.0, 20.0, 100.0]])
    erf_js, cb_js = run_node(
        [{"fn": "erf", "x": xs}, {"fn": "cbMean", "x": logits.tolist(), "eps": EPS32}], tmp_path
    )
    assert np.abs(np.array(erf_js) - np.array([math.erf(v) for v in xs])).max() < 2e-7
    probs = torch.sigmoid(torch.tensor(logits, dtype=torch.float64)).clamp(EPS32, 1 - EPS32)
    ref = ContinuousBernoulli(probs=probs, validate_args=False).mean.numpy()
    assert np.abs(np.array(cb_js) - ref).max() < 1e-9


# ---- the payload and the page in Python ---------------------------------------------------------
def _payload(html: str) -> dict[str, Any]:
    start = html.index('<script type="application/json" id="payload">') + len(
        '<script type="application/json" id="payload">'
    )
    return json.loads(html[start : html.index("</script>", start)])


def _blob_array(blob: dict, dtype: Any) -> np.ndarray:
    raw = base64.b64decode(blob["base64"])
    return np.frombuffer(gzip.decompress(raw) if blob["gzip"] else raw, dtype=dtype).copy()


def test_payload_points_are_the_posterior_means_kl_and_images(test_images: tuple) -> None:
    """The embedded points, labels, KL and images, read back from the HTML, against torch."""
    images, labels = test_images
    module = make_module(latent_dim=2)
    html = explore.render_html(
        explore.page_payload(
            module, images=images, labels=labels, class_names=DIGITS, max_points=120
        )
    )
    p = _payload(html)
    idx = _blob_array(p["points"]["indices"], np.int32)
    assert p["points"]["n"] == 120
    assert p["points"]["total"] == 300
    assert len(set(idx.tolist())) == 120
    with torch.no_grad():
        mu, logvar = module.encode(images)
    kl = gaussian_kl_per_dim(mu, logvar).sum(-1)
    np.testing.assert_allclose(
        _blob_array(p["points"]["xy"], np.float32).reshape(-1, 2), mu[idx], atol=1e-6
    )
    np.testing.assert_allclose(_blob_array(p["points"]["kl"], np.float32), kl[idx], atol=1e-5)
    np.testing.assert_array_equal(_blob_array(p["points"]["labels"], np.uint8), labels[idx])
    u8 = _blob_array(p["points"]["images"], np.uint8).reshape(120, 1, 28, 28)
    np.testing.assert_allclose(u8 / 255, images[idx], atol=0.5 / 255 + 1e-7)
    assert p["projection"]["axis_labels"] == ["z₁", "z₂"]


def test_pca_plane_for_latent_dim_above_two(test_images: tuple) -> None:
    """latent_dim 5: the plane is the PCA plane of the posterior means (vae.viz.plots.pca_2d)."""
    from vae.viz.plots import pca_2d

    images, labels = test_images
    module = make_module(latent_dim=5)
    p = _payload(
        explore.render_html(
            explore.page_payload(module, images=images, labels=labels, class_names=DIGITS)
        )
    )
    with torch.no_grad():
        mu = module.encode(images)[0]
    pca = pca_2d(mu)
    np.testing.assert_allclose(np.array(p["projection"]["basis"]), pca.components, atol=1e-6)
    np.testing.assert_allclose(np.array(p["projection"]["center"]), pca.mean, atol=1e-6)
    idx = _blob_array(p["points"]["indices"], np.int32)
    np.testing.assert_allclose(
        _blob_array(p["points"]["xy"], np.float32).reshape(-1, 2), pca.proj[idx], atol=1e-5
    )
    assert p["projection"]["axis_labels"][0].startswith("PC₁ (")


def test_script_text_in_class_names_cannot_break_out_of_the_payload() -> None:
    names = ["</script><script>alert(1)</script>", *DIGITS[1:]]
    html = explore.render_html(
        explore.page_payload(
            make_module(),
            images=_synthetic_images(20),
            labels=torch.arange(20) % 10,
            class_names=names,
        )
    )
    assert html.count("</script>") == 3  # payload, model.js, explorer.js
    assert _payload(html)["class_names"][0] == names[0]


def test_unsupported_layers_are_a_one_line_error() -> None:
    module = make_module(activation="gelu")
    module.vae.decoder.net[1].approximate = "tanh"  # decoder.net: Linear, LayerNorm, GELU, ...
    module.vae.decoder.net[2].approximate = "tanh"
    with pytest.raises(explore.ExplorerError, match="exact"):
        explore.model_payload(module)
    with pytest.raises(explore.ExplorerError, match="precision"):
        explore.model_payload(make_module(), precision="int8")


def test_metric_rows_prefer_test_numbers_in_nats() -> None:
    rows = explore.metric_rows(
        {"val/loss": 150.0, "test/loss": 145.234, "test/nll_iw": 143.5, "test/active_units": 2.0}
    )
    assert rows[0] == ["test −ELBO", "145.23 nats"]
    assert ["test IW bound", "143.50 nats"] in rows
    assert ["test active units", "2"] in rows


def test_default_model_page_size(test_images: tuple) -> None:
    """The default model's weights (784-512-256-2 MLPs, LayerNorm) in float16 take ≤ 3 MB of the
    page (base64); with the 10,000 MNIST test images the page is ~5.3 MB (benchmarks/README.md)."""
    module = make_module(hidden_dims=(512, 256))
    p16 = explore.model_payload(module, precision="float16")
    p32 = explore.model_payload(module, precision="float32")
    n_params = sum(t.numel() for t in module.vae.encoder.parameters()) + sum(
        t.numel() for t in module.vae.decoder.parameters()
    )
    assert len(base64.b64decode(p16["weights"]["base64"])) == 2 * n_params
    assert len(base64.b64decode(p32["weights"]["base64"])) == 4 * n_params
    assert len(p16["weights"]["base64"]) <= 3e6


# ---- the browser --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Debian Chromium for the module (never a downloaded browser build)."""
    if not CHROMIUM.exists():
        pytest.skip(
            f"{CHROMIUM} missing (Debian's chromium): browser tests skipped; .ci/run installs it"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the playwright package is missing"
    )
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
                "--disable-sync",
            ],
        )
        yield b
        b.close()


class Page:
    """An explorer page opened from file:// with every other request blocked (and recorded)."""

    def __init__(self, browser: Any, html: str, path: Path) -> None:
        path.write_text(html, encoding="utf-8")
        self.url = path.resolve().as_uri()
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": 1400, "height": 900})
        self.page.route("**/*", self._route)
        self.errors: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.goto(self.url)
        self.page.wait_for_function("document.body.dataset.ready", timeout=30_000)
        assert self.page.evaluate("document.body.dataset.ready") == "1", self.page.evaluate(
            "explorer.error"
        )

    def _route(self, route: Any) -> None:
        self.requests.append(route.request.url)
        if route.request.url == self.url:
            route.continue_()
        else:
            route.abort()

    def js(self, expr: str, arg: Any = None) -> Any:
        return self.page.evaluate(expr, arg)

    def box(self, selector: str) -> dict[str, float]:
        return self.page.locator(selector).bounding_box()

    def text(self, selector: str) -> str:
        return self.page.locator(selector).inner_text()

    def canvas(self, selector: str) -> np.ndarray:
        """The canvas's RGBA pixels ``(H, W, 4)`` uint8."""
        data = self.js(
            "(s) => { const c = document.querySelector(s); "
            "return Array.from(c.getContext('2d').getImageData(0, 0, c.width, c.height).data); }",
            selector,
        )
        h, w = self.js(
            "(s) => [document.querySelector(s).height, document.querySelector(s).width]", selector
        )
        return np.array(data, dtype=np.uint8).reshape(h, w, 4)


def _shown_image(pixels: np.ndarray, size: int = 28) -> np.ndarray:
    """The image a canvas shows, sampled at each source pixel's centre (nearest-neighbour scaling),
    as grey levels in [0, 1]."""
    h, w = pixels.shape[:2]
    ys = ((np.arange(size) + 0.5) * h / size).astype(int)
    xs = ((np.arange(size) + 0.5) * w / size).astype(int)
    return pixels[np.ix_(ys, xs)][..., 0] / 255.0


@pytest.fixture(scope="module")
def default_page(
    browser: Any, test_images: tuple, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple]:
    """The page of a default-architecture model (MLP 512-256, LayerNorm, latent 2), float32."""
    images, labels = test_images
    module = make_module(hidden_dims=(512, 256))
    html = explore.render_html(
        explore.page_payload(
            module,
            images=images,
            labels=labels,
            class_names=DIGITS,
            metrics={
                "test/loss": 145.2,
                "test/nll_iw": 143.6,
                "test/kl": 6.0,
                "test/active_units": 2.0,
            },
            precision="float32",
        )
    )
    page = Page(browser, html, tmp_path_factory.mktemp("page") / "explorer.html")
    yield page, module, images, labels
    page.page.close()


def test_page_decodes_and_encodes_like_torch(default_page: tuple) -> None:
    page, module, images, _ = default_page
    z = _latents(2, n=20)
    decoded = torch.tensor(
        page.js("(zs) => zs.map((z) => explorer.decode(z))", z.tolist()), dtype=torch.float64
    )
    assert (decoded - _decode_reference(module, z)).abs().max().item() <= TOL
    x = images[:10]
    enc = page.js("(xs) => xs.map((x) => explorer.encode(x))", x.flatten(1).tolist())
    with torch.no_grad():
        mu, logvar = module.encode(x)
    assert (torch.tensor([e["mu"] for e in enc]) - mu).abs().max().item() <= TOL
    assert (torch.tensor([e["logvar"] for e in enc]) - logvar).abs().max().item() <= TOL


@pytest.mark.parametrize(
    "kwargs",
    [
        {"architecture": "conv", "activation": "gelu", "likelihood": "continuous_bernoulli"},
        {
            "architecture": "mlp",
            "activation": "silu",
            "likelihood": "gaussian",
            "norm": "none",
            "latent_dim": 4,
        },
    ],
    ids=["conv-gelu-cb", "mlp-silu-gaussian-d4"],
)
def test_page_float16_and_float32_for_other_models(
    browser: Any, test_images: tuple, tmp_path: Path, kwargs: dict
) -> None:
    images, labels = test_images
    module = make_module(**kwargs)
    z = _latents(module.latent_dim, n=8)
    for precision, reference in (("float32", module), ("float16", _rounded_to_float16(module))):
        html = explore.render_html(
            explore.page_payload(
                module,
                images=images[:50],
                labels=labels[:50],
                class_names=DIGITS,
                precision=precision,
            )
        )
        page = Page(browser, html, tmp_path / f"{precision}.html")
        decoded = torch.tensor(
            page.js("(zs) => zs.map((z) => explorer.decode(z))", z.tolist()), dtype=torch.float64
        )
        assert (decoded - _decode_reference(reference, z)).abs().max().item() <= TOL, precision
        mu = torch.tensor(
            page.js("(xs) => xs.map((x) => explorer.encode(x).mu)", images[:4].flatten(1).tolist())
        )
        with torch.no_grad():
            assert (mu - reference.encode(images[:4])[0]).abs().max().item() <= TOL, precision
        page.page.close()


def test_hover_shows_the_decoded_image_at_the_cursor(default_page: tuple) -> None:
    page, module, _, _ = default_page
    box = page.box("#plane")
    before = page.canvas("#cursor-img").copy()
    for fx, fy in ((0.3, 0.4), (0.7, 0.6)):
        page.page.mouse.move(box["x"] + fx * box["width"], box["y"] + fy * box["height"])
        z = torch.tensor([page.js("explorer.cursor.z")], dtype=torch.float32)
        shown = _shown_image(page.canvas("#cursor-img"))
        expected = _decode_reference(module, z).reshape(28, 28).numpy()
        assert np.abs(shown - expected).max() <= 0.5 / 255 + 1e-6  # one 8-bit rounding
        assert "z₁ =" in page.text("#cursor-z")
        assert "; z = (" not in page.text("#cursor-z")  # a 2-D latent on its axes: said once
        assert "ms" in page.text("#decode-ms")
    assert not np.array_equal(before, page.canvas("#cursor-img"))
    # the cursor's z is the plane point under the mouse
    u, v = page.js("explorer.cursor.uv")
    px, py = page.js(f"explorer.toPx({u}, {v})")
    assert abs(box["x"] + px * box["width"] / 600 - (box["x"] + 0.7 * box["width"])) < 1.0
    assert abs(py * box["height"] / 600 - 0.6 * box["height"]) < 1.0


def test_click_a_test_point_shows_its_image_reconstruction_label_and_kl(
    default_page: tuple,
) -> None:
    page, module, images, labels = default_page
    page.page.locator("#mode-explore").click()
    i = 7  # the 8th point drawn (points are stored in a seeded random order)
    px, py = page.js(f"explorer.toPx(...explorer.xy({i}))")
    box = page.box("#plane")
    page.page.mouse.click(box["x"] + px, box["y"] + py)
    sel = page.js("explorer.selected")
    shown_index = int(page.text("#sel-info").split("#")[1].split()[0])
    x = images[shown_index : shown_index + 1]
    x_page = x.mul(255).round() / 255  # the page keeps the images as uint8
    with torch.no_grad():
        mu, logvar = module.encode(x)
        recon = module.decode(module.encode(x_page)[0])[0, 0].numpy()
    kl = gaussian_kl_per_dim(mu, logvar).sum().item()
    assert page.text("#sel-label") == DIGITS[int(labels[shown_index])]
    assert float(page.text("#sel-kl")) == pytest.approx(kl, abs=0.006)
    assert sel["kl"] == pytest.approx(kl, abs=1e-4)
    assert (
        np.abs(_shown_image(page.canvas("#sel-orig")) - x[0, 0].numpy()).max() <= 0.5 / 255 + 1e-6
    )
    assert np.abs(_shown_image(page.canvas("#sel-recon")) - recon).max() <= 0.5 / 255 + 1e-4
    assert sel["index"] == i


def test_dragging_decodes_along_the_way_and_selects_nothing(default_page: tuple) -> None:
    page, module, _, _ = default_page
    page.js("explorer.selected = null")
    box = page.box("#plane")
    page.page.mouse.move(box["x"] + 100, box["y"] + 100)
    page.page.mouse.down()
    seen = []
    for k in range(1, 6):
        page.page.mouse.move(box["x"] + 100 + 60 * k, box["y"] + 100 + 40 * k)
        seen.append(page.js("explorer.cursor.z"))
    page.page.mouse.up()
    assert len({tuple(z) for z in seen}) == 5  # a new decode at every step of the drag
    z = torch.tensor([seen[-1]], dtype=torch.float32)
    expected = _decode_reference(module, z).reshape(28, 28).numpy()
    assert np.abs(_shown_image(page.canvas("#cursor-img")) - expected).max() <= 0.5 / 255 + 1e-6
    assert page.js("explorer.selected") is None


def test_drawing_is_encoded_in_the_page(default_page: tuple) -> None:
    page, module, _, _ = default_page
    pad = page.box("#pad")
    page.page.locator("#pad-clear").click()
    assert page.js("explorer.drawn") is None
    stroke = [(70 + 6 * k, 40) for k in range(16)] + [(160 - 4 * k, 40 + 10 * k) for k in range(15)]
    page.page.mouse.move(pad["x"] + stroke[0][0], pad["y"] + stroke[0][1])
    page.page.mouse.down()
    for sx, sy in stroke[1:]:  # a "7": across, then down to the left
        page.page.mouse.move(pad["x"] + sx, pad["y"] + sy)
    page.page.mouse.up()
    drawn = page.js("explorer.drawn")
    x = torch.tensor(drawn["pixels"], dtype=torch.float32).reshape(1, 1, 28, 28)
    assert x.sum() > 10
    assert x.max() <= 1
    with torch.no_grad():
        mu, logvar = module.encode(x)
    assert np.abs(np.array(drawn["mu"]) - mu[0].numpy()).max() <= TOL
    assert np.abs(np.array(drawn["logvar"]) - logvar[0].numpy()).max() <= TOL
    # centred like MNIST: the ink's centre of mass is the image centre (to a pixel), inside 20×20
    ys, xs = np.nonzero(x[0, 0].numpy() > 0.05)
    w = x[0, 0].numpy()
    cy, cx = (
        (w.sum(1) @ (np.arange(28) + 0.5)) / w.sum(),
        (w.sum(0) @ (np.arange(28) + 0.5)) / w.sum(),
    )
    assert abs(cy - 14) <= 1
    assert abs(cx - 14) <= 1
    assert ys.max() - ys.min() <= 21
    assert xs.max() - xs.min() <= 21
    shown_mu = [float(v) for v in page.text("#drawn-mu").strip("()").split(",")]
    np.testing.assert_allclose(shown_mu, mu[0].numpy(), atol=0.006)
    assert page.js("explorer.drawn.ellipse.r1") == pytest.approx(
        torch.exp(0.5 * logvar).max().item(), rel=1e-4
    )
    assert np.abs(_shown_image(page.canvas("#draw-in")) - w).max() <= 0.5 / 255 + 1e-6


def test_path_mode_decodes_the_straight_line(default_page: tuple) -> None:
    page, module, _, _ = default_page
    page.page.locator("#mode-path").click()
    box = page.box("#plane")
    before = page.canvas("#path-strip")
    page.page.mouse.click(box["x"] + 150, box["y"] + 200)
    page.page.mouse.click(box["x"] + 450, box["y"] + 380)
    frames = torch.tensor(page.js("explorer.path.z"), dtype=torch.float32)
    a, b = page.js("[explorer.path.a, explorer.path.b]")
    za = torch.tensor(page.js(f"explorer.toLatent({a[0]}, {a[1]})"))
    zb = torch.tensor(page.js(f"explorer.toLatent({b[0]}, {b[1]})"))
    t = torch.linspace(0, 1, frames.shape[0])[:, None]
    torch.testing.assert_close(frames, (za + t * (zb - za)).float(), atol=1e-5, rtol=0)
    strip = page.canvas("#path-strip")
    expected = _decode_reference(module, frames).reshape(-1, 28, 28).numpy()
    size = strip.shape[0]
    for k in (0, frames.shape[0] - 1):
        shown = _shown_image(strip[:, k * size : (k + 1) * size])
        assert np.abs(shown - expected[k]).max() <= 0.5 / 255 + 1e-6
    assert not np.array_equal(before, strip)
    page.page.locator("#mode-explore").click()


def test_page_makes_no_network_request_and_is_not_blank(default_page: tuple) -> None:
    from PIL import Image

    page, *_ = default_page
    assert page.requests == [page.url]
    assert page.errors == []
    shot = np.asarray(Image.open(io.BytesIO(page.page.screenshot())).convert("RGB"))
    assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 50  # the scatter's colours, images, text
    assert shot.std() > 20
    assert "test −ELBO" in page.text("#metrics")
    assert "145.20 nats" in page.text("#metrics")
    assert "3 (" in page.text("#legend")


def test_fashion_mnist_labels_are_named(browser: Any, test_images: tuple, tmp_path: Path) -> None:
    from vae.train.data import FashionMNISTDataModule

    names = FashionMNISTDataModule(root=tmp_path).class_names
    images, labels = test_images
    html = explore.render_html(
        explore.page_payload(
            make_module(), images=images[:40], labels=labels[:40], class_names=names
        )
    )
    page = Page(browser, html, tmp_path / "fashion.html")
    legend = page.text("#legend")
    assert all(n in legend for n in names[:2])
    assert "Trouser" in " ".join(names)
    page.page.close()


# ---- CLI and callback on a tiny real run (fake IDX data: no real MNIST needed) ------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny run on fake MNIST-shaped data with the default callbacks (explorer included)."""
    from conftest import TINY, compose_config
    from idx_helpers import fake_mnist, write_fake_raw

    from vae.train import data
    from vae.train.run import train

    tmp = tmp_path_factory.mktemp("explore_run")
    sums = write_fake_raw(tmp / "data" / "MNIST" / "raw", fake_mnist(n_train=400, n_test=120))
    cfg = compose_config(
        [
            *TINY,
            f"data.root={tmp}/data",
            "data.val_size=100",
            "callbacks.visualize.projector=false",
        ],
        output_dir=tmp / "run",
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(data.SHA256, "mnist", sums)
        train(cfg)
        yield tmp / "run", sums


def test_callback_writes_the_page_with_the_test_numbers(tiny_run: tuple) -> None:
    run_dir, _ = tiny_run
    html = (run_dir / explore.FILENAME).read_text()
    p = _payload(html)
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    rows = dict(map(tuple, p["metrics"]))
    assert rows["test −ELBO"] == f"{metrics['test/loss']:.2f} nats"
    assert rows["test IW bound"] == f"{metrics['test/nll_iw']:.2f} nats"
    assert p["points"]["total"] == 120
    assert dict(map(tuple, p["config"]))["dataset"] == "mnist"


def test_callback_can_be_turned_off(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from vae.viz.callbacks import ExplorerWriter

    trainer = SimpleNamespace(is_global_zero=True, default_root_dir=str(tmp_path))
    assert ExplorerWriter(enabled=False)._write(trainer, None) is None
    assert not (tmp_path / explore.FILENAME).exists()
    with pytest.raises(ValueError, match="precision"):
        ExplorerWriter(precision="bfloat16")


def test_callback_rewrites_only_the_numbers_while_the_weights_are_the_same(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from vae.train.data import to_float
    from vae.viz.callbacks import ExplorerWriter

    images = (_synthetic_images(30) * 255).round().to(torch.uint8)
    dm = SimpleNamespace(
        test_dataset=SimpleNamespace(images=images, labels=torch.arange(30) % 10),
        to_float=to_float,
        class_names=DIGITS,
        hparams={"dataset": "mnist"},
    )
    trainer = SimpleNamespace(
        is_global_zero=True,
        default_root_dir=str(tmp_path),
        datamodule=dm,
        callback_metrics={},
        strategy=SimpleNamespace(root_device=torch.device("cpu")),
        precision="32-true",
    )
    module, writer = make_module(), ExplorerWriter()
    trainer.callback_metrics = {"val/loss": torch.tensor(150.0)}
    first = _payload(writer._write(trainer, module).read_text())
    # where the numbers were measured: the line metrics.json and vae.viz.figures show
    env = collect_environment(device="cpu", precision="32-true")
    assert dict(first["config"])["measured on"] == format_environment(env)
    trainer.callback_metrics = {"test/loss": torch.tensor(140.0)}
    second = _payload(writer._write(trainer, module).read_text())
    assert first["metrics"] == [["val −ELBO", "150.00 nats"]]
    assert second["metrics"] == [["test −ELBO", "140.00 nats"]]
    assert second["points"] == first["points"]
    with torch.no_grad():
        module.vae.decoder.net[0].bias += 1.0  # new weights: the page is rebuilt from them
    third = _payload(writer._write(trainer, module).read_text())
    assert third["model"]["weights"] != second["model"]["weights"]
    assert third["model"] == explore.model_payload(module)


def _explore_cli(sums: dict, *args: str) -> list[str]:
    """``python -m vae.explore <args>`` with the fake data's checksums patched in (a subprocess),
    reading the run's own fake data: ``$VAE_DATA_DIR``, which the viewers prefer for MNIST, unset."""
    script = (
        "import os, sys; os.environ.pop('VAE_DATA_DIR', None); from vae.train import data; "
        "data.SHA256['mnist'] = " + repr(sums) + "; "
        "from vae.viz.explore import main; sys.exit(main(sys.argv[1:]))"
    )
    return [sys.executable, "-c", script, *args]


#: requests that must not reach anything but the page: its folder, its run's files, a listing,
#: ``..`` in every spelling, an encoded name, a query (``//page.html`` is the page: Python's
#: server collapses leading slashes)
REFUSED_PATHS = (
    "/",
    "/config.yaml",
    "/metrics.json",
    "/checkpoints/last.ckpt",
    "/checkpoints/",
    "/../run/config.yaml",
    "/%2e%2e/run/config.yaml",
    "/..%2frun%2fconfig.yaml",
    "/page%2ehtml",
    "/page.html?x=1",
    "//config.yaml",
    "/page.html/",
    "/victim.txt",
)


def _get(port: int, path: str, *, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path)  # sent as typed: http.client does not normalise the path
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def test_cli_writes_the_page_through_no_link_and_serves_only_the_page(
    tiny_run: tuple, tmp_path: Path
) -> None:
    """A real subprocess: links planted at the temporary name the page used to be written to and
    at the page's own name leave their targets untouched; ``--serve`` answers the page and 404
    for everything else, and stops on SIGINT (bounded: killed after 60 s whatever happens)."""
    run_dir, sums = tiny_run
    out_dir = tmp_path / "site"
    out_dir.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"precious\n")
    (out_dir / ".page.html.tmp").symlink_to(victim)  # the name write_text used to follow
    (out_dir / "page.html").symlink_to(victim)
    (out_dir / "config.yaml").write_text("secret: 1\n")
    out = out_dir / "page.html"
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    cmd = _explore_cli(sums, str(ckpt), "--out", str(out), "--precision", "float32", "--serve")
    env = os.environ | {"PYTHONPATH": str(ROOT / "tests")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        first = proc.stdout.readline()
        assert first.startswith(str(out)), first + (proc.stderr.read() if proc.poll() else "")
        served = proc.stdout.readline()
        assert served.startswith("serving http://127.0.0.1:"), served
        assert served.split()[1].endswith("/page.html")
        port = int(served.split()[1].split(":")[2].split("/")[0])
        assert _get(port, "/page.html") == (200, out.read_bytes())
        assert _get(port, "/page.html", method="HEAD")[0] == 200
        for path in REFUSED_PATHS:
            status, body = _get(port, path)
            assert status == 404, path
            assert b"secret" not in body
            assert b"precious" not in body
        assert _get(port, "/page.html", method="POST")[0] == 501
    finally:
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(timeout=20)
        watchdog.cancel()
    assert rc == 0, proc.stderr.read()
    assert victim.read_bytes() == b"precious\n"
    assert (out_dir / ".page.html.tmp").readlink() == victim  # not ours: left alone
    assert not out.is_symlink()
    p = _payload(out.read_text())
    assert p["model"]["weights"]["dtype"] == "float32"
    metrics = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert dict(map(tuple, p["metrics"]))["test −ELBO"] == f"{metrics['test/loss']:.2f} nats"


def test_cli_port_in_use_or_out_of_range_is_refused_before_the_page_is_written(
    tiny_run: tuple, tmp_path: Path
) -> None:
    run_dir, sums = tiny_run
    out = tmp_path / "page.html"
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for bad in (str(port), "99999"):
            cmd = _explore_cli(sums, str(run_dir), "--out", str(out), "--serve", "--port", bad)
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
            assert proc.returncode == 2, proc.stderr
            err = proc.stderr.strip().splitlines()
            assert len(err) == 1, err
            assert err[0].startswith(f"error: --host 127.0.0.1 --port {bad}: cannot listen there")
            assert not out.exists()


def test_serving_beyond_this_machine_is_warned_about(capsys: pytest.CaptureFixture[str]) -> None:
    with explore.open_server(host="0.0.0.0", port=0):
        pass
    assert capsys.readouterr().err.startswith("warning: --host 0.0.0.0 is not a loopback address")
    with explore.open_server(port=0):
        pass
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("what", ["missing", "empty_dir", "not_a_checkpoint", "other_dict"])
def test_cli_bad_target_is_one_error_line_and_exit_2(
    what: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "nothing"
    if what == "empty_dir":
        target = tmp_path
    elif what == "not_a_checkpoint":
        target = tmp_path / "x.ckpt"
        target.write_bytes(b"not a checkpoint")
    elif what == "other_dict":
        target = tmp_path / "weights.pt"
        torch.save({"weights": torch.zeros(2)}, target)
    assert explore.main([str(target)]) == 2
    assert not list(tmp_path.glob("*.html"))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert str(target) in err[0]


def test_cli_missing_data_names_the_flag(
    tiny_run: tuple, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run_dir, _ = tiny_run
    out = tmp_path / "page.html"
    assert (
        explore.main([str(run_dir), "--data-root", str(tmp_path / "nowhere"), "--out", str(out)])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("error: ")
    assert "--data-root" in err[0]
    assert not out.exists()


def test_cli_reads_mnist_from_vae_data_dir_as_visualize_does(
    tiny_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Both viewers load a checkpoint's test split the same way: ``$VAE_DATA_DIR`` (when set, for
    MNIST) before the root the run recorded; an empty one is the one line naming it, a copy of the
    data there makes the page."""
    import shutil

    from vae.train import data

    run_dir, sums = tiny_run
    monkeypatch.setitem(data.SHA256, "mnist", sums)
    moved = tmp_path / "moved"
    moved.mkdir()
    monkeypatch.setenv("VAE_DATA_DIR", str(moved))
    out = tmp_path / "page.html"
    assert explore.main([str(run_dir), "--out", str(out), "--max-points", "20"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: "), err
    assert str(moved) in err[0], err
    assert not out.exists()
    recorded = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    shutil.copytree(
        Path(recorded["datamodule_hyper_parameters"]["root"]) / "MNIST", moved / "MNIST"
    )
    assert explore.main([str(run_dir), "--out", str(out), "--max-points", "20"]) == 0
    assert _payload(out.read_text())["points"]["n"] == 20


def test_cli_full_disk_while_writing_the_page_is_one_line_and_keeps_the_old_page(
    tiny_run: tuple, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """Issue 23 §5: the disk fills while the page is written (ENOSPC from the writes to its
    temporary file): one ``error:`` line, exit 2, the previous page byte-identical, no temporary."""
    from vae.train import data

    run_dir, sums = tiny_run
    monkeypatch.setitem(data.SHA256, "mnist", sums)
    monkeypatch.delenv(
        "VAE_DATA_DIR", raising=False
    )  # the run's own fake data, not $VAE_DATA_DIR's
    out = tmp_path / "page.html"
    out.write_text("the previous page")
    real_write = os.write

    def write(fd: int, payload) -> int:
        if os.readlink(f"/proc/self/fd/{fd}").startswith(str(tmp_path / ".page.html.")):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, payload)

    monkeypatch.setattr(os, "write", write)
    assert explore.main([str(run_dir), "--out", str(out), "--max-points", "20"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"error: {out}: no space left on device while writing the explorer page"
    )
    assert out.read_text() == "the previous page"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["page.html"]


def test_at_800_px_the_decoded_image_stays_beside_the_plane_above_the_fold(
    default_page: tuple,
) -> None:
    page, module, _, _ = default_page
    try:
        page.page.set_viewport_size({"width": 800, "height": 600})
        plane, image = page.box("#plane"), page.box("#cursor-img")
        assert plane["x"] + plane["width"] <= image["x"]  # beside, not below
        assert image["x"] + image["width"] <= 800
        assert image["y"] + image["height"] <= 600
        assert plane["width"] == pytest.approx(plane["height"])  # the plane keeps its aspect
        # the pointer is mapped through the displayed size: hover decodes the point under it
        page.page.mouse.move(plane["x"] + 0.3 * plane["width"], plane["y"] + 0.4 * plane["height"])
        u, v = page.js("explorer.cursor.uv")
        px, py = page.js(f"explorer.toPx({u}, {v})")
        assert abs(px / 600 - 0.3) < 2 / plane["width"]
        assert abs(py / 600 - 0.4) < 2 / plane["width"]
        z = torch.tensor([page.js("explorer.cursor.z")], dtype=torch.float32)
        shown = _shown_image(page.canvas("#cursor-img"))
        expected = _decode_reference(module, z).reshape(28, 28).numpy()
        assert np.abs(shown - expected).max() <= 0.5 / 255 + 1e-6
    finally:
        page.page.set_viewport_size({"width": 1400, "height": 900})


def test_a_diverged_model_beyond_float16_names_the_precision_key(
    tmp_path: Path, mnist_root: Path
) -> None:
    """Issue 23 §5 (``optim.lr`` far too high): the loss stays finite up to ``optim.lr=1e4`` but a
    weight grows past float16's range, and the page's float16 export said only ``use
    precision=float32``, a key no command has. Now the line names the setting of the command
    that wrote it: ``callbacks.explorer.precision`` for ``train.py``, ``--precision`` for
    ``python -m vae.explore``, and the learning rate as the cause."""
    from conftest import ROOT, TINY, train_py

    run = tmp_path / "run"
    done = train_py(
        *TINY,
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=20",
        "optim.lr=1e4",
        "test=false",
        "callbacks.visualize.projector=false",
        "data.download=false",
        f"hydra.run.dir={run}",
    )
    assert done.returncode == 2, done.stderr[-3000:]
    tail = (
        ": a weight of the model is 1.58e+05, beyond float16's range (±65504): its training "
        "diverged, though the loss stayed finite (a learning rate too high does that); use "
    )
    assert done.stderr.splitlines()[-1] == (
        f"error: callbacks.explorer.precision=float16{tail}callbacks.explorer.precision=float32, "
        "or train with a lower optim.lr"
    )
    again = subprocess.run(
        [sys.executable, "-m", "vae.explore", str(run), "--out", str(tmp_path / "page.html")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 2, again.stderr[-3000:]
    assert again.stderr.splitlines() == [
        f"error: --precision float16{tail}--precision float32, or train with a lower optim.lr"
    ]
    assert not (tmp_path / "page.html").exists()
