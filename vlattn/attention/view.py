"""The mechanisms page of ``vlattn serve``: any registered mechanism on a toy query/keys example.

``GET /api/mechanisms`` lists the registered mechanisms (every plugin's); ``POST /api/attend``
builds one (seeded, untrained, eval mode) and applies it to seeded random queries and keys, the
last ``padding`` keys masked out, and answers with the weight matrix. Imports torch only then.
"""

from __future__ import annotations

from typing import Any

from vlattn.serve import ApiError, ApiInput, ApiRoute, ViewHandler, ViewSpec

VIEW = ViewSpec(
    name="mechanisms",
    title="Mechanisms",
    summary="Pick any registered attention mechanism and see its weights on a toy query/keys example.",
    handler="vlattn.attention.view:MechanismsView",
    script="vlattn.attention.view:SCRIPT",
    routes=(
        ApiRoute("/api/mechanisms", run="mechanisms", method="GET", summary="the registered mechanisms"),
        ApiRoute("/api/attend", run="attend", parse="parse", summary="mechanism + toy sizes -> weights [Tq][S]"),
    ),
    order=40,
)


class MechanismsView(ViewHandler):
    """Builds mechanisms by name with :func:`vlattn.attention.build_attention`."""

    def mechanisms(self, requests: list[ApiInput]) -> list[dict[str, Any]]:
        from vlattn.plugins import attention_registry

        rows = [
            {"name": s.name, "summary": s.summary, "formula": s.formula, "paper": s.paper, "plugin": s.plugin}
            for s in attention_registry()
        ]
        return [{"mechanisms": rows} for _ in requests]

    def parse(self, request: ApiInput) -> dict[str, Any]:
        """The mechanism's name and the toy example's sizes."""
        from vlattn.plugins import attention_registry

        name = request.text("mechanism", max_chars=100)
        if name not in attention_registry().names():
            raise ApiError(f"no attention mechanism named {name!r}", 404)
        source = request.integer("keys", 8, 2, 32) or 8
        return {
            "name": name,
            "source": source,
            "queries": request.integer("queries", 3, 1, 8) or 3,
            "dim": request.integer("dim", 8, 2, 64) or 8,
            "padding": request.integer("padding", 0, 0, source - 1) or 0,
            "seed": request.integer("seed", 0, 0, 2**31 - 1) or 0,
        }

    def attend(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [self._attend(**r) for r in requests]

    def _attend(self, name: str, source: int, queries: int, dim: int, padding: int, seed: int) -> dict[str, Any]:
        import torch

        from vlattn.attention import build_attention
        from vlattn.errors import VlattnError
        from vlattn.plugins import attention_registry

        spec = attention_registry().get(name)
        options = dict(spec.contract.get("options", {}))
        generator = torch.Generator().manual_seed(seed)
        query = torch.randn(1, queries, dim, generator=generator)
        keys = torch.randn(1, source, dim, generator=generator)
        mask = torch.ones(1, source, dtype=torch.bool)
        if padding:
            mask[0, source - padding :] = False
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            try:
                mechanism = build_attention(name, dim, dim, **options).eval()
                with torch.no_grad():
                    context, weights = mechanism(query, keys, mask=mask)
            except VlattnError as exc:
                raise ApiError(f"{name}: {exc}", 422) from None
            except (RuntimeError, ValueError, TypeError) as exc:
                raise ApiError(f"{name} cannot run on this example: {type(exc).__name__}: {exc}", 422) from None
        rows = [] if weights is None else [[round(float(v), 4) for v in row] for row in weights[0]]
        return {
            "mechanism": name,
            "summary": spec.summary,
            "formula": spec.formula,
            "paper": spec.paper,
            "plugin": spec.plugin,
            "weights": rows,
            "sums": [round(sum(row), 4) for row in rows],
            "mask": mask[0].tolist(),
            "context_shape": list(context.shape),
            "options": options,
        }


SCRIPT = r"""
export async function mount(root, ui) {
  const { el } = ui;
  const { mechanisms } = await ui.get("/api/mechanisms");
  const pick = el("select", { name: "mechanism" }, mechanisms.map((m) => el("option", { value: m.name }, m.name)));
  const keys = el("input", { type: "number", name: "keys", min: 2, max: 32, value: 8 });
  const queries = el("input", { type: "number", name: "queries", min: 1, max: 8, value: 3 });
  const padding = el("input", { type: "number", name: "padding", min: 0, max: 31, value: 2 });
  const seed = el("input", { type: "number", name: "seed", min: 0, value: 0 });
  const button = el("button", { type: "submit" }, "Attend");
  const form = el("form", {}, ui.field("Mechanism", pick), ui.field("Keys S", keys), ui.field("Queries Tq", queries),
    ui.field("Padded keys", padding), ui.field("Seed", seed), button);
  const status = el("p", { class: "status" });
  const results = el("div", { class: "results" });
  root.append(form, status, results);
  const run = () => ui.busy(root, status, button, async () => {
    const body = { mechanism: pick.value, keys: Number(keys.value), queries: Number(queries.value),
      padding: Number(padding.value), seed: Number(seed.value) };
    const data = await ui.post("/api/attend", body);
    const cols = data.mask.map((real, s) => (real ? `k${s + 1}` : `k${s + 1} (pad)`));
    const rows = data.weights.map((_, t) => `q${t + 1}`);
    results.replaceChildren(el("div", { class: "result" },
      el("h2", {}, data.mechanism), el("p", {}, data.summary),
      data.formula ? el("p", {}, el("code", {}, data.formula)) : null,
      data.paper ? el("p", { class: "legend" }, data.paper) : null,
      data.weights.length ? ui.matrix(data.weights, rows, cols) : el("p", {}, "this mechanism returns no weights"),
      el("p", { class: "legend" }, `row sums ${data.sums.join(", ")}; context ${data.context_shape.join(" x ")}; ` +
        "an untrained mechanism (seeded weights) on seeded random queries and keys")));
  });
  form.addEventListener("submit", (event) => { event.preventDefault(); run(); });
  pick.addEventListener("change", run);
}
"""
