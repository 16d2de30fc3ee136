"""What the processor can do that changes how fast a computation runs (no torch import at start-up)."""

from __future__ import annotations


def bf16_supported() -> bool:
    """Whether this CPU has the bfloat16 matrix instructions oneDNN uses (AMX or AVX-512 BF16);
    without them PyTorch emulates bfloat16 products, more slowly than float32."""
    import torch

    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
