/*
 * The VAE's forward pass in plain JavaScript, for vae/viz/explore.py's page (and for Node, in the tests).
 *
 * The payload (written by vae.viz.explore.model_payload) lists the encoder's and decoder's layers as
 * ops on a flat activation vector (row-major C·H·W, torch's flatten order), with every weight in
 * one little-endian float32 or float16 blob. Arithmetic is in float64 on the float32 (or float16)
 * weights, so the page agrees with torch's float32 forward pass to about 1e-6.
 *
 * No DOM, no network: works in a browser (window.VAEModel) and in Node (module.exports).
 */
(function (exports) {
  "use strict";

  // ---- payload decoding ------------------------------------------------------------------------
  function base64ToBytes(b64) {
    if (typeof Buffer !== "undefined" && typeof window === "undefined") {
      const buf = Buffer.from(b64, "base64");
      return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
    }
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  /** Bytes of a gzip stream, inflated by the platform's DecompressionStream (no library). */
  async function gunzip(bytes) {
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return new Uint8Array(await new Response(stream).arrayBuffer());
  }

  /** A blob {base64, gzip} of the payload → its bytes. */
  async function blobBytes(blob) {
    const raw = base64ToBytes(blob.base64);
    return blob.gzip ? gunzip(raw) : raw;
  }

  let HALF_TABLE = null;
  /** IEEE 754 binary16 bit patterns → float32 values (exact: every half is a float). */
  function halfToFloat(bits) {
    if (HALF_TABLE === null) {
      HALF_TABLE = new Float32Array(65536);
      for (let h = 0; h < 65536; h++) {
        const sign = h & 0x8000 ? -1 : 1;
        const exp = (h >> 10) & 0x1f;
        const frac = h & 0x3ff;
        let v;
        if (exp === 0) v = frac * Math.pow(2, -24); // subnormal
        else if (exp === 31) v = frac ? NaN : Infinity;
        else v = (1 + frac / 1024) * Math.pow(2, exp - 15);
        HALF_TABLE[h] = sign * v;
      }
    }
    const out = new Float32Array(bits.length);
    for (let i = 0; i < bits.length; i++) out[i] = HALF_TABLE[bits[i]];
    return out;
  }

  /** The weight blob's bytes → one Float32Array (float16 widened exactly). */
  function weightsFromBytes(bytes, dtype) {
    const copy = bytes.slice().buffer; // aligned copy
    if (dtype === "float32") return new Float32Array(copy);
    if (dtype === "float16") return halfToFloat(new Uint16Array(copy));
    throw new Error("unknown weight dtype " + dtype);
  }

  // ---- elementwise functions -------------------------------------------------------------------
  /** erf(x) from the Chebyshev-fitted erfc of Numerical Recipes (fractional error < 1.2e-7). */
  function erf(x) {
    const z = Math.abs(x);
    const t = 1 / (1 + 0.5 * z);
    const r =
      t *
      Math.exp(
        -z * z -
          1.26551223 +
          t *
            (1.00002368 +
              t *
                (0.37409196 +
                  t *
                    (0.09678418 +
                      t *
                        (-0.18628806 +
                          t *
                            (0.27886807 +
                              t *
                                (-1.13520398 +
                                  t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
      );
    return x >= 0 ? 1 - r : r - 1;
  }

  function sigmoid(x) {
    return 1 / (1 + Math.exp(-x));
  }

  /** In place: the activation of torch.nn (ReLU, GELU (exact erf), SiLU, ELU, Tanh, LeakyReLU). */
  function activate(x, op) {
    const n = x.length;
    const a = op.alpha;
    switch (op.fn) {
      case "relu":
        for (let i = 0; i < n; i++) if (x[i] < 0) x[i] = 0;
        return;
      case "gelu":
        for (let i = 0; i < n; i++) x[i] = 0.5 * x[i] * (1 + erf(x[i] * Math.SQRT1_2));
        return;
      case "silu":
        for (let i = 0; i < n; i++) x[i] = x[i] * sigmoid(x[i]);
        return;
      case "elu":
        for (let i = 0; i < n; i++) if (x[i] <= 0) x[i] = a * Math.expm1(x[i]);
        return;
      case "tanh":
        for (let i = 0; i < n; i++) x[i] = Math.tanh(x[i]);
        return;
      case "leaky_relu":
        for (let i = 0; i < n; i++) if (x[i] < 0) x[i] = a * x[i];
        return;
      default:
        throw new Error("unknown activation " + op.fn);
    }
  }

  // ---- layers (x: Float64Array, weights: Float32Array views) --------------------------------------
  /** y = W x + b, W (out, in) row-major as torch stores nn.Linear.weight. */
  function linear(x, W, b, nIn, nOut) {
    const y = new Float64Array(nOut);
    for (let j = 0; j < nOut; j++) {
      let s = 0;
      const row = j * nIn;
      for (let i = 0; i < nIn; i++) s += W[row + i] * x[i];
      y[j] = s + b[j];
    }
    return y;
  }

  /** In place: (x − mean) / sqrt(var + eps) · w + b, biased variance (torch.nn.LayerNorm). */
  function layerNorm(x, w, b, eps) {
    const n = x.length;
    let mean = 0;
    for (let i = 0; i < n; i++) mean += x[i];
    mean /= n;
    let v = 0;
    for (let i = 0; i < n; i++) v += (x[i] - mean) * (x[i] - mean);
    const inv = 1 / Math.sqrt(v / n + eps);
    for (let i = 0; i < n; i++) x[i] = (x[i] - mean) * inv * w[i] + b[i];
  }

  /** nn.Conv2d (groups 1, dilation 1): W (C_out, C_in, kH, kW); x (C_in, H, W) → (C_out, H', W'). */
  function conv2d(x, op, W, b) {
    const [ci, hi, wi] = op.in_shape;
    const [co, ho, wo] = op.out_shape;
    const [kh, kw] = op.kernel;
    const [sh, sw] = op.stride;
    const [ph, pw] = op.padding;
    const y = new Float64Array(co * ho * wo);
    for (let o = 0; o < co; o++) {
      for (let oy = 0; oy < ho; oy++) {
        for (let ox = 0; ox < wo; ox++) {
          let s = b[o];
          for (let c = 0; c < ci; c++) {
            for (let ky = 0; ky < kh; ky++) {
              const iy = oy * sh - ph + ky;
              if (iy < 0 || iy >= hi) continue;
              for (let kx = 0; kx < kw; kx++) {
                const ix = ox * sw - pw + kx;
                if (ix < 0 || ix >= wi) continue;
                s += W[((o * ci + c) * kh + ky) * kw + kx] * x[(c * hi + iy) * wi + ix];
              }
            }
          }
          y[(o * ho + oy) * wo + ox] = s;
        }
      }
    }
    return y;
  }

  /** nn.ConvTranspose2d (groups 1, dilation 1): W (C_in, C_out, kH, kW); each input pixel adds
   * W · x at output (iy·s − p + ky, ix·s − p + kx); output_padding only enlarges the output. */
  function convTranspose2d(x, op, W, b) {
    const [ci, hi, wi] = op.in_shape;
    const [co, ho, wo] = op.out_shape;
    const [kh, kw] = op.kernel;
    const [sh, sw] = op.stride;
    const [ph, pw] = op.padding;
    const y = new Float64Array(co * ho * wo);
    for (let o = 0; o < co; o++) y.fill(b[o], o * ho * wo, (o + 1) * ho * wo);
    for (let c = 0; c < ci; c++) {
      for (let iy = 0; iy < hi; iy++) {
        for (let ix = 0; ix < wi; ix++) {
          const v = x[(c * hi + iy) * wi + ix];
          if (v === 0) continue;
          for (let o = 0; o < co; o++) {
            const wBase = (c * co + o) * kh * kw;
            for (let ky = 0; ky < kh; ky++) {
              const oy = iy * sh - ph + ky;
              if (oy < 0 || oy >= ho) continue;
              for (let kx = 0; kx < kw; kx++) {
                const ox = ix * sw - pw + kx;
                if (ox < 0 || ox >= wo) continue;
                y[(o * ho + oy) * wo + ox] += v * W[wBase + ky * kw + kx];
              }
            }
          }
        }
      }
    }
    return y;
  }

  // ---- likelihood means ------------------------------------------------------------------------
  /** Continuous Bernoulli mean of λ = clamp(σ(out), eps, 1 − eps), as
   * torch.distributions.ContinuousBernoulli.mean: the Taylor series 1/2 + (1/3 + 16/45·x²)·x,
   * x = λ − 1/2, for λ in (0.499, 0.501], else λ/(2λ − 1) + 1/(log(1 − λ) − log λ). */
  function cbMean(out, eps) {
    let p = sigmoid(out);
    if (p < eps) p = eps;
    if (p > 1 - eps) p = 1 - eps;
    if (p <= 0.499 || p > 0.501) return p / (2 * p - 1) + 1 / (Math.log1p(-p) - Math.log(p));
    const x = p - 0.5;
    return 0.5 + (1 / 3 + (16 / 45) * x * x) * x;
  }

  /** In place: the decoder output → E[x | z] in [0, 1] (vae.core.likelihoods.*.mean). */
  function likelihoodMean(x, likelihood, eps) {
    const n = x.length;
    if (likelihood === "bernoulli") {
      for (let i = 0; i < n; i++) x[i] = sigmoid(x[i]);
    } else if (likelihood === "continuous_bernoulli") {
      for (let i = 0; i < n; i++) x[i] = cbMean(x[i], eps);
    } else if (likelihood === "gaussian") {
      for (let i = 0; i < n; i++) x[i] = Math.min(1, Math.max(0, x[i]));
    } else {
      throw new Error("unknown likelihood " + likelihood);
    }
  }

  // ---- the model -------------------------------------------------------------------------------
  class Model {
    /** payload: vae.viz.explore.model_payload(...); weights: one Float32Array of every tensor. */
    constructor(payload, weights) {
      this.payload = payload;
      this.latentDim = payload.latent_dim;
      this.imageShape = payload.image_shape;
      this.nPixels = payload.image_shape.reduce((a, b) => a * b, 1);
      this.tensors = {};
      for (const [name, t] of Object.entries(payload.tensors)) {
        this.tensors[name] = weights.subarray(t.offset, t.offset + t.size);
      }
    }

    _run(ops, x) {
      const T = this.tensors;
      for (const op of ops) {
        switch (op.op) {
          case "linear":
            x = linear(x, T[op.weight], T[op.bias], op.in, op.out);
            break;
          case "layernorm":
            layerNorm(x, T[op.weight], T[op.bias], op.eps);
            break;
          case "act":
            activate(x, op);
            break;
          case "conv2d":
            x = conv2d(x, op, T[op.weight], T[op.bias]);
            break;
          case "conv_transpose2d":
            x = convTranspose2d(x, op, T[op.weight], T[op.bias]);
            break;
          default:
            throw new Error("unknown op " + op.op);
        }
      }
      return x;
    }

    /** Image (C·H·W values in [0, 1]) → {mu, logvar} (Float64Array latent_dim each). */
    encode(pixels) {
      const h = this._run(this.payload.encoder, Float64Array.from(pixels));
      const d = this.latentDim;
      const bound = this.payload.logvar_bound;
      const mu = h.slice(0, d);
      const logvar = h.slice(d, 2 * d).map((v) => bound * Math.tanh(v / bound)); // soft clamp
      return { mu, logvar };
    }

    /** Latent code (latent_dim values) → decoder output (logits or mean, C·H·W). */
    decodeOutput(z) {
      return this._run(this.payload.decoder, Float64Array.from(z));
    }

    /** Latent code → E[x | z], C·H·W values in [0, 1] (VAEModule.decode). */
    decode(z) {
      const x = this.decodeOutput(z);
      likelihoodMean(x, this.payload.likelihood, this.payload.prob_eps);
      return x;
    }
  }

  /** The model of a payload (async: the weight blob may be gzip'd). */
  async function loadModel(payload) {
    const bytes = await blobBytes(payload.weights);
    return new Model(payload, weightsFromBytes(bytes, payload.weights.dtype));
  }

  exports.Model = Model;
  exports.loadModel = loadModel;
  exports.blobBytes = blobBytes;
  exports.base64ToBytes = base64ToBytes;
  exports.erf = erf;
  exports.cbMean = cbMean;
})(typeof module !== "undefined" && module.exports ? module.exports : (window.VAEModel = {}));
