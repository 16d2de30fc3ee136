"""Registers the built-in attention mechanisms (loaded through the ``vlattn`` entry point).

Factories are dotted strings, so listing the mechanisms imports no torch.
"""

from __future__ import annotations

from collections.abc import Callable

from vlattn.hookspecs import hookimpl
from vlattn.registry import AttentionSpec

BAHDANAU = "Bahdanau, Cho & Bengio 2015, Neural Machine Translation by Jointly Learning to Align and Translate"
LUONG = "Luong, Pham & Manning 2015, Effective Approaches to Attention-based Neural Machine Translation"
VASWANI = "Vaswani et al. 2017, Attention Is All You Need"
TUTORIAL = "A Comprehensive Guide to Attention Mechanism in Deep Learning for Everyone (tutorial)"
XU = "Xu et al. 2015, Show, Attend and Tell: Neural Image Caption Generation with Visual Attention"

BUILTIN: tuple[AttentionSpec, ...] = (
    AttentionSpec(
        "additive",
        "vlattn.attention.additive:AdditiveAttention",
        summary="Bahdanau's MLP score; query and key sizes may differ",
        formula="v^T tanh(W q + U k + b)",
        paper=BAHDANAU,
    ),
    AttentionSpec(
        "dot",
        "vlattn.attention.luong:DotAttention",
        summary="Luong's dot score; no parameters, needs query_dim == key_dim",
        formula="q^T k",
        paper=LUONG,
    ),
    AttentionSpec(
        "general",
        "vlattn.attention.luong:GeneralAttention",
        summary="Luong's bilinear score",
        formula="q^T W_a k",
        paper=LUONG,
    ),
    AttentionSpec(
        "concat",
        "vlattn.attention.luong:ConcatAttention",
        summary="Luong's concat score (an MLP over [q; k])",
        formula="v_a^T tanh(W_a [q; k])",
        paper=LUONG,
    ),
    AttentionSpec(
        "location",
        "vlattn.attention.luong:LocationAttention",
        summary="Luong's location-based weights, from the query alone (max_len positions)",
        formula="a = softmax(W_a q)",
        paper=LUONG,
    ),
    AttentionSpec(
        "local-m",
        "vlattn.attention.local:LocalMonotonicAttention",
        summary="Luong's local attention on the window [t - D, t + D] (monotonic alignment)",
        formula="a_t = softmax(score(h_t, h_s)) for |s - t| <= D",
        paper=LUONG,
        contract={"per_step_query": False},  # a single query must be told its step (``positions``)
    ),
    AttentionSpec(
        "local-p",
        "vlattn.attention.local:LocalPredictiveAttention",
        summary="Luong's local attention around a predicted position, Gaussian-weighted",
        formula="p_t = S sigmoid(v_p^T tanh(W_p h_t)); a_t(s) = softmax(score) exp(-(s-p_t)^2/(2 sigma^2))",
        paper=LUONG,
        contract={"partial_weights": True},  # the paper keeps the Gaussian factor: weights sum below 1
    ),
    AttentionSpec(
        "scaled-dot",
        "vlattn.attention.multihead:ScaledDotAttention",
        summary="scaled dot product, no parameters; fused kernel when weights are not needed",
        formula="softmax(q k^T / sqrt(d)) v",
        paper=VASWANI,
    ),
    AttentionSpec(
        "multihead",
        "vlattn.attention.multihead:MultiHeadAttention",
        summary="multi-head attention, same layout and results as torch.nn.MultiheadAttention",
        formula="concat_i softmax(q W_i^Q (k W_i^K)^T / sqrt(d_h)) v W_i^V, then W^O",
        paper=VASWANI,
        contract={"other_value_size": False},  # built for one value size (``value_dim``)
    ),
    AttentionSpec(
        "tutorial",
        "vlattn.attention.tutorial:TutorialAttention",
        summary="the tutorial's query-free pooling, kept faithful (bias per step, no mask)",
        formula="e_t = tanh(x_t W + b_t); a = softmax(e); c = sum_t a_t x_t",
        paper=TUTORIAL,
        contract={"options": {"mask_padding": True}},  # faithful by default: the tutorial ignores padding
    ),
    AttentionSpec(
        "tutorial-corrected",
        "vlattn.attention.tutorial:CorrectedTutorialAttention",
        summary="the tutorial's pooling fixed: shared bias, v projection, masked, any length",
        formula="e_t = v^T tanh(W x_t + b); a = masked softmax(e); c = sum_t a_t x_t",
        paper=TUTORIAL,
    ),
    AttentionSpec(
        "soft-spatial",
        "vlattn.attention.spatial:SoftSpatialAttention",
        summary="soft attention over CNN annotation vectors (S = H*W), optional beta gate",
        formula="alpha = softmax(v^T tanh(W h + U a_i)); z = sum_i alpha_i a_i",
        paper=XU,
    ),
    AttentionSpec(
        "hard-spatial",
        "vlattn.attention.spatial:HardSpatialAttention",
        summary="stochastic hard attention over annotation vectors, trained with REINFORCE",
        formula="s ~ Categorical(alpha); z = a_s (expectation with probability 0.5)",
        paper=XU,
    ),
)


@hookimpl
def register_attention(register: Callable[[AttentionSpec], None]) -> None:
    """Register every mechanism in :mod:`vlattn.attention`."""
    for spec in BUILTIN:
        register(spec)


@hookimpl
def register_views(register: Callable[..., None]) -> None:
    """Add the mechanisms page to ``vlattn serve``."""
    from vlattn.attention.view import VIEW

    register(VIEW)
