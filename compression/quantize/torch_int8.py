"""``ptq-int8``: PyTorch dynamic int8 of every ``nn.Linear`` (CPU), stored as int8 bytes and scales."""

from __future__ import annotations

from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compression.quantize.parent import Parent
from model_store.backends import legacy_int8
from model_store.backends.int8_dynamic import FORMAT_NAME, save_int8

FFN_OUTPUT = "fc2"  # the FFN's second Linear, whose input is the GELU's output
ENCODER = "model.encoder."


def is_ffn_output(linear_name: str) -> bool:
    """Whether the Linear is an FFN's second (its input is the GELU's output, about ``[-0.17, max]``:
    the Linears whose per-token rows ``ptq-int8-per-token`` quantizes with a zero point)."""
    return linear_name.endswith("." + FFN_OUTPUT)


def encoder_and_ffn_outputs(linear_names: Collection[str]) -> list[str]:
    """The Linears whose inputs have many rows or outliers: all the encoder's (1,500 frames a window),
    and every FFN's second Linear (post-GELU inputs). During decoding the decoder's other Linears see
    one token a step, where one scale per matrix already is one per token."""
    return sorted(name for name in linear_names if name.startswith(ENCODER) or is_ffn_output(name))


CROSS_ATTENTION_INPUTS = ("encoder_attn.k_proj", "encoder_attn.v_proj")  # read the encoder's 1,500 frames


def many_rows_and_ffn_outputs(linear_names: Collection[str]) -> list[str]:
    """:func:`encoder_and_ffn_outputs` and the decoder's cross-attention key and value projections,
    which read the encoder's output (1,500 frames at once, once a window): ``ptq-int8-per-token``'s
    choice. Quantizing those per token lowered the next-token KL from the float model by 9% on
    whisper-base (``tests/bench/probe_int8_decoding``, README)."""
    cross = [name for name in linear_names if name.endswith(CROSS_ATTENTION_INPUTS)]
    return sorted({*encoder_and_ffn_outputs(linear_names), *cross})


def write_ptq_int8(
    parent: Parent,
    target: Path,
    *,
    keep_float: Collection[str] = (),
    per_token: Callable[[Collection[str]], list[str]] | None = None,
) -> dict[str, Any]:
    """Quantize the parent's Linear layers to int8, but those whose last name part is in
    ``keep_float`` (say ``fc2``), and write them with the parent's other files. ``per_token`` picks,
    from the Linear names, those whose activations are quantized per token."""
    model = parent.load_float(torch.float32)
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    float_linears = [name for name in linear_names if name.rpartition(".")[2] in keep_float]
    per_token_linears = [] if per_token is None else per_token(linear_names)
    asymmetric = [name for name in per_token_linears if is_ffn_output(name)]
    save_int8(model, target, float_linears, per_token_linears, asymmetric)
    parent.copy_assets(target)  # the tokenizer, processor and generation config; config.json is ours
    kept = (
        f", but {', '.join(sorted(keep_float))} (kept float16: {len(float_linears)} Linears)"
        if keep_float
        else ""
    )
    return {
        "weights_format": "torch-dynamic-int8",
        "file_format": FORMAT_NAME,
        "layers": "every nn.Linear (attention, FFN, output projection)" + kept,
        "float_linears": float_linears,
        "per_token_linears": per_token_linears,
        "scheme": "int8 weights, symmetric per output channel; activations quantized at run time, per "
        "token in per_token_linears (torch._int_mm; with a zero point per row in per_token_asymmetric, "
        "the post-GELU fc2 inputs), per matrix in the others (PyTorch dynamic int8)",
        "per_token_asymmetric": asymmetric,
        "tied_embedding": "stored once as the output projection's int8 rows, dequantized for lookup",
        "float_tensors": "float16",
        "engine": torch.backends.quantized.engine if legacy_int8.available() else "float fallback",
        "torch": torch.__version__,
    }
