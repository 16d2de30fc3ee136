"""REINFORCE for the hard-attention captioner: the estimator against exact gradients, length, regularisers."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
import torch
from vlattn_caption.decoder import ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder
from vlattn_caption.model import CaptionModel, reinforce_gradient_ratios
from vlattn_caption.task import CaptionConfig, CaptionTask
from vlattn_caption.vocab import Vocabulary

from vlattn.attention.reinforce import advantage_statistics
from vlattn.config import ConfigError, from_mapping

V, D = 9, 6


def _decoder(**attention_options: object) -> ShowAttendTellDecoder:
    """A tiny hard-attention decoder (every glimpse sampled unless ``attention_options`` say otherwise)."""
    options = {"expectation_prob": 0.0, "hidden_dim": 5, **attention_options}
    return ShowAttendTellDecoder(
        V, D, embed_dim=5, hidden_dim=7, attention="hard-spatial", attention_options=options, dropout=0.0
    )


def _model(locations: int = 4, seed: int = 0, **reinforce: object) -> CaptionModel:
    torch.manual_seed(seed)
    encoder = Encoder("small-cnn", grid=int(locations**0.5), channels=D)
    decoder = _decoder()
    options = {"entropy_weight": 0.0, "reward_scale": 1.0, **reinforce}
    return CaptionModel(encoder, decoder, hard=True, **options)  # type: ignore[arg-type]


def _captions(lengths: list[int], seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    captions = torch.zeros(len(lengths), max(lengths), dtype=torch.long)
    for row, n in enumerate(lengths):
        captions[row, 0] = Vocabulary.start_id
        captions[row, 1 : n - 1] = torch.randint(4, V, (n - 2,), generator=g)
        captions[row, n - 1] = Vocabulary.end_id
    return captions, torch.tensor(lengths)


def test_advantage_does_not_follow_caption_length() -> None:
    """A batch mixing 4- to 19-token captions: the summed reward of the old estimator made the
    advantage a function of length (correlation near -1); the per-word reward does not."""
    model = _model(locations=9).train()
    lengths = [4, 7, 12, 19] * 16
    captions, lengths_t = _captions(lengths)
    annotations = torch.randn(1, 9, D).expand(len(lengths), -1, -1)
    for baseline in ("moving-average", "learned"):
        model = _model(locations=9, baseline=baseline).train()
        out = model.decoder(annotations, captions, lengths_t)
        parts = model.loss(out, captions, doubly_stochastic=0.0)
        assert parts.advantage is not None and parts.words is not None
        stats = advantage_statistics(parts.advantage, parts.words)
        assert abs(stats["advantage_length_corr"]) < 0.3, (baseline, stats)
        # the same batch with the caption's summed log-likelihood as the reward, minus its mean
        token_nll = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), captions[:, 1:], reduction="none")
        summed = -(token_nll * out.step_mask).sum(1).detach()
        old = advantage_statistics(summed - summed.mean(), parts.words)
        assert old["advantage_length_corr"] < -0.9, old


def _forced(sequence: tuple[int, ...]) -> Iterator[int]:
    yield from sequence


def test_estimator_gradient_is_the_exact_gradient_of_the_expected_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    """Two captions (2 and 3 words), 3 locations: enumerate all 27 location sequences for the exact
    gradient of E_s[mean word NLL], and compare the estimator's mean gradient over many draws.
    With reward_scale 0.1 the score-function part of the gradient is a tenth of the exact one;
    crediting each glimpse with the words from it on ("to-go") leaves the estimate unbiased."""
    locations = 3
    torch.manual_seed(0)
    decoder = _decoder().double().train()
    annotations = (3 * torch.randn(2, locations, D, dtype=torch.float64)).requires_grad_()
    captions, lengths = _captions([3, 4], seed=2)
    steps = (lengths - 1).tolist()
    params = [*decoder.parameters(), annotations]

    def model(scale: float, baseline: str = "moving-average", credit: str = "sequence") -> CaptionModel:
        encoder = Encoder("small-cnn", grid=1, channels=D - 2, coordinates=True)  # dim D, unused here
        net = CaptionModel(
            encoder,
            decoder,
            hard=True,
            entropy_weight=0.0,
            reward_scale=scale,
            baseline=baseline,  # type: ignore[arg-type]
            credit=credit,  # type: ignore[arg-type]
        )
        return net.double().train()

    # exact: sum over every location sequence of p(s) * loss(s), each caption over its own steps
    real_multinomial = torch.multinomial
    exact_total = torch.zeros((), dtype=torch.float64)
    path_total = torch.zeros((), dtype=torch.float64)
    tokens = sum(steps)
    net = model(1.0)
    for combo in itertools.product(range(locations), repeat=max(steps)):

        def chosen(p: torch.Tensor, n: int, forced: Iterator[int] = _forced(combo), **_: object) -> torch.Tensor:
            return torch.full((p.shape[0], 1), next(forced))

        monkeypatch.setattr(torch, "multinomial", chosen)
        out = decoder(annotations, captions, lengths)
        monkeypatch.setattr(torch, "multinomial", real_multinomial)
        parts = net.loss(out, captions, doubly_stochastic=0.0)
        targets = captions[:, 1:]
        token_nll = torch.nn.functional.cross_entropy(out.logits.transpose(1, 2), targets, reduction="none")
        caption_nll = (token_nll * out.step_mask).sum(1) / tokens  # [2]
        assert out.log_prob is not None
        repeats = torch.tensor([locations ** (max(steps) - n) for n in steps], dtype=torch.float64)
        p = out.log_prob.sum(1).exp() / repeats
        exact_total = exact_total + (p * caption_nll).sum()
        path_total = path_total + (p.detach() * caption_nll).sum()
        assert parts.nll.item() == pytest.approx(caption_nll.sum().item())
    exact = torch.autograd.grad(exact_total, params, retain_graph=True)
    path = torch.autograd.grad(path_total, params)

    copies, batches = 1500, 8
    big_annotations = annotations.repeat(copies, 1, 1)
    big_captions, big_lengths = captions.repeat(copies, 1), lengths.repeat(copies)
    # the to-go credit (a glimpse is credited with the words from it on) is unbiased as well
    for scale, credit in ((1.0, "sequence"), (0.1, "sequence"), (1.0, "to-go")):
        net = model(scale, credit=credit)
        assert net.reinforce is not None
        net.reinforce.baseline.fill_(-2.0)
        net.reinforce.initialised.fill_(True)
        torch.manual_seed(3)
        estimates = []
        for _ in range(batches):
            out = decoder(big_annotations, big_captions, big_lengths)
            estimates.append(torch.autograd.grad(net.loss(out, big_captions, doubly_stochastic=0.0).total, params))
        for g_exact, g_path, *draws in zip(exact, path, *estimates, strict=True):
            stacked = torch.stack(draws)
            error = stacked.std(0) / batches**0.5  # standard error of the mean over the batches
            target = g_path + scale * (g_exact - g_path)
            # within 4 of the tensor's largest standard errors (the elements' errors are estimated
            # from few batches, so the largest stands in for each)
            assert (stacked.mean(0) - target).abs().max() <= 4 * error.max() + 1e-3 * g_exact.abs().max()
    # the attention scorer learns from the score-function part alone (the context is a sample)
    scorer = {id(p) for p in decoder.attention.parameters()}
    for param, g_exact, g_path in zip(params, exact, path, strict=True):
        if id(param) in scorer:
            assert g_path.abs().max() < 1e-12 and g_exact.abs().max() > 1e-3


def test_regularisers_act_on_alpha_for_hard_attention() -> None:
    model = _model(locations=9).train()
    captions, lengths = _captions([4, 6, 5])
    images = torch.randint(0, 255, (3, 3, 12, 12), dtype=torch.uint8)
    torch.manual_seed(5)
    out = model(images, captions, lengths)
    weights = out.weights[out.step_mask]
    assert torch.all(weights.max(-1).values == 1)  # expectation_prob 0: every glimpse is a sample
    base = model.loss(out, captions, doubly_stochastic=0.0, attention_entropy=0.0)
    entropy = model.loss(out, captions, doubly_stochastic=0.0, attention_entropy=0.5)
    coverage = model.loss(out, captions, doubly_stochastic=1.0, attention_entropy=0.0)
    assert entropy.total.item() != pytest.approx(base.total.item())
    alpha = out.alpha
    expected_reg = ((1.0 - alpha.sum(1)) ** 2).mean()
    assert coverage.doubly_stochastic.item() == pytest.approx(expected_reg.item())
    for parts in (entropy, coverage):  # both reach the scorer through alpha, not the one-hot samples
        grad = torch.autograd.grad(parts.total - base.total, model.decoder.attention.v.weight, retain_graph=True)[0]
        assert grad.abs().sum() > 0
    bonus = _model(locations=9, entropy_weight=0.3).train()
    bonus.load_state_dict(model.state_dict())
    with_bonus = bonus.loss(out, captions, doubly_stochastic=0.0)
    assert with_bonus.total.item() != pytest.approx(base.total.item())


def _task(**extra: object) -> CaptionTask:
    config = from_mapping(
        CaptionConfig,
        {
            "synthetic_train": 8,
            "synthetic_val": 2,
            "image_size": 32,
            "grid": 3,
            "cnn_channels": 8,
            "embed_dim": 8,
            "hidden_dim": 16,
            "attention": "hard-spatial",
            **extra,
        },
    )
    return CaptionTask(config)


@pytest.mark.parametrize(
    "extra",
    [
        {"reward_baseline": "leave-one-out", "reinforce_samples": 3},
        {"reward_baseline": "learned", "reinforce_scope": "scorer"},
    ],
)
def test_training_step_logs_estimator_diagnostics(extra: dict) -> None:
    task = _task(reinforce_diagnostics=1, **extra)
    splits = task.setup_data()
    model = task.build_model().train()
    batch = task.collate([splits.train[i] for i in range(4)])
    loss, logs = task.training_step(model, batch)
    loss.backward()
    assert {
        "advantage_var",
        "advantage_length_corr",
        "grad_ratio_attention",
        "grad_ratio_decoder",
        "grad_ratio_encoder",
    } <= set(logs)
    assert logs["grad_ratio_attention"] > 0
    if extra.get("reinforce_scope") == "scorer":
        assert logs["grad_ratio_encoder"] == 0.0 and logs["grad_ratio_decoder"] == 0.0
    else:
        assert logs["grad_ratio_encoder"] > 0


def test_gradient_ratios_compare_the_two_terms() -> None:
    model = _model(locations=4).train()
    captions, lengths = _captions([4, 6, 5, 5])
    images = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)
    out = model(images, captions, lengths)
    one = reinforce_gradient_ratios(model, model.loss(out, captions, doubly_stochastic=0.0))
    model.reinforce.reward_scale = 0.1  # type: ignore[union-attr]
    tenth = reinforce_gradient_ratios(model, model.loss(out, captions, doubly_stochastic=0.0))
    for key in one:
        assert tenth[key] == pytest.approx(0.1 * one[key], rel=1e-4)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"reward_baseline": "leave-one-out"}, "reinforce_samples"),
        ({"reward_scale": 0.0}, "reward_scale"),
        ({"attention_options": {"eval_mode": "argmax"}}, "hard_decoding"),
    ],
)
def test_bad_estimator_options_are_rejected(options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _task(**options)


@pytest.mark.parametrize("scope", ["sequence", "batch"])
def test_decoder_keeps_the_expectation_draw_for_whole_captions(scope: str) -> None:
    """In a teacher-forced pass each caption's glimpses are all samples or all expectations
    (``sequence``), and with ``batch`` the whole minibatch shares one draw."""
    torch.manual_seed(2)
    decoder = _decoder(expectation_prob=0.5, expectation_scope=scope).train()
    lengths = [4, 9, 6, 12, 5, 7, 8, 10] * 4
    captions, lengths_t = _captions(lengths)
    annotations = torch.randn(len(lengths), 9, D)
    seen = set()
    for _ in range(10):
        out = decoder(annotations, captions, lengths_t)
        one_hot = (out.weights.max(-1).values == 1) & out.step_mask  # [B, T]
        per_caption = one_hot.sum(1)
        sampled = per_caption == out.step_mask.sum(1)
        assert torch.all(sampled | (per_caption == 0))  # never a mix within one caption
        if scope == "batch":
            assert bool(sampled.all()) or not bool(sampled.any())
        seen.update(sampled.tolist())
    assert seen == {True, False}
    assert decoder.attention.sequence_expectation is None  # per-step draws again after the pass
