"""Inference-time weights of the Show-Attend-Tell decoder: fused and, on CPU, pre-packed.

A decoding step multiplies a handful of rows (the live hypotheses) by large weight matrices,
where a general matrix product spends most of its time streaming the weights. Two things cut
that cost, neither changing the function computed:

* the products that read the same input are fused into one matrix: the previous state ``h``
  feeds the attention query, the LSTM's recurrent gates and the scalar gate ``beta``; the deep
  output reads ``[h_t; z_t]`` through ``L_h`` and ``L_z``;
* on CPU the weights are reordered once into oneDNN's blocked layout
  (``torch.ops.mkldnn._reorder_linear_weight``), whose small-batch product is 1.5-4x faster than
  the default BLAS call for 1-32 rows (float32, same results up to rounding).

:func:`inference_weights` builds them on first use and keeps them until a parameter changes
(its storage or its in-place version counter), so an optimiser step or a weight load is picked up.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _onednn_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


#: Rows the oneDNN weight layout is chosen for (a beam of 5 hypotheses per image, a few images).
PACK_ROWS_HINT = 32


class PackedProduct:
    """``x @ weight.T + bias`` for ``x [N, K]``, with ``weight [M, K]`` pre-packed for CPU when possible.

    Args:
        weight: ``[M, K]`` (detached; owned by this object).
        bias: ``[M]`` or ``None``.
        pack: reorder the weight for oneDNN (float32 CPU tensors only; otherwise ``F.linear``).
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, pack: bool = True) -> None:
        self.weight = weight.contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.packed: Tensor | None = None
        if pack and weight.device.type == "cpu" and weight.dtype == torch.float32 and _onednn_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, PACK_ROWS_HINT)
            except RuntimeError:
                self.packed = None

    def __call__(self, x: Tensor) -> Tensor:
        """``[N, K]`` -> ``[N, M]``."""
        if self.packed is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)


@dataclass
class InferenceWeights:
    """The decoder's step weights, fused by input.

    Attributes:
        from_state: ``h [N, H]`` -> ``[N, 4H + A + g]``: the LSTM's recurrent gate pre-activations
            (both LSTM biases included), then twice the attention query ``2 (W h + b)`` (``A``
            columns, 0 when the mechanism has no query projection), then the ``beta`` gate's
            pre-activation (``g = 1`` column, 0 without the gate).
        from_input: ``[E y; z] [N, E + D]`` -> the LSTM's input gate pre-activations ``[N, 4H]``.
        deep: ``[h_t; z_t] [N, H + D]`` -> ``L_h h_t + L_z z_t`` (both biases) ``[N, E]``.
        gates: ``4H``; query: ``A``.
    """

    from_state: PackedProduct
    from_input: PackedProduct
    deep: PackedProduct
    gates: int
    query: int


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose products without gradient run on a pre-packed copy of the weight.

    Same parameters, state-dict keys and hooks as ``nn.Linear``; when no gradient is needed (no
    grad mode, or frozen parameters) a float32 CPU input goes through a :class:`PackedProduct`
    that is rebuilt whenever the weight or bias changes.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``[..., in_features]`` -> ``[..., out_features]``."""
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        if needs_grad or x.dim() != 2 or x.dtype != torch.float32 or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        signature = _signature(self)
        cached = _PRODUCTS.get(self)
        if cached is None or cached[0] != signature:
            bias = None if self.bias is None else self.bias.detach().clone()
            cached = (signature, PackedProduct(self.weight.detach().clone(), bias))
            _PRODUCTS[self] = cached
        return cached[1](x)


_PRODUCTS: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[object, ...], PackedProduct]] = weakref.WeakKeyDictionary()
_CACHE: weakref.WeakKeyDictionary[nn.Module, tuple[tuple[object, ...], InferenceWeights]] = weakref.WeakKeyDictionary()


def _signature(module: nn.Module) -> tuple[object, ...]:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device, p.shape) for p in module.parameters())


def inference_weights(decoder: nn.Module) -> InferenceWeights:
    """The fused weights of a :class:`~vlattn_caption.decoder.ShowAttendTellDecoder`, cached per decoder."""
    signature = _signature(decoder)
    cached = _CACHE.get(decoder)
    if cached is not None and cached[0] == signature:
        return cached[1]
    weights = _build(decoder)
    _CACHE[decoder] = (signature, weights)
    return weights


@torch.no_grad()
def _build(decoder: nn.Module) -> InferenceWeights:
    cell: nn.LSTMCell = decoder.cell  # type: ignore[assignment]
    parts, biases = [cell.weight_hh], [cell.bias_hh + cell.bias_ih]
    query = 0
    query_proj = getattr(decoder.attention, "query_proj", None)
    if isinstance(query_proj, nn.Linear):
        query = query_proj.out_features
        parts.append(query_proj.weight * 2.0)
        biases.append(query_proj.bias * 2.0 if query_proj.bias is not None else query_proj.weight.new_zeros(query))
    gate = decoder.gate
    if gate is not None:
        parts.append(gate.weight)
        biases.append(gate.bias)
    out_h, out_z = decoder.out_h, decoder.out_z
    return InferenceWeights(
        from_state=PackedProduct(torch.cat(parts).detach().clone(), torch.cat(biases).detach().clone()),
        from_input=PackedProduct(cell.weight_ih.detach().clone(), None),
        deep=PackedProduct(
            torch.cat([out_h.weight, out_z.weight], dim=1).detach().clone(), (out_h.bias + out_z.bias).detach()
        ),
        gates=cell.weight_hh.shape[0],
        query=query,
    )
