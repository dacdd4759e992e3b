"""Whisper with every ``nn.Linear`` in PyTorch dynamic int8, stored as real int8 bytes.

The file format (``model.int8.safetensors``, beside the checkpoint's ``config.json``):

* for each quantized Linear ``<name>``: ``<name>.weight`` int8 ``(out, in)``, ``<name>.weight_scale``
  float32 ``(out,)`` (symmetric per output channel, zero point 0: ``w ~= int8 * scale``), and
  ``<name>.bias`` if the layer has one;
* every other tensor (convolutions, layer norms, position tables, and the Linears kept in float: those
  without a ``.weight_scale``) in ``float16``;
* the decoder's token embedding is tied to the output projection ``proj_out``: it is stored once, as
  ``proj_out``'s int8 rows and scales, and the embedding lookup uses those rows dequantized;
* the header's ``per_token`` metadata (a JSON list, absent in files written before it existed) names
  the Linears whose activations are quantized per token
  (:class:`~model_store.backends.per_token_int8.PerTokenInt8Linear`) rather than per matrix, and
  ``per_token_asymmetric`` (a JSON list) those of them whose rows get a zero point; the others' rows
  are symmetric (all of them in files written before the key existed).

Plain int8 tensors and float scales, not pickled ``torch.qint8`` objects: the bytes stay readable
without PyTorch's quantized-tensor API (deprecated in recent releases) and load with safetensors'
safe reader. At load time the float model's skeleton is built on the ``meta`` device, its Linears
replaced by ``torch.ao.nn.quantized.dynamic.Linear`` (what ``quantize_dynamic`` would put there),
and the int8 weights set into them, so no float copy of the Linear weights is ever materialised.
Where a PyTorch release no longer has that module (:mod:`.legacy_int8`: PyTorch deprecated the quantized
dtypes it rests on), those Linears load as float Linears of the dequantized int8 weights instead: the
same weights, float activations, the float model's memory and speed, and a warning in the log.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Collection
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn
from transformers import WhisperConfig, WhisperForConditionalGeneration

from model_store.backends import legacy_int8
from model_store.backends.per_token_int8 import PerTokenInt8Linear, PerTokenScheme
from model_store.safetensors_file import save_safetensors

logger = logging.getLogger(__name__)

INT8_WEIGHTS_FILENAME = "model.int8.safetensors"
FORMAT_NAME = "hush-dynamic-int8"
FORMAT_VERSION = "1"
SCALE_SUFFIX = ".weight_scale"
TIED_EMBEDDING = "model.decoder.embed_tokens.weight"
OUTPUT_PROJECTION = "proj_out"
PER_TOKEN_KEY = "per_token"
PER_TOKEN_ASYMMETRIC_KEY = "per_token_asymmetric"
FLOAT_STORAGE = torch.float16  # the non-Linear tensors; the imported teachers are float16 already


INT8_HALF_RANGE = 127.5  # (127 - (-128)) / 2: the symmetric scale's divisor over the signed range
SCALE_FLOOR = torch.finfo(torch.float32).eps  # an all-zero row still gets a usable scale


def per_channel_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-output-channel int8 codes and float32 scales, ``w ~= codes * scale``.

    The arithmetic of PyTorch's ``per_channel_dynamic_qconfig`` observer and ``quantize_per_channel``
    (scale = max|w| / 127.5, codes rounded half to even from ``w * (1 / scale)``, clamped to
    [-128, 127]), written out so that no quantized dtype is involved; it gives the same bytes
    (``tests/test_quantize.py`` compares them where the legacy API still exists).
    """
    rows = weight.detach().float()
    bound = torch.maximum(-rows.amin(dim=1).clamp(max=0), rows.amax(dim=1).clamp(min=0))
    scales = torch.clamp(bound / INT8_HALF_RANGE, min=SCALE_FLOOR)
    codes = torch.clamp(torch.round(rows * (1.0 / scales)[:, None]), -128, 127).to(torch.int8)
    return codes.contiguous(), scales.contiguous()


def _tied(model: WhisperForConditionalGeneration) -> bool:
    embedding = model.get_input_embeddings()
    assert isinstance(embedding, nn.Embedding), "Whisper's decoder embeds tokens with nn.Embedding"
    return bool(model.proj_out.weight.data_ptr() == embedding.weight.data_ptr())


def int8_state_dict(
    model: WhisperForConditionalGeneration, float_linears: Collection[str] = ()
) -> dict[str, torch.Tensor]:
    """The tensors of :data:`INT8_WEIGHTS_FILENAME` for a float model; the Linears named in
    ``float_linears`` keep float weights (the output projection cannot: it holds the tied embedding)."""
    if OUTPUT_PROJECTION in float_linears:
        raise ValueError(f"{OUTPUT_PROJECTION} holds the tied token embedding and is always stored as int8")
    linear_names = {name for name, module in model.named_modules() if isinstance(module, nn.Linear)} - set(
        float_linears
    )
    tied = _tied(model)
    state: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        module_name, _, kind = name.rpartition(".")
        if module_name in linear_names and kind == "weight":
            state[name], state[module_name + SCALE_SUFFIX] = per_channel_int8(tensor)
        elif name == TIED_EMBEDDING and tied:
            continue  # stored once, as proj_out's int8 rows
        else:
            state[name] = tensor.detach().to(FLOAT_STORAGE).contiguous()
    return state


def save_int8(
    model: WhisperForConditionalGeneration,
    directory: Path,
    float_linears: Collection[str] = (),
    per_token_linears: Collection[str] = (),
    asymmetric_linears: Collection[str] = (),
) -> Path:
    """Write the model's int8 weights (float16 for ``float_linears``) and its config to
    ``directory``; ``per_token_linears`` will quantize their inputs per token, with a zero point per
    row in ``asymmetric_linears`` (a subset). Returns the weights file."""
    both = sorted(set(float_linears) & set(per_token_linears))
    if both:
        raise ValueError(f"Linears both kept float and quantized per token: {both}")
    stray = sorted(set(asymmetric_linears) - set(per_token_linears))
    if stray:
        raise ValueError(f"asymmetric rows are a per-token scheme; not per token: {stray}")
    state = int8_state_dict(model, float_linears)
    model.config.save_pretrained(directory)
    path = directory / INT8_WEIGHTS_FILENAME
    metadata = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "tied": "true" if _tied(model) else "false"}
    if per_token_linears:
        metadata[PER_TOKEN_KEY] = json.dumps(sorted(per_token_linears))
    if asymmetric_linears:
        metadata[PER_TOKEN_ASYMMETRIC_KEY] = json.dumps(sorted(asymmetric_linears))
    save_safetensors(state, path, metadata=metadata)
    return path


def per_token_linears(path: Path) -> frozenset[str]:
    """The Linears an int8 weights file quantizes per token (none in files without the key)."""
    with safe_open(str(path), framework="pt") as tensors:
        return _listed(tensors.metadata(), PER_TOKEN_KEY)


def asymmetric_linears(path: Path) -> frozenset[str]:
    """The per-token Linears of an int8 weights file whose rows have a zero point."""
    with safe_open(str(path), framework="pt") as tensors:
        return _listed(tensors.metadata(), PER_TOKEN_ASYMMETRIC_KEY)


def _listed(metadata: dict[str, str] | None, key: str) -> frozenset[str]:
    listed = (metadata or {}).get(key)
    return frozenset(json.loads(listed)) if listed else frozenset()


def int8_layer(
    weight: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    per_token: bool,
    scheme: PerTokenScheme = "symmetric",
    full_range: bool = False,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """The run-time module of one int8 Linear: activations quantized per token (with ``scheme``), or
    per matrix by PyTorch's dynamic int8 (to 8 bits with ``full_range``, else 7)."""
    if per_token:
        return PerTokenInt8Linear(weight, scales, bias, scheme)
    return _quantized_linear(weight, scales, bias, full_range=full_range, dtype=dtype)


def _quantized_linear(
    weight: torch.Tensor,
    scales: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    full_range: bool,
    dtype: torch.dtype = torch.float32,
) -> nn.Module:
    """PyTorch's dynamic int8 Linear where this PyTorch has it, else a ``dtype`` Linear of the same weights."""
    if legacy_int8.available():
        return legacy_int8.dynamic_linear(weight, scales, bias, full_range=full_range)
    return dequantized_linear(weight, scales, bias, dtype)


def dequantize(weight: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes * scale`` per output channel, in ``dtype``."""
    return weight.to(dtype) * scales.to(dtype)[:, None]


def dequantized_linear(
    weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, dtype: torch.dtype = torch.float32
) -> nn.Linear:
    """A float Linear of the int8 weights times their scales (the fallback: no int8 kernel needed)."""
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device="meta")
    layer.weight = nn.Parameter(dequantize(weight, scales, dtype), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return layer


def load_int8(
    directory: Path, dtype: torch.dtype = torch.float32, *, full_range: bool = False
) -> WhisperForConditionalGeneration:
    """The model saved by :func:`save_int8`, on the CPU (dynamic int8 kernels are CPU-only);
    ``full_range``: its per-matrix Linears quantize activations to 8 bits, not 7 (VNNI CPUs)."""
    config = WhisperConfig.from_pretrained(directory, local_files_only=True)
    with safe_open(str(directory / INT8_WEIGHTS_FILENAME), framework="pt") as tensors:
        per_token = _listed(tensors.metadata(), PER_TOKEN_KEY)
        asymmetric = _listed(tensors.metadata(), PER_TOKEN_ASYMMETRIC_KEY)
        state = {key: tensors.get_tensor(key) for key in tensors.keys()}  # noqa: SIM118 (not a dict)
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    linear_names = [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.Linear) and name + SCALE_SUFFIX in state  # the others stay float
    ]
    layers: dict[str, nn.Module] = {}
    for name in linear_names:
        weight = state.pop(f"{name}.weight")
        scales = state.pop(name + SCALE_SUFFIX)
        bias = state.pop(f"{name}.bias", None)
        bias = None if bias is None else bias.to(dtype)
        scheme: PerTokenScheme = "asymmetric" if name in asymmetric else "symmetric"
        layers[name] = int8_layer(
            weight,
            scales,
            bias,
            per_token=name in per_token,
            scheme=scheme,
            full_range=full_range,
            dtype=dtype,
        )
        if name == OUTPUT_PROJECTION and TIED_EMBEDDING not in state:
            layer = layers[name]  # a float fallback Linear already holds the dequantized rows: share them
            tied = layer.weight if type(layer) is nn.Linear else None
            state[TIED_EMBEDDING] = tied if tied is not None else dequantize(weight, scales, dtype)
    floats = {name: tensor.to(dtype) for name, tensor in state.items()}
    model.load_state_dict(floats, strict=False, assign=True)
    for name, layer in layers.items():
        model.set_submodule(name, layer)
    left_on_meta = [
        name for name, tensor in [*model.named_parameters(), *model.named_buffers()] if tensor.is_meta
    ]
    if left_on_meta:
        raise ValueError(f"{directory / INT8_WEIGHTS_FILENAME} lacks tensors: {left_on_meta}")
    per_matrix = len(linear_names) - len(per_token & set(linear_names))
    if per_matrix and not legacy_int8.available():
        logger.warning(
            "PyTorch %s has no dynamic int8 Linear (torch.ao.nn.quantized.dynamic): %d int8 Linears of %s "
            "run as float32 Linears of their dequantized weights (the float model's memory and speed; "
            "transcripts may differ slightly from the variant's evaluated ones)",
            torch.__version__,
            per_matrix,
            directory.name,
        )
    logger.debug(
        "loaded %d int8 Linear layers from %s (%d-bit activations per matrix)",
        len(linear_names),
        directory,
        8 if full_range else 7,
    )
    return model.eval()
