"""SmoothQuant-style activation smoothing: move activation outliers into the weights before int8.

Dynamic int8 quantizes each Linear's input at run time with one scale for the whole activation
matrix (PyTorch) or one per token (CTranslate2). A few input channels with large magnitudes then set
that scale, and every other channel keeps only a few of its 8 bits. Smoothing divides input channel
``j`` by ``s_j`` and multiplies the weight's column ``j`` by ``s_j``, which leaves the float model's
output unchanged, with ``s_j = max|x_j| ** alpha / max|w_j| ** (1 - alpha)`` (Xiao et al., 2023,
"SmoothQuant"): ``alpha`` moves part of each channel's range from the activation into the weight,
which is quantized per output channel and offline.

The division is folded into whatever produces the input, so the smoothed model has the same layers:

* a LayerNorm feeding Linears (query/key/value projections, the first FFN layer): its weight and
  bias are divided by ``s``;
* an attention's value projection feeding its output projection: the value projection's rows (and
  bias) are divided by ``s``; attention mixes positions, never channels, so this is exact.

The second FFN layer (after the GELU) and the output projection (tied to the token embedding) are
left as they are: nothing linear produces their input.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

MIN_SCALE = 1e-5


@dataclass(frozen=True)
class SmoothingGroup:
    """Linears that read the same input, and the module (LayerNorm or Linear) that writes it."""

    producer: str
    consumers: tuple[str, ...]


def whisper_smoothing_groups(model: nn.Module) -> list[SmoothingGroup]:
    """The groups of a transformers ``WhisperForConditionalGeneration`` (any size)."""
    names = {name for name, _ in model.named_modules()}
    groups: list[SmoothingGroup] = []
    for stack in ("model.encoder", "model.decoder"):
        index = 0
        while f"{stack}.layers.{index}" in names:
            layer = f"{stack}.layers.{index}"
            attention = f"{layer}.self_attn"
            groups.append(
                SmoothingGroup(
                    f"{layer}.self_attn_layer_norm",
                    (f"{attention}.q_proj", f"{attention}.k_proj", f"{attention}.v_proj"),
                )
            )
            groups.append(SmoothingGroup(f"{attention}.v_proj", (f"{attention}.out_proj",)))
            if f"{layer}.encoder_attn" in names:
                cross = f"{layer}.encoder_attn"
                groups.append(SmoothingGroup(f"{layer}.encoder_attn_layer_norm", (f"{cross}.q_proj",)))
                groups.append(SmoothingGroup(f"{cross}.v_proj", (f"{cross}.out_proj",)))
            groups.append(SmoothingGroup(f"{layer}.final_layer_norm", (f"{layer}.fc1",)))
            index += 1
    cross_inputs = tuple(
        f"{name}.{projection}"
        for name in sorted(names)
        if name.startswith("model.decoder.layers.") and name.endswith(".encoder_attn")
        for projection in ("k_proj", "v_proj")
    )
    if cross_inputs:  # every decoder layer's keys and values read the encoder's final LayerNorm
        groups.append(SmoothingGroup("model.encoder.layer_norm", cross_inputs))
    return groups


def consumers_of(groups: Iterable[SmoothingGroup]) -> set[str]:
    """Every Linear the groups smooth (the ones whose input ranges calibration records)."""
    return {name for group in groups for name in group.consumers}


@contextmanager
def recording_input_ranges(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """While open, every forward pass updates ``ranges[name]``: the input's absolute maximum per
    channel (last dimension) over all positions seen so far, float32 on the CPU."""
    ranges: dict[str, torch.Tensor] = {}

    def hook_for(name: str):  # type: ignore[no-untyped-def]
        def record(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
            observed = inputs[0].detach().abs().flatten(0, -2).amax(dim=0).float().cpu()
            seen = ranges.get(name)
            ranges[name] = observed if seen is None else torch.maximum(seen, observed)

        return record

    handles = [model.get_submodule(name).register_forward_pre_hook(hook_for(name)) for name in names]
    try:
        yield ranges
    finally:
        for handle in handles:
            handle.remove()


def smoothing_scales(
    activation_range: torch.Tensor, weights: Iterable[torch.Tensor], alpha: float
) -> torch.Tensor:
    """``s_j = max|x_j| ** alpha / max|w_j| ** (1 - alpha)`` over the columns of all ``weights``."""
    weight_range = torch.stack([weight.detach().abs().float().amax(dim=0) for weight in weights]).amax(dim=0)
    activation = activation_range.clamp(min=MIN_SCALE)
    scales = activation.pow(alpha) / weight_range.clamp(min=MIN_SCALE).pow(1 - alpha)
    return scales.clamp(min=MIN_SCALE)


@dataclass(frozen=True)
class SmoothingReport:
    """What smoothing did: the groups folded and how spread their activation ranges were."""

    alpha: float
    groups: int
    linears: int
    # max over channels / median over channels of the input ranges, before and after, worst group
    worst_spread_before: float
    worst_spread_after: float

    def as_dict(self) -> dict[str, float | int]:
        return {
            "alpha": self.alpha,
            "groups": self.groups,
            "linears": self.linears,
            "worst_input_spread_before": round(self.worst_spread_before, 2),
            "worst_input_spread_after": round(self.worst_spread_after, 2),
        }


def _spread(channel_range: torch.Tensor) -> float:
    return float(channel_range.max() / channel_range.median().clamp(min=MIN_SCALE))


@torch.no_grad()
def smooth(
    model: nn.Module, groups: Iterable[SmoothingGroup], ranges: dict[str, torch.Tensor], alpha: float
) -> SmoothingReport:
    """Fold the smoothing scales of every group into ``model`` in place (float output unchanged).

    ``ranges`` holds each consumer's input range from :func:`recording_input_ranges`, measured on the
    unsmoothed model; a group's consumers share one input, so the first consumer's range is used."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be between 0 and 1, not {alpha}")
    groups = list(groups)
    missing = sorted(consumers_of(groups) - set(ranges))
    if missing:
        raise ValueError(f"no calibration range for {len(missing)} Linears, e.g. {missing[0]}")
    before = after = 0.0
    for group in groups:
        consumers = [_linear(model, name) for name in group.consumers]
        activation_range = ranges[group.consumers[0]]
        scales = smoothing_scales(activation_range, [layer.weight for layer in consumers], alpha)
        producer = model.get_submodule(group.producer)
        _divide_output(producer, scales)
        for layer in consumers:
            layer.weight.mul_(scales.to(layer.weight.dtype)[None, :])
        before = max(before, _spread(activation_range))
        after = max(after, _spread(activation_range / scales))
    return SmoothingReport(alpha, len(groups), len(consumers_of(groups)), before, after)


def _linear(model: nn.Module, name: str) -> nn.Linear:
    module = model.get_submodule(name)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name} is a {type(module).__name__}, not a Linear")
    return module


def _divide_output(producer: nn.Module, scales: torch.Tensor) -> None:
    """Divide the producer's output channels by ``scales``: a LayerNorm's affine parameters, or a
    Linear's rows and bias."""
    if isinstance(producer, nn.LayerNorm):
        producer.weight.div_(scales.to(producer.weight.dtype))
        producer.bias.div_(scales.to(producer.bias.dtype))
    elif isinstance(producer, nn.Linear):
        producer.weight.div_(scales.to(producer.weight.dtype)[:, None])
        if producer.bias is not None:
            producer.bias.div_(scales.to(producer.bias.dtype))
    else:
        raise TypeError(f"cannot fold smoothing scales into a {type(producer).__name__}")
