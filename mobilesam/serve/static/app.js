// Click-to-segment page for `mobilesam serve`. Plain JS, no build step, no dependencies.
//
// Frames: every prompt is kept in image pixels (x right, y down, origin at the top-left
// corner of the photo as displayed, EXIF orientation applied by the server). The three
// canvases (#photo, #overlay, #marks) have the photo's pixel size; CSS scales them together.
"use strict";

const $ = (id) => document.getElementById(id);

const state = {
  id: null,          // image id from POST /v1/images
  name: "image",     // file stem, for download names
  width: 0,
  height: 0,
  prompts: [],       // {kind: "point", x, y, label} | {kind: "box", x0, y0, x1, y1}
  mode: "none",      // "none" | "prompt" | "everything"
  mask: null,        // prompt mode: {png: base64, score, pixels: Uint8Array (0/1, row-major)}
  annotations: [],   // everything mode: COCO RLE annotations from the server
  seq: 0,            // request counter: answers to superseded requests are dropped
  busy: 0,
};
window.mobilesamState = state; // read by the browser test and handy in the console

const DRAG_THRESHOLD = 5; // screen pixels before a press becomes a box drag
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
  $("everything").disabled = !loaded;
  const hasMasks = (state.mode === "prompt" && state.mask !== null)
    || (state.mode === "everything" && state.annotations.length > 0);
  $("download-png").disabled = !hasMasks;
  $("download-coco").disabled = !hasMasks;
}

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

// ---------------------------------------------------------------- opening a photo

async function openFile(file) {
  if (!file) return;
  const seq = ++state.seq;
  setBusy(+1);
  setStatus(`Encoding ${file.name}…`, "busy");
  try {
    const form = new FormData();
    form.append("file", file, file.name);
    const [info, bitmap] = await Promise.all([
      api("v1/images", { method: "POST", body: form }),
      createImageBitmap(file, { imageOrientation: "from-image" }),
    ]);
    if (seq !== state.seq) return;
    state.id = info.id;
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
    setStatus(`${file.name}: ${info.width}×${info.height}, encoded in ${info.encode_ms} ms. `
      + "Click to segment.", "ready");
  } catch (err) {
    setStatus(`Could not open ${file.name}: ${err.message}`, "error");
  } finally {
    setBusy(-1);
    refreshButtons();
  }
}

// ---------------------------------------------------------------- prompts → masks

function promptBody() {
  const points = state.prompts.filter((p) => p.kind === "point");
  const boxes = state.prompts.filter((p) => p.kind === "box");
  const body = { format: "png" };
  if (points.length) {
    body.points = points.map((p) => [p.x, p.y]);
    body.labels = points.map((p) => p.label);
  }
  if (boxes.length) {
    const b = boxes[boxes.length - 1]; // the API takes one box: the latest one counts
    body.box = [b.x0, b.y0, b.x1, b.y1];
  }
  // One positive click is ambiguous (part / object / group): ask for three, keep the best.
  body.multimask = points.length === 1 && !boxes.length;
  return body;
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
    const t0 = performance.now();
    const out = await api(`v1/images/${state.id}/segment`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(promptBody()),
    });
    const pixels = await pngToPixels(out.masks[out.best]);
    if (seq !== state.seq) return;
    state.mode = "prompt";
    state.annotations = [];
    state.mask = { png: out.masks[out.best], score: out.scores[out.best], pixels };
    drawOverlay();
    const ms = Math.round(performance.now() - t0);
    setStatus(`Mask ready: score ${out.scores[out.best].toFixed(3)}, `
      + `${countOnes(pixels)} pixels (${ms} ms).`, "ready");
  } catch (err) {
    if (seq === state.seq) setStatus(`Segmentation failed: ${err.message}`, "error");
  } finally {
    setBusy(-1);
    refreshButtons();
  }
}

async function everything() {
  const seq = ++state.seq;
  const pps = Number($("pps").value);
  setBusy(+1);
  setStatus(`Segmenting everything on a ${pps}×${pps} grid…`, "busy");
  try {
    const out = await api(`v1/images/${state.id}/everything`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ points_per_side: pps }),
    });
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

let press = null; // {clientX, clientY, start: image point, dragging}

function onPointerDown(event) {
  if (state.id === null || event.button !== 0) return;
  $("marks").setPointerCapture(event.pointerId);
  press = { clientX: event.clientX, clientY: event.clientY, start: toImage(event), dragging: false };
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
  if (moved >= DRAG_THRESHOLD) press.dragging = true;
  if (press.dragging) drawMarks(currentBox(event));
}

function onPointerUp(event) {
  if (!press) return;
  const done = press;
  const prompt = done.dragging
    ? currentBox(event)
    : { kind: "point", ...done.start, label: 1 };
  press = null;
  addPrompt(prompt);
}

function onContextMenu(event) {
  event.preventDefault();
  if (state.id === null) return;
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
    // The server's PNG as is: single channel, 0/255, at the photo's size.
    const bytes = Uint8Array.from(atob(state.mask.png), (c) => c.charCodeAt(0));
    save(new Blob([bytes], { type: "image/png" }), `${state.name}_mask.png`);
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
  $("file").addEventListener("change", (e) => openFile(e.target.files[0]));
  const marks = $("marks");
  marks.addEventListener("pointerdown", onPointerDown);
  marks.addEventListener("pointermove", onPointerMove);
  marks.addEventListener("pointerup", onPointerUp);
  marks.addEventListener("pointercancel", () => { press = null; drawMarks(); });
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
}

init();
