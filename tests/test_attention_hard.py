"""Hard attention (Xu et al. 2015): sampling, eval modes, and the REINFORCE estimator."""

from __future__ import annotations

import pytest
import torch
from attention_cases import build, inputs

from vlattn.attention.reinforce import ReinforceLoss, rewards_to_go
from vlattn.attention.spatial import HardAttentionSample, HardSpatialAttention


def repeated(name: str, copies: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One example repeated ``copies`` times (so a batch is many draws from one distribution)."""
    query, keys, mask = inputs(name, batch=1)
    return query.expand(copies, -1), keys.expand(copies, -1, -1), mask.expand(copies, -1)


def test_sampling_frequencies_match_the_weights() -> None:
    module = build("hard-spatial", expectation_prob=0.0).train()
    query, keys, mask = repeated("hard-spatial", 20000)
    torch.manual_seed(3)
    with torch.no_grad():
        _, weights = module(query, keys, mask=mask)
        alpha = build("hard-spatial").eval()(query[:1], keys[:1], mask=mask[:1])[1][0]
    assert torch.all((weights == 0) | (weights == 1)) and torch.all(weights.sum(-1) == 1)
    frequencies = weights.mean(0)
    # binomial standard error at n = 20000 is below 0.0036; allow ~4 of them
    torch.testing.assert_close(frequencies, alpha, atol=0.015, rtol=0)
    assert module.last is not None
    assert torch.equal(weights.argmax(-1), module.last.index)
    torch.testing.assert_close(module.last.log_prob, alpha[module.last.index].log())


def test_expectation_is_used_with_the_configured_probability() -> None:
    module = build("hard-spatial", expectation_prob=0.5).train()
    query, keys, mask = repeated("hard-spatial", 4000)
    torch.manual_seed(4)
    _, weights = module(query, keys, mask=mask)
    assert module.last is not None
    soft = ~module.last.sampled
    assert 0.45 < soft.float().mean().item() < 0.55
    assert torch.all(module.last.log_prob[soft] == 0)
    assert torch.all((weights[soft] > 0).sum(-1) == 6)  # soft: every position of the row
    assert torch.all(weights[~soft].max(-1).values == 1)


def test_eval_modes_argmax_and_expectation() -> None:
    query, keys, mask = inputs("hard-spatial")
    soft = build("hard-spatial", eval_mode="expectation")
    hard = build("hard-spatial", eval_mode="argmax")
    _, alpha = soft(query, keys, mask=mask)
    context, weights = hard(query, keys, mask=mask)
    assert torch.equal(weights, torch.nn.functional.one_hot(alpha.argmax(-1), 6).float())
    torch.testing.assert_close(context, keys[torch.arange(3), alpha.argmax(-1)])
    assert hard.last is not None and not hard.last.sampled.any()
    with pytest.raises(ValueError, match="eval_mode"):
        HardSpatialAttention(4, 4, eval_mode="mean")  # type: ignore[arg-type]


def test_default_inference_is_the_expected_context_and_sample_mode_draws() -> None:
    module = build("hard-spatial", expectation_prob=0.0)
    module.eval_mode = "expectation"
    query, keys, mask = repeated("hard-spatial", 4000)
    default = HardSpatialAttention(5, 4, hidden_dim=3)
    assert default.eval_mode == "expectation"
    _, alpha = module.eval()(query, keys, mask=mask)
    module.eval_mode = "sample"
    torch.manual_seed(8)
    _, drawn = module(query, keys, mask=mask)
    assert torch.all(drawn.sum(-1) == 1) and torch.all((drawn == 0) | (drawn == 1))
    torch.testing.assert_close(drawn.mean(0), alpha[0], atol=0.03, rtol=0)
    assert module.last is not None and not module.last.sampled.any()  # no REINFORCE at inference
    torch.testing.assert_close(module.last.alpha, alpha)


def test_scorer_scope_keeps_the_score_gradient_out_of_keys_and_queries() -> None:
    torch.manual_seed(2)
    query = torch.randn(6, 5, requires_grad=True)
    keys = torch.randn(6, 7, 4, requires_grad=True)
    grads = {}
    for scope in ("all", "scorer"):
        torch.manual_seed(0)
        module = HardSpatialAttention(5, 4, hidden_dim=3, expectation_prob=0.0, score_gradient=scope).train()
        torch.manual_seed(1)
        module(query, keys)
        assert module.last is not None
        log_prob = module.last.log_prob.sum()
        grads[scope] = torch.autograd.grad(
            log_prob, [query, keys, module.query_proj.weight, module.key_proj.weight], allow_unused=True
        )
    assert grads["all"][0].abs().sum() > 0 and grads["all"][1].abs().sum() > 0
    assert grads["scorer"][0] is None and grads["scorer"][1] is None
    for full, scorer in zip(grads["all"][2:], grads["scorer"][2:], strict=True):
        torch.testing.assert_close(full, scorer)  # the scorer's own parameters learn the same
    with pytest.raises(ValueError, match="score_gradient"):
        HardSpatialAttention(4, 4, score_gradient="encoder")  # type: ignore[arg-type]


def test_feature_map_keys_are_flattened_row_major() -> None:
    module = build("hard-spatial", eval_mode="expectation")
    query, _, _ = inputs("hard-spatial")
    feature_map = torch.randn(3, 4, 2, 3)  # [B, C, H, W]
    context, weights = module(query, feature_map)
    flat = feature_map.permute(0, 2, 3, 1).reshape(3, 6, 4)
    context2, weights2 = module(query, flat)
    torch.testing.assert_close(weights, weights2)
    torch.testing.assert_close(context, context2)


def test_samples_stack_over_decoding_steps() -> None:
    module = build("hard-spatial").train()
    query, keys, mask = inputs("hard-spatial")
    steps = []
    for _ in range(5):
        module(query, keys, mask=mask)
        assert module.last is not None and module.last.log_prob.shape == (3,)
        steps.append(module.last)
    stacked = HardAttentionSample.stack(steps)
    assert stacked.log_prob.shape == stacked.entropy.shape == stacked.index.shape == (3, 5)


def test_reinforce_gradient_is_unbiased_on_a_toy_problem() -> None:
    """E[d/dW surrogate] equals -d/dW E[reward], computed exactly from the weights."""
    module = build("hard-spatial", dtype=torch.float64, expectation_prob=0.0)
    query, keys, mask = repeated("hard-spatial", 1)
    query, keys = query.double(), keys.double()
    reward_of = torch.tensor([1.0, -2.0, 0.5, 3.0, 0.0, 0.0], dtype=torch.float64)

    module.eval()
    _, alpha = module(query, keys, mask=mask)
    expected_reward = (alpha[0] * reward_of).sum()
    exact = torch.autograd.grad(expected_reward, list(module.parameters()))

    module.train()
    loss_fn = ReinforceLoss(baseline_decay=0.9, entropy_weight=0.0)
    loss_fn.baseline.fill_(0.7)  # any fixed baseline leaves the estimator unbiased
    loss_fn.initialised.fill_(True)
    copies = 40000
    torch.manual_seed(5)
    module(query.expand(copies, -1), keys.expand(copies, -1, -1), mask=mask.expand(copies, -1))
    assert module.last is not None
    reward = reward_of[module.last.index]
    surrogate = loss_fn(module.last.log_prob, reward)
    estimate = torch.autograd.grad(surrogate, list(module.parameters()))
    for g_exact, g_est in zip(exact, estimate, strict=True):
        torch.testing.assert_close(-g_est, g_exact, atol=0.03 * g_exact.abs().max().item() + 2e-3, rtol=0)
    assert loss_fn.baseline.item() == pytest.approx(0.9 * 0.7 + 0.1 * reward.mean().item())


def test_reinforce_loss_masks_steps_and_adds_entropy_bonus() -> None:
    loss_fn = ReinforceLoss(baseline_decay=0.5, entropy_weight=0.1)
    log_prob = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -0.5, -9.0]], requires_grad=True)
    entropy = torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 5.0]])
    step_mask = torch.tensor([[True, True, True], [True, True, False]])
    reward = torch.tensor([2.0, 4.0])
    loss = loss_fn(log_prob, reward, entropy=entropy, step_mask=step_mask)
    # first call: the baseline starts at the batch mean 3.0; advantages -1 and +1; the entropy
    # bonus is the mean over the 5 real steps
    expected = -((-1.0) * (-6.0) + 1.0 * (-1.0)) / 2 - 0.1 * (3.0 + 4.0) / 5
    assert loss.item() == pytest.approx(expected)
    assert loss_fn.baseline.item() == pytest.approx(3.0)
    loss_fn.eval()
    loss_fn(log_prob, reward + 10)
    assert loss_fn.baseline.item() == pytest.approx(3.0)  # frozen in eval mode
    state = loss_fn.state_dict()
    fresh = ReinforceLoss()
    fresh.load_state_dict(state)
    assert fresh.baseline.item() == pytest.approx(3.0) and bool(fresh.initialised)


def test_leave_one_out_baseline_is_the_mean_of_the_other_draws() -> None:
    loss_fn = ReinforceLoss(baseline="leave-one-out", entropy_weight=0.0)
    reward = torch.tensor([1.0, 2.0, 6.0, -1.0, 0.0, 4.0])
    log_prob = torch.zeros(6, requires_grad=True)
    terms = loss_fn.terms(log_prob, reward, samples=3)
    torch.testing.assert_close(terms.baseline, torch.tensor([4.0, 3.5, 1.5, 2.0, 1.5, -0.5]))
    torch.testing.assert_close(terms.advantage, reward - terms.baseline)
    with pytest.raises(ValueError, match="leave-one-out"):
        loss_fn.terms(log_prob, reward, samples=4)
    with pytest.raises(ValueError, match="leave-one-out"):
        loss_fn.terms(log_prob, reward, samples=1)


def test_learned_baseline_follows_a_reward_that_depends_on_the_features() -> None:
    torch.manual_seed(0)
    loss_fn = ReinforceLoss(baseline="learned", baseline_decay=0.5, entropy_weight=0.0, feature_dim=2)
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.2)
    features = torch.randn(256, 2)
    reward = 3.0 * features[:, 0] - features[:, 1] + 1.0
    log_prob = torch.zeros(256)
    spread = reward.var().item()
    for _ in range(300):
        terms = loss_fn.terms(log_prob, reward, features=features)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
    assert terms.advantage.var().item() < 0.01 * spread  # a constant baseline leaves all of it
    moving = ReinforceLoss(baseline="moving-average", entropy_weight=0.0)
    assert moving.terms(log_prob, reward).advantage.var().item() == pytest.approx(spread, rel=0.01)
    with pytest.raises(ValueError, match="feature_dim"):
        ReinforceLoss(baseline="learned")


def test_reward_scale_multiplies_the_score_term_only() -> None:
    log_prob = torch.tensor([[-1.0, -2.0], [-0.5, -0.1]], requires_grad=True)
    entropy = torch.tensor([[1.0, 2.0], [0.5, 0.5]])
    reward = torch.tensor([0.0, 2.0])
    plain = ReinforceLoss(entropy_weight=0.1, baseline="none").terms(log_prob, reward, entropy)
    scaled = ReinforceLoss(entropy_weight=0.1, baseline="none", reward_scale=0.1).terms(log_prob, reward, entropy)
    assert scaled.score.item() == pytest.approx(0.1 * plain.score.item())
    assert scaled.entropy.item() == pytest.approx(plain.entropy.item()) == pytest.approx(-0.1 * 4.0 / 4)
    with pytest.raises(ValueError, match="reward_scale"):
        ReinforceLoss(reward_scale=0.0)
    with pytest.raises(ValueError, match="baseline must be"):
        ReinforceLoss(baseline="median")  # type: ignore[arg-type]


def test_straight_through_gumbel_samples_alpha_and_differentiates_the_sample() -> None:
    module = build("hard-spatial", expectation_prob=0.0, estimator="gumbel", temperature=0.5).train()
    query, keys, mask = repeated("hard-spatial", 20000)
    torch.manual_seed(6)
    context, weights = module(query, keys, mask=mask)
    alpha = build("hard-spatial").eval()(query[:1], keys[:1], mask=mask[:1])[1][0]
    assert torch.all(weights.detach().sum(-1).sub(1).abs() < 1e-5)
    assert torch.all(weights.detach().max(-1).values > 1 - 1e-5)  # one-hot values
    torch.testing.assert_close(weights.detach().mean(0), alpha, atol=0.015, rtol=0)  # Gumbel-max is exact
    assert module.last is not None and not module.last.sampled.any() and torch.all(module.last.log_prob == 0)
    grad = torch.autograd.grad(context.pow(2).sum(), module.v.weight)[0]
    assert grad.abs().sum() > 0  # the scorer learns through the sampled context itself
    with pytest.raises(ValueError, match="estimator"):
        HardSpatialAttention(4, 4, estimator="score")  # type: ignore[arg-type]


@pytest.mark.parametrize("scope", ["sequence", "batch"])
def test_expectation_scope_holds_one_draw_across_steps(scope: str) -> None:
    """Between begin_sequences and end_sequences every step of a sequence repeats its draw; the
    batch scope (the authors' h_sampling_mask) makes one draw for all sequences."""
    module = build("hard-spatial", expectation_prob=0.5, expectation_scope=scope).train()
    query, keys, mask = repeated("hard-spatial", 64)
    torch.manual_seed(5)
    kinds = set()
    for _ in range(8):
        module.begin_sequences(64)
        per_step = []
        for rows in (64, 64, 40, 9):  # finished sequences drop off the end
            module(query[:rows], keys[:rows], mask=mask[:rows])
            assert module.last is not None
            per_step.append(module.last.sampled)
        module.end_sequences()
        for step in per_step[1:]:
            assert torch.equal(step, per_step[0][: step.shape[0]])
        first = per_step[0]
        if scope == "batch":
            assert bool(first.all()) or not bool(first.any())
        else:
            assert 10 < int(first.sum()) < 54
        kinds.add(bool(first[0]))
    assert kinds == {True, False}  # both choices occur over eight batches
    module(query, keys, mask=mask)  # back to per-step draws
    assert module.last is not None and 10 < int(module.last.sampled.sum()) < 54


def test_expectation_scope_is_checked() -> None:
    with pytest.raises(ValueError, match="expectation_scope"):
        HardSpatialAttention(4, 4, expectation_scope="caption")  # type: ignore[arg-type]
    module = HardSpatialAttention(4, 4, expectation_scope="sequence").train()
    module.begin_sequences(2)
    with pytest.raises(ValueError, match="begin_sequences drew for 2"):
        module(torch.randn(3, 4), torch.randn(3, 5, 4))


def test_rewards_to_go_credit_each_step_with_the_steps_from_it_on() -> None:
    reward = torch.tensor([[1.0, 2.0, 3.0, 0.0], [4.0, 5.0, 6.0, 7.0]])
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    baseline = torch.tensor([3.0, 8.0])  # spread over 3 and 4 real steps: 1 and 2 per step
    to_go = rewards_to_go(reward, baseline, mask)
    torch.testing.assert_close(to_go, torch.tensor([[3.0, 3.0, 2.0, 0.0], [14.0, 12.0, 9.0, 5.0]]))
    own_word = rewards_to_go(reward, baseline, mask, discount=0.0)
    torch.testing.assert_close(own_word, torch.tensor([[0.0, 1.0, 2.0, 0.0], [2.0, 3.0, 4.0, 5.0]]))
    half = rewards_to_go(reward, baseline, mask, discount=0.5)
    torch.testing.assert_close(half[1], torch.tensor([2 + 1.5 + 1 + 0.625, 3 + 2 + 1.25, 4 + 2.5, 5.0]))
    # with per-step rewards, sequence credit gives every step the whole advantage, as a [B] reward does
    log_prob = torch.randn(2, 4, requires_grad=True)
    sequence = ReinforceLoss(baseline="none").terms(log_prob, reward, step_mask=mask)
    caption = ReinforceLoss(baseline="none").terms(log_prob, (reward * mask).sum(1), step_mask=mask)
    torch.testing.assert_close(sequence.score, caption.score)
    tail = ReinforceLoss(baseline="none", credit="to-go").terms(log_prob, reward, step_mask=mask)
    expected = -(rewards_to_go(reward, torch.zeros(2), mask) * log_prob * mask).sum() / 2
    torch.testing.assert_close(tail.score, expected)
    with pytest.raises(ValueError, match="to-go credit needs per-step rewards"):
        ReinforceLoss(credit="to-go").terms(log_prob, reward.sum(1), step_mask=mask)
    with pytest.raises(ValueError, match="discount"):
        ReinforceLoss(credit="to-go", discount=1.5)


def test_to_go_credit_is_unbiased_where_a_glimpse_changes_later_rewards() -> None:
    """Two glimpses, 3 locations each; the second step's reward depends on the first glimpse.
    The to-go estimate matches the exact gradient of E[r1 + r2]; crediting each glimpse with
    its own step alone (discount 0) misses the first glimpse's effect on r2."""
    torch.manual_seed(0)
    logits = torch.tensor([[0.3, -0.2, 0.5], [0.1, 0.4, -0.6]], dtype=torch.float64, requires_grad=True)
    first_reward = torch.tensor([1.0, -0.5, 0.2], dtype=torch.float64)
    second_reward = torch.tensor([[2.0, -1.0, 0.0], [-1.5, 0.5, 1.0], [0.0, 3.0, -2.0]], dtype=torch.float64)
    p = torch.softmax(logits, -1)
    expected = (p[0] * first_reward).sum() + (p[0][:, None] * p[1][None, :] * second_reward).sum()
    exact = torch.autograd.grad(-expected, logits)[0]

    draws = 400_000
    log_p = torch.log_softmax(logits, -1)
    s1 = torch.multinomial(p[0].detach(), draws, replacement=True)
    s2 = torch.multinomial(p[1].detach(), draws, replacement=True)
    log_prob = torch.stack([log_p[0][s1], log_p[1][s2]], dim=1)  # [draws, 2]
    reward = torch.stack([first_reward[s1], second_reward[s1, s2]], dim=1)
    estimates = {}
    for discount in (1.0, 0.0):
        loss = ReinforceLoss(baseline="none", credit="to-go", discount=discount, entropy_weight=0.0)
        estimates[discount] = torch.autograd.grad(loss.terms(log_prob, reward).score, logits, retain_graph=True)[0]
    torch.testing.assert_close(estimates[1.0], exact, atol=0.02, rtol=0)
    assert (estimates[0.0] - exact).abs().max() > 0.1
