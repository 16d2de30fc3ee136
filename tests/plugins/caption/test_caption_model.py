"""The Show-Attend-Tell model: decoder, loss, hard attention, decoding, model files."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
from vlattn_caption import search
from vlattn_caption.decoder import ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder, PretrainedUnavailableError
from vlattn_caption.model import CaptionModel
from vlattn_caption.task import CaptionConfig, CaptionTask
from vlattn_caption.vocab import Vocabulary

from vlattn.checkpoint import load_model, save_model
from vlattn.config import from_mapping, to_dict

V, D, L = 12, 16, 9


def _model(attention: str = "soft-spatial", seed: int = 0) -> CaptionModel:
    torch.manual_seed(seed)
    encoder = Encoder("small-cnn", grid=3, channels=D)
    decoder = ShowAttendTellDecoder(V, D, embed_dim=8, hidden_dim=20, attention=attention, dropout=0.0)
    return CaptionModel(encoder, decoder, hard=attention == "hard-spatial")


def _captions() -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([4, 7, 3, 5])
    captions = torch.zeros(4, 7, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    for row, n in enumerate(lengths.tolist()):
        captions[row, 0] = Vocabulary.start_id
        captions[row, 1 : n - 1] = torch.randint(4, V, (n - 2,), generator=g)
        captions[row, n - 1] = Vocabulary.end_id
    return captions, lengths


def test_length_sorted_pass_matches_a_plain_step_loop() -> None:
    model = _model().eval()
    annotations = torch.randn(4, L, D)
    captions, lengths = _captions()
    out = model.decoder(annotations, captions, lengths)
    assert out.logits.shape == (4, 6, V) and out.weights.shape == (4, 6, L)
    state = model.decoder.init_state(annotations)
    for t in range(6):
        logits, state, weights = model.decoder.step(captions[:, t], state, annotations)
        real = out.step_mask[:, t]
        torch.testing.assert_close(out.logits[real, t], logits[real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(out.weights[real, t], weights[real], rtol=1e-5, atol=1e-5)
        assert (out.logits[~real, t] == 0).all()  # no compute spent on padding
    torch.testing.assert_close(out.weights.sum(-1), out.step_mask.float())


def test_projected_keys_change_nothing_but_cost() -> None:
    model = _model().eval()
    decoder = model.decoder
    annotations, h, c = torch.randn(4, L, D), torch.randn(4, 20), torch.randn(4, 20)
    words = torch.tensor([3, 4, 5, 6])
    keys = decoder.project_keys(annotations)
    assert keys is not None and keys.shape[:2] == (4, L)
    plain = decoder.step(words, (h, c), annotations)
    reused = decoder.step(words[:2], (h[:2], c[:2]), annotations[:2], keys[:2])
    torch.testing.assert_close(reused[0], plain[0][:2])
    torch.testing.assert_close(reused[2], plain[2][:2])
    wrong = decoder.step(words, (h, c), annotations, torch.zeros_like(keys))  # the keys are really used
    assert not torch.allclose(wrong[2], plain[2])


def test_mechanisms_without_key_projection_decode() -> None:
    decoder = ShowAttendTellDecoder(vocab_size=9, annotation_dim=20, embed_dim=8, hidden_dim=20, attention="dot").eval()
    annotations = torch.randn(2, L, 20)
    assert decoder.project_keys(annotations) is None
    logits, _, weights = decoder.step(torch.tensor([1, 2]), decoder.init_state(annotations), annotations)
    assert logits.shape == (2, 9)
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))


def test_loss_ignores_padding_and_regularises_attention() -> None:
    model = _model().eval()
    images = torch.randint(0, 255, (4, 3, 12, 12), dtype=torch.uint8)
    captions, lengths = _captions()
    loss = model.loss(model(images, captions, lengths), captions, doubly_stochastic=1.0)
    noisy = captions.clone()
    noisy[noisy == 0] = 5  # garbage where the captions are padded
    noisy[:, 0] = Vocabulary.start_id
    again = model.loss(model(images, noisy, lengths), noisy, doubly_stochastic=1.0)
    torch.testing.assert_close(loss.total, again.total)
    assert loss.tokens == int((lengths - 1).sum())
    assert loss.doubly_stochastic > 0
    none = model.loss(model(images, captions, lengths), captions, doubly_stochastic=0.0)
    torch.testing.assert_close(none.total, none.nll)


def test_hard_attention_trains_the_scorer_with_reinforce() -> None:
    model = _model("hard-spatial").train()
    images = torch.randint(0, 255, (4, 3, 12, 12), dtype=torch.uint8)
    captions, lengths = _captions()
    out = model(images, captions, lengths)
    assert out.log_prob is not None and out.entropy is not None
    assert (out.log_prob[~out.step_mask] == 0).all() and (out.log_prob[out.step_mask] != 0).any()
    weights = out.weights[out.step_mask]
    assert ((weights == 1).sum(-1) == 1).any()  # some steps used a one-hot sampled location
    parts = model.loss(out, captions)
    assert parts.reinforce != 0
    parts.total.backward()
    scorer = model.decoder.attention.query_proj.weight.grad
    assert scorer is not None and scorer.abs().sum() > 0
    model.eval()
    expected = search.greedy(model, images, max_len=5)  # default: the expected context, as the authors decode
    for w in expected.weights:
        assert (w < 1).all() and torch.allclose(w.sum(-1), torch.ones(len(w)))
    argmax = search.decode(model, images, beam_size=1, max_len=5, hard_decoding="argmax")
    for w in argmax.weights:
        assert ((w == 1).sum(-1) == 1).all()
    assert model.decoder.attention.eval_mode == "expectation"  # the override lasts one call


def test_batched_beam_search_matches_per_image_loop() -> None:
    model = _model(seed=3).eval()
    images = torch.randint(0, 255, (5, 3, 12, 12), dtype=torch.uint8)
    batched = search.beam_search(model, images, beam_size=4, max_len=8)
    looped = search.per_image_beam_search(model, images, beam_size=4, max_len=8)
    assert batched.tokens == looped.tokens
    torch.testing.assert_close(batched.scores, looped.scores, rtol=1e-4, atol=1e-4)
    for tokens, weights in zip(batched.tokens, batched.weights, strict=True):
        assert len(tokens) <= 8 and weights.shape == (len(tokens), L)
        assert Vocabulary.pad_id not in tokens and Vocabulary.start_id not in tokens
        torch.testing.assert_close(weights.sum(-1), torch.ones(len(tokens)))


def test_beam_of_one_is_greedy_and_beam_finds_higher_scores() -> None:
    model = _model(seed=4).eval()
    images = torch.randint(0, 255, (6, 3, 12, 12), dtype=torch.uint8)
    greedy = search.greedy(model, images, max_len=6)
    one = search.beam_search(model, images, beam_size=1, max_len=6)
    assert one.tokens == greedy.tokens
    torch.testing.assert_close(one.scores, greedy.scores, rtol=1e-4, atol=1e-4)
    wide = search.beam_search(model, images, beam_size=6, max_len=6)
    finished = [len(t) < 6 for t in greedy.tokens]
    for f, w, g in zip(finished, wide.scores.tolist(), greedy.scores.tolist(), strict=True):
        if f:
            assert w >= g - 1e-4


def test_length_penalty_prefers_longer_captions() -> None:
    model = _model(seed=5).eval()
    images = torch.randint(0, 255, (6, 3, 12, 12), dtype=torch.uint8)
    short = search.beam_search(model, images, beam_size=5, max_len=10, alpha=0.0)
    long = search.beam_search(model, images, beam_size=5, max_len=10, alpha=2.0)
    assert sum(map(len, long.tokens)) >= sum(map(len, short.tokens))


def test_sampling_is_reproducible_with_a_generator() -> None:
    model = _model(seed=6).eval()
    images = torch.randint(0, 255, (3, 3, 12, 12), dtype=torch.uint8)
    a = search.sample(model, images, max_len=6, generator=torch.Generator().manual_seed(0))
    b = search.sample(model, images, max_len=6, generator=torch.Generator().manual_seed(0))
    assert a.tokens == b.tokens
    with pytest.raises(ValueError, match="temperature"):
        search.sample(model, images, temperature=0.0)


def _tiny_task(**extra: object) -> CaptionTask:
    config = from_mapping(
        CaptionConfig,
        {
            "synthetic_train": 6,
            "synthetic_val": 3,
            "image_size": 32,
            "grid": 4,
            "cnn_channels": 8,
            "embed_dim": 8,
            "hidden_dim": 16,
            **extra,
        },
    )
    return CaptionTask(config)


def test_model_file_round_trip(tmp_path: Path) -> None:
    task = _tiny_task(attention="hard-spatial")
    task.setup_data()
    model = task.build_model().eval()
    path = save_model(
        tmp_path / "m.safetensors", model, task_name="caption", config=to_dict(task.config), artifacts=task.artifacts()
    )
    loaded = load_model(path, expect_task="caption")
    assert loaded.task.vocab.words == task.vocab.words  # type: ignore[attr-defined]
    images = torch.randint(0, 255, (2, 3, 32, 32), dtype=torch.uint8)
    before = search.beam_search(model, images, beam_size=3)
    after = search.beam_search(loaded.model, images, beam_size=3)  # type: ignore[arg-type]
    assert before.tokens == after.tokens


def test_task_registered_and_evaluates_decoded_captions() -> None:
    from vlattn.plugins import task_registry

    pytest.importorskip("pycocoevalcap", reason="caption scores need pycocoevalcap")
    assert task_registry().get("caption").load() is CaptionTask
    task = _tiny_task()
    splits = task.setup_data()
    model = task.build_model()
    batch = task.collate([splits.train[i] for i in range(4)])
    loss, logs = task.training_step(model.train(), batch)
    loss.backward()
    assert set(logs) == {"nll", "attention_reg"}
    assert splits.val is not None
    model.eval()
    with torch.no_grad():
        metrics = task.evaluate(model, [task.collate([splits.val[i] for i in range(3)])])
    for key in ("loss", "bleu1", "bleu4", "rouge_l", "cider_d", "grounding", "object_words_correct"):
        assert key in metrics
    assert metrics["images"] == 3


def test_config_validation() -> None:
    from vlattn.config import ConfigError

    with pytest.raises(ConfigError, match="dropout"):
        from_mapping(CaptionConfig, {"dropout": 1.5})
    with pytest.raises(ConfigError, match="image_size"):
        from_mapping(CaptionConfig, {"image_size": 8})


def test_torchvision_backbone_is_cut_before_pooling() -> None:
    encoder = Encoder("resnet18", grid=5)
    out = encoder(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8))
    assert out.shape == (2, 25, 512)
    with pytest.raises(Exception, match="unknown encoder"):
        Encoder("not-a-net")


def test_pretrained_fails_clearly_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch.hub

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args: object, **kwargs: object) -> None:
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(PretrainedUnavailableError, match="cannot be downloaded") as info:
        Encoder("resnet18", pretrained=True)
    assert "\n" not in str(info.value) and "without --pretrained" in str(info.value)
    with pytest.raises(Exception, match="no pretrained weights"):
        Encoder("small-cnn", pretrained=True)


def test_fine_tune_blocks_freeze_the_rest(monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision
    from vlattn_caption import encoder as encoder_module

    monkeypatch.setattr(
        encoder_module, "_pretrained_state", lambda name: torchvision.models.get_model(name, weights=None).state_dict()
    )
    frozen = Encoder("resnet18", pretrained=True, fine_tune_blocks=0)
    assert not any(p.requires_grad for p in frozen.parameters())
    tuned = Encoder("resnet18", pretrained=True, fine_tune_blocks=1)
    blocks = list(tuned.trunk.children())
    assert all(p.requires_grad for p in blocks[-1].parameters())
    assert not any(p.requires_grad for b in blocks[:-1] for p in b.parameters())
    tuned.train()
    assert not blocks[1].training and blocks[-1].training  # frozen batch norms stay in eval mode


def test_annotation_cache_with_a_frozen_encoder(monkeypatch: pytest.MonkeyPatch) -> None:
    task = _tiny_task(cache_annotations=True)
    splits = task.setup_data()
    model = task.build_model().train()
    model.encoder.requires_grad_(False)
    calls = []
    original = model.encoder.forward
    monkeypatch.setattr(model.encoder, "forward", lambda x: calls.append(len(x)) or original(x))
    batch = task.collate([splits.train[i] for i in range(4)])
    task.training_step(model, batch)
    task.training_step(model, batch)
    images = {int(i) for i in batch["index"]}
    assert calls == [4] and set(task.annotation_cache) == images  # each image encoded once
    model.encoder.requires_grad_(True)  # a trainable encoder is never cached
    task.training_step(model, batch)
    assert calls == [4, 4]


def test_coordinates_are_appended_to_annotations() -> None:
    plain = Encoder("small-cnn", grid=3, channels=8)
    located = Encoder("small-cnn", grid=3, channels=8, coordinates=True)
    assert located.dim == plain.dim + 2
    out = located(torch.zeros(1, 3, 24, 24, dtype=torch.uint8))
    xy = out[0, :, -2:]  # row-major: x varies fastest
    torch.testing.assert_close(xy[:3, 0], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(xy[::3, 1], torch.tensor([-1.0, 0.0, 1.0]))


def test_context_dropout_hides_the_context_from_the_lstm_only_in_training() -> None:
    decoder = ShowAttendTellDecoder(V, D, embed_dim=8, hidden_dim=20, dropout=0.0, context_dropout=1.0)
    seen: list[torch.Tensor] = []
    original = decoder.cell.forward
    decoder.cell.forward = lambda x, state: seen.append(x) or original(x, state)  # type: ignore[method-assign]
    annotations = torch.randn(3, L, D)
    state = decoder.init_state(annotations)
    prev = torch.full((3,), Vocabulary.start_id)
    logits_train, _, _ = decoder.train().step(prev, state, annotations)
    logits_eval, _, _ = decoder.eval().step(prev, state, annotations)
    assert torch.all(seen[0][:, 8:] == 0) and torch.any(seen[1][:, 8:] != 0)  # [E y; z]: z hidden in training
    assert logits_eval.shape == logits_train.shape == (3, V)
    decoder.train()
    other_logits, (other_h, _), _ = decoder.step(prev, state, annotations + 1.0)
    _, (h, _), _ = decoder.step(prev, state, annotations)
    torch.testing.assert_close(other_h, h)  # the LSTM saw no context ...
    assert not torch.allclose(other_logits, logits_train)  # ... but the deep output did
    with pytest.raises(ValueError, match="context_dropout"):
        ShowAttendTellDecoder(V, D, context_dropout=1.5)


def test_attention_entropy_term_is_the_mean_entropy_of_real_steps() -> None:
    model = _model().eval()
    images = torch.randint(0, 255, (4, 3, 12, 12), dtype=torch.uint8)
    captions, lengths = _captions()
    out = model(images, captions, lengths)
    plain = model.loss(out, captions, doubly_stochastic=0.0)
    sharp = model.loss(out, captions, doubly_stochastic=0.0, attention_entropy=0.5)
    mask = out.step_mask
    entropy = -(out.weights * out.weights.clamp_min(1e-12).log()).sum(-1)[mask].mean()
    assert 0 < float(entropy.detach()) <= float(torch.log(torch.tensor(float(L)))) + 1e-5
    torch.testing.assert_close(sharp.total, plain.total + 0.5 * entropy)


def test_beam_search_in_chunks_matches_one_batch() -> None:
    model = _model().eval()
    images = torch.randint(0, 255, (5, 3, 12, 12), dtype=torch.uint8)
    whole = search.beam_search(model, images, beam_size=3, max_len=6, chunk=0)
    chunked = search.beam_search(model, images, beam_size=3, max_len=6, chunk=2)
    assert chunked.tokens == whole.tokens
    torch.testing.assert_close(chunked.scores, whole.scores)
    for a, b in zip(chunked.weights, whole.weights, strict=True):
        torch.testing.assert_close(a, b)
