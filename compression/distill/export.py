"""Writing a trained student into a variant directory, and the sizes it is reported with.

A student without quantized Linears is saved as a float16 transformers checkpoint. A student with
quantized decoder Linears (QAD, PTQ or guided mixed precision) is saved in the ``hush-lowbit`` format
(:mod:`model_store.backends.lowbit`): the same codes and scales the fake quantization used, so the
published variant computes what the student computed in training.

Sizes (``size_report``):
* ``bytes_real``: the bytes of the weight files on disk;
* ``bytes_dq_rule``: DQ-Whisper's accounting: quantized Linear weights at their bits (their scales
  counted too, at 32 bits), every other parameter at 16 bits; ``teacher_bytes_dq_rule`` is the teacher at 16 bits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import WhisperForConditionalGeneration

from compression.distill.fake_quant import QuantSpec, quant_scale, quantize, remove_fake_quant
from model_store.backends.lowbit import FORMAT_NAME, save_lowbit


def quantized_tensors(
    model: WhisperForConditionalGeneration, specs: dict[str, QuantSpec]
) -> dict[str, tuple[torch.Tensor, torch.Tensor, int, str]]:
    """Codes and scales of every Linear whose spec is below 16 bits."""
    found: dict[str, tuple[torch.Tensor, torch.Tensor, int, str]] = {}
    for name, spec in specs.items():
        if spec.bits >= 16:
            continue
        linear = model.get_submodule(name)
        assert isinstance(linear, torch.nn.Linear), f"{name} names a Linear"
        codes, scale = quantize(linear.weight.detach().float(), spec)
        found[name] = (codes, scale, spec.bits, spec.granularity)
    return found


def write_student(
    model: WhisperForConditionalGeneration, target: Path, specs: dict[str, QuantSpec] | None
) -> dict[str, Any]:
    """Save ``model`` into ``target`` (float16, or low-bit where ``specs`` say); returns recipe args."""
    remove_fake_quant(model)
    quantized = quantized_tensors(model, specs or {})
    if not quantized:
        model.half().save_pretrained(target)
        model.float()
        return {"weights_format": "transformers", "float_tensors": "float16"}
    save_lowbit(model, target, quantized)
    model.generation_config.save_pretrained(target)
    bits = sorted({spec.bits for spec in (specs or {}).values()})
    return {
        "weights_format": "hush-lowbit",
        "file_format": FORMAT_NAME,
        "quantized_linears": len(quantized),
        "bits": bits,
        "layer_bits": {name: spec.bits for name, spec in sorted((specs or {}).items())},
        "granularity": sorted({spec.granularity for spec in (specs or {}).values()}),
        **(
            {"group_size": sorted({s.group_size for s in specs.values() if s.granularity == "per-group"})}
            if specs and any(spec.granularity == "per-group" for spec in specs.values())
            else {}
        ),
        "scheme": "weight-only, symmetric abs-max, clamped scales; dequantized at load (float compute)",
        "float_tensors": "float16",
    }


def parameter_count(model: torch.nn.Module) -> int:
    """Parameters, counting a tied tensor once."""
    return sum(parameter.numel() for parameter in model.parameters())


def dq_rule_bytes(model: WhisperForConditionalGeneration, specs: dict[str, QuantSpec] | None) -> int:
    """DQ-Whisper's size accounting (see the module docstring)."""
    specs = specs or {}
    total_bits = 0
    quantized_parameters = set()
    for name, spec in specs.items():
        linear = model.get_submodule(name)
        assert isinstance(linear, torch.nn.Linear), f"{name} names a Linear"
        weight = linear.weight
        quantized_parameters.add(id(weight))
        scales = quant_scale(weight, spec).numel()
        total_bits += weight.numel() * spec.bits + (scales * 32 if spec.bits < 16 else 0)
    for parameter in model.parameters():
        if id(parameter) not in quantized_parameters:
            total_bits += parameter.numel() * 16
    return total_bits // 8


def weight_bytes(directory: Path) -> int:
    """Bytes of the weight files (safetensors) in a variant directory."""
    return sum(path.stat().st_size for path in directory.glob("*.safetensors"))
