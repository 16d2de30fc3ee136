"""DRAW's page in ``vlattn serve``: generate digits (or redraw yours) and play the canvas step by
step with the read (green) and write (red) windows.

``POST /api/draw`` takes ``{"num": 4, "steps": 16, "seed": 0}`` to sample from the prior, or
``mode=reconstruct`` with an ``image`` to redraw it, and answers with one PNG per step and sample
and the windows of each step. Imports torch only when the model loads.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlattn.serve import ApiError, ApiInput, ApiRoute, ViewHandler, ViewSpec

if TYPE_CHECKING:
    import torch
    from PIL import Image

MAX_NUM = 16
MAX_STEPS = 64

VIEW = ViewSpec(
    name="draw",
    title="DRAW",
    summary="Generate digits with DRAW, or redraw yours, and play the canvas step by step with its attention windows.",
    handler="vlattn_draw.view:DrawView",
    script="vlattn_draw.view:SCRIPT",
    routes=(
        ApiRoute("/api/draw", run="draw", parse="parse", summary="sample or redraw -> canvases and windows per step"),
    ),
    models=("draw",),
    order=30,
)


@dataclass
class DrawRequest:
    """One parsed request."""

    mode: str
    num: int
    steps: int | None
    seed: int
    picture: Image.Image | None


def canvas_png(canvas: torch.Tensor) -> str:
    """A ``[C, H, W]`` canvas in ``[0, 1]`` as a PNG ``data:`` URL."""
    import torch
    from PIL import Image

    array = (canvas.clamp(0, 1) * 255 + 0.5).to(dtype=torch.uint8).permute(1, 2, 0).numpy()
    picture = Image.fromarray(array[:, :, 0], mode="L") if array.shape[2] == 1 else Image.fromarray(array, mode="RGB")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class DrawView(ViewHandler):
    """Samples and reconstructions of the bundled MNIST model, or of ``--model draw=PATH``."""

    def load(self) -> None:
        from vlattn.checkpoint import load_model
        from vlattn_draw.bundled import BUNDLED
        from vlattn_draw.task import DrawTask

        path = self.model_file("draw", task=DrawTask.name, bundled=BUNDLED)
        self.model = load_model(path, expect_task=DrawTask.name).model.eval()
        self.name = path.name

    def parse(self, request: ApiInput) -> DrawRequest:
        """Validate the request (and decode the image to redraw)."""
        mode = request.choice("mode", ["generate", "reconstruct"], "generate")
        picture = request.image("image") if mode == "reconstruct" else None
        if mode == "reconstruct" and picture is None:
            raise ApiError("mode 'reconstruct' needs an image (field 'image')", 400)
        return DrawRequest(
            mode=mode,
            num=request.integer("num", 4, 1, MAX_NUM) or 4,
            steps=request.integer("steps", None, 1, MAX_STEPS),
            seed=request.integer("seed", 0, 0, 2**31 - 1) or 0,
            picture=picture,
        )

    def draw(self, requests: list[DrawRequest]) -> list[dict[str, Any]]:
        """Run each request (DRAW samples are drawn one request at a time)."""
        return [self._draw_one(r) for r in requests]

    def _draw_one(self, request: DrawRequest) -> dict[str, Any]:
        import torch

        from vlattn_draw.model import DrawTrace
        from vlattn_draw.render import prepare_image

        shape = self.model.shape
        steps = request.steps or shape.steps
        source = None
        with torch.no_grad():
            if request.picture is None:
                generator = torch.Generator(device=self.model.h_dec0.device).manual_seed(request.seed)
                trace = self.model.generate(request.num, steps=steps, generator=generator)
            else:
                image = prepare_image(
                    request.picture, shape.channels, shape.height, shape.width, shape.likelihood == "bernoulli"
                )
                trace = DrawTrace()
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(request.seed)
                    self.model(image.unsqueeze(0), trace=trace, steps=steps)
                source = canvas_png(image)
        count = trace.canvases[0].shape[0]
        samples = []
        for i in range(count):
            samples.append(
                {
                    "frames": [canvas_png(canvas[i]) for canvas in trace.canvases],
                    "write_boxes": [[round(float(v), 2) for v in boxes[i]] for boxes in trace.write_boxes],
                    "read_boxes": [[round(float(v), 2) for v in boxes[i]] for boxes in trace.read_boxes],
                }
            )
        note = None
        if steps != shape.steps:
            note = f"the model was trained for T={shape.steps} steps; with {steps} the drawings " + (
                "stop early" if steps < shape.steps else "may overshoot"
            )
        return {
            "mode": request.mode,
            "steps": steps,
            "trained_steps": shape.steps,
            "height": shape.height,
            "width": shape.width,
            "model": self.name,
            "source": source,
            "note": note,
            "samples": samples,
        }


SCRIPT = r"""
export function mount(root, ui) {
  const { el } = ui;
  const mode = el("select", { name: "mode" }, el("option", { value: "generate" }, "generate"),
    el("option", { value: "reconstruct" }, "redraw my image"));
  const num = el("input", { type: "number", name: "num", min: 1, max: 16, value: 4 });
  const steps = el("input", { type: "number", name: "steps", min: 1, max: 64, placeholder: "model's T" });
  const seed = el("input", { type: "number", name: "seed", min: 0, value: 0 });
  const file = el("input", { type: "file", name: "image", accept: "image/*" });
  const boxes = el("input", { type: "checkbox", name: "boxes", checked: true });
  const button = el("button", { type: "submit" }, "Draw");
  const fileField = ui.field("Image to redraw", file, "a digit, light on dark or dark on light");
  const numField = ui.field("Samples", num);
  const form = el("form", {}, ui.field("Mode", mode), numField, ui.field("Steps", steps), ui.field("Seed", seed),
    fileField, ui.field("Windows", boxes), button);
  const toggle = () => {
    fileField.hidden = mode.value !== "reconstruct";
    numField.hidden = mode.value === "reconstruct";
  };
  mode.addEventListener("change", toggle);
  toggle();
  const status = el("p", { class: "status" });
  const results = el("div", { class: "results" });
  root.append(form, status, results);

  async function show(data) {
    const players = [];
    for (const sample of data.samples) {
      const frames = sample.frames.map((src, t) => ({ src, boxes: boxes.checked ? [
        ...(sample.read_boxes[t] ? [{ box: sample.read_boxes[t], colour: "#40dc40" }] : []),
        ...(sample.write_boxes[t] ? [{ box: sample.write_boxes[t], colour: "#ff4040" }] : []),
      ] : [] }));
      players.push(await ui.player(frames, { scale: 6 }));
    }
    const all = el("button", { type: "button", class: "secondary" }, "play all");
    all.addEventListener("click", () => players.forEach((p) => p.element.querySelector(".play").click()));
    const source = data.source ? el("div", {}, el("p", { class: "legend" }, "input"),
      el("img", { src: data.source, class: "preview", width: 168, height: 168 })) : null;
    results.replaceChildren(el("div", { class: "result" },
      el("p", { class: "legend" }, `${data.steps} steps (${data.model}); red: write window` +
        (data.mode === "reconstruct" ? ", green: read window" : "")),
      data.note ? el("p", { class: "legend" }, data.note) : null,
      all, el("div", { class: "samples" }, source, players.map((p) => p.element))));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ui.busy(root, status, button, async () => {
      const fields = { mode: mode.value, num: num.value, seed: seed.value };
      if (steps.value) fields.steps = steps.value;
      let body = Object.fromEntries(Object.entries(fields).map(([k, v]) => [k, k === "mode" ? v : Number(v)]));
      if (mode.value === "reconstruct") {
        if (!file.files.length) throw new Error("choose an image file first");
        body = new FormData();
        Object.entries(fields).forEach(([k, v]) => body.append(k, v));
        body.append("image", file.files[0]);
      }
      await show(await ui.post("/api/draw", body));
    });
  });
}
"""
