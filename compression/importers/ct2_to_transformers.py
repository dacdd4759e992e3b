"""Conversion of a CTranslate2 Whisper (``WhisperSpec``) into transformers' Whisper, exactly.

Weights copy unchanged (fp16 upcasts to fp32 losslessly). CTranslate2 fuses the attention
projections: self-attention ``linear_0`` is q|k|v, cross-attention ``linear_1`` is k|v; the key bias is
all zeros there and transformers' ``k_proj`` has none, so a non-zero key bias is refused rather than
dropped. Verified against CTranslate2 itself by ``tests/test_import_parity.py``.
"""

from __future__ import annotations

import re

import numpy as np
import numpy.typing as npt
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from compression.importers.ct2_format import Ct2Model
from model_store.errors import SourceError

_GELU = 3
_LAYER = re.compile(r"^(encoder|decoder)/layer_(\d+)/")


def _tensor(array: npt.NDArray[np.generic]) -> torch.Tensor:
    return torch.from_numpy(np.array(array, dtype=np.float32))  # a writable float32 copy


def _scalar(model: Ct2Model, name: str) -> int:
    return int(np.asarray(model[name]).item())


def _layer_count(model: Ct2Model, side: str) -> int:
    indices = {
        int(match.group(2))
        for name in model.variables
        if (match := _LAYER.match(name)) and match.group(1) == side
    }
    if not indices or sorted(indices) != list(range(len(indices))):
        raise SourceError(f"CTranslate2 model has no contiguous {side} layers")
    return len(indices)


def _check_architecture(model: Ct2Model) -> None:
    if model.name != "WhisperSpec":
        raise SourceError(f"not a CTranslate2 Whisper model (spec {model.name!r})")
    for side in ("encoder", "decoder"):
        if f"{side}/activation" in model.variables and _scalar(model, f"{side}/activation") != _GELU:
            raise SourceError(f"{side} activation is not GELU: unsupported")
        if f"{side}/pre_norm" in model.variables and _scalar(model, f"{side}/pre_norm") != 1:
            raise SourceError(f"{side} is not pre-norm: unsupported")
    for flag in ("decoder/alibi", "decoder/scale_embeddings"):
        if flag in model.variables and _scalar(model, flag) != 0:
            raise SourceError(f"{flag} is set: unsupported by transformers' Whisper")


def whisper_config_from_ct2(
    model: Ct2Model, *, eot: int, sot: int, suppress: list[int], begin_suppress: list[int]
) -> WhisperConfig:
    """transformers' config, with every dimension read from the tensors' shapes."""
    _check_architecture(model)
    d_model, mel_bins, _ = model["encoder/conv1/weight"].shape
    vocab_size = model["decoder/embeddings/weight"].shape[0]
    return WhisperConfig(
        vocab_size=vocab_size,
        num_mel_bins=mel_bins,
        d_model=d_model,
        encoder_layers=_layer_count(model, "encoder"),
        decoder_layers=_layer_count(model, "decoder"),
        encoder_attention_heads=_scalar(model, "encoder/num_heads"),
        decoder_attention_heads=_scalar(model, "decoder/num_heads"),
        encoder_ffn_dim=model["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        decoder_ffn_dim=model["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        max_source_positions=model["encoder/position_encodings/encodings"].shape[0],
        max_target_positions=model["decoder/position_encodings/encodings"].shape[0],
        activation_function="gelu",
        scale_embedding=False,
        tie_word_embeddings=True,
        pad_token_id=eot,
        bos_token_id=eot,
        eos_token_id=eot,
        decoder_start_token_id=sot,
        suppress_tokens=suppress,
        begin_suppress_tokens=begin_suppress,
    )


def _split_rows(weight: torch.Tensor, parts: int) -> list[torch.Tensor]:
    if weight.shape[0] % parts:
        raise SourceError(f"fused projection of {weight.shape[0]} rows does not split in {parts}")
    return list(torch.chunk(weight, parts, dim=0))


def _zero_key_bias(bias: torch.Tensor, name: str) -> None:
    if torch.count_nonzero(bias).item():
        raise SourceError(
            f"{name}: the key projection has a non-zero bias, which transformers' Whisper cannot hold; "
            "refusing to convert it inexactly"
        )


def _state_dict(model: Ct2Model, config: WhisperConfig) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}

    def copy(target: str, source: str) -> None:
        state[target] = _tensor(model[source])

    def layer_norm(target: str, source: str) -> None:
        copy(f"{target}.weight", f"{source}/gamma")
        copy(f"{target}.bias", f"{source}/beta")

    def linear(target: str, source: str) -> None:
        copy(f"{target}.weight", f"{source}/weight")
        copy(f"{target}.bias", f"{source}/bias")

    def fused(targets: list[str], source: str, key_index: int) -> None:
        weights = _split_rows(_tensor(model[f"{source}/weight"]), len(targets))
        biases = _split_rows(_tensor(model[f"{source}/bias"]), len(targets))
        for index, (target, weight, bias) in enumerate(zip(targets, weights, biases, strict=True)):
            state[f"{target}.weight"] = weight.clone()
            if index == key_index:
                _zero_key_bias(bias, source)
            else:
                state[f"{target}.bias"] = bias.clone()

    for side in ("encoder", "decoder"):
        prefix = f"model.{side}"
        copy(f"{prefix}.embed_positions.weight", f"{side}/position_encodings/encodings")
        layer_norm(f"{prefix}.layer_norm", f"{side}/layer_norm")
        layers = config.encoder_layers if side == "encoder" else config.decoder_layers
        for index in range(layers):
            target, source = f"{prefix}.layers.{index}", f"{side}/layer_{index}"
            attention = f"{target}.self_attn"
            fused(
                [f"{attention}.q_proj", f"{attention}.k_proj", f"{attention}.v_proj"],
                f"{source}/self_attention/linear_0",
                key_index=1,
            )
            linear(f"{attention}.out_proj", f"{source}/self_attention/linear_1")
            layer_norm(f"{target}.self_attn_layer_norm", f"{source}/self_attention/layer_norm")
            if side == "decoder":
                cross = f"{target}.encoder_attn"
                linear(f"{cross}.q_proj", f"{source}/attention/linear_0")
                fused([f"{cross}.k_proj", f"{cross}.v_proj"], f"{source}/attention/linear_1", key_index=0)
                linear(f"{cross}.out_proj", f"{source}/attention/linear_2")
                layer_norm(f"{target}.encoder_attn_layer_norm", f"{source}/attention/layer_norm")
            linear(f"{target}.fc1", f"{source}/ffn/linear_0")
            linear(f"{target}.fc2", f"{source}/ffn/linear_1")
            layer_norm(f"{target}.final_layer_norm", f"{source}/ffn/layer_norm")
    for conv in ("conv1", "conv2"):
        linear(f"model.encoder.{conv}", f"encoder/{conv}")
    copy("model.decoder.embed_tokens.weight", "decoder/embeddings/weight")
    return state


def convert_ct2_whisper(model: Ct2Model, config: WhisperConfig) -> WhisperForConditionalGeneration:
    """A transformers Whisper holding exactly the CTranslate2 model's weights (float32)."""
    whisper = WhisperForConditionalGeneration(config)
    state = _state_dict(model, config)
    missing, unexpected = whisper.load_state_dict(state, strict=False)
    # proj_out is tied to embed_tokens; everything else must be covered exactly.
    missing = [name for name in missing if name != "proj_out.weight"]
    if missing or unexpected:
        raise SourceError(f"conversion left weights unmatched: missing {missing}, unexpected {unexpected}")
    whisper.tie_weights()
    return whisper.eval()
