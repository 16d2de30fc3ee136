"""The hoisted teacher-forced pass and the pre-packed inference weights against the plain step loop."""

from __future__ import annotations

import pytest
import torch
from vlattn_caption import inference
from vlattn_caption.decoder import ShowAttendTellDecoder
from vlattn_caption.encoder import Encoder
from vlattn_caption.model import CaptionModel
from vlattn_caption.vocab import Vocabulary

V, D, L = 15, 16, 9


def _decoder(gate: bool = True, context_dropout: float = 0.0) -> ShowAttendTellDecoder:
    torch.manual_seed(0)
    return ShowAttendTellDecoder(
        V, D, embed_dim=8, hidden_dim=20, dropout=0.0, gate=gate, context_dropout=context_dropout
    )


def _batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    lengths = torch.tensor([4, 7, 3, 7, 5])
    captions = torch.zeros(5, 7, dtype=torch.long)
    for row, n in enumerate(lengths.tolist()):
        captions[row, 0] = Vocabulary.start_id
        captions[row, 1 : n - 1] = torch.randint(4, V, (n - 2,), generator=g)
        captions[row, n - 1] = Vocabulary.end_id
    return torch.randn(5, L, D, generator=g), captions, lengths


def _loss_and_grads(
    model: CaptionModel, annotations: torch.Tensor, captions: torch.Tensor, lengths: torch.Tensor, hoisted: bool
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    decoder = model.decoder
    model.zero_grad(set_to_none=True)
    feats = annotations.clone().requires_grad_(True)
    if hoisted:
        out = model(None, captions, lengths, annotations=feats)
    else:  # the word-by-word loop, on the same sorted batch
        order = torch.argsort(lengths, descending=True)
        sorted_out = decoder._forward_steps(
            feats[order].contiguous(), captions[order], (lengths[order] - 1).tolist(), captions.shape[1] - 1, 0.0
        )
        inverse = torch.argsort(order)
        out = model(None, captions, lengths, annotations=feats)  # for step_mask / annotation_mean
        out.logits, out.weights, out.alpha = (
            sorted_out.logits[inverse],
            sorted_out.weights[inverse],
            sorted_out.alpha[inverse],
        )
    loss = model.loss(out, captions, doubly_stochastic=1.0).total
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    assert feats.grad is not None
    return loss.detach(), grads, feats.grad.clone()


@pytest.mark.parametrize("gate", [True, False])
def test_hoisted_pass_has_the_step_loops_loss_and_gradients(gate: bool) -> None:
    decoder = _decoder(gate)
    model = CaptionModel(Encoder("small-cnn", grid=3, channels=D), decoder).train()
    annotations, captions, lengths = _batch()
    loss, grads, feat_grad = _loss_and_grads(model, annotations, captions, lengths, hoisted=True)
    want_loss, want_grads, want_feat_grad = _loss_and_grads(model, annotations, captions, lengths, hoisted=False)
    torch.testing.assert_close(loss, want_loss, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(feat_grad, want_feat_grad, rtol=1e-4, atol=1e-6)


def test_hoisted_pass_applies_context_dropout_to_the_lstm_input_only() -> None:
    decoder = _decoder(context_dropout=1.0).train()
    annotations, captions, lengths = _batch()
    out = decoder(annotations, captions, lengths)
    shifted = decoder(annotations + 1.0, captions, lengths)
    assert not torch.allclose(out.logits, shifted.logits)  # the deep output reads the context
    with torch.no_grad():  # without the deep output's and the initial state's view of the image, nothing changes
        for layer in (decoder.out_z, decoder.init_h, decoder.init_c):
            layer.weight.zero_()
    torch.testing.assert_close(
        decoder(annotations, captions, lengths).logits, decoder(annotations + 1.0, captions, lengths).logits
    )


def test_packed_weights_follow_parameter_updates() -> None:
    decoder = _decoder().eval()
    annotations = torch.randn(3, L, D)
    rows = torch.arange(3)
    words = torch.tensor([4, 5, 6])
    keys = decoder.scoring_keys(annotations)
    with torch.no_grad():
        before, _, _ = decoder.step_rows(words, decoder.init_state(annotations), annotations, keys, rows, 1)
        assert inference.inference_weights(decoder) is inference.inference_weights(decoder)  # cached
        decoder.out.bias.add_(1.0)
        decoder.cell.weight_hh.mul_(0.5)
        after, (h, _), _ = decoder.step_rows(words, decoder.init_state(annotations), annotations, keys, rows, 1)
        want, (want_h, _), _ = decoder.step(words, decoder.init_state(annotations), annotations)
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(h, want_h, rtol=1e-5, atol=1e-5)


def test_packed_linear_is_an_nn_linear_with_hooks_and_gradients() -> None:
    layer = inference.PackedLinear(6, 4)
    x = torch.randn(3, 6)
    with torch.no_grad():
        fast = layer(x)
    torch.testing.assert_close(fast, torch.nn.functional.linear(x, layer.weight, layer.bias))
    layer(x).sum().backward()
    assert layer.weight.grad is not None
    layer.register_forward_hook(lambda _m, _i, out: out * 0)
    with torch.no_grad():
        assert (layer(x) == 0).all()
    assert set(layer.state_dict()) == {"weight", "bias"}
