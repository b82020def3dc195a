/*
 * The latent-space explorer page (vae/viz/explore.py inlines this after model.js).
 *
 * State for tests and the benchmark lives in window.explorer: {ready, model, decode(z), encode(x),
 * toLatent(u, v), toPlane(z), benchmark(n), cursor, selected, drawn, path}.
 */
(function () {
  "use strict";
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                   "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
  const PICK_RADIUS_PX = 8;
  const PATH_STEPS = 10;
  const PAD_MARGIN = 30; // px of the 600 px plane around the data

  const $ = (id) => document.getElementById(id);
  const state = { ready: false, mode: "explore", cursor: null, selected: null, drawn: null,
                  path: { a: null, b: null }, decodeTimes: [] };
  window.explorer = state;

  function colour(k) {
    return k < PALETTE.length ? PALETTE[k] : `hsl(${(k * 137.5) % 360}, 60%, 45%)`;
  }

  // ---- images ------------------------------------------------------------------------------------
  /** Draw C·H·W values in [0, 1] (C = 1 or 3) onto a canvas, scaled with square pixels. */
  function showImage(canvas, pixels, shape, dx = 0, dy = 0, size = null) {
    const [c, h, w] = shape;
    const tmp = document.createElement("canvas");
    tmp.width = w;
    tmp.height = h;
    const ctx = tmp.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      for (let k = 0; k < 3; k++) {
        const v = pixels[(c === 3 ? k : 0) * h * w + i];
        img.data[4 * i + k] = Math.round(255 * Math.min(1, Math.max(0, v)));
      }
      img.data[4 * i + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    const out = canvas.getContext("2d");
    out.imageSmoothingEnabled = false;
    if (size === null) out.drawImage(tmp, 0, 0, canvas.width, canvas.height);
    else out.drawImage(tmp, dx, dy, size, size);
  }

  // ---- the plane ---------------------------------------------------------------------------------
  function setupPlane(P) {
    const n = P.points.n;
    let xmin = Infinity, xmax = -Infinity, ymin = Infinity, ymax = -Infinity;
    for (let i = 0; i < n; i++) {
      const x = P.xy[2 * i], y = P.xy[2 * i + 1];
      if (x < xmin) xmin = x;
      if (x > xmax) xmax = x;
      if (y < ymin) ymin = y;
      if (y > ymax) ymax = y;
    }
    if (!(xmax > xmin)) { xmin -= 1; xmax += 1; }
    if (!(ymax > ymin)) { ymin -= 1; ymax += 1; }
    const canvas = $("plane");
    const inner = canvas.width - 2 * PAD_MARGIN;
    const span = Math.max(xmax - xmin, ymax - ymin) * 1.05; // one scale for both axes
    const cx = (xmin + xmax) / 2, cy = (ymin + ymax) / 2;
    const scale = inner / span;
    return {
      canvas, scale,
      toPx: (u, v) => [PAD_MARGIN + inner / 2 + (u - cx) * scale,
                       PAD_MARGIN + inner / 2 - (v - cy) * scale],
      toUV: (px, py) => [cx + (px - PAD_MARGIN - inner / 2) / scale,
                         cy - (py - PAD_MARGIN - inner / 2) / scale],
    };
  }

  function niceStep(span) {
    const raw = span / 6;
    const p = Math.pow(10, Math.floor(Math.log10(raw)));
    return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw);
  }

  /** The scatter, axes and labels, drawn once into an offscreen canvas. */
  function drawBackground(P, G) {
    const bg = document.createElement("canvas");
    bg.width = G.canvas.width;
    bg.height = G.canvas.height;
    const ctx = bg.getContext("2d");
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, bg.width, bg.height);
    const [u0, v1] = G.toUV(PAD_MARGIN, PAD_MARGIN);
    const [u1, v0] = G.toUV(bg.width - PAD_MARGIN, bg.height - PAD_MARGIN);
    ctx.strokeStyle = "#eee";
    ctx.fillStyle = "#888";
    ctx.font = "10px sans-serif";
    const step = niceStep(u1 - u0);
    for (let t = Math.ceil(u0 / step) * step; t <= u1; t += step) {
      const [x] = G.toPx(t, 0);
      ctx.beginPath(); ctx.moveTo(x, PAD_MARGIN); ctx.lineTo(x, bg.height - PAD_MARGIN); ctx.stroke();
      ctx.fillText(+t.toFixed(6) + "", x - 6, bg.height - PAD_MARGIN + 12);
    }
    for (let t = Math.ceil(v0 / step) * step; t <= v1; t += step) {
      const [, y] = G.toPx(0, t);
      ctx.beginPath(); ctx.moveTo(PAD_MARGIN, y); ctx.lineTo(bg.width - PAD_MARGIN, y); ctx.stroke();
      ctx.fillText(+t.toFixed(6) + "", 2, y + 3);
    }
    ctx.fillStyle = "#333";
    ctx.font = "12px sans-serif";
    ctx.fillText(P.projection.axis_labels[0], bg.width / 2 - 20, bg.height - 4);
    ctx.save();
    ctx.translate(12, bg.height / 2 + 20);
    ctx.rotate(-Math.PI / 2);
    ctx.fillText(P.projection.axis_labels[1], 0, 0);
    ctx.restore();
    // seeded order (written by Python), so no class is systematically painted over another
    ctx.globalAlpha = 0.6;
    for (let i = 0; i < P.points.n; i++) {
      const [x, y] = G.toPx(P.xy[2 * i], P.xy[2 * i + 1]);
      ctx.fillStyle = colour(P.labels[i]);
      ctx.fillRect(x - 1.25, y - 1.25, 2.5, 2.5);
    }
    ctx.globalAlpha = 1;
    return bg;
  }

  function marker(ctx, x, y, fill, r = 5) {
    ctx.beginPath();
    ctx.arc(x, y, r, 0, 2 * Math.PI);
    ctx.fillStyle = fill;
    ctx.fill();
    ctx.lineWidth = 1.5;
    ctx.strokeStyle = "#000";
    ctx.stroke();
  }

  /** The background plus the overlays: cursor, selected point, drawn point + ellipse, path. */
  function redraw(P, G, bg) {
    const ctx = G.canvas.getContext("2d");
    ctx.drawImage(bg, 0, 0);
    if (state.path.a) {
      const [ax, ay] = G.toPx(...state.path.a);
      if (state.path.b) {
        const [bx, by] = G.toPx(...state.path.b);
        ctx.beginPath(); ctx.moveTo(ax, ay); ctx.lineTo(bx, by);
        ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.stroke();
        marker(ctx, bx, by, "#fff", 4);
      }
      marker(ctx, ax, ay, "#fff", 4);
    }
    if (state.selected) {
      const [x, y] = G.toPx(P.xy[2 * state.selected.index], P.xy[2 * state.selected.index + 1]);
      marker(ctx, x, y, colour(state.selected.label), 6);
    }
    if (state.drawn) {
      const d = state.drawn;
      const [x, y] = G.toPx(d.uv[0], d.uv[1]);
      ctx.beginPath();
      // screen y points down: the ellipse's angle flips sign
      ctx.ellipse(x, y, Math.max(1, d.ellipse.r1 * G.scale), Math.max(1, d.ellipse.r2 * G.scale),
                  -d.ellipse.angle, 0, 2 * Math.PI);
      ctx.fillStyle = "rgba(0, 0, 0, 0.12)";
      ctx.fill();
      ctx.strokeStyle = "#000"; ctx.lineWidth = 2; ctx.stroke();
      ctx.font = "bold 16px sans-serif";
      ctx.fillStyle = "#000";
      ctx.fillText("✎", x + 6, y - 6);
      marker(ctx, x, y, "#ff0", 5);
    }
    if (state.cursor) {
      const [x, y] = G.toPx(state.cursor.uv[0], state.cursor.uv[1]);
      for (const [style, width] of [["#fff", 5], ["#000", 2]]) { // a cross visible on any colour
        ctx.strokeStyle = style; ctx.lineWidth = width;
        ctx.beginPath(); ctx.moveTo(x - 12, y); ctx.lineTo(x + 12, y);
        ctx.moveTo(x, y - 12); ctx.lineTo(x, y + 12); ctx.stroke();
      }
    }
  }

  // ---- projection between the plane and the latent space ---------------------------------------
  function makeProjection(P) {
    const { basis, center } = P.projection;
    const d = center.length;
    return {
      /** plane (u, v) → z = center + u·b₁ + v·b₂ (latent_dim values) */
      toLatent(u, v) {
        const z = new Float64Array(d);
        for (let j = 0; j < d; j++) z[j] = center[j] + u * basis[0][j] + v * basis[1][j];
        return z;
      },
      /** z → ((z − center)·b₁, (z − center)·b₂) */
      toPlane(z) {
        let u = 0, v = 0;
        for (let j = 0; j < d; j++) {
          u += (z[j] - center[j]) * basis[0][j];
          v += (z[j] - center[j]) * basis[1][j];
        }
        return [u, v];
      },
      /** The 1-σ ellipse of N(mu, diag(exp(logvar))) projected on the plane: radii and angle. */
      ellipse(logvar) {
        let a = 0, b = 0, c = 0; // Σ_plane = B diag(σ²) Bᵀ = [[a, b], [b, c]]
        for (let j = 0; j < d; j++) {
          const s2 = Math.exp(logvar[j]);
          a += basis[0][j] * basis[0][j] * s2;
          b += basis[0][j] * basis[1][j] * s2;
          c += basis[1][j] * basis[1][j] * s2;
        }
        const mid = (a + c) / 2, rad = Math.sqrt(((a - c) / 2) ** 2 + b * b);
        const l1 = mid + rad, l2 = Math.max(0, mid - rad);
        return { r1: Math.sqrt(l1), r2: Math.sqrt(l2), angle: 0.5 * Math.atan2(2 * b, a - c) };
      },
    };
  }

  // ---- drawing pad → 28×28 -----------------------------------------------------------------------
  /** The pad's ink (H_pad × W_pad in [0, 1]) → an image of the model's size. With `centre`, as
   * MNIST was made: the ink's bounding box scaled to fit 20×20 (of 28×28), then shifted so its
   * centre of mass is the image centre; otherwise the whole pad is averaged down. */
  function padToImage(ink, pw, ph, h, w, centre) {
    let x0 = pw, x1 = -1, y0 = ph, y1 = -1;
    for (let y = 0; y < ph; y++) {
      for (let x = 0; x < pw; x++) {
        if (ink[y * pw + x] > 0.05) {
          if (x < x0) x0 = x;
          if (x > x1) x1 = x;
          if (y < y0) y0 = y;
          if (y > y1) y1 = y;
        }
      }
    }
    const out = new Float64Array(h * w);
    if (x1 < 0) return out;
    let sx0 = 0, sy0 = 0, sw = pw, sh = ph, tw = w, th = h;
    if (centre) {
      sx0 = x0; sy0 = y0; sw = x1 - x0 + 1; sh = y1 - y0 + 1;
      const box = Math.round((20 / 28) * Math.min(h, w));
      const s = box / Math.max(sw, sh);
      tw = Math.max(1, Math.round(sw * s));
      th = Math.max(1, Math.round(sh * s));
    }
    // area average by 6×6 supersampling of each target pixel
    const small = new Float64Array(th * tw);
    const S = 6;
    for (let ty = 0; ty < th; ty++) {
      for (let tx = 0; tx < tw; tx++) {
        let acc = 0;
        for (let a = 0; a < S; a++) {
          for (let b = 0; b < S; b++) {
            const sx = Math.min(pw - 1, Math.floor(sx0 + ((tx + (b + 0.5) / S) * sw) / tw));
            const sy = Math.min(ph - 1, Math.floor(sy0 + ((ty + (a + 0.5) / S) * sh) / th));
            acc += ink[sy * pw + sx];
          }
        }
        small[ty * tw + tx] = acc / (S * S);
      }
    }
    let ox = 0, oy = 0;
    if (centre) {
      let m = 0, mx = 0, my = 0;
      for (let ty = 0; ty < th; ty++) {
        for (let tx = 0; tx < tw; tx++) {
          const v = small[ty * tw + tx];
          m += v; mx += v * (tx + 0.5); my += v * (ty + 0.5);
        }
      }
      ox = Math.round(w / 2 - mx / m);
      oy = Math.round(h / 2 - my / m);
    }
    for (let ty = 0; ty < th; ty++) {
      for (let tx = 0; tx < tw; tx++) {
        const X = tx + ox, Y = ty + oy;
        if (X >= 0 && X < w && Y >= 0 && Y < h) out[Y * w + X] = Math.min(1, small[ty * tw + tx]);
      }
    }
    return out;
  }

  // ---- the page ----------------------------------------------------------------------------------
  async function main() {
    const payload = JSON.parse($("payload").textContent);
    const model = await VAEModel.loadModel(payload.model);
    const pts = payload.points;
    const P = {
      points: pts,
      xy: new Float32Array((await VAEModel.blobBytes(pts.xy)).slice().buffer),
      kl: new Float32Array((await VAEModel.blobBytes(pts.kl)).slice().buffer),
      labels: await VAEModel.blobBytes(pts.labels),
      images: await VAEModel.blobBytes(pts.images),
      projection: payload.projection,
      indices: pts.indices ? new Int32Array((await VAEModel.blobBytes(pts.indices)).slice().buffer) : null,
    };
    const shape = model.imageShape;
    const nPix = model.nPixels;
    const names = payload.class_names;
    const proj = makeProjection(P);
    const G = setupPlane(P);
    const bg = drawBackground(P, G);

    state.model = model;
    state.decode = (z) => Array.from(model.decode(z));
    state.encode = (x) => {
      const r = model.encode(x);
      return { mu: Array.from(r.mu), logvar: Array.from(r.logvar) };
    };
    state.toLatent = (u, v) => Array.from(proj.toLatent(u, v));
    state.toPlane = (z) => proj.toPlane(z);
    state.toPx = G.toPx;
    state.xy = (i) => [P.xy[2 * i], P.xy[2 * i + 1]];
    state.label = (i) => P.labels[i];
    state.image = (i) => Array.from(P.images.subarray(i * nPix, (i + 1) * nPix), (b) => b / 255);

    const timedDecode = (z) => {
      const t0 = performance.now();
      const x = model.decode(z);
      state.decodeTimes.push(performance.now() - t0);
      if (state.decodeTimes.length > 200) state.decodeTimes.shift();
      return x;
    };
    const median = (a) => {
      const s = [...a].sort((p, q) => p - q);
      return s.length ? s[Math.floor(s.length / 2)] : NaN;
    };
    /** Decode time in ms: median of n single decodes, and the mean over one loop of n. */
    state.benchmark = (n = 200) => {
      const zs = [];
      for (let i = 0; i < n; i++) zs.push(proj.toLatent(4 * Math.random() - 2, 4 * Math.random() - 2));
      for (let i = 0; i < 20; i++) model.decode(zs[i % n]); // warm-up (JIT)
      const times = [];
      for (const z of zs) {
        const t0 = performance.now();
        model.decode(z);
        times.push(performance.now() - t0);
      }
      const t0 = performance.now();
      for (const z of zs) model.decode(z);
      const mean = (performance.now() - t0) / n;
      const te = performance.now();
      const x0 = Array.from(P.images.subarray(0, nPix), (b) => b / 255);
      for (let i = 0; i < n; i++) model.encode(x0);
      return { n, median_ms: median(times), mean_ms: mean, encode_mean_ms: (performance.now() - te) / n };
    };

    // legend and corner
    const counts = new Array(names.length).fill(0);
    for (let i = 0; i < pts.n; i++) counts[P.labels[i]]++;
    $("legend").innerHTML = names.map((nm, k) =>
      `<span data-class="${k}"><span class="sw" style="background:${colour(k)}"></span>` +
      `${escapeHtml(nm)} (${counts[k]})</span>`).join("");
    $("points-note").textContent = `${pts.n} of ${pts.total} test images (posterior means), ` +
      `${payload.projection.description}`;
    $("metrics").innerHTML = payload.metrics.map(([k, v]) =>
      `<tr><td>${escapeHtml(k)}</td><td class="v">${escapeHtml(v)}</td></tr>`).join("");
    $("config").innerHTML = payload.config.map(([k, v]) =>
      `<tr><td>${escapeHtml(k)}</td><td>${escapeHtml(v)}</td></tr>`).join("");

    const fmt = (a) => "(" + Array.from(a, (v) => v.toFixed(2)).join(", ") + ")";
    const fmtZ = (z) => (z.length <= 4 ? fmt(z) : fmt(z.slice(0, 4)).slice(0, -1) + ", …)");

    function hover(px, py) {
      const uv = G.toUV(px, py);
      const z = proj.toLatent(uv[0], uv[1]);
      const x = timedDecode(z);
      state.cursor = { uv, z: Array.from(z) };
      showImage($("cursor-img"), x, shape);
      const [a, b] = payload.projection.axis_labels;
      const onPlane = `${a} = ${uv[0].toFixed(2)}, ${b} = ${uv[1].toFixed(2)}`;
      // the plane's coordinates are z itself for a 2-D latent drawn on its axes: say it once
      const close = (p, q) => Math.abs(p - q) <= 1e-6 * (1 + Math.abs(q));
      const same = z.length === 2 && close(z[0], uv[0]) && close(z[1], uv[1]);
      $("cursor-z").textContent = same ? onPlane : `${onPlane}; z = ${fmtZ(z)}`;
      $("decode-ms").textContent = `decode: ${median(state.decodeTimes).toFixed(2)} ms ` +
        `(median of the last ${state.decodeTimes.length})`;
      redraw(P, G, bg);
    }

    function nearestPoint(px, py) {
      let best = -1, bestD = PICK_RADIUS_PX * PICK_RADIUS_PX;
      for (let i = 0; i < pts.n; i++) {
        const [x, y] = G.toPx(P.xy[2 * i], P.xy[2 * i + 1]);
        const dd = (x - px) ** 2 + (y - py) ** 2;
        if (dd <= bestD) { bestD = dd; best = i; }
      }
      return best;
    }

    function select(i) {
      const x = P.images.subarray(i * nPix, (i + 1) * nPix);
      const xf = Float64Array.from(x, (b) => b / 255);
      const { mu } = model.encode(xf);
      const recon = model.decode(mu); // decoder mean of the posterior mean, as reconstructions.png
      const label = P.labels[i];
      state.selected = { index: i, label, name: names[label], kl: P.kl[i], mu: Array.from(mu) };
      showImage($("sel-orig"), xf, shape);
      showImage($("sel-recon"), recon, shape);
      $("sel-info").innerHTML = `<div>test image #${P.indices ? P.indices[i] : i}</div>` +
        `<div>label: <b id="sel-label">${escapeHtml(names[label])}</b></div>` +
        `<div>KL(q(z|x) ‖ p(z)) = <b id="sel-kl">${P.kl[i].toFixed(2)}</b> nats</div>` +
        `<div>E[z|x] = ${fmtZ(mu)}</div>`;
      redraw(P, G, bg);
    }

    function pathClick(uv) {
      if (!state.path.a || state.path.b) {
        state.path = { a: uv, b: null };
        $("path-info").textContent = "now click the end point";
      } else {
        state.path.b = uv;
        const strip = $("path-strip");
        const ctx = strip.getContext("2d");
        ctx.fillStyle = "#000";
        ctx.fillRect(0, 0, strip.width, strip.height);
        const size = strip.height;
        const frames = [];
        for (let k = 0; k < PATH_STEPS; k++) {
          const t = k / (PATH_STEPS - 1);
          const u = state.path.a[0] + t * (uv[0] - state.path.a[0]);
          const v = state.path.a[1] + t * (uv[1] - state.path.a[1]);
          const z = proj.toLatent(u, v);
          frames.push(Array.from(z));
          showImage(strip, model.decode(z), shape, k * size, 0, size);
        }
        state.path.z = frames;
        $("path-info").textContent = `${PATH_STEPS} decoder means on the straight line from ` +
          `(${state.path.a.map((q) => q.toFixed(2)).join(", ")}) to ` +
          `(${uv.map((q) => q.toFixed(2)).join(", ")})`;
      }
      redraw(P, G, bg);
    }

    // plane events: pointer events cover mouse, pen and touch; dragging also decodes
    const plane = G.canvas;
    const pos = (ev) => {
      const r = plane.getBoundingClientRect();
      return [((ev.clientX - r.left) * plane.width) / r.width, ((ev.clientY - r.top) * plane.height) / r.height];
    };
    let downAt = null; // a drag (moved > 5 px since pointerdown) is not a click
    plane.addEventListener("pointermove", (ev) => hover(...pos(ev)));
    plane.addEventListener("pointerdown", (ev) => { downAt = pos(ev); hover(...downAt); });
    plane.addEventListener("click", (ev) => {
      const [px, py] = pos(ev);
      if (downAt && Math.hypot(px - downAt[0], py - downAt[1]) > 5) return;
      if (state.mode === "path") return pathClick(G.toUV(px, py));
      const i = nearestPoint(px, py);
      if (i >= 0) select(i);
    });
    function setMode(m) {
      state.mode = m;
      $("mode-explore").classList.toggle("on", m === "explore");
      $("mode-path").classList.toggle("on", m === "path");
      $("mode-hint").textContent = m === "path" ? "click the start, then the end" : "";
    }
    $("mode-explore").addEventListener("click", () => setMode("explore"));
    $("mode-path").addEventListener("click", () => setMode("path"));

    // drawing pad
    const pad = $("pad");
    const pctx = pad.getContext("2d", { willReadFrequently: true });
    const clearPad = () => {
      pctx.fillStyle = "#000";
      pctx.fillRect(0, 0, pad.width, pad.height);
    };
    clearPad();
    let drawing = false, last = null, pending = false;
    const padPos = (ev) => {
      const r = pad.getBoundingClientRect();
      return [((ev.clientX - r.left) * pad.width) / r.width, ((ev.clientY - r.top) * pad.height) / r.height];
    };
    function stroke(p) {
      pctx.strokeStyle = "#fff";
      pctx.lineCap = "round";
      pctx.lineJoin = "round";
      pctx.lineWidth = pad.width / 12;
      pctx.beginPath();
      pctx.moveTo(...(last || p));
      pctx.lineTo(...p);
      pctx.stroke();
      last = p;
    }
    function encodeDrawing() {
      pending = false;
      const data = pctx.getImageData(0, 0, pad.width, pad.height).data;
      const ink = new Float64Array(pad.width * pad.height);
      for (let i = 0; i < ink.length; i++) ink[i] = data[4 * i] / 255;
      const [c, h, w] = shape;
      const img1 = padToImage(ink, pad.width, pad.height, h, w, $("center-mnist").checked);
      const x = new Float64Array(nPix);
      for (let k = 0; k < c; k++) x.set(img1, k * h * w);
      const { mu, logvar } = model.encode(x);
      const recon = model.decode(mu);
      const uv = proj.toPlane(mu);
      state.drawn = { pixels: Array.from(x), mu: Array.from(mu), logvar: Array.from(logvar), uv,
                      ellipse: proj.ellipse(logvar) };
      showImage($("draw-in"), x, shape);
      showImage($("draw-recon"), recon, shape);
      const sd = Array.from(logvar, (lv) => Math.exp(0.5 * lv));
      $("draw-info").innerHTML = `<div>E[z|x] = <b id="drawn-mu">${fmtZ(mu)}</b></div>` +
        `<div>σ = ${fmtZ(sd)}</div><div>on the plane: (${uv[0].toFixed(2)}, ${uv[1].toFixed(2)})</div>` +
        `<div>nearest test points: <b id="drawn-nn">${nearestLabels(uv)}</b></div>`;
      redraw(P, G, bg);
    }
    /** The labels of the 10 test points nearest to (u, v) on the plane, most frequent first. */
    function nearestLabels(uv) {
      const d = [];
      for (let i = 0; i < pts.n; i++) d.push([(P.xy[2 * i] - uv[0]) ** 2 + (P.xy[2 * i + 1] - uv[1]) ** 2, P.labels[i]]);
      d.sort((p, q) => p[0] - q[0]);
      const c = {};
      for (const [, l] of d.slice(0, 10)) c[l] = (c[l] || 0) + 1;
      return Object.entries(c).sort((p, q) => q[1] - p[1]).map(([l, k]) => `${escapeHtml(names[l])}×${k}`).join(" ");
    }
    const schedule = () => {
      if (!pending) { pending = true; requestAnimationFrame(encodeDrawing); }
    };
    pad.addEventListener("pointerdown", (ev) => {
      drawing = true; last = null;
      pad.setPointerCapture(ev.pointerId);
      stroke(padPos(ev));
      schedule();
    });
    pad.addEventListener("pointermove", (ev) => {
      if (drawing) { stroke(padPos(ev)); schedule(); }
    });
    const end = () => {
      if (drawing) { drawing = false; last = null; encodeDrawing(); }
    };
    pad.addEventListener("pointerup", end);
    pad.addEventListener("pointercancel", end);
    $("pad-clear").addEventListener("click", () => {
      clearPad();
      state.drawn = null;
      $("draw-info").textContent = "draw with the mouse";
      redraw(P, G, bg);
    });
    $("center-mnist").addEventListener("change", () => state.drawn && encodeDrawing());

    redraw(P, G, bg);
    $("status").textContent = "";
    state.ready = true;
    document.body.dataset.ready = "1";
  }

  function escapeHtml(s) {
    return String(s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  main().catch((err) => {
    $("status").textContent = "error: " + err.message;
    state.error = String(err && err.stack ? err.stack : err);
    document.body.dataset.ready = "error";
  });
})();
