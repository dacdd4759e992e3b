"""A Linear with int8 weights and int8 activations quantized per token (row), for the CPU.

PyTorch's dynamic int8 Linear quantizes its whole input matrix with one scale, so in Whisper's
encoder one frame's or one channel's outlier coarsens all 1,500 frames (the FFN's second Linear,
after the GELU, suffers most). Here every row gets its own symmetric scale, as CTranslate2 does:
``x_t ~= q_t * s_t`` with ``s_t = max|x_t| / 127``; the weights are the same symmetric per-output-channel
int8 as the dynamic Linear's, and the product is an int8 x int8 -> int32 matmul (``torch._int_mm``),
rescaled by ``s_t * w_scale``. No int32 overflow: ``127 * 127 * in_features`` stays below ``2**31``
for ``in_features`` up to 133,000.
"""

from __future__ import annotations

import torch
from torch import nn

INT8_MAX = 127.0
MIN_RANGE = 1e-8


class PerTokenInt8Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` int8 per output channel and ``x`` int8 per row."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        if weight.dtype != torch.int8:
            raise TypeError(f"expected int8 weights, got {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        self.weight_t: torch.Tensor
        self.weight_scale: torch.Tensor
        self.bias: torch.Tensor | None
        self.register_buffer("weight_t", weight.t().contiguous())  # (in, out), the layout _int_mm takes
        self.register_buffer("weight_scale", weight_scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().contiguous())

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs.reshape(-1, self.in_features).float()
        # max|x| per row as max(max x, -min x): two plain reductions are faster than abs() then max
        top = rows.amax(dim=1, keepdim=True)
        bottom = rows.amin(dim=1, keepdim=True)
        scale = torch.maximum(top, bottom.neg()).clamp_(min=MIN_RANGE).div_(INT8_MAX)
        quantized = rows.div(scale).round_().to(torch.int8)
        output = torch._int_mm(quantized, self.weight_t).float().mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            output.add_(self.bias)
        return output.reshape(*inputs.shape[:-1], self.out_features).to(inputs.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, activations=int8 per token"
