"""Weight-only fake quantization with a straight-through estimator, for quantization-aware distillation.

Symmetric, zero point 0: ``scale = max|W| / qmax`` (per tensor, per output channel, or per group of
``group_size`` consecutive input columns of each output channel, the usual choice at 4 bits), clamped
to at least :data:`MIN_SCALE` so an all-zero row does not divide by zero, and ``q = clamp(round(W / scale),
-qmax, qmax)`` with ``qmax = 2^(bits-1) - 1`` (127 at 8 bits, 7 at 4 bits). DQ-Whisper's code took
``W.max()`` instead of ``max|W|`` and did not clamp; both are fixed here. The forward pass uses
``q * scale``; the backward pass lets the gradient through unchanged (straight-through).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from model_store.backends.lowbit import by_scale_group, dequantize

Granularity = Literal["per-tensor", "per-channel", "per-group"]
MIN_SCALE = 1e-8
DEFAULT_GROUP_SIZE = 64


# Bit widths. On disk (model_store.backends.lowbit) a b-bit code takes b bits: 8-bit codes a byte,
# 4-bit codes two to a byte, the other widths a packed bitstream, so real bytes follow the DQ-Whisper
# size rule at every width (2 bits is ternary: codes -1, 0, 1).
QUANTIZATION_BITS = (2, 3, 4, 5, 6, 7, 8)
BITS_IN_WORDS = "2, 3, 4, 5, 6, 7 or 8"


@dataclass(frozen=True)
class QuantSpec:
    """How one Linear's weight is quantized."""

    bits: int  # one of QUANTIZATION_BITS (16 means: kept in float16)
    granularity: Granularity = "per-channel"
    group_size: int = DEFAULT_GROUP_SIZE  # input columns per scale, for "per-group" only

    def __post_init__(self) -> None:
        if self.bits not in (*QUANTIZATION_BITS, 16):
            raise ValueError(f"bits must be {BITS_IN_WORDS} or 16, not {self.bits}")
        if self.granularity not in ("per-tensor", "per-channel", "per-group"):
            raise ValueError(
                f"granularity must be per-tensor, per-channel or per-group, not {self.granularity}"
            )
        if self.group_size < 1:
            raise ValueError(f"group size must be positive, not {self.group_size}")

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1


def _grouped(weight: torch.Tensor, group_size: int) -> torch.Tensor:
    """``(out, in)`` viewed as ``(out, in / group_size, group_size)``."""
    out_features, in_features = weight.shape
    if in_features % group_size:
        raise ValueError(f"{in_features} input columns do not split into groups of {group_size}")
    return weight.reshape(out_features, in_features // group_size, group_size)


def quant_scale(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """Scales of shape ``(out, 1)`` (per channel), ``(1, 1)`` (per tensor) or ``(out, in / group_size)``."""
    magnitude = weight.detach().abs()
    if spec.granularity == "per-channel":
        peak = magnitude.amax(dim=1, keepdim=True)
    elif spec.granularity == "per-group":
        peak = _grouped(magnitude, spec.group_size).amax(dim=2)
    else:
        peak = magnitude.amax().view(1, 1)
    return (peak / spec.qmax).clamp(min=MIN_SCALE)


def quantize(weight: torch.Tensor, spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer codes (int8 tensor, values within +-qmax) and their scales (see :func:`quant_scale`)."""
    scale = quant_scale(weight, spec)
    grouped, per_group = by_scale_group(weight.detach(), scale)
    codes = torch.clamp(torch.round(grouped / per_group), -spec.qmax, spec.qmax).to(torch.int8)
    return codes.reshape(weight.shape), scale


def fake_quantize(weight: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    """``q * scale`` in the forward pass, identity gradient in the backward pass."""
    if spec.bits == 16:
        return weight
    codes, scale = quantize(weight, spec)
    dequantized = dequantize(codes, scale, weight.dtype)
    return weight + (dequantized - weight).detach()


class FakeQuantLinear(nn.Linear):
    """An ``nn.Linear`` whose forward pass uses its fake-quantized weight (same state-dict keys)."""

    spec: QuantSpec

    @classmethod
    def wrap(cls, linear: nn.Linear, spec: QuantSpec) -> FakeQuantLinear:
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = linear.in_features, linear.out_features
        layer.weight = linear.weight
        layer.bias = linear.bias
        layer.spec = spec
        return layer

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(inputs, fake_quantize(self.weight, self.spec), self.bias)


def decoder_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The decoder layers' Linears (attention projections, fc1, fc2): what QAD quantizes.

    Embeddings (and the tied output projection), layer norms and the encoder stay float.
    """
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and ".decoder.layers." in f".{name}":
            yield name, module


def frozen_linears(model: nn.Module) -> Iterator[tuple[str, nn.Linear]]:
    """The Linears that stay frozen in training but are quantized with ``--quantize-scope model``:
    the encoder's (attention projections, fc1, fc2) and the output projection, whose weight is the
    token embedding (tied)."""
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear) and (".encoder.layers." in f".{name}" or name == "proj_out"):
            yield name, module


@torch.no_grad()
def quantize_in_place(model: nn.Module, specs: dict[str, QuantSpec]) -> None:
    """Post-training quantization of frozen Linears: each weight replaced by its dequantized codes.

    A tied weight (the output projection and the token embedding) changes for both users, so the
    embedding lookup reads the same quantized rows the exported file will hold. Quantizing the result
    again gives the same codes, so the export stores exactly what the model computed with.
    """
    for name, spec in specs.items():
        linear = model.get_submodule(name)
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"{name} is a {type(linear).__name__}, not a Linear")
        codes, scale = quantize(linear.weight, spec)
        linear.weight.copy_(dequantize(codes, scale, linear.weight.dtype))


def apply_fake_quant(model: nn.Module, specs: dict[str, QuantSpec]) -> None:
    """Replace each named Linear with a :class:`FakeQuantLinear` of its spec (in place)."""
    for name, spec in specs.items():
        module = model.get_submodule(name)
        if not isinstance(module, nn.Linear):
            raise TypeError(f"{name} is a {type(module).__name__}, not a Linear")
        linear = module
        if isinstance(linear, FakeQuantLinear):
            linear.spec = spec
        else:
            model.set_submodule(name, FakeQuantLinear.wrap(linear, spec))


def remove_fake_quant(model: nn.Module) -> None:
    """Turn every :class:`FakeQuantLinear` back into a plain ``nn.Linear`` with the same float weight."""
    for name, module in list(model.named_modules()):
        if isinstance(module, FakeQuantLinear):
            plain = nn.Linear(
                module.in_features, module.out_features, bias=module.bias is not None, device="meta"
            )
            plain.weight, plain.bias = module.weight, module.bias
            model.set_submodule(name, plain)
