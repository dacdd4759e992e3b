"""A Linear with int8 weights and int8 activations quantized per token (row), for the CPU.

PyTorch's dynamic int8 Linear quantizes its whole input matrix with one scale, so in Whisper's
encoder one frame's or one channel's outlier coarsens all 1,500 frames (the FFN's second Linear,
after the GELU, suffers most). Here every row gets its own scale, as CTranslate2 does. The weights
are the same symmetric per-output-channel int8 as the dynamic Linear's, and the product is an
int8 x int8 -> int32 matmul (``torch._int_mm``), rescaled by the row's and the channel's scales.

Two schemes for the rows:

* ``symmetric``: ``x_t ~= q_t * s_t`` with ``s_t = max|x_t| / 127``;
* ``asymmetric``: ``x_t ~= (u_t - z_t) * s_t`` with ``s_t = (max x_t - min x_t) / 255`` and a zero
  point ``z_t``, the 256 levels spanning the row's own range. A GELU's output lies in about
  ``[-0.17, max]``, where the symmetric scheme leaves half its levels unused: asymmetric rows halve
  the rounding error of the FFN's second Linear. ``u_t - 128`` is what enters the int8 matmul; the
  shift comes back as ``(128 - z_t)`` times each output channel's weight sum.

No int32 overflow: ``128 * 127 * in_features`` stays below ``2**31`` for ``in_features`` up to 132,000.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

INT8_MAX = 127.0
UINT8_LEVELS = 255.0
UINT8_MIDDLE = 128.0
MIN_RANGE = 1e-8

PerTokenScheme = Literal["symmetric", "asymmetric"]


class PerTokenInt8Linear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` int8 per output channel and ``x`` int8 per row."""

    def __init__(
        self,
        weight: torch.Tensor,
        weight_scale: torch.Tensor,
        bias: torch.Tensor | None,
        scheme: PerTokenScheme = "symmetric",
    ) -> None:
        super().__init__()
        if weight.dtype != torch.int8:
            raise TypeError(f"expected int8 weights, got {weight.dtype}")
        self.out_features, self.in_features = weight.shape
        self.scheme = scheme
        self.weight_t: torch.Tensor
        self.weight_scale: torch.Tensor
        self.bias: torch.Tensor | None
        self.weight_sums: torch.Tensor
        self.register_buffer("weight_t", weight.t().contiguous())  # (in, out), the layout _int_mm takes
        self.register_buffer("weight_scale", weight_scale.float().contiguous())
        self.register_buffer("bias", None if bias is None else bias.float().contiguous())
        # each output channel's sum of int8 weights, exact in float32 (|sum| < 2**24 below 132,000 inputs)
        self.register_buffer("weight_sums", weight.to(torch.int32).sum(dim=1).float()[None, :])

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        rows = inputs.reshape(-1, self.in_features).float()
        # max and min per row: two plain reductions are faster than abs() then max
        top = rows.amax(dim=1, keepdim=True)
        bottom = rows.amin(dim=1, keepdim=True)
        if self.scheme == "symmetric":
            scale = torch.maximum(top, bottom.neg()).clamp_(min=MIN_RANGE).div_(INT8_MAX)
            quantized = rows.div(scale).round_().to(torch.int8)
            output = torch._int_mm(quantized, self.weight_t).float()
        else:
            top.clamp_(min=0.0)  # the range holds 0, so that zeros (padding, ReLU-like tails) stay exact
            bottom.clamp_(max=0.0)
            scale = (top - bottom).clamp_(min=MIN_RANGE).div_(UINT8_LEVELS)
            zero_point = bottom.div(scale).neg_().round_()  # in [0, 255]
            # u - 128 with u = round(x / s) + z, in one pass: z is an integer, so adding it first rounds alike
            shifted = rows.div(scale).add_(zero_point - UINT8_MIDDLE).round_().clamp_(-UINT8_MIDDLE, INT8_MAX)
            output = torch._int_mm(shifted.to(torch.int8), self.weight_t).float()
            output.addcmul_(UINT8_MIDDLE - zero_point, self.weight_sums)
        output.mul_(scale).mul_(self.weight_scale)
        if self.bias is not None:
            output.add_(self.bias)
        return output.reshape(*inputs.shape[:-1], self.out_features).to(inputs.dtype)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"activations=int8 per token, {self.scheme}"
        )
