"""The captioner's page in ``vlattn serve``: an image in, the beam's caption and, word by word,
where the model looked.

``POST /api/caption`` takes an uploaded image (multipart field ``image``, a base64 ``image`` field
in JSON, or the raw image as the body) or a generated synthetic scene (``{"scene": 3}``), and
answers with the caption, its tokens and one attention grid per word. Images that arrive together
are decoded as one batch. Imports torch only when a model loads.
"""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vlattn.serve import ApiError, ApiInput, ApiRoute, ViewHandler, ViewSpec

if TYPE_CHECKING:
    from PIL import Image

    from vlattn_caption.predict import Captioner

SHOWN_SIZE = 256  # the picture sent back for display is at most this many pixels a side
SCENE_SIZE = 64  # the bundled models' training scenes
MODELS = {"soft": "caption", "hard": "caption-hard"}  # choice in the request -> model slot
SLOT_MODELS = {"caption": "synthetic-soft", "caption-hard": "synthetic-hard"}  # slot -> bundled model name

VIEW = ViewSpec(
    name="caption",
    title="Caption",
    summary="Caption an image (yours or a generated scene) and see, word by word, where the model looked.",
    handler="vlattn_caption.view:CaptionView",
    script="vlattn_caption.view:SCRIPT",
    routes=(
        ApiRoute(
            "/api/caption",
            run="caption",
            parse="parse",
            max_batch=16,
            summary="image or scene -> caption, tokens, per-word attention grids",
        ),
    ),
    models=("caption", "caption-hard"),
    order=20,
)


@dataclass
class CaptionRequest:
    """One parsed request: the picture and how to decode it."""

    picture: Image.Image
    model: str
    beam_size: int
    max_len: int | None
    scene: dict[str, Any] | None


def png_data_url(picture: Image.Image) -> str:
    """``picture`` as a ``data:image/png;base64,...`` URL, at most :data:`SHOWN_SIZE` a side."""
    shown = picture.copy()
    shown.thumbnail((SHOWN_SIZE, SHOWN_SIZE))
    buffer = io.BytesIO()
    shown.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


class CaptionView(ViewHandler):
    """Captions with the bundled soft and hard models, or the files given for their slots."""

    def load(self) -> None:
        from vlattn_caption.bundled import BUNDLED
        from vlattn_caption.predict import Captioner
        from vlattn_caption.task import CaptionTask

        self.captioners: dict[str, Captioner] = {}
        self.model_names: dict[str, str] = {}
        missing: list[str] = []
        for slot, name in SLOT_MODELS.items():
            try:
                path = self.model_file(slot, task=CaptionTask.name, bundled=BUNDLED, name=name)
            except ApiError as exc:  # a missing bundled model: serve the other one
                missing.append(str(exc))
                continue
            self.captioners[slot] = Captioner.load(path)
            self.model_names[slot] = path.name
        if not self.captioners:
            raise ApiError("; ".join(missing), 503)

    def parse(self, request: ApiInput) -> CaptionRequest:
        """Validate the request and decode its image, or render the scene it asks for."""
        from vlattn_caption.synthetic import make_scene

        scene = None
        picture = request.image("image")
        if picture is None:
            if not request.has("scene"):
                raise ApiError("send an image (field 'image') or a scene number (field 'scene')", 400)
            index = request.integer("scene", 0, 0, 1_000_000)
            seed = request.integer("seed", 0, 0, 2**31 - 1)
            made = make_scene(seed or 0, "test", index or 0, image_size=SCENE_SIZE)
            picture = made.image
            scene = {"seed": seed, "index": index, "captions": made.captions}
        return CaptionRequest(
            picture=picture,
            model=MODELS[request.choice("model", list(MODELS), "soft")],
            beam_size=request.integer("beam_size", 5, 1, 20) or 5,
            max_len=request.integer("max_len", None, 1, 50),  # None: the model's own limit
            scene=scene,
        )

    def caption(self, requests: list[CaptionRequest]) -> list[dict[str, Any]]:
        """Decode the images, one batch per model and decoding setting."""
        answers: dict[int, dict[str, Any]] = {}
        groups: dict[tuple[str, int, int], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.model, r.beam_size, r.max_len), []).append(i)
        for (slot, beam_size, max_len), rows in groups.items():
            captioner = self.captioners.get(slot)
            if captioner is None:
                raise ApiError(f"the {slot} model is not available", 503)
            decoded = captioner.caption_images(
                [requests[i].picture for i in rows], beam_size=beam_size, max_len=max_len
            )
            mechanism = str(getattr(captioner.task.config, "attention", ""))
            for i, (words, score, maps) in zip(rows, decoded, strict=True):
                answers[i] = {
                    "caption": " ".join(words),
                    "tokens": words,
                    "score": round(score, 4),
                    "attention": [[[round(float(v), 4) for v in row] for row in grid] for grid in maps],
                    "grid": list(maps.shape[1:]),
                    "mechanism": mechanism,
                    "kind": "hard" if "hard" in mechanism else "soft",
                    "model": self.model_names[slot],
                    "image": png_data_url(requests[i].picture),
                    "scene": requests[i].scene,
                }
        return [answers[i] for i in range(len(requests))]


SCRIPT = r"""
export function mount(root, ui) {
  const { el } = ui;
  const source = el("select", { name: "source" }, el("option", { value: "scene" }, "generated scene"),
    el("option", { value: "upload" }, "my image"));
  const scene = el("input", { type: "number", name: "scene", min: 0, value: 1 });
  const file = el("input", { type: "file", name: "image", accept: "image/*" });
  const model = el("select", { name: "model" }, el("option", { value: "soft" }, "soft attention (heat map)"),
    el("option", { value: "hard" }, "hard attention (glimpse)"));
  const beam = el("input", { type: "number", name: "beam_size", min: 1, max: 20, value: 5 });
  const button = el("button", { type: "submit" }, "Caption");
  const sceneField = ui.field("Scene number", scene);
  const fileField = ui.field("Image file", file,
    "any format Pillow reads; the bundled models know only synthetic shapes");
  const form = el("form", {}, ui.field("Input", source), sceneField, fileField, ui.field("Model", model),
    ui.field("Beam size", beam), button);
  const toggle = () => { fileField.hidden = source.value !== "upload"; sceneField.hidden = source.value === "upload"; };
  source.addEventListener("change", toggle);
  file.addEventListener("change", () => { if (file.files.length) { source.value = "upload"; toggle(); } });
  toggle();
  const status = el("p", { class: "status" });
  const results = el("div", { class: "results" });
  root.append(form, status, results);

  async function show(data) {
    const img = await ui.loadImage(data.image);
    const big = el("div", { class: "big" });
    const words = data.tokens.map((w, i) => el("span", { class: "word", onclick: () => control.set(i) }, w));
    const panels = data.attention.map((grid, i) => el("div", { class: "panel", onclick: () => control.set(i) },
      ui.attentionCanvas(img, grid, { size: 96, mode: data.kind }), el("span", {}, data.tokens[i])));
    const select = (i) => {
      big.replaceChildren(ui.attentionCanvas(img, data.attention[i], { size: 288, mode: data.kind }));
      words.forEach((w, j) => w.classList.toggle("current", i === j));
      panels.forEach((p, j) => p.classList.toggle("current", i === j));
    };
    const control = ui.slider(data.tokens.length, (i) => `word ${i + 1} of ${data.tokens.length}: ${data.tokens[i]}`,
      select);
    const known = data.scene ? el("p", { class: "legend" }, `reference: ${data.scene.captions[0]}`) : null;
    results.replaceChildren(el("div", { class: "result" },
      el("p", { class: "caption-text" }, words.flatMap((w) => [w, " "])),
      el("p", { class: "legend" }, `log-probability ${data.score}; ${data.mechanism} (${data.model}); ` +
        (data.kind === "hard" ? "the glimpse is the attended cell" : "heat: attention weight")), known,
      control.element, big, el("div", { class: "panels" }, panels)));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ui.busy(root, status, button, async () => {
      let body;
      if (source.value === "upload") {
        if (!file.files.length) throw new Error("choose an image file first");
        body = new FormData();
        body.append("image", file.files[0]);
        body.append("model", model.value);
        body.append("beam_size", beam.value);
      } else {
        body = { scene: Number(scene.value), model: model.value, beam_size: Number(beam.value) };
      }
      await show(await ui.post("/api/caption", body));
    });
  });
}
"""
