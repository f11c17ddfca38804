// Click-to-segment page. Plain JS, no build step, no dependencies. One page, two back ends:
//  - "server" (`mobilesam serve`): the photo is embedded and masks are decoded by the server
//    (POST v1/images, v1/images/{id}/segment, v1/images/{id}/everything);
//  - "browser" (`mobilesam export --web DIR`): the whole model runs in this page with ONNX
//    Runtime Web (static/browser.mjs, loaded only then); nothing leaves the device.
// <html data-backend="..."> says which; everything else (prompts, drawing, downloads) is shared.
//
// Frames: every prompt is kept in image pixels (x right, y down, origin at the top-left
// corner of the photo as displayed, EXIF orientation applied). The three canvases (#photo,
// #overlay, #marks) have the photo's pixel size; CSS scales them together.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  backend: document.documentElement.dataset.backend === "browser" ? "browser" : "server",
  id: null,          // image id (from POST /v1/images; "local" in the browser)
  name: "image",     // file stem, for download names
  width: 0,
  height: 0,
  prompts: [],       // {kind: "point", x, y, label} | {kind: "box", x0, y0, x1, y1}
  mode: "none",      // "none" | "prompt" | "everything"
  mask: null,        // prompt mode: {png: base64, score, pixels: Uint8Array (0/1, row-major)}
  annotations: [],   // everything mode: COCO RLE annotations from the server
  seq: 0,            // request counter: answers to superseded requests are dropped
  busy: 0,
  file: null,        // the open photo's File (re-encoded when the browser's model changes)
  timing: { engine: null, encoderMs: null, decoderMs: null, detail: null },
};
window.mobilesamState = state; // read by the browser test and handy in the console

const DRAG_THRESHOLD = 5; // screen pixels before a press becomes a box drag
const LONG_PRESS_MS = 500; // a touch held this long without moving: a negative point
const MASK_RGB = [37, 99, 235];

// ---------------------------------------------------------------- status and busy state

function setStatus(text, kind = "idle") {
  const el = $("status");
  el.textContent = text;
  el.dataset.state = kind;
}

function setBusy(delta) {
  state.busy = Math.max(0, state.busy + delta);
  $("stage").setAttribute("aria-busy", state.busy > 0 ? "true" : "false");
  document.body.classList.toggle("busy", state.busy > 0);
}

function refreshButtons() {
  const loaded = state.id !== null;
  $("undo").disabled = !loaded || state.prompts.length === 0;
  $("clear").disabled = !loaded || (state.prompts.length === 0 && state.mode === "none");
  $("everything").disabled = !loaded || !backend.everything;
  const hasMasks = (state.mode === "prompt" && state.mask !== null)
    || (state.mode === "everything" && state.annotations.length > 0);
  $("download-png").disabled = !hasMasks;
  $("download-coco").disabled = !hasMasks;
}

function showEngine() {
  const t = state.timing;
  const parts = [t.engine || state.backend];
  if (t.encoderMs !== null) parts.push(`encoder ${t.encoderMs} ms`);
  if (t.decoderMs !== null) parts.push(`decoder ${t.decoderMs} ms`);
  $("engine").textContent = parts.join(" · ");
}

// ---------------------------------------------------------------- back end: the server

async function api(path, options) {
  const res = await fetch(path, options);
  let body = null;
  try {
    body = await res.json();
  } catch (_) {
    body = null;
  }
  if (!res.ok) {
    const detail = body && body.detail !== undefined ? body.detail : res.statusText;
    const text = typeof detail === "string" ? detail : JSON.stringify(detail);
    throw new Error(`${res.status}: ${text}`);
  }
  return body;
}

// Every back end: open(file) → {id, width, height, encoderMs, detail?}; segment(request) →
// {pixels (Uint8Array 0/1, row-major, the photo's size), score, png (base64, or null: made
// here), decoderMs}; everything(pointsPerSide) where `everything` is true. The browser's
// also has ready() (loads the model once; resolves to it: engine, variants, setVariant).
const serverBackend = {
  everything: true,
  async open(file) {
    const form = new FormData();
    form.append("file", file, file.name);
    const info = await api("v1/images", { method: "POST", body: form });
    return { id: info.id, width: info.width, height: info.height, encoderMs: info.encode_ms };
  },
  async segment(request) {
    const t0 = performance.now();
    const out = await api(`v1/images/${state.id}/segment`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ ...request, format: "png" }),
    });
    const pixels = await pngToPixels(out.masks[out.best]);
    return {
      pixels,
      score: out.scores[out.best],
      png: out.masks[out.best],
      decoderMs: Math.round(performance.now() - t0), // round trip, PNG included
    };
  },
  everything(pps) {
    return api(`v1/images/${state.id}/everything`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ points_per_side: pps }),
    });
  },
};

// ---------------------------------------------------------------- back end: this browser

let backend = serverBackend;

function browserBackendLoader() {
  let loading = null;
  const proxy = {
    everything: false,
    ready() {
      if (!loading) {
        loading = import("./browser.mjs").then((m) => m.createBrowserBackend({
          status: (text) => setStatus(text, "busy"),
        }));
      }
      return loading;
    },
    async open(file) {
      return (await proxy.ready()).open(file);
    },
    async segment(request) {
      return (await proxy.ready()).segment(request);
    },
  };
  return proxy;
}

async function startBrowser() {
  setBusy(+1);
  setStatus("Loading the model into this browser…", "busy");
  try {
    const model = await backend.ready();
    state.timing.engine = model.engine;
    const select = $("variant");
    select.replaceChildren(...model.variants.map((v) => new Option(v.label, v.name)));
    select.value = model.variant;
    select.disabled = model.variants.length < 2;
    showEngine();
    setStatus(`Model ready (${model.engine}). Open a photo (or drop one here) to start.`,
      "idle");
  } catch (err) {
    setStatus(`The model could not be loaded in this browser: ${err.message}`, "error");
  } finally {
    setBusy(-1);
  }
}

async function changeVariant() {
  const model = await backend.ready();
  setBusy(+1);
  setStatus("Loading the other model…", "busy");
  try {
    await model.setVariant($("variant").value);
    state.timing = { engine: model.engine, encoderMs: null, decoderMs: null, detail: null };
    showEngine();
    setStatus(`Model ready (${model.engine}).`, "idle");
  } catch (err) {
    setStatus(`The model could not be loaded: ${err.message}`, "error");
  } finally {
    setBusy(-1);
  }
  if (state.file) await openFile(state.file);
}

// ---------------------------------------------------------------- opening a photo

async function openFile(file) {
  if (!file) return;
  const seq = ++state.seq;
  setBusy(+1);
  setStatus(`Encoding ${file.name}…`, "busy");
  try {
    const [info, bitmap] = await Promise.all([
      backend.open(file),
      createImageBitmap(file, { imageOrientation: "from-image" }),
    ]);
    if (seq !== state.seq) return;
    state.id = info.id;
    state.file = file;
    state.name = file.name.replace(/\.[^.]*$/, "") || "image";
    state.width = info.width;
    state.height = info.height;
    state.prompts = [];
    state.mask = null;
    state.annotations = [];
    state.mode = "none";
    for (const id of ["photo", "overlay", "marks"]) {
      $(id).width = info.width;
      $(id).height = info.height;
    }
    $("photo").getContext("2d").drawImage(bitmap, 0, 0, info.width, info.height);
    bitmap.close();
    $("stage").hidden = false;
    drawOverlay();
    drawMarks();
    state.timing.encoderMs = Math.round(info.encoderMs);
    state.timing.decoderMs = null;
    state.timing.detail = info.detail || null; // the browser's: preprocessing and encoder apart
    showEngine();
    setStatus(`${file.name}: ${info.width}×${info.height}, encoded in ${state.timing.encoderMs} ms. `
      + "Click to segment.", "ready");
  } catch (err) {
    setStatus(`Could not open ${file.name}: ${err.message}`, "error");
  } finally {
    setBusy(-1);
    refreshButtons();
  }
}

// ---------------------------------------------------------------- prompts → masks

function promptRequest() {
  const points = state.prompts.filter((p) => p.kind === "point");
  const boxes = state.prompts.filter((p) => p.kind === "box");
  const request = {};
  if (points.length) {
    request.points = points.map((p) => [p.x, p.y]);
    request.labels = points.map((p) => p.label);
  }
  if (boxes.length) {
    const b = boxes[boxes.length - 1]; // the API takes one box: the latest one counts
    request.box = [b.x0, b.y0, b.x1, b.y1];
  }
  // One positive click is ambiguous (part / object / group): ask for three, keep the best.
  request.multimask = points.length === 1 && !boxes.length;
  return request;
}

async function segment() {
  const seq = ++state.seq;
  drawMarks();
  if (state.prompts.length === 0) {
    state.mode = "none";
    state.mask = null;
    drawOverlay();
    refreshButtons();
    setStatus("No prompts. Click to segment.", "ready");
    return;
  }
  setBusy(+1);
  setStatus("Segmenting…", "busy");
  try {
    const out = await backend.segment(promptRequest());
    if (seq !== state.seq) return;
    state.mode = "prompt";
    state.annotations = [];
    state.mask = { png: out.png, score: out.score, pixels: out.pixels };
    drawOverlay();
    state.timing.decoderMs = Math.round(out.decoderMs);
    showEngine();
    setStatus(`Mask ready: score ${out.score.toFixed(3)}, `
      + `${countOnes(out.pixels)} pixels (${state.timing.decoderMs} ms).`, "ready");
  } catch (err) {
    if (seq === state.seq) setStatus(`Segmentation failed: ${err.message}`, "error");
  } finally {
    setBusy(-1);
    refreshButtons();
  }
}

async function everything() {
  if (!backend.everything) return;
  const seq = ++state.seq;
  const pps = Number($("pps").value);
  setBusy(+1);
  setStatus(`Segmenting everything on a ${pps}×${pps} grid…`, "busy");
  try {
    const out = await backend.everything(pps);
    if (seq !== state.seq) return;
    state.prompts = [];
    state.mask = null;
    state.mode = "everything";
    state.annotations = out.annotations;
    drawMarks();
    drawOverlay();
    setStatus(`Everything: ${out.annotations.length} masks in ${out.seconds} s.`, "ready");
  } catch (err) {
    if (seq === state.seq) setStatus(`Everything failed: ${err.message}`, "error");
  } finally {
    setBusy(-1);
    refreshButtons();
  }
}

// ---------------------------------------------------------------- masks: decode and draw

function pngToPixels(b64) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => {
      const c = document.createElement("canvas");
      c.width = img.width;
      c.height = img.height;
      const ctx = c.getContext("2d");
      ctx.drawImage(img, 0, 0);
      const rgba = ctx.getImageData(0, 0, img.width, img.height).data;
      const out = new Uint8Array(img.width * img.height);
      for (let i = 0; i < out.length; i++) out[i] = rgba[4 * i] > 127 ? 1 : 0;
      resolve(out);
    };
    img.onerror = () => reject(new Error("the server sent an unreadable mask PNG"));
    img.src = `data:image/png;base64,${b64}`;
  });
}

function countOnes(pixels) {
  let n = 0;
  for (let i = 0; i < pixels.length; i++) n += pixels[i];
  return n;
}

// COCO's compressed RLE string → run lengths (column-major, starting with a run of zeros).
// Each count is stored in 5-bit groups (char code - 48), bit 0x20 meaning "more groups",
// bit 0x10 of the last group the sign; from the third count on, values are deltas to the
// count two places back.
function decodeCocoCounts(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      const c = s.charCodeAt(p++) - 48;
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      k++;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

// Golden-ratio hue steps: neighbouring masks get well-separated colours.
function colour(i) {
  const h = (0.13 + i * 0.618033988749895) % 1;
  const f = (n) => {
    const k = (n + h * 12) % 12;
    return Math.round(255 * (0.55 - 0.45 * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}

function drawOverlay() {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  ctx.clearRect(0, 0, w, h);
  if (state.mode === "none" || !w || !h) return;
  const img = ctx.createImageData(w, h);
  const d = img.data;
  if (state.mode === "prompt" && state.mask) {
    const px = state.mask.pixels;
    for (let i = 0; i < px.length; i++) {
      if (!px[i]) continue;
      d[4 * i] = MASK_RGB[0];
      d[4 * i + 1] = MASK_RGB[1];
      d[4 * i + 2] = MASK_RGB[2];
      d[4 * i + 3] = 140;
    }
  } else if (state.mode === "everything") {
    // Largest first, so smaller masks stay visible on top.
    const order = state.annotations.map((_, i) => i)
      .sort((a, b) => state.annotations[b].area - state.annotations[a].area);
    for (const i of order) {
      const rle = state.annotations[i].segmentation;
      const counts = typeof rle.counts === "string" ? decodeCocoCounts(rle.counts) : rle.counts;
      const [r, g, b] = colour(i);
      let pos = 0;
      for (let j = 0; j < counts.length; j++) {
        if (j % 2 === 1) {
          for (let q = pos; q < pos + counts[j]; q++) {
            const x = Math.floor(q / h);
            const o = 4 * ((q - x * h) * w + x);
            d[o] = r;
            d[o + 1] = g;
            d[o + 2] = b;
            d[o + 3] = 150;
          }
        }
        pos += counts[j];
      }
    }
  }
  ctx.putImageData(img, 0, 0);
}

function drawMarks(dragBox = null) {
  const canvas = $("marks");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  const s = Math.max(canvas.width, canvas.height) / 1024; // marks scale with the photo
  const boxes = state.prompts.filter((p) => p.kind === "box");
  const drawn = dragBox ? [dragBox] : boxes.slice(-1);
  for (const b of drawn) {
    ctx.lineWidth = 3 * s;
    ctx.strokeStyle = "#facc15";
    ctx.setLineDash(dragBox ? [8 * s, 6 * s] : []);
    ctx.strokeRect(b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0);
  }
  ctx.setLineDash([]);
  for (const p of state.prompts) {
    if (p.kind !== "point") continue;
    ctx.beginPath();
    ctx.arc(p.x, p.y, 9 * s, 0, 2 * Math.PI);
    ctx.fillStyle = p.label === 1 ? "#16a34a" : "#dc2626";
    ctx.fill();
    ctx.lineWidth = 2 * s;
    ctx.strokeStyle = "#fff";
    ctx.stroke();
  }
}

// ---------------------------------------------------------------- pointer input

function toImage(event) {
  const rect = $("marks").getBoundingClientRect();
  const x = ((event.clientX - rect.left) / rect.width) * state.width;
  const y = ((event.clientY - rect.top) / rect.height) * state.height;
  return {
    x: Math.min(Math.max(x, 0), state.width - 1),
    y: Math.min(Math.max(y, 0), state.height - 1),
  };
}

let press = null; // {clientX, clientY, start: image point, dragging, timer}
let lastPointerType = "mouse";

function onPointerDown(event) {
  lastPointerType = event.pointerType;
  if (state.id === null || event.button !== 0) return;
  $("marks").setPointerCapture(event.pointerId);
  press = { clientX: event.clientX, clientY: event.clientY, start: toImage(event), dragging: false };
  if (event.pointerType === "touch") {
    // a long press is the touch screen's right-click: a negative point
    const held = press;
    held.timer = setTimeout(() => {
      if (press !== held || held.dragging) return;
      press = null;
      if (navigator.vibrate) navigator.vibrate(15);
      addPrompt({ kind: "point", ...held.start, label: 0 });
    }, LONG_PRESS_MS);
  }
}

function currentBox(event) {
  const a = press.start;
  const b = toImage(event);
  return {
    kind: "box",
    x0: Math.min(a.x, b.x),
    y0: Math.min(a.y, b.y),
    x1: Math.max(a.x, b.x),
    y1: Math.max(a.y, b.y),
  };
}

function onPointerMove(event) {
  if (!press) return;
  const moved = Math.hypot(event.clientX - press.clientX, event.clientY - press.clientY);
  if (moved >= DRAG_THRESHOLD) {
    press.dragging = true;
    clearTimeout(press.timer);
  }
  if (press.dragging) drawMarks(currentBox(event));
}

function onPointerUp(event) {
  if (!press) return;
  const done = press;
  clearTimeout(done.timer);
  const prompt = done.dragging
    ? currentBox(event)
    : { kind: "point", ...done.start, label: 1 };
  press = null;
  addPrompt(prompt);
}

function onPointerCancel() {
  if (press) clearTimeout(press.timer);
  press = null;
  drawMarks();
}

function onContextMenu(event) {
  event.preventDefault();
  // a touch screen's long press also opens the context menu: the timer above handles it
  if (state.id === null || lastPointerType === "touch") return;
  addPrompt({ kind: "point", ...toImage(event), label: 0 });
}

function addPrompt(prompt) {
  const round = (v) => Math.round(v * 10) / 10;
  for (const k of ["x", "y", "x0", "y0", "x1", "y1"]) {
    if (k in prompt) prompt[k] = round(prompt[k]);
  }
  if (state.mode === "everything") state.prompts = [];
  state.prompts.push(prompt);
  refreshButtons();
  segment();
}

function undo() {
  if (!state.prompts.length) return;
  state.prompts.pop();
  refreshButtons();
  segment();
}

function clearAll() {
  state.seq++;
  state.prompts = [];
  state.mask = null;
  state.annotations = [];
  state.mode = "none";
  drawMarks();
  drawOverlay();
  refreshButtons();
  if (state.id !== null) setStatus("Cleared. Click to segment.", "ready");
}

// ---------------------------------------------------------------- downloads

function save(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function downloadPng() {
  if (state.mode === "prompt" && state.mask) {
    // Single channel, 0/255, at the photo's size: the server's PNG as is, or the same
    // made here from the mask's pixels.
    const blob = state.mask.png
      ? new Blob([Uint8Array.from(atob(state.mask.png), (c) => c.charCodeAt(0))],
        { type: "image/png" })
      : await maskPng(state.mask.pixels, state.width, state.height);
    save(blob, `${state.name}_mask.png`);
  } else if (state.mode === "everything") {
    // The colour-coded masks, opaque, on a transparent background.
    const src = $("overlay");
    const c = document.createElement("canvas");
    c.width = src.width;
    c.height = src.height;
    const ctx = c.getContext("2d");
    const img = src.getContext("2d").getImageData(0, 0, c.width, c.height);
    for (let i = 3; i < img.data.length; i += 4) if (img.data[i]) img.data[i] = 255;
    ctx.putImageData(img, 0, 0);
    c.toBlob((blob) => save(blob, `${state.name}_everything.png`), "image/png");
  }
}

// A 0/1 row-major mask → an 8-bit grayscale PNG (0/255): signature, IHDR, one zlib IDAT
// (filter byte 0 on every row; the browser's CompressionStream deflates), IEND.
const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

function pngChunk(type, data) {
  const out = new Uint8Array(12 + data.length);
  const view = new DataView(out.buffer);
  view.setUint32(0, data.length);
  for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
  out.set(data, 8);
  let crc = 0xffffffff;
  for (let i = 4; i < 8 + data.length; i++) crc = CRC_TABLE[(crc ^ out[i]) & 0xff] ^ (crc >>> 8);
  view.setUint32(8 + data.length, (crc ^ 0xffffffff) >>> 0);
  return out;
}

async function maskPng(pixels, w, h) {
  const raw = new Uint8Array((w + 1) * h);
  for (let y = 0; y < h; y++) {
    const row = y * (w + 1);
    for (let x = 0; x < w; x++) raw[row + 1 + x] = pixels[y * w + x] ? 255 : 0;
  }
  const zlib = new Uint8Array(await new Response(
    new Blob([raw]).stream().pipeThrough(new CompressionStream("deflate")),
  ).arrayBuffer());
  const header = new Uint8Array(13);
  const view = new DataView(header.buffer);
  view.setUint32(0, w);
  view.setUint32(4, h);
  header[8] = 8; // bit depth; colour type 0 (grayscale), deflate, filter 0, no interlace
  const signature = new Uint8Array([137, 80, 78, 71, 13, 10, 26, 10]);
  return new Blob([signature, pngChunk("IHDR", header), pngChunk("IDAT", zlib),
    pngChunk("IEND", new Uint8Array(0))], { type: "image/png" });
}

// Uncompressed column-major COCO RLE of a row-major 0/1 mask, with its box and area.
function maskToCoco(pixels, w, h) {
  const counts = [];
  let run = 0;
  let value = 0;
  let x0 = w, y0 = h, x1 = -1, y1 = -1, area = 0;
  for (let x = 0; x < w; x++) {
    for (let y = 0; y < h; y++) {
      const v = pixels[y * w + x];
      if (v !== value) {
        counts.push(run);
        run = 0;
        value = v;
      }
      run++;
      if (v) {
        area++;
        if (x < x0) x0 = x;
        if (x > x1) x1 = x;
        if (y < y0) y0 = y;
        if (y > y1) y1 = y;
      }
    }
  }
  counts.push(run);
  const bbox = area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0];
  return { segmentation: { size: [h, w], counts }, area, bbox };
}

function downloadCoco() {
  let annotations;
  if (state.mode === "prompt" && state.mask) {
    const coco = maskToCoco(state.mask.pixels, state.width, state.height);
    annotations = [{ id: 1, ...coco, score: state.mask.score, prompts: state.prompts }];
  } else {
    annotations = state.annotations.map((a) => ({
      id: a.id,
      segmentation: a.segmentation,
      area: a.area,
      bbox: a.bbox,
      score: a.predicted_iou,
      stability_score: a.stability_score,
      point_coords: a.point_coords,
    }));
  }
  const doc = {
    info: { description: "mobilesam masks", date_created: new Date().toISOString() },
    images: [{ id: 1, file_name: state.name, width: state.width, height: state.height }],
    categories: [{ id: 1, name: "object" }],
    annotations: annotations.map((a) => ({ image_id: 1, category_id: 1, iscrowd: 0, ...a })),
  };
  const blob = new Blob([JSON.stringify(doc)], { type: "application/json" });
  save(blob, `${state.name}_coco.json`);
}

// ---------------------------------------------------------------- wiring

function init() {
  if (state.backend === "browser") backend = browserBackendLoader();
  $("file").addEventListener("change", (e) => {
    openFile(e.target.files[0]);
    e.target.value = ""; // choosing the same photo again opens it again
  });
  $("variant").addEventListener("change", changeVariant);
  const marks = $("marks");
  marks.addEventListener("pointerdown", onPointerDown);
  marks.addEventListener("pointermove", onPointerMove);
  marks.addEventListener("pointerup", onPointerUp);
  marks.addEventListener("pointercancel", onPointerCancel);
  marks.addEventListener("contextmenu", onContextMenu);
  $("undo").addEventListener("click", undo);
  $("clear").addEventListener("click", clearAll);
  $("everything").addEventListener("click", everything);
  $("download-png").addEventListener("click", downloadPng);
  $("download-coco").addEventListener("click", downloadCoco);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z") {
      e.preventDefault();
      undo();
    } else if (e.key === "Escape") {
      clearAll();
    }
  });
  document.addEventListener("dragover", (e) => {
    e.preventDefault();
    $("stage").classList.add("dragover");
  });
  document.addEventListener("dragleave", () => $("stage").classList.remove("dragover"));
  document.addEventListener("drop", (e) => {
    e.preventDefault();
    $("stage").classList.remove("dragover");
    if (e.dataTransfer.files.length) openFile(e.dataTransfer.files[0]);
  });
  refreshButtons();
  if (state.backend === "browser") startBrowser();
}

init();
