"""``fp16`` and ``bf16``: half-precision copies of the parent for GPUs, computed in their own dtype."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from compression.quantize.parent import Parent

HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def write_half(parent: Parent, target: Path, dtype: str) -> dict[str, Any]:
    """Save the parent's weights in ``dtype`` (float16 or bfloat16) with its other files."""
    model = parent.load_float(HALF_DTYPES[dtype])
    model.save_pretrained(target)
    parent.copy_assets(target)
    return {"weights_format": "transformers", "compute_dtype": dtype}
