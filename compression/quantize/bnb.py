"""``bnb-int8`` and ``bnb-nf4``: bitsandbytes LLM.int8 and 4-bit NF4 through transformers.

With bitsandbytes 0.50 both layer types load, run and serialize on the CPU as well as on CUDA, so
the variant stores the quantized weights themselves (``save_pretrained`` of the quantized model:
int8 rows with their scales, or packed 4-bit blocks with their absmax and quantization state) and
transformers rebuilds the bitsandbytes layers from them at load time. The output projection, tied to
the token embedding, stays in float16 (transformers never quantizes a tied output embedding).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import BitsAndBytesConfig, WhisperForConditionalGeneration

from compression.quantize.parent import Parent

logger = logging.getLogger(__name__)

BnbMode = Literal["int8", "nf4"]


def bnb_config(mode: BnbMode) -> BitsAndBytesConfig:
    if mode == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_compute_dtype=torch.float32,  # the loader sets the compute dtype of the serving machine
        bnb_4bit_use_double_quant=False,
    )


def write_bnb(parent: Parent, target: Path, mode: BnbMode) -> dict[str, Any]:
    """Quantize the parent with bitsandbytes on the CPU and save the quantized weights."""
    import bitsandbytes

    config = bnb_config(mode)
    model = WhisperForConditionalGeneration.from_pretrained(
        parent.directory,
        quantization_config=config,
        torch_dtype=torch.float16,
        device_map={"": "cpu"},
        local_files_only=True,
    )
    quantized = sorted(
        name
        for name, module in model.named_modules()
        if isinstance(module, bitsandbytes.nn.modules.Linear8bitLt | bitsandbytes.nn.modules.Linear4bit)
    )
    model.save_pretrained(target)
    parent.copy_assets(target)
    logger.info("bnb-%s: %d Linear layers quantized", mode, len(quantized))
    return {
        "weights_format": "bitsandbytes",
        "quantization_config": {
            key: value
            for key, value in config.to_dict().items()
            if key.startswith(("load_in", "bnb_4bit_quant_type", "bnb_4bit_use_double", "llm_int8_threshold"))
        },
        "quantized_layers": len(quantized),
        "float_tensors": "float16",
        "bitsandbytes": bitsandbytes.__version__,
    }
