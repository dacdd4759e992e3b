"""``ptq-int8``: PyTorch dynamic int8 of every ``nn.Linear`` (CPU), stored as int8 bytes and scales."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compression.quantize.parent import Parent
from model_store.backends.int8_dynamic import FORMAT_NAME, save_int8


def write_ptq_int8(parent: Parent, target: Path) -> dict[str, Any]:
    """Quantize the parent's Linear layers to int8 and write them with the parent's other files."""
    model = parent.load_float(torch.float32)
    save_int8(model, target)
    parent.copy_assets(target)  # the tokenizer, processor and generation config; config.json is ours
    return {
        "weights_format": "torch-dynamic-int8",
        "file_format": FORMAT_NAME,
        "layers": "every nn.Linear (attention, FFN, output projection)",
        "scheme": "int8 weights, symmetric per output channel; activations quantized per batch at run time",
        "tied_embedding": "stored once as the output projection's int8 rows, dequantized for lookup",
        "float_tensors": "float16",
        "engine": torch.backends.quantized.engine,
        "torch": torch.__version__,
    }
