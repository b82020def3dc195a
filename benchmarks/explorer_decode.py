"""The explorer page in a real browser: decode time per point, and the page's size.

Builds ``explorer.html`` for a checkpoint (default: a fresh default-architecture model, MLP
784-512-256-2 with LayerNorm; the forward pass costs the same whatever the weights), opens it from
``file://`` in headless Debian Chromium (``/usr/bin/chromium``, driven by ``playwright``; every
request except the file is blocked) and runs ``explorer.benchmark(n)`` there ``--repeats`` times:
``performance.now()`` around each of ``n`` decodes of random points (median; Chromium coarsens the
clock to 0.1 ms outside cross-origin isolation) and around one loop of ``n`` (mean). Prints those,
the encoder's mean, the page size with float16 and float32 weights and the build time.

    VAE_DATA_DIR=../shared/datasets python benchmarks/explorer_decode.py [--checkpoint RUN_DIR]
        [--screenshot docs/explorer.png]

``--screenshot`` also scripts the page (draw a "3" on the pad, click a test point, a path, a hover)
and saves a PNG of it.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vae.train.files import atomic_file, write_atomic  # noqa: E402
from vae.train.module import VAEModule  # noqa: E402
from vae.viz import explore  # noqa: E402
from vae.viz.figures import load_test_split  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]


def _default_module() -> VAEModule:
    torch.manual_seed(0)
    model = {"architecture": "mlp", "latent_dim": 2, "hidden_dims": [512, 256], "norm": "layer"}
    return VAEModule(model=model, optim={"lr": 3e-3}, evaluation={}).eval()


def _arc(box: dict, cx: float, cy: float, r: float, a0: float, a1: float, n: int = 24) -> list:
    angles = [math.radians(a0 + (a1 - a0) * k / n) for k in range(n + 1)]
    return [(box["x"] + cx + r * math.cos(a), box["y"] + cy + r * math.sin(a)) for a in angles]


def screenshot(page, path: Path) -> None:
    """Draw a "3", click the test point nearest to it, a path across the plane, then hover."""
    pad = page.locator("#pad").bounding_box()
    for stroke in (_arc(pad, 112, 70, 40, 200, 450), _arc(pad, 112, 148, 40, 270, 520)):
        page.mouse.move(*stroke[0])
        page.mouse.down()
        for point in stroke[1:]:
            page.mouse.move(*point)
        page.mouse.up()
    plane = page.locator("#plane").bounding_box()
    px, py = page.evaluate("explorer.toPx(...explorer.drawn.uv)")
    # the test "3" nearest to the drawing, 10-40 px away on the plane
    qx, qy = page.evaluate(
        """(() => { const [px, py] = explorer.toPx(...explorer.drawn.uv); let best = null, bd = 1e9;
        const pay = JSON.parse(document.getElementById("payload").textContent);
        for (let i = 0; i < pay.points.n; i++) {
          const [x, y] = explorer.toPx(...explorer.xy(i)); const d = Math.hypot(x - px, y - py);
          if (explorer.label(i) === 3 && d > 10 && d < 40 && d < bd) { bd = d; best = [x, y]; } }
        return best || [px + 12, py + 8]; })()"""
    )
    page.mouse.click(plane["x"] + qx, plane["y"] + qy)
    page.locator("#mode-path").click()
    a = page.evaluate("explorer.toPx(-2, -1.5)")
    b = page.evaluate("explorer.toPx(1.5, 2)")
    page.mouse.click(plane["x"] + a[0], plane["y"] + a[1])
    page.mouse.click(plane["x"] + b[0], plane["y"] + b[1])
    page.locator("#mode-explore").click()
    page.mouse.move(plane["x"] + px - 70, plane["y"] + py + 60)
    print("drawn 3: nearest test points", page.locator("#drawn-nn").inner_text())
    page.screenshot(path=str(path))
    print(f"screenshot: {path} ({path.stat().st_size / 1e3:.0f} kB)")


def gif(page, path: Path, *, frames: int = 16) -> None:
    """Hover along a loop over the plane; each frame: the plane with the decoded image beside it."""
    from PIL import Image

    page.locator("#pad-clear").click()
    plane = page.locator("#plane").bounding_box()
    decoded = page.locator("#cursor-img").bounding_box()
    images = []
    for k in range(frames):
        t = 2 * math.pi * k / frames
        px, py = page.evaluate(f"explorer.toPx({1.8 * math.cos(t):.4f}, {1.8 * math.sin(t):.4f})")
        page.mouse.move(plane["x"] + px, plane["y"] + py)
        left = Image.open(io.BytesIO(page.screenshot(clip=plane))).convert("RGB")
        right = Image.open(io.BytesIO(page.screenshot(clip=decoded))).convert("RGB")
        frame = Image.new("RGB", (left.width + right.width + 16, left.height), "white")
        frame.paste(left, (0, 0))
        frame.paste(right, (left.width + 8, (left.height - right.height) // 2))
        images.append(frame.resize((frame.width // 2, frame.height // 2), Image.LANCZOS))
    strip = Image.new("RGB", (images[0].width, images[0].height * len(images)))
    for k, im in enumerate(images):
        strip.paste(im, (0, k * im.height))
    palette = strip.quantize(colors=128, dither=Image.Dither.NONE)  # one palette for every frame
    quantized = [im.quantize(palette=palette, dither=Image.Dither.NONE) for im in images]
    with atomic_file(path) as f:
        quantized[0].save(
            f, format="GIF", save_all=True, append_images=quantized[1:], duration=250, loop=0
        )
    print(f"gif: {path} ({path.stat().st_size / 1e3:.0f} kB, {frames} frames)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, help="run directory or .ckpt (default: fresh)")
    parser.add_argument("--n", type=int, default=200, help="decodes per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--screenshot", type=Path, help="also save a scripted screenshot here")
    parser.add_argument("--gif", type=Path, help="also save a GIF of a hover loop here")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    if args.checkpoint:
        module, checkpoint, metrics = explore._load_run(args.checkpoint)
    else:
        module, checkpoint, metrics = _default_module(), {}, {}
    dm = load_test_split(checkpoint, None, prog=sys.argv[0])
    hparams = checkpoint.get("datamodule_hyper_parameters")
    ds = dm.test_dataset
    images = dm.to_float(ds.images)
    pages = {}
    for precision in explore.PRECISIONS:
        start = time.perf_counter()
        pages[precision] = explore.render_html(
            explore.page_payload(
                module,
                images=images,
                labels=ds.labels,
                class_names=dm.class_names,
                metrics=metrics,
                config=explore.config_summary(module, hparams),
                precision=precision,
            )
        )
        seconds = time.perf_counter() - start
        size = len(pages[precision].encode())
        print(
            f"page ({precision} weights, {len(images)} test images): {size / 1e6:.2f} MB, "
            f"built in {seconds:.2f} s"
        )
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as pw:
        path = Path(tmp) / "explorer.html"
        write_atomic(path, pages[explore.DEFAULT_PRECISION])
        url = path.as_uri()
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 860})
        page.route("**/*", lambda r: r.continue_() if r.request.url == url else r.abort())
        start = time.perf_counter()
        page.goto(url)
        page.wait_for_function("document.body.dataset.ready === '1'", timeout=60_000)
        print(
            f"page ready (parse, inflate, draw the scatter) in {time.perf_counter() - start:.2f} s"
        )
        runs = [page.evaluate(f"explorer.benchmark({args.n})") for _ in range(args.repeats)]
        med = statistics.median(r["median_ms"] for r in runs)
        mean = statistics.median(r["mean_ms"] for r in runs)
        enc = statistics.median(r["encode_mean_ms"] for r in runs)
        version = browser.version
        print(
            f"decode per point: median {med:.2f} ms (of {args.n} single decodes), mean {mean:.3f} ms "
            f"(loop of {args.n}); encode: mean {enc:.3f} ms; medians over {args.repeats} repeats"
        )
        print(
            f"Chromium {version}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
        )
        if args.gif:
            gif(page, args.gif)
        if args.screenshot:
            screenshot(page, args.screenshot)
        browser.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
