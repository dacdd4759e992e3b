"""``ptq-int8``: PyTorch dynamic int8 of every ``nn.Linear`` (CPU), stored as int8 bytes and scales."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compression.quantize.parent import Parent
from model_store.backends.int8_dynamic import FORMAT_NAME, save_int8

FFN_OUTPUT = "fc2"  # the FFN's second Linear, whose input is the GELU's output


def write_ptq_int8(parent: Parent, target: Path, *, keep_float: Collection[str] = ()) -> dict[str, Any]:
    """Quantize the parent's Linear layers to int8, but those whose last name part is in
    ``keep_float`` (say ``fc2``), and write them with the parent's other files."""
    model = parent.load_float(torch.float32)
    float_linears = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name.rpartition(".")[2] in keep_float
    ]
    save_int8(model, target, float_linears)
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
        "scheme": "int8 weights, symmetric per output channel; activations quantized per batch at run time",
        "tied_embedding": "stored once as the output projection's int8 rows, dequantized for lookup",
        "float_tensors": "float16",
        "engine": torch.backends.quantized.engine,
        "torch": torch.__version__,
    }
