"""Loading a transformers-backend variant according to how its weights are stored.

A variant's recipe names its ``weights_format`` (``recipe.args["weights_format"]``; older manifests
fall back on the recipe's method):

* ``transformers``: a plain checkpoint (``model.safetensors``), loaded in the compute dtype;
* ``torch-dynamic-int8``: int8 Linear weights with per-channel scales (see :mod:`.int8_dynamic`),
  run by PyTorch's dynamic int8 kernels, which exist on the CPU only;
* ``bitsandbytes``: a checkpoint serialized by transformers with its bitsandbytes quantization config
  (LLM.int8 or NF4 weights), rebuilt by ``from_pretrained`` on the requested device;
* ``hush-lowbit``: weight-only int8 / packed int4 codes with float scales per Linear (see
  :mod:`.lowbit`; quantization-aware distillation and guided mixed precision), dequantized at load.

Keying on the storage format rather than the method lets later methods (quantization-aware
distillation, guided selection) that export the same int8 format reuse this loader.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal, cast, get_args

import torch
from transformers import WhisperForConditionalGeneration

from model_store.backends.int8_dynamic import load_int8
from model_store.manifest import Manifest

logger = logging.getLogger(__name__)

WeightsFormat = Literal["transformers", "torch-dynamic-int8", "bitsandbytes", "hush-lowbit"]
WEIGHTS_FORMATS: tuple[str, ...] = get_args(WeightsFormat)
_FORMAT_OF_METHOD: dict[str, WeightsFormat] = {
    "ptq-int8": "torch-dynamic-int8",
    "bnb-int8": "bitsandbytes",
    "bnb-nf4": "bitsandbytes",
}


def weights_format(manifest: Manifest) -> WeightsFormat:
    """How the variant's transformers weights are stored."""
    declared = manifest.recipe.args.get("weights_format")
    if declared is None:
        return _FORMAT_OF_METHOD.get(manifest.recipe.method, "transformers")
    if declared not in WEIGHTS_FORMATS:
        raise ValueError(
            f"variant {manifest.id!r} declares weights_format {declared!r}; known: {', '.join(WEIGHTS_FORMATS)}"
        )
    return cast(WeightsFormat, declared)


def load_device(manifest: Manifest, requested: str) -> str:
    """The device the variant will run on when ``requested`` is asked for."""
    return "cpu" if weights_format(manifest) == "torch-dynamic-int8" else requested


def load_model(
    manifest: Manifest,
    directory: Path,
    device: torch.device,
    dtype: torch.dtype,
    *,
    int8_full_range: bool = False,
) -> WhisperForConditionalGeneration:
    """The variant's model, ready for inference on ``device`` with ``dtype`` activations;
    ``int8_full_range``: dynamic int8 Linears quantize activations to 8 bits (see
    :func:`~model_store.backends.int8_dynamic.load_int8`)."""
    storage = weights_format(manifest)
    if storage == "torch-dynamic-int8":
        if device.type != "cpu":
            raise ValueError(f"variant {manifest.id!r} holds dynamic int8 weights, which run on the CPU only")
        return load_int8(directory, dtype, full_range=int8_full_range)
    if storage == "bitsandbytes":
        return _load_bitsandbytes(directory, device, dtype)
    if storage == "hush-lowbit":
        from model_store.backends.lowbit import load_lowbit

        return load_lowbit(directory, dtype, device)
    model = WhisperForConditionalGeneration.from_pretrained(
        directory, torch_dtype=dtype, local_files_only=True
    )
    return model.to(device).eval()  # type: ignore[arg-type]  # transformers' decorator hides .to's signature


def _load_bitsandbytes(
    directory: Path, device: torch.device, dtype: torch.dtype
) -> WhisperForConditionalGeneration:
    model = WhisperForConditionalGeneration.from_pretrained(
        directory, torch_dtype=dtype, device_map={"": str(device)}, local_files_only=True
    )
    from bitsandbytes.nn.modules import Linear4bit, Linear8bitLt

    # transformers leaves some float tensors of a pre-quantized checkpoint in their stored float16:
    # bring every float tensor outside the quantized weights to the compute dtype.
    for module in model.modules():
        quantized = isinstance(module, Linear4bit | Linear8bitLt)
        for name, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            if quantized and name == "weight":
                continue
            if tensor.is_floating_point() and tensor.dtype != dtype:
                tensor.data = tensor.data.to(dtype)
        if isinstance(module, Linear4bit):
            module.compute_dtype = dtype  # the saved config names the dtype of the machine that made it
        elif isinstance(module, Linear8bitLt) and dtype != torch.float16:
            _run_in_float16(module, dtype)
    return model.eval()


def _run_in_float16(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """LLM.int8 quantizes its activations from float16: hand it float16 and give ``dtype`` back.

    bitsandbytes would cast them itself, logging a warning on every call of every layer.
    """

    def to_half(_module: torch.nn.Module, inputs: tuple[Any, ...]) -> tuple[Any, ...]:
        return tuple(x.half() if isinstance(x, torch.Tensor) and x.is_floating_point() else x for x in inputs)

    def back(_module: torch.nn.Module, _inputs: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        return output.to(dtype)

    module.register_forward_pre_hook(to_half)
    module.register_forward_hook(back)
