"""The text classifier's page in ``vlattn serve``: sentences in, label, score and attention out.

``POST /api/classify`` takes ``{"texts": ["...", ...]}`` (or ``{"text": "one per line"}``) and
answers with one prediction per sentence (``vlattn_text.predict.Prediction``'s fields; a model on
a pretrained encoder adds ``encoder_attention``, its last layer's attention, mean over heads). Requests
that arrive together are classified as one batch. Imports torch only when the model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlattn.serve import ApiError, ApiInput, ApiRoute, ViewHandler, ViewSpec

MAX_SENTENCES = 100
MAX_CHARS = 2_000

VIEW = ViewSpec(
    name="text",
    title="Text",
    summary="Classify sentences; each token is shaded by the attention the classifier gave it.",
    handler="vlattn_text.view:TextView",
    script="vlattn_text.view:SCRIPT",
    routes=(
        ApiRoute(
            "/api/classify",
            run="classify",
            parse="parse",
            max_batch=64,
            summary="texts -> label, score, probabilities, tokens and their attention",
        ),
    ),
    models=("text",),
    order=10,
)


class TextView(ViewHandler):
    """Classifies sentences with a :class:`vlattn_text.predict.TextClassifier`."""

    def load(self) -> None:
        from vlattn_text.predict import TextClassifier

        self.classifier = TextClassifier.load(self.model_path("text"))

    def parse(self, request: ApiInput) -> list[str]:
        """The request's sentences: ``texts`` (a list) or ``text`` (one sentence per line)."""
        name = "texts" if "texts" in request.fields else "text"
        if name not in request.fields:
            raise ApiError("send 'texts' (a list of sentences) or 'text' (one sentence per line)", 400)
        return request.texts(name, max_items=MAX_SENTENCES, max_chars=MAX_CHARS)

    def classify(self, requests: list[list[str]]) -> list[dict[str, Any]]:
        """One answer per request; all their sentences are classified together."""
        flat = [text for texts in requests for text in texts]
        # a model on a pretrained encoder also shows the encoder's own last-layer attention
        encoder = self.classifier.has_encoder
        predictions = [p.to_dict() for p in self.classifier.classify(flat, encoder_attention=encoder)]
        model = Path(self.classifier.path).name if self.classifier.path else "bundled"
        answers, start = [], 0
        for texts in requests:
            rows = predictions[start : start + len(texts)]
            start += len(texts)
            answers.append({"model": model, "labels": list(self.classifier.labels), "predictions": rows})
        return answers


SCRIPT = r"""
const EXAMPLES = ["The food was not good at all.", "Great phone, the battery lasts for days.",
  "Worst service I have ever had."];

export function mount(root, ui) {
  const { el } = ui;
  const text = el("textarea", { name: "text", rows: 4 }, EXAMPLES.join("\n"));
  const button = el("button", { type: "submit" }, "Classify");
  const form = el("form", {}, ui.field("Sentences, one per line", text), button);
  form.firstChild.classList.add("wide");
  const status = el("p", { class: "status" });
  const results = el("div", { class: "results" });
  root.append(form, status, results);
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    ui.busy(root, status, button, async () => {
      const data = await ui.post("/api/classify", { text: text.value });
      results.replaceChildren(...data.predictions.map((p) => el("div", { class: "result" },
        el("div", {}, el("span", { class: `label ${p.label}` }, p.label), " ",
          el("span", { class: "score" }, p.score.toFixed(3)), " ", el("small", {}, p.text)),
        p.attention ? ui.shadeTokens(p.tokens, p.attention) : el("p", { class: "legend" }, "(no attention)"),
        p.encoder_attention ? el("details", { class: "encoder-attention" },
          el("summary", {}, "encoder attention: last layer, mean over heads (row: token attending)"),
          ui.matrix(p.encoder_attention, p.tokens, p.tokens)) : "")));
      results.append(el("p", { class: "legend" }, `model: ${data.model}; tokens shaded by attention weight ` +
        "relative to the sentence's largest (hover for the weight)"));
    });
  });
}
"""
