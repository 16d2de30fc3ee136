"""bfloat16 weight products for caption inference against float32.

The products alone run anywhere (bfloat16 is emulated where the CPU lacks it); the searches and
the CLI in ``bf16`` need a CPU with AMX or AVX-512 BF16 and are skipped elsewhere, except the
refusal on such a CPU, which is simulated.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from vlattn_caption import inference, search
from vlattn_caption.decoder import ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder
from vlattn_caption.model import CaptionModel
from vlattn_caption.predict import BUNDLED_MODEL, Captioner
from vlattn_caption.records import synthetic_records

from vlattn.data.images import image_tensor
from vlattn.errors import VlattnError

#: bfloat16 keeps 8 significant bits: a product's relative error is about 2^-9 for random data
PRODUCT_RTOL = 1e-2

needs_bf16 = pytest.mark.skipif(not inference.bf16_supported(), reason="CPU without AMX or AVX-512 BF16")
pytestmark = pytest.mark.usefixtures("one_thread")


def _relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    return float((got - want).norm() / want.norm())


@pytest.mark.parametrize("rows", [1, 5, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_bf16_product_is_close_to_float32(rows: int, bias: bool) -> None:
    g = torch.Generator().manual_seed(rows)
    weight, x = torch.randn(300, 64, generator=g) * 0.1, torch.randn(rows, 64, generator=g)
    b = torch.randn(300, generator=g) if bias else None
    want = torch.nn.functional.linear(x.double(), weight.double(), None if b is None else b.double())
    fp32 = inference.PackedProduct(weight, b)(x)
    bf16 = inference.PackedProduct(weight, b, precision="bf16")(x)
    assert fp32.dtype == bf16.dtype == torch.float32
    assert _relative_error(fp32, want) < 1e-6
    assert 0 < _relative_error(bf16, want) < PRODUCT_RTOL  # really bfloat16, and close


def test_unknown_precision_is_refused() -> None:
    with pytest.raises(VlattnError, match="precision must be one of fp32, bf16"):
        inference.PackedProduct(torch.randn(3, 2), None, precision="fp16")  # type: ignore[arg-type]
    model = _model()
    with pytest.raises(VlattnError, match="precision must be one of"):
        search.beam_search(model, torch.randn(1, 9, 16), precision="int8")  # type: ignore[arg-type]


def test_bf16_on_a_cpu_without_bf16_instructions_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    with pytest.raises(VlattnError, match="AMX or AVX-512 BF16"):
        search.beam_search(_model(), torch.randn(1, 9, 16), precision="bf16")
    assert inference.check_precision("bf16", "cuda") == "bf16"  # CUDA runs bfloat16 natively
    assert inference.check_precision("fp32", "cpu") == "fp32"


def test_packed_linear_in_bf16_keeps_hooks_and_trains_in_float32() -> None:
    layer = inference.PackedLinear(64, 300)
    x = torch.randn(5, 64)
    want = torch.nn.functional.linear(x, layer.weight, layer.bias)
    with torch.no_grad():
        fast = layer(x, precision="bf16")
        batched = layer(x[None].expand(2, 5, 64), precision="bf16")
    assert 0 < _relative_error(fast, want) < PRODUCT_RTOL
    torch.testing.assert_close(batched[1], fast)
    trained = layer(x, precision="bf16")  # with a gradient: the plain float32 layer
    assert torch.equal(trained.detach(), want)
    trained.sum().backward()
    assert layer.weight.grad is not None
    layer.register_forward_hook(lambda _m, _i, out: out * 0)
    with torch.no_grad():
        assert (layer(x, precision="bf16") == 0).all()


def _model() -> CaptionModel:
    torch.manual_seed(0)
    decoder = ShowAttendTellDecoder(40, 16, embed_dim=8, hidden_dim=20, dropout=0.0)
    return CaptionModel(Encoder("small-cnn", grid=3, channels=16), decoder).eval()


def test_inference_weights_are_cached_per_precision() -> None:
    decoder = _model().decoder
    fp32, bf16 = inference.inference_weights(decoder), inference.inference_weights(decoder, "bf16")
    assert fp32 is inference.inference_weights(decoder, "fp32") and bf16 is inference.inference_weights(decoder, "bf16")
    assert fp32.from_state.weight.dtype == torch.float32 and bf16.from_state.weight.dtype == torch.bfloat16
    with torch.no_grad():
        decoder.cell.weight_hh.mul_(0.5)
    rebuilt = inference.inference_weights(decoder, "bf16")
    assert rebuilt is not bf16
    torch.testing.assert_close(rebuilt.from_state.weight[:80].float(), (bf16.from_state.weight[:80] * 0.5).float())


def test_bf16_step_is_close_to_float32() -> None:
    decoder = _model().decoder
    annotations = torch.randn(3, 9, 16)
    keys, rows, words = decoder.scoring_keys(annotations), torch.arange(6), torch.tensor([4, 5, 6, 7, 8, 9])
    with torch.no_grad():
        state = tuple(s.repeat_interleave(2, 0) for s in decoder.init_state(annotations))
        default = decoder.step_rows(words, state, annotations, keys, rows, 2)
        fp32 = decoder.step_rows(words, state, annotations, keys, rows, 2, "fp32")
        bf16 = decoder.step_rows(words, state, annotations, keys, rows, 2, "bf16")
    assert torch.equal(default[0], fp32[0]) and torch.equal(default[1][0], fp32[1][0])  # fp32 is the default
    assert 0 < _relative_error(bf16[0], fp32[0]) < PRODUCT_RTOL
    assert _relative_error(bf16[1][0], fp32[1][0]) < PRODUCT_RTOL
    assert (bf16[2] - fp32[2]).abs().max() < 1e-2  # attention weights


def test_fp32_search_is_the_default_bit_for_bit() -> None:
    model, annotations = _model(), torch.randn(4, 9, 16)
    default = search.beam_search(model, annotations, beam_size=3, max_len=6)
    fp32 = search.beam_search(model, annotations, beam_size=3, max_len=6, precision="fp32")
    assert default.tokens == fp32.tokens and torch.equal(default.scores, fp32.scores)
    assert all(torch.equal(a, b) for a, b in zip(default.weights, fp32.weights, strict=True))


@needs_bf16
@pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason="bundled caption model not trained")
def test_bundled_soft_model_gives_the_same_captions_in_bf16() -> None:
    captioner = Captioner.load("synthetic-soft")
    records = synthetic_records("test", 40, seed=0, image_size=captioner.image_size)
    images = torch.stack([image_tensor(r.load(), captioner.image_size) for r in records])
    for decode in (search.beam_search, search.greedy):
        fp32, bf16 = (
            decode(captioner.model, images, precision="fp32"),
            decode(captioner.model, images, precision="bf16"),
        )
        assert bf16.tokens == fp32.tokens, decode.__name__  # all 500 standard test scenes agree (docs/caption.md)
        assert (bf16.scores - fp32.scores).abs().max() < 0.1


def _cli(*args: str) -> tuple[int, str, str]:
    from vlattn.cli import build_cli

    result = CliRunner().invoke(build_cli(), list(args))
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    path = tmp_path / "scene.png"
    synthetic_records("test", 1, seed=0, image_size=64)[0].load().save(path)
    return path


@needs_bf16
@pytest.mark.skipif(not BUNDLED_MODEL.exists(), reason="bundled caption model not trained")
def test_cli_precision_bf16_captions_like_fp32(scene: Path) -> None:
    code, fp32, err = _cli("caption", str(scene), "--model", "synthetic-soft")
    assert code == 0, err
    code, bf16, err = _cli("caption", str(scene), "--model", "synthetic-soft", "--precision", "bf16")
    assert code == 0, err
    assert bf16 == fp32 and bf16.split()[0] in ("a", "there")


def test_cli_refuses_a_bad_precision(scene: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, _, err = _cli("caption", str(scene), "--precision", "fp16")
    assert code == 2 and "'fp16' is not one of 'fp32', 'bf16'" in err
    monkeypatch.setattr(inference, "bf16_supported", lambda: False)
    code, _, err = _cli("caption", str(scene), "--precision", "bf16")
    assert code == 1 and err.strip().count("\n") == 0 and "AMX or AVX-512 BF16" in err


def test_a_training_step_runs_under_cpu_autocast_to_bfloat16() -> None:
    """What ``vlattn train caption --precision bf16`` does on a CPU: the teacher-forced pass and
    its loss under autocast, then the backward, from images and from float32 annotations (cached
    ones); the loss stays close to float32's."""
    model = _model().train()
    images = torch.randint(0, 255, (3, 3, 24, 24), dtype=torch.uint8)
    captions = torch.tensor([[1, 5, 6, 7, 2], [1, 8, 9, 2, 0], [1, 4, 2, 0, 0]])
    lengths = torch.tensor([5, 4, 3])
    with torch.no_grad():
        annotations = model.encoder(images)  # [3, 9, 16] float32
        exact = float(model.loss(model(images, captions, lengths, 0.0), captions, 1.0, 0.0).total)
    for inputs in ({"images": images}, {"images": None, "annotations": annotations}):
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(inputs.pop("images"), captions, lengths, 0.0, **inputs)
            loss = model.loss(out, captions, 1.0, 0.0).total
        loss.backward()
        assert abs(float(loss.detach()) - exact) < 0.05 * abs(exact)
        grads = [p.grad for p in model.decoder.parameters() if p.requires_grad]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_the_inference_weights_follow_a_trainer_optimizer_step() -> None:
    """The trainer's (fused) Adam writes the parameters in place; the decoder's packed inference
    weights must be rebuilt from the new values, or validation decodes with stale weights."""
    from vlattn.train.optim import build_optimizer
    from vlattn.train.trainer_config import TrainerConfig

    decoder = _model().decoder
    before = inference.inference_weights(decoder)
    optimizer = build_optimizer(list(decoder.parameters()), TrainerConfig(optimizer="adam", lr=1e-2))
    for p in decoder.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    after = inference.inference_weights(decoder)
    assert after is not before
    torch.testing.assert_close(after.from_input.weight, decoder.cell.weight_ih.detach())
