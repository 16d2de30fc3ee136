"""An inference-only forward pass of :class:`~vlattn_text.pretrained.bert.BertEncoder`, in float32
or with bfloat16 or int8 matrix products.

The module path (each :class:`~vlattn.attention.transformer.TransformerEncoderLayer` calling its
multi-head attention) serves training and returns attention weights; this path computes the same
function with less around the matrix products: the padding bias is built once per batch, not
once per layer; each layer is one fused query/key/value product, attention as two batched
products, and three more products, with no dropout, no masking of empty rows (every text has
``[CLS]`` and ``[SEP]``) and no weight bookkeeping.

With ``precision="int8"`` the four products of each layer run on PyTorch's quantized CPU engine
(fbgemm / oneDNN): weights quantized once per output channel to int8, activations quantized per
call (dynamic quantization, as :func:`torch.ao.quantization.quantize_dynamic` does, with 7-bit
activations so that the AVX2 kernel cannot saturate), each token first scaled to a largest
magnitude of 1 (in effect one activation scale per token: on the UCI sentences the predictions
then equal fp32's at every batch size, against 99.45% to 99.7% with one scale per batch).
Embeddings, LayerNorm, GELU and attention stay in float32.

With ``precision="bf16"`` the same four products take bfloat16 weights (converted once) and
inputs, and return float32: on a CPU with AMX or AVX-512 BF16
(:func:`vlattn.hardware.bf16_supported`) oneDNN runs them several times faster than float32;
elsewhere they are emulated and slower.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from vlattn.attention.transformer import TransformerEncoderLayer
from vlattn.errors import VlattnError

if TYPE_CHECKING:
    from vlattn_text.pretrained.bert import BertEncoder

Precision = Literal["fp32", "bf16", "int8"]
#: the precisions the inference pass runs in
PRECISIONS: tuple[Precision, ...] = ("fp32", "bf16", "int8")
#: the quantized engines with int8 products for x86 CPUs, in order of preference
X86_ENGINES = ("x86", "fbgemm", "onednn")
#: a matrix product ``x [..., K]`` -> ``[..., N]`` (``x W^T + b``)
Product = Callable[[Tensor], Tensor]


class QuantizedEngineUnavailableError(VlattnError):
    """This PyTorch build has no quantized CPU engine for int8 matrix products."""


def padding_bias(lengths: Tensor, steps: int, heads: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``lengths [B]`` -> the additive attention bias of every head ``[B * heads, T, T]``: 0 on
    real keys, ``-inf`` on padding (every row needs at least one real token). Built once per
    batch and shared by all layers."""
    padding = torch.arange(steps, device=lengths.device) >= lengths[:, None]  # [B, T]
    bias = torch.zeros(padding.shape, dtype=dtype, device=lengths.device).masked_fill_(padding, float("-inf"))
    return bias[:, None, None, :].expand(-1, heads, steps, -1).reshape(-1, steps, steps)


def float_product(weight: Tensor, bias: Tensor | None) -> Product:
    """``x -> x W^T + b`` reading ``weight`` and ``bias`` as they are at call time."""
    return lambda x: F.linear(x, weight, bias)


def bf16_product(weight: Tensor, bias: Tensor | None) -> Product:
    """``x -> x W^T + b`` with ``W`` converted to bfloat16 now and ``x`` per call (float32 in,
    ``x [..., K]`` -> float32 ``[..., N]``; the bias is added in float32)."""
    weight16 = weight.detach().to(torch.bfloat16)
    offset = None if bias is None else bias.detach().float()

    def product(x: Tensor) -> Tensor:
        out = F.linear(x.to(torch.bfloat16), weight16).float()
        return out if offset is None else out.add_(offset)

    return product


def available_engines() -> list[str]:
    """The quantized engines this PyTorch build has (``torch.backends.quantized.supported_engines``)."""
    return [str(e) for e in torch.backends.quantized.supported_engines if e != "none"]


def quantized_engine() -> str:
    """The quantized CPU engine int8 products run on (the one PyTorch has selected, else the first
    available of x86, fbgemm, onednn); :class:`QuantizedEngineUnavailableError` when there is none."""
    engines = available_engines()
    if torch.backends.quantized.engine in engines and torch.backends.quantized.engine in X86_ENGINES:
        return str(torch.backends.quantized.engine)
    for engine in X86_ENGINES:
        if engine in engines:
            torch.backends.quantized.engine = engine
            return engine
    raise QuantizedEngineUnavailableError(
        "--precision int8 needs PyTorch's quantized CPU engine (fbgemm, x86 or onednn), which this "
        f"PyTorch build lacks (it has: {', '.join(engines) or 'none'}); use --precision fp32"
    )


def int8_product(weight: Tensor, bias: Tensor | None) -> Product:
    """``x -> x W^T + b`` with ``W`` quantized to int8 per output channel now (symmetric) and each
    token of ``x`` scaled to magnitude 1, then quantized per call to 7-bit unsigned integers
    (``x [..., K]`` float32 -> ``[..., N]``)."""
    quantized_engine()
    weight = weight.detach().float()
    scales = weight.abs().amax(dim=1).clamp(min=1e-8) / 127.0
    zeros = torch.zeros(weight.shape[0], dtype=torch.long)
    try:
        with warnings.catch_warnings():  # the quantized-tensor constructors warn that they are deprecated
            warnings.simplefilter("ignore", UserWarning)
            packed = torch.ops.quantized.linear_prepack(
                torch.quantize_per_channel(weight, scales.double(), zeros, 0, torch.qint8), None
            )
    except (RuntimeError, AttributeError, NotImplementedError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise QuantizedEngineUnavailableError(
            f"--precision int8 cannot pack weights on this PyTorch build ({first}); use --precision fp32"
        ) from None
    linear_dynamic = torch.ops.quantized.linear_dynamic.default
    offset = None if bias is None else bias.detach().float()

    def product(x: Tensor) -> Tensor:
        # Each token scaled to a largest magnitude of 1 first: the engine's one activation scale per
        # call then fits every token, and a loud token in the batch cannot flatten a quiet one.
        scale = x.abs().amax(dim=-1, keepdim=True).clamp_(min=1e-12)
        out = linear_dynamic(x / scale, packed, True).mul_(scale)
        return out if offset is None else out.add_(offset)

    return product


class LayerProducts:
    """The four matrix products of one BERT layer: ``qkv`` (``[.., H]`` -> ``[.., 3H]``), ``out``
    (``H -> H``), ``up`` (``H -> F``) and ``down`` (``F -> H``), in float32, bfloat16 or int8."""

    def __init__(self, layer: TransformerEncoderLayer, precision: Precision) -> None:
        make = {"fp32": float_product, "bf16": bf16_product, "int8": int8_product}[precision]
        attention = layer.self_attn
        self.qkv = make(attention.in_proj_weight, attention.in_proj_bias)
        self.out = make(attention.out_proj.weight, attention.out_proj.bias)
        self.up = make(layer.linear1.weight, layer.linear1.bias)
        self.down = make(layer.linear2.weight, layer.linear2.bias)


def self_attention(qkv: Tensor, bias: Tensor, heads: int) -> Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` per head: ``qkv [B, T, 3H]`` (the fused projection),
    ``bias [B * heads, T, T]`` -> the heads' contexts side by side ``[B, T, H]``.

    Written as two batched products: for the short texts of a classifier (tens of tokens) they
    run faster than the fused attention kernel, whose blocking pays off on long sequences.
    """
    batch, steps, triple = qkv.shape
    size = triple // (3 * heads)
    q, k, v = qkv.view(batch, steps, 3, heads, size).permute(2, 0, 3, 1, 4).reshape(3, batch * heads, steps, size)
    scores = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=size**-0.5)  # [B * h, T, T]
    context = torch.bmm(torch.softmax(scores, dim=-1), v)  # [B * h, T, d]
    return context.view(batch, heads, steps, size).transpose(1, 2).reshape(batch, steps, heads * size)


def layer_forward(layer: TransformerEncoderLayer, products: LayerProducts, x: Tensor, bias: Tensor) -> Tensor:
    """One post-norm BERT layer on ``x [B, T, H]`` with the padding ``bias [B * h, T, T]`` -> ``[B, T, H]``.

    ``x = LN1(x + W_o attention(x))``, ``x = LN2(x + W_2 gelu(W_1 x))``.
    """
    hidden = x.shape[-1]
    context = self_attention(products.qkv(x), bias, layer.self_attn.num_heads)
    x = F.layer_norm(x + products.out(context), (hidden,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    inner = F.gelu(products.up(x))
    return F.layer_norm(x + products.down(inner), (hidden,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)


class InferenceRunner:
    """The inference pass for one encoder, holding its per-layer products (bf16 and int8 weights are
    quantized once and again only when a weight changes in place: after training or loading)."""

    def __init__(self, encoder: BertEncoder, precision: Precision) -> None:
        if precision not in PRECISIONS:
            raise VlattnError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.encoder = encoder
        self.precision = precision
        self._products: list[LayerProducts] = []
        self._versions: tuple[tuple[int, int], ...] = ()

    def weight_versions(self) -> tuple[tuple[int, int], ...]:
        """Each layer parameter's identity and in-place version counter (the counter moves when
        an optimizer step or ``load_state_dict`` writes the weight)."""
        return tuple((id(p), p._version) for layer in self.encoder.layers for p in layer.parameters())

    def products(self) -> list[LayerProducts]:
        """Each layer's :class:`LayerProducts`, rebuilt when a weight changed since they were made."""
        versions = self.weight_versions()
        if not self._products or versions != self._versions:
            self._products = [LayerProducts(layer, self.precision) for layer in self.encoder.layers]
            self._versions = versions
        return self._products

    @torch.inference_mode()
    def __call__(self, ids: Tensor, lengths: Tensor, outputs: Sequence[int]) -> list[Tensor]:
        """``ids [B, T]`` (padding after ``lengths [B]``) -> the hidden states ``[B, T, H]`` at
        ``outputs`` (0 = the embeddings' output, ``i`` = layer ``i``'s), in that order. States at
        padding positions are unspecified."""
        wanted = set(outputs)
        last = max(wanted, default=0)
        x = self.encoder.embeddings(ids)
        found = {0: x} if 0 in wanted else {}
        if last:
            heads = self.encoder.config.num_attention_heads
            bias = padding_bias(lengths, ids.shape[1], heads, x.dtype)
            layers = self.encoder.layers
            for index, (layer, products) in enumerate(zip(layers, self.products(), strict=True), start=1):
                x = layer_forward(layer, products, x, bias)
                if index in wanted:
                    found[index] = x
                if index == last:
                    break
        return [found[i] for i in outputs]
