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

With ``precision="bf16"`` the products take bfloat16 weights (converted and packed once) and
bfloat16 inputs (cast per call) and return float32, the bias added in float32: on a CPU with AMX
or AVX-512 BF16 (:func:`bf16_supported`) oneDNN runs the vocabulary projection of a beam step
1.6-3.6x faster than in float32; elsewhere bfloat16 is emulated and slow. Everything between the
products (attention scores, softmax, LSTM nonlinearities, top-k) stays float32.

:func:`inference_weights` builds them on first use, per precision, and keeps them until a
parameter changes (its storage or its in-place version counter), so an optimiser step or a
weight load is picked up.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Literal, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlattn.errors import VlattnError
from vlattn.hardware import bf16_supported

Precision = Literal["fp32", "bf16"]
#: the precisions of the decoder's inference products
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16")


def _onednn_available() -> bool:
    ops = getattr(torch.ops, "mkldnn", None)
    return (
        torch.backends.mkldnn.is_available()
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


def check_precision(precision: str, device: torch.device | str | None = None) -> Precision:
    """``precision`` if the decoder's products can run in it on ``device``, else a one-line
    :class:`~vlattn.errors.VlattnError`: an unknown name, or (when ``device`` is given) ``bf16`` on
    a CPU without bfloat16 instructions, where it would be emulated and slower than ``fp32``."""
    if precision not in PRECISIONS:
        raise VlattnError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "bf16" and device is not None and torch.device(device).type == "cpu" and not bf16_supported():
        raise VlattnError("precision bf16 needs a CPU with AMX or AVX-512 BF16 (this one has neither); use fp32")
    return cast(Precision, precision)


#: Rows the oneDNN weight layout is chosen for (a beam of 5 hypotheses per image, a few images).
PACK_ROWS_HINT = 32


class PackedProduct:
    """``x @ weight.T + bias`` for ``x [N, K]``, with ``weight [M, K]`` pre-packed for CPU when possible.

    Args:
        weight: ``[M, K]`` float32 (detached; owned by this object).
        bias: ``[M]`` or ``None``.
        pack: reorder the weight for oneDNN (CPU tensors only; otherwise ``F.linear``).
        precision: ``fp32``, or ``bf16``: the weight is kept in bfloat16, ``x`` is cast to
            bfloat16 per call, the product comes back in float32 and the bias is added in float32.
    """

    def __init__(self, weight: Tensor, bias: Tensor | None, pack: bool = True, precision: Precision = "fp32") -> None:
        self.precision: Precision = check_precision(precision)
        dtype = torch.bfloat16 if precision == "bf16" else weight.dtype
        self.weight = weight.to(dtype).contiguous()
        self.bias = None if bias is None else bias.contiguous()
        self.packed: Tensor | None = None
        packable = weight.dtype == torch.float32 and (precision == "fp32" or bf16_supported())
        if pack and packable and weight.device.type == "cpu" and _onednn_available():
            try:
                self.packed = torch.ops.mkldnn._reorder_linear_weight(self.weight, PACK_ROWS_HINT)
            except RuntimeError:
                self.packed = None

    def __call__(self, x: Tensor) -> Tensor:
        """``[N, K]`` -> ``[N, M]`` (float32 for a float32 ``x``)."""
        if self.precision == "bf16":
            return self._bf16(x)
        if self.packed is not None and x.dtype == torch.float32 and x.device.type == "cpu":
            return torch.ops.mkldnn._linear_pointwise(x.contiguous(), self.packed, self.bias, "none", [], "")
        return F.linear(x, self.weight, self.bias)

    def _bf16(self, x: Tensor) -> Tensor:
        """The bfloat16 product of ``x [N, K]`` -> float32 ``[N, M]``."""
        x16 = x.to(torch.bfloat16).contiguous()
        if self.packed is not None and x.device.type == "cpu":
            out = torch.ops.mkldnn._linear_pointwise(x16, self.packed, None, "none", [], "")
        else:
            out = F.linear(x16, self.weight)
        out = out.float()
        return out if self.bias is None else out.add_(self.bias)


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
        score_v: ``[A]`` float32, twice the scoring MLP's output vector ``2 v`` (the weights of
            ``v^T sigmoid(.)``), or ``None`` when the mechanism has no ``v``.
    """

    from_state: PackedProduct
    from_input: PackedProduct
    deep: PackedProduct
    gates: int
    query: int
    score_v: Tensor | None = None


class PackedLinear(nn.Linear):
    """``nn.Linear`` whose products without gradient run on a pre-packed copy of the weight.

    Same parameters, state-dict keys and hooks as ``nn.Linear``; when no gradient is needed (no
    grad mode, or frozen parameters) a float32 CPU input goes through a :class:`PackedProduct`
    that is rebuilt whenever the weight or bias changes. ``precision="bf16"`` (inference only)
    runs that product in bfloat16 on any device; with a gradient the layer is a plain float32
    ``nn.Linear`` whatever the precision.
    """

    def forward(self, x: Tensor, precision: Precision = "fp32") -> Tensor:
        """``[..., in_features]`` -> ``[..., out_features]`` (float32 for a float32 ``x``)."""
        needs_grad = torch.is_grad_enabled() and (
            x.requires_grad or self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad)
        )
        if needs_grad or x.dtype != torch.float32:
            return F.linear(x, self.weight, self.bias)
        if precision == "fp32" and (x.dim() != 2 or x.device.type != "cpu"):
            return F.linear(x, self.weight, self.bias)
        product = self.product(precision)
        if x.dim() == 2:
            return product(x)
        return product(x.reshape(-1, x.shape[-1])).view(*x.shape[:-1], self.out_features)

    def product(self, precision: Precision = "fp32") -> PackedProduct:
        """The layer's :class:`PackedProduct` in ``precision``, built on first use and again after
        the weight or bias changes."""
        signature = _signature(self)
        products = _PRODUCTS.setdefault(self, {})
        cached = products.get(precision)
        if cached is None or cached[0] != signature:
            bias = None if self.bias is None else self.bias.detach().clone()
            cached = (signature, PackedProduct(self.weight.detach().clone(), bias, precision=precision))
            products[precision] = cached
        return cached[1]


_Signature = tuple[object, ...]
_PRODUCTS: weakref.WeakKeyDictionary[nn.Module, dict[Precision, tuple[_Signature, PackedProduct]]] = (
    weakref.WeakKeyDictionary()
)
_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[Precision, tuple[_Signature, InferenceWeights]]] = (
    weakref.WeakKeyDictionary()
)


def _signature(module: nn.Module) -> _Signature:
    return tuple((p.data_ptr(), p._version, p.dtype, p.device, p.shape) for p in module.parameters())


def inference_weights(decoder: nn.Module, precision: Precision = "fp32") -> InferenceWeights:
    """The fused weights of a :class:`~vlattn_caption.decoder.ShowAttendTellDecoder` in
    ``precision``, cached per decoder and precision."""
    signature = _signature(decoder)
    built = _CACHE.setdefault(decoder, {})
    cached = built.get(precision)
    if cached is not None and cached[0] == signature:
        return cached[1]
    weights = _build(decoder, precision)
    built[precision] = (signature, weights)
    return weights


@torch.no_grad()
def _build(decoder: nn.Module, precision: Precision = "fp32") -> InferenceWeights:
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
    v = getattr(decoder.attention, "v", None)
    score_v = (v.weight[0] * 2.0).detach().contiguous() if isinstance(v, nn.Linear) else None
    return InferenceWeights(
        from_state=PackedProduct(
            torch.cat(parts).detach().clone(), torch.cat(biases).detach().clone(), precision=precision
        ),
        from_input=PackedProduct(cell.weight_ih.detach().clone(), None, precision=precision),
        deep=PackedProduct(
            torch.cat([out_h.weight, out_z.weight], dim=1).detach().clone(),
            (out_h.bias + out_z.bias).detach(),
            precision=precision,
        ),
        gates=cell.weight_hh.shape[0],
        query=query,
        score_v=score_v,
    )
