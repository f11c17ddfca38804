// The page's in-browser back end (static/app.js loads it when <html data-backend="browser">):
// the whole model runs here with ONNX Runtime Web, from the files that
// `mobilesam export --web DIR` wrote beside the page (listed in site.json).
//
// No image or mask arithmetic lives in this file: models/preprocess.onnx resizes, normalises
// and pads a photo exactly as the Python pipeline does (Pillow's arithmetic, in the graph),
// and models/decoder*.onnx takes prompts in the photo's pixels and returns the thresholded
// mask at the photo's size. This file moves pixels and numbers between the page and the
// graphs, picks the runtimes (the encoder on WebGPU where the browser has it; everything
// else, and the encoder without WebGPU, in WebAssembly with SIMD, with threads where the page
// is cross-origin isolated), and checks every model file it loads against the sha256 that
// site.json records.
//
// URL parameters (for tests and measurements): ?backend=wasm|webgpu, ?threads=N,
// ?variant=fp32|int8|fp16.

const base = new URL("./", document.baseURI); // the site's root (index.html's folder)

async function fetchBytes(path, onProgress) {
  const res = await fetch(new URL(path, base));
  if (!res.ok) throw new Error(`${path}: HTTP ${res.status}`);
  const total = Number(res.headers.get("Content-Length")) || 0;
  if (!res.body || !onProgress) return new Uint8Array(await res.arrayBuffer());
  const reader = res.body.getReader();
  const chunks = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    chunks.push(value);
    received += value.length;
    onProgress(value.length, total);
  }
  const out = new Uint8Array(received);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function verified(site, path, onProgress) {
  const bytes = await fetchBytes(path, onProgress);
  const expected = site.sha256[path];
  // crypto.subtle exists only in secure contexts (https, localhost): elsewhere, unchecked
  if (expected && globalThis.crypto && crypto.subtle) {
    const actual = await sha256Hex(bytes);
    if (actual !== expected) {
      throw new Error(`${path} is damaged or changed (sha256 ${actual.slice(0, 12)}…, `
        + `expected ${expected.slice(0, 12)}…): export the site again`);
    }
  }
  return bytes;
}

async function webGpuAdapter() {
  if (!navigator.gpu) return false;
  try {
    return (await navigator.gpu.requestAdapter()) !== null;
  } catch (_) {
    return false;
  }
}

const MB = (bytes) => `${(bytes / 1e6).toFixed(1)} MB`;

export async function createBrowserBackend({ status }) {
  const res = await fetch(new URL("site.json", base));
  if (!res.ok) throw new Error(`site.json: HTTP ${res.status} (not an exported site?)`);
  const site = await res.json();
  const params = new URLSearchParams(location.search);

  // The runtimes. The plain WebAssembly build always runs preprocessing and the decoder: small
  // CPU work, whose graphs use float64 arithmetic that ONNX Runtime Web's WebGPU build lacks.
  // The encoder runs on WebGPU (that build) where the browser has it, else here too.
  const asked = params.get("backend") || "auto";
  const hasGpuBuild = site.runtime.backends.includes("webgpu");
  const gpu = asked !== "wasm" && hasGpuBuild && (await webGpuAdapter());
  const isolated = globalThis.crossOriginIsolated === true;
  const cores = navigator.hardwareConcurrency || 1;
  const threads = isolated
    ? Math.max(1, Number(params.get("threads")) || Math.min(4, Math.ceil(cores / 2)))
    : 1; // threads need SharedArrayBuffer, which needs cross-origin isolation
  const runtimeOf = async (kind, numThreads) => {
    const ort = await import(new URL(site.runtime.entry[kind], base).href);
    ort.env.wasm.wasmPaths = new URL(site.runtime.dir, base).href;
    ort.env.wasm.proxy = false;
    ort.env.wasm.numThreads = numThreads;
    return ort;
  };
  const ort = await runtimeOf("wasm", threads);
  const gpuOrt = gpu ? await runtimeOf("webgpu", 1) : null;
  const wasmLabel = `WebAssembly SIMD, ${threads} thread${threads > 1 ? "s" : ""}`
    + (isolated ? "" : " (page not cross-origin isolated)");
  let note = asked === "webgpu" && !gpu ? " (no WebGPU here)" : "";

  const variants = Object.keys(site.variants);
  const pick = params.get("variant")
    || (gpu && site.variants.fp16 ? "fp16" : site.default_variant);
  if (!site.variants[pick]) throw new Error(`no variant ${pick} in this site (${variants})`);

  let sessions = null;
  let variant = null;
  let engine = null;
  let embedding = null;
  let size = null;
  let chain = Promise.resolve(); // one run at a time: sessions are not re-entrant

  function exclusive(task) {
    const run = chain.then(task, task);
    chain = run.catch(() => {});
    return run;
  }

  async function load(name) {
    const files = site.variants[name];
    const paths = [site.preprocess, files.encoder, files.decoder];
    const total = paths.reduce((n, p) => n + site.sizes[p], 0);
    let received = 0;
    const progress = (n) => {
      received += n;
      status(`Loading the ${name} model: ${MB(received)} of ${MB(total)}…`);
    };
    const [pre, enc, dec] = await Promise.all(paths.map((p) => verified(site, p, progress)));
    const create = (runtime, bytes, providers) => runtime.InferenceSession.create(bytes, {
      executionProviders: providers,
      graphOptimizationLevel: "all",
    });
    const preprocess = await create(ort, pre, ["wasm"]);
    const decoder = await create(ort, dec, ["wasm"]);
    let encoder = null;
    let encoderOrt = ort;
    if (gpuOrt) {
      try {
        encoder = await create(gpuOrt, enc, ["webgpu", "wasm"]);
        encoderOrt = gpuOrt;
      } catch (err) {
        note = ` (WebGPU failed: ${err.message})`; // WebAssembly instead
      }
    }
    if (!encoder) encoder = await create(ort, enc, ["wasm"]);
    const runtime = encoderOrt === gpuOrt ? `WebGPU encoder, decoder ${wasmLabel}` : wasmLabel;
    if (sessions) await Promise.all(Object.values(sessions).map((s) => s.release()));
    sessions = { preprocess, encoder, decoder, encoderOrt };
    variant = name;
    engine = `in-browser · ${runtime}${note} · ${name} · onnxruntime-web ${site.runtime.version}`;
    model.engine = engine;
    model.variant = variant;
    embedding = null;
  }

  const model = {
    engine: null,
    variant: null,
    variants: variants.map((name) => {
      const v = site.variants[name];
      const bytes = site.sizes[v.encoder] + site.sizes[v.decoder] + site.sizes[site.preprocess];
      return { name, label: `${name} (${MB(bytes)})` };
    }),
    setVariant: (name) => exclusive(() => load(name)),
    open: (file) => exclusive(async () => {
      const bitmap = await createImageBitmap(file, {
        imageOrientation: "from-image", // EXIF orientation, as the Python reader applies it
        colorSpaceConversion: "none", // the stored values, as Pillow reads them
        premultiplyAlpha: "none",
      });
      const { width, height } = bitmap;
      const canvas = new OffscreenCanvas(width, height);
      const ctx = canvas.getContext("2d", { willReadFrequently: true });
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      const rgba = ctx.getImageData(0, 0, width, height).data;
      const t0 = performance.now();
      const pixels = new ort.Tensor("uint8", new Uint8Array(rgba.buffer), [height, width, 4]);
      const pre = await sessions.preprocess.run({ pixels });
      const t1 = performance.now();
      // (tensors move between the two runtimes' classes as plain arrays)
      const image = sessions.encoderOrt === ort
        ? pre.image : new sessions.encoderOrt.Tensor("float32", pre.image.data, pre.image.dims);
      const enc = await sessions.encoder.run({ image });
      const t2 = performance.now();
      const out = enc.image_embeddings;
      embedding = sessions.encoderOrt === ort ? out : new ort.Tensor("float32", out.data, out.dims);
      size = [height, width];
      const detail = { preprocessMs: t1 - t0, encoderMs: t2 - t1 };
      return { id: "local", width, height, encoderMs: t2 - t0, detail };
    }),
    // request: {points: [[x, y]…], labels: [1|0…], box: [x0, y0, x1, y1], multimask}, in the
    // photo's pixels; SAM's layout: the points, then the box's corners (labels 2, 3) or one
    // padding point (0, 0) labelled -1 when there is no box.
    segment: (request) => exclusive(async () => {
      if (!embedding) throw new Error("no photo is open");
      const coords = [];
      const labels = [];
      (request.points || []).forEach((p, i) => {
        coords.push(p[0], p[1]);
        labels.push(request.labels[i]);
      });
      if (request.box) {
        coords.push(...request.box);
        labels.push(2, 3);
      } else {
        coords.push(0, 0);
        labels.push(-1);
      }
      const n = labels.length;
      const feeds = {
        image_embeddings: embedding,
        point_coords: new ort.Tensor("float32", Float32Array.from(coords), [1, n, 2]),
        point_labels: new ort.Tensor("float32", Float32Array.from(labels), [1, n]),
        orig_im_size: new ort.Tensor("float32", Float32Array.from(size), [2]),
        multimask: new ort.Tensor("float32", Float32Array.of(request.multimask ? 1 : 0), [1]),
      };
      const t0 = performance.now();
      const out = await sessions.decoder.run(feeds);
      const decoderMs = performance.now() - t0;
      return { pixels: out.mask.data, score: out.score.data[0], png: null, decoderMs };
    }),
  };
  await load(pick);
  return model;
}
