// vlattn serve: the page shell and the widgets every view's module uses.
// A view's module exports mount(root, ui); `ui` is this module's exports plus `spec` (the view as
// GET /api/views describes it). No code or asset comes from anywhere but this server.

/** Create an element: el("p", {class: "x", onclick: f}, "text", child). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** A labelled form row. */
export function field(label, input, hint = "") {
  return el("label", { class: "field" }, el("span", {}, label), input, hint ? el("small", {}, hint) : null);
}

async function answer(response) {
  let data;
  try {
    data = await response.json();
  } catch {
    throw new Error(`HTTP ${response.status}`);
  }
  if (!response.ok) throw new Error(data && data.error ? data.error : `HTTP ${response.status}`);
  return data;
}

/** POST a JSON object (or a FormData) to an API route; rejects with the server's error line. */
export async function post(path, body) {
  const isForm = body instanceof FormData;
  const response = await fetch(path, {
    method: "POST",
    headers: isForm ? {} : { "Content-Type": "application/json" },
    body: isForm ? body : JSON.stringify(body || {}),
  });
  return answer(response);
}

/** GET an API route with query parameters. */
export async function get(path, params = {}) {
  const query = new URLSearchParams(params).toString();
  return answer(await fetch(query ? `${path}?${query}` : path));
}

/**
 * Run `work` for a form: disables the button, shows progress or the error line in `status`, and
 * sets root.dataset.state to busy / done / error (what tests wait for).
 */
export async function busy(root, status, button, work) {
  root.dataset.state = "busy";
  status.className = "status";
  status.textContent = "working…";
  if (button) button.disabled = true;
  try {
    await work();
    status.textContent = "";
    root.dataset.state = "done";
  } catch (error) {
    status.className = "status error";
    status.textContent = error.message;
    root.dataset.state = "error";
  } finally {
    if (button) button.disabled = false;
  }
}

/** Colour of a weight in [0, 1] (relative to the largest one shown). */
export function heat(value, alpha = 0.85) {
  const v = Math.max(0, Math.min(1, value));
  return `rgba(255, ${Math.round(200 - 140 * v)}, ${Math.round(60 - 60 * v)}, ${(alpha * v).toFixed(3)})`;
}

/** Tokens shaded by their weights (relative to the largest), the weight in each tooltip. */
export function shadeTokens(tokens, weights) {
  const top = Math.max(1e-9, ...(weights || [0]));
  return el(
    "p",
    { class: "tokens" },
    tokens.map((token, i) => {
      const w = weights ? weights[i] : 0;
      return el("span", { class: "token", title: w.toFixed(4), style: `background:${heat(w / top)}` }, token);
    }),
  );
}

/** Load an image from a URL (data: URLs included). */
export function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the image could not be shown"));
    img.src = src;
  });
}

/**
 * An attention grid [h][w] over an image, drawn `size` pixels wide. mode "soft": a heat map
 * (the grid upsampled smoothly, in proportion to its largest weight); "hard": the glimpse, the
 * grid cell of the largest weight outlined and the rest dimmed.
 */
export function attentionCanvas(img, grid, { size = 192, mode = "soft" } = {}) {
  const canvas = el("canvas", { class: "attention", width: size, height: size });
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.drawImage(img, 0, 0, size, size);
  const rows = grid.length;
  const cols = grid[0].length;
  let top = 1e-12;
  let best = [0, 0];
  grid.forEach((row, r) =>
    row.forEach((v, c) => {
      if (v > top) {
        top = v;
        best = [r, c];
      }
    }),
  );
  if (mode === "hard") {
    const cw = size / cols;
    const ch = size / rows;
    ctx.fillStyle = "rgba(0, 0, 0, 0.55)";
    ctx.fillRect(0, 0, size, size);
    ctx.drawImage(img, (best[1] * img.width) / cols, (best[0] * img.height) / rows, img.width / cols,
      img.height / rows, best[1] * cw, best[0] * ch, cw, ch);
    ctx.strokeStyle = "#ffde3b";
    ctx.lineWidth = 2;
    ctx.strokeRect(best[1] * cw, best[0] * ch, cw, ch);
    return canvas;
  }
  const small = el("canvas", { width: cols, height: rows });
  const sctx = small.getContext("2d");
  const pixels = sctx.createImageData(cols, rows);
  grid.forEach((row, r) =>
    row.forEach((v, c) => {
      const k = (r * cols + c) * 4;
      const t = v / top;
      pixels.data.set([255, Math.round(230 * (1 - t)), 0, Math.round(210 * t)], k);
    }),
  );
  sctx.putImageData(pixels, 0, 0);
  ctx.fillStyle = "rgba(0, 0, 0, 0.35)";
  ctx.fillRect(0, 0, size, size);
  ctx.drawImage(small, 0, 0, size, size);
  return canvas;
}

/** A range slider with a label: onChange(index) is called at once and on every move. */
export function slider(count, label, onChange, start = 0) {
  const input = el("input", { type: "range", min: 0, max: Math.max(0, count - 1), value: start, step: 1 });
  const text = el("output", {});
  const update = () => {
    const i = Number(input.value);
    text.textContent = label(i);
    onChange(i);
  };
  input.addEventListener("input", update);
  queueMicrotask(update);
  return { element: el("div", { class: "slider" }, input, text), input, set: (i) => ((input.value = i), update()) };
}

/**
 * Play frames step by step: frames[t] = {src, boxes: [{box: [x0, y0, x1, y1], colour}]}, boxes in
 * the frame's own pixels; drawn `scale` times larger without smoothing.
 */
export async function player(frames, { scale = 6, interval = 250 } = {}) {
  const images = await Promise.all(frames.map((f) => loadImage(f.src)));
  const width = images[0].width * scale;
  const height = images[0].height * scale;
  const canvas = el("canvas", { class: "frame", width, height });
  const ctx = canvas.getContext("2d");
  const draw = (t) => {
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(images[t], 0, 0, width, height);
    ctx.lineWidth = 2;
    for (const { box, colour } of frames[t].boxes || []) {
      ctx.strokeStyle = colour;
      const [x0, y0, x1, y1] = box.map((v) => v * scale);
      ctx.strokeRect(x0, y0, Math.max(1, x1 - x0), Math.max(1, y1 - y0));
    }
  };
  const control = slider(frames.length, (t) => `step ${t + 1} of ${frames.length}`, draw, frames.length - 1);
  let timer = null;
  const play = el("button", { type: "button", class: "play" }, "play");
  play.addEventListener("click", () => {
    if (timer) {
      clearInterval(timer);
      timer = null;
      play.textContent = "play";
      return;
    }
    let t = 0;
    play.textContent = "pause";
    control.set(t);
    timer = setInterval(() => {
      t += 1;
      if (t >= frames.length) {
        clearInterval(timer);
        timer = null;
        play.textContent = "play";
        return;
      }
      control.set(t);
    }, interval);
  });
  return { element: el("div", { class: "player" }, canvas, el("div", { class: "controls" }, play, control.element)),
    control };
}

/** A weight matrix as a table: rows x columns, each cell shaded and labelled with its weight. */
export function matrix(weights, rowLabels, colLabels) {
  const head = el("tr", {}, el("th", {}), colLabels.map((c) => el("th", {}, c)));
  const rows = weights.map((row, r) =>
    el("tr", {}, el("th", {}, rowLabels[r]),
      row.map((w) => el("td", { style: `background:${heat(w)}`, title: w.toFixed(4) }, w.toFixed(2)))),
  );
  return el("table", { class: "matrix" }, el("thead", {}, head), el("tbody", {}, rows));
}

/** Read a File as a data: URL. */
export function fileAsDataURL(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error("the file could not be read"));
    reader.readAsDataURL(file);
  });
}

async function boot() {
  const root = document.querySelector("main[data-script]");
  if (!root) return;
  const spec = JSON.parse(root.dataset.spec);
  const ui = { spec, el, field, post, get, busy, heat, shadeTokens, loadImage, attentionCanvas, slider, player,
    matrix, fileAsDataURL };
  try {
    const module = await import(root.dataset.script);
    await module.mount(root, ui);
    root.dataset.mounted = "1";
  } catch (error) {
    root.append(el("p", { class: "status error" }, `this view failed to start: ${error.message}`));
    root.dataset.mounted = "error";
  }
}

boot();
