"""Weight-only low-bit Whisper checkpoints: 2- to 8-bit codes with float scales, per Linear.

What quantization-aware distillation and guided mixed precision export (``weights_format``
``hush-lowbit``). The file ``model.lowbit.safetensors``, beside the checkpoint's ``config.json``:

* for each quantized Linear ``<name>``: ``<name>.codes``, packed as its layer entry says (below):
  ``int8``: int8 ``(out, in)``; ``nibbles``: uint8 ``(out, ceil(in / 2))``, two codes per byte, low
  nibble first, each stored as ``code + 8``; ``bitstream``: uint8 ``(ceil(out * in * bits / 8),)``,
  the codes row by row, each as ``code + 2^(bits-1)`` in ``bits`` bits, least significant bit first,
  so a b-bit Linear takes b/8 bytes a weight on disk. And
  ``<name>.scale`` float32, ``(out, 1)`` per channel, ``(1, 1)`` per tensor or ``(out, in / g)`` per
  group of ``g`` consecutive input columns; ``w = code * scale`` (each scale repeated over its group);
* every other tensor (embeddings, layer norms, Linears kept at 16 bits) in float16;
* the output projection tied to the token embedding is stored once: as the embedding (float16), or,
  when the output projection itself is quantized, as its codes, the embedding lookup then reading
  the same dequantized rows;
* the safetensors metadata ``layers``: JSON ``{name: [bits, granularity, packing]}``; 8 bits are
  stored ``int8``, 4 bits ``nibbles``, 2, 3, 5, 6 and 7 bits ``bitstream``. Version 1 files had no
  packing entry and stored every width but 4 as ``int8``; they load unchanged.

Loading dequantizes the codes into ordinary float Linears, so the reloaded model computes exactly
what the fake-quantized model computed in training (weight-only quantization: the saving is on disk
and in transfer; compute runs in float).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import WhisperConfig, WhisperForConditionalGeneration

from model_store.safetensors_file import save_safetensors

logger = logging.getLogger(__name__)

LOWBIT_WEIGHTS_FILENAME = "model.lowbit.safetensors"
FORMAT_NAME = "hush-lowbit"
FORMAT_VERSION = "2"
FLOAT_STORAGE = torch.float16
_NIBBLE_OFFSET = 8  # int4 codes -7..7 stored as 1..15 in a nibble
_TIED = ("proj_out.weight", "model.decoder.embed_tokens.weight")
_BITSTREAM_CHUNK = 1 << 20  # codes packed or unpacked at a time (a multiple of 8: chunks are byte-aligned)


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """``(out, in)`` int8 codes in -8..7 to ``(out, ceil(in / 2))`` uint8, low nibble first."""
    shifted = (codes.to(torch.int16) + _NIBBLE_OFFSET).to(torch.uint8)
    if shifted.shape[1] % 2:
        shifted = nn.functional.pad(shifted, (0, 1), value=_NIBBLE_OFFSET)
    return (shifted[:, 0::2] | (shifted[:, 1::2] << 4)).contiguous()


def unpack_int4(packed: torch.Tensor, columns: int) -> torch.Tensor:
    """Inverse of :func:`pack_int4`: int8 codes ``(out, columns)``, written nibble by nibble into one
    int8 tensor (no wider temporaries: the largest layer, the output projection, is 26.5M codes)."""
    codes = torch.empty((packed.shape[0], 2 * packed.shape[1]), dtype=torch.int8, device=packed.device)
    codes[:, 0::2] = packed & 0x0F
    codes[:, 1::2] = packed >> 4
    codes -= _NIBBLE_OFFSET
    return codes[:, :columns]


def packing_for(bits: int) -> str:
    """How codes of ``bits`` bits are stored (see the module docstring)."""
    return "int8" if bits == 8 else "nibbles" if bits == 4 else "bitstream"


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes within +-(2^(bits-1) - 1) to a uint8 bitstream of ``ceil(codes.numel() * bits / 8)`` bytes,
    ``bits`` bits a code, least significant first, in row-major order."""
    flat = (codes.reshape(-1).to(torch.int16) + (1 << (bits - 1))).to(torch.uint8)
    code_shifts = torch.arange(bits, dtype=torch.uint8)
    byte_shifts = torch.arange(8, dtype=torch.uint8)
    parts = []
    for start in range(0, flat.numel(), _BITSTREAM_CHUNK):
        planes = (flat[start : start + _BITSTREAM_CHUNK].unsqueeze(1) >> code_shifts) & 1  # (codes, bits)
        stream = planes.reshape(-1)
        stream = nn.functional.pad(stream, (0, -stream.numel() % 8))  # only the last chunk is ragged
        parts.append((stream.reshape(-1, 8) << byte_shifts).sum(dim=1, dtype=torch.uint8))
    return torch.cat(parts) if parts else torch.empty(0, dtype=torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, shape: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: int8 codes of ``shape``, a chunk at a time (no full-size
    temporaries wider than the result)."""
    count = shape[0] * shape[1]
    codes = torch.empty(count, dtype=torch.int8)
    code_shifts = torch.arange(bits, dtype=torch.uint8)
    byte_shifts = torch.arange(8, dtype=torch.uint8)
    chunk_bytes = _BITSTREAM_CHUNK * bits // 8
    for index, start in enumerate(range(0, count, _BITSTREAM_CHUNK)):
        size = min(_BITSTREAM_CHUNK, count - start)
        first = index * chunk_bytes
        part = packed[first : first + (size * bits + 7) // 8]
        stream = ((part.unsqueeze(1) >> byte_shifts) & 1).reshape(-1)[: size * bits].reshape(size, bits)
        values = (stream << code_shifts).sum(dim=1, dtype=torch.int16) - (1 << (bits - 1))
        codes[start : start + size] = values.to(torch.int8)
    return codes.reshape(shape)


def _packed(codes: torch.Tensor, bits: int) -> torch.Tensor:
    packing = packing_for(bits)
    if packing == "nibbles":
        return pack_int4(codes)
    if packing == "bitstream":
        return pack_bits(codes, bits)
    return codes.to(torch.int8).contiguous()


def _unpacked(stored: torch.Tensor, bits: int, packing: str, shape: tuple[int, int]) -> torch.Tensor:
    if packing == "nibbles":
        return unpack_int4(stored, shape[1])
    if packing == "bitstream":
        return unpack_bits(stored, bits, shape)
    if packing != "int8":
        raise ValueError(f"unknown packing {packing!r} of {bits}-bit codes")
    return stored


def save_lowbit(
    model: WhisperForConditionalGeneration,
    directory: Path,
    quantized: dict[str, tuple[torch.Tensor, torch.Tensor, int, str]],
) -> Path:
    """Write ``model`` with the Linears of ``quantized`` (name -> codes, scale, bits, granularity)."""
    state: dict[str, torch.Tensor] = {}
    layers: dict[str, list[object]] = {}
    tied = model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    projection = _TIED[0].rpartition(".")[0]
    for name, tensor in model.state_dict().items():
        module_name, _, kind = name.rpartition(".")
        if name == _TIED[1] and tied and projection in quantized:
            continue  # stored once, as the output projection's codes
        if module_name in quantized and kind == "weight":
            codes, scale, bits, granularity = quantized[module_name]
            state[f"{module_name}.codes"] = _packed(codes, bits)
            state[f"{module_name}.scale"] = scale.float().contiguous()
            layers[module_name] = [bits, granularity, packing_for(bits)]
        elif name == _TIED[0] and tied:
            continue
        else:
            state[name] = tensor.detach().to(FLOAT_STORAGE).contiguous()
    model.config.save_pretrained(directory)
    path = directory / LOWBIT_WEIGHTS_FILENAME
    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "layers": json.dumps(layers)}
    save_safetensors(state, path, metadata=metadata)
    return path


def by_scale_group(weights: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, columns)`` weights viewed as ``(out, groups, columns / groups)``, beside the scale of the
    tensor ``(1, 1)``, of each channel ``(out, 1)`` or of each group ``(out, groups)`` shaped to broadcast
    against that view: a scale is never repeated to the weights' full size."""
    out, columns = weights.shape
    groups = scale.shape[1]
    return weights.reshape(out, groups, columns // groups), scale.unsqueeze(-1)


def dequantize(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Weights ``codes * scale`` from ``(out, in)`` integer codes, in ``dtype``: one allocation of the
    result, scaled in place."""
    weights = codes.to(dtype, memory_format=torch.contiguous_format)
    grouped, per_group = by_scale_group(weights, scale.to(dtype))
    grouped.mul_(per_group)  # a view of ``weights``
    return weights


def _fill_tied(floats: dict[str, torch.Tensor]) -> None:
    """Whichever of the tied output projection and token embedding was stored serves as both."""
    stored = [name for name in _TIED if name in floats]
    if len(stored) == 1:
        for name in _TIED:
            floats.setdefault(name, floats[stored[0]])


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_lowbit(
    directory: Path, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
) -> WhisperForConditionalGeneration:
    """The model saved by :func:`save_lowbit`, with its codes dequantized into float Linears."""
    path = directory / LOWBIT_WEIGHTS_FILENAME
    metadata = _metadata(path)
    if metadata.get("format") != FORMAT_NAME:
        raise ValueError(f"{path} is not a {FORMAT_NAME} file (format {metadata.get('format')!r})")
    layers: dict[str, list[object]] = json.loads(metadata["layers"])
    state = load_file(str(path))
    config = WhisperConfig.from_pretrained(directory, local_files_only=True)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    floats: dict[str, torch.Tensor] = {}
    for name, entry in layers.items():
        bits = int(entry[0])  # type: ignore[call-overload]
        packing = str(entry[2]) if len(entry) > 2 else "nibbles" if bits == 4 else "int8"  # version 1
        scale = state.pop(f"{name}.scale")
        linear = model.get_submodule(name)
        assert isinstance(linear, nn.Linear), f"{name} names a Linear"
        codes = _unpacked(
            state.pop(f"{name}.codes"), bits, packing, (linear.out_features, linear.in_features)
        )
        floats[f"{name}.weight"] = dequantize(codes, scale)
    floats.update(state)
    _fill_tied(floats)
    model.load_state_dict({k: v.to(dtype) for k, v in floats.items()}, strict=True, assign=True)
    model.tie_weights()
    logger.debug("loaded %d low-bit Linears from %s", len(layers), directory)
    return model.to(device).eval()  # type: ignore[arg-type]
