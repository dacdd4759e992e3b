"""The quantization methods and publishing their variants into the store.

| method            | backend      | device | stored on disk                                              |
|-------------------|--------------|--------|-------------------------------------------------------------|
| ptq-int8          | transformers | cpu    | int8 Linear weights + per-channel scales, float16 the rest  |
| ptq-int8-keep-fc2 | transformers | cpu    | as ptq-int8, but the FFNs' fc2 Linears in float16           |
| ptq-int8-per-token| transformers | cpu    | as ptq-int8; encoder, fc2, cross-attn k/v inputs per token  |
| ct2-int8          | ctranslate2  | cpu    | CTranslate2 model.bin, int8 weights (embeddings included)   |
| ct2-int8_float16  | ctranslate2  | cuda   | CTranslate2 model.bin, int8 weights, float16 the rest       |
| bnb-int8          | transformers | cpu    | bitsandbytes LLM.int8 rows + scales, float16 the rest       |
| bnb-nf4           | transformers | cpu    | bitsandbytes packed NF4 blocks + absmax, float16 the rest   |
| fp16              | transformers | cuda   | float16 checkpoint, computed in float16                     |
| bf16              | transformers | cuda   | bfloat16 checkpoint, computed in bfloat16                   |

``device: cpu`` means the variant runs anywhere (bitsandbytes 0.50 runs both of its layer types on
the CPU); ``cuda`` means it is meant for, and only opened on, a machine with a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compression.quantize.bnb import write_bnb
from compression.quantize.half import write_half
from compression.quantize.parent import Parent
from compression.quantize.smoothed_parent import SmoothingPlan, smoothed_model
from compression.quantize.torch_int8 import FFN_OUTPUT, many_rows_and_ffn_outputs, write_ptq_int8
from model_store.errors import HushError
from model_store.manifest import Backend, Device, EncoderAttention, Manifest, Recipe, size_tier_for
from model_store.store import ModelStore

logger = logging.getLogger(__name__)

Writer = Callable[[Parent, Path], dict[str, Any]]


def ctranslate2_writer(quantization: str) -> Writer:
    """A CTranslate2 export. CTranslate2 is imported only when such a method runs, so that the
    transformers methods also work where it is absent (the GPU image hush's device checks run on)."""

    def write(parent: Parent, target: Path) -> dict[str, Any]:
        from compression.quantize.ct2_export import export_ctranslate2

        return export_ctranslate2(parent, target, quantization)

    return write


class UnknownMethodError(HushError, ValueError):
    """A quantization method hush does not implement."""

    def __init__(self, method: str) -> None:
        super().__init__(f"unknown quantization method {method!r}; choose one of: {', '.join(METHODS)}")
        self.method = method


@dataclass(frozen=True)
class QuantizationMethod:
    """How one method turns a float parent into a stored variant."""

    name: str
    backend: Backend
    device: Device  # 'cuda': needs a GPU to run
    dtype: str  # the precision the manifest names
    write: Writer  # fills the staging directory; returns the recipe's arguments
    summary: str
    quantizes_activations: bool = False  # int8 inputs at run time: activation smoothing helps


METHODS: dict[str, QuantizationMethod] = {
    method.name: method
    for method in (
        QuantizationMethod(
            "ptq-int8",
            "transformers",
            "cpu",
            "int8",
            write_ptq_int8,
            "PyTorch dynamic int8 of every Linear (CPU)",
            quantizes_activations=True,
        ),
        QuantizationMethod(
            "ptq-int8-keep-fc2",
            "transformers",
            "cpu",
            "int8",
            lambda parent, target: write_ptq_int8(parent, target, keep_float={FFN_OUTPUT}),
            "PyTorch dynamic int8 of every Linear but the FFNs' second (fc2, kept float16: its "
            "post-GELU input is per-tensor int8's worst case)",
            quantizes_activations=True,
        ),
        QuantizationMethod(
            "ptq-int8-per-token",
            "transformers",
            "cpu",
            "int8",
            lambda parent, target: write_ptq_int8(parent, target, per_token=many_rows_and_ffn_outputs),
            "int8 of every Linear, with activations quantized per token (not per matrix, zero point "
            "per row) in the encoder, every fc2 and the cross-attention keys and values",
            quantizes_activations=True,
        ),
        QuantizationMethod(
            "ct2-int8",
            "ctranslate2",
            "cpu",
            "int8",
            ctranslate2_writer("int8"),
            "CTranslate2 int8 (faster-whisper's engine)",
            quantizes_activations=True,
        ),
        QuantizationMethod(
            "ct2-int8_float16",
            "ctranslate2",
            "cuda",
            "int8_float16",
            ctranslate2_writer("int8_float16"),
            "CTranslate2 int8 weights with float16 compute (GPU)",
            quantizes_activations=True,
        ),
        QuantizationMethod(
            "bnb-int8",
            "transformers",
            "cpu",
            "int8",
            lambda parent, target: write_bnb(parent, target, "int8"),
            "bitsandbytes LLM.int8 through transformers",
        ),
        QuantizationMethod(
            "bnb-nf4",
            "transformers",
            "cpu",
            "nf4",
            lambda parent, target: write_bnb(parent, target, "nf4"),
            "bitsandbytes 4-bit NF4 through transformers",
        ),
        QuantizationMethod(
            "fp16",
            "transformers",
            "cuda",
            "float16",
            lambda parent, target: write_half(parent, target, "float16"),
            "float16 weights and compute (GPU)",
        ),
        QuantizationMethod(
            "bf16",
            "transformers",
            "cuda",
            "bfloat16",
            lambda parent, target: write_half(parent, target, "bfloat16"),
            "bfloat16 weights and compute (GPU)",
        ),
    )
}


def method_named(name: str) -> QuantizationMethod:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownMethodError(name) from None


class AudioContextError(HushError, ValueError):
    """A trimmed audio context asked of a method whose backend cannot run it."""


class EncoderAttentionError(HushError, ValueError):
    """bfloat16 encoder attention asked of a method whose backend or device cannot run it."""


class SmoothingError(HushError, ValueError):
    """Activation smoothing asked of a method that does not quantize activations."""


def variant_id_for(
    parent: str,
    method: str,
    audio_context_seconds: float | None = None,
    smoothing_alpha: float | None = None,
    encoder_attention: EncoderAttention = "float32",
) -> str:
    """The default id of ``parent`` quantized with ``method``: ``whisper-base-ptq-int8``,
    ``whisper-base-ct2-int8-ctx10`` with a 10 s trimmed audio context, ``whisper-base-ptq-int8-sq50``
    smoothed with alpha 0.5, ``whisper-base-ptq-int8-bf16att`` with bfloat16 encoder attention."""
    smoothed = "" if smoothing_alpha is None else f"-sq{round(smoothing_alpha * 100)}"
    context = "" if audio_context_seconds is None else f"-ctx{audio_context_seconds:g}"
    attention = "-bf16att" if encoder_attention == "bfloat16" else ""
    return f"{parent}-{method}{smoothed}{context}{attention}"


def quantize_variant(
    store: ModelStore,
    parent_id: str,
    method: str,
    variant_id: str | None = None,
    *,
    replace: bool = False,
    audio_context_seconds: float | None = None,
    smoothing: SmoothingPlan | None = None,
    encoder_attention: EncoderAttention = "float32",
    progress: bool = True,
) -> Manifest:
    """Make ``method``'s variant of ``parent_id`` and publish it; returns its manifest.

    ``audio_context_seconds`` publishes it with a trimmed audio context (see
    :func:`model_store.features.encoder_frames`); CTranslate2 methods only. ``smoothing`` folds
    SmoothQuant scales into the parent first (see :mod:`compression.quantize.smoothing`); methods
    that quantize activations only. ``encoder_attention="bfloat16"`` runs the encoder's self-attention
    in bfloat16 on CPUs that multiply it natively (see :mod:`model_store.backends.bf16_attention`);
    transformers CPU methods only.
    """
    spec = method_named(method)
    if encoder_attention == "bfloat16" and (spec.backend != "transformers" or spec.device != "cpu"):
        raise EncoderAttentionError(
            f"bfloat16 encoder attention is hush's transformers CPU path; {method!r} runs on "
            f"{spec.backend} ({spec.device})"
        )
    if audio_context_seconds is not None and spec.backend != "ctranslate2":
        raise AudioContextError(
            f"a trimmed audio context needs a CTranslate2 method (ct2-...), not {method!r}: "
            "transformers' Whisper encoder takes 30 s windows only"
        )
    if smoothing is not None and not spec.quantizes_activations:
        smoothable = ", ".join(name for name, other in METHODS.items() if other.quantizes_activations)
        raise SmoothingError(
            f"activation smoothing helps only methods that quantize activations ({smoothable}), not {method!r}"
        )
    parent = Parent.from_store(store, parent_id)
    alpha = None if smoothing is None else smoothing.alpha
    target_id = variant_id or variant_id_for(
        parent_id, method, audio_context_seconds, alpha, encoder_attention
    )
    logger.info("quantizing %s with %s into %s", parent_id, method, target_id)
    with store.publish(target_id, replace=replace) as staging:
        smoothing_record = None
        if smoothing is None:
            args = spec.write(parent, staging.directory)
        else:
            model, smoothing_record = smoothed_model(parent, smoothing, progress=progress)
            with staging.scratch() as scratch:
                smoothed = parent.with_weights(model, scratch)
                del model
                args = spec.write(smoothed, staging.directory)
        parameters = parent.manifest.parameters
        return staging.commit(
            parent=parent_id,
            recipe=Recipe(
                method=method,
                args={
                    **args,
                    "parent_weights_sha256": parent.weights_digest(),
                    "audio_context_seconds": audio_context_seconds,
                    "smoothing": smoothing_record,
                    "encoder_attention": encoder_attention,
                },
            ),
            backend=spec.backend,
            device=spec.device,
            dtype=spec.dtype,
            parameters=parameters,
            size_tier=size_tier_for(parameters),
            multilingual=parent.manifest.multilingual,
            languages=parent.manifest.languages,
            audio_context_seconds=audio_context_seconds,
            encoder_attention=encoder_attention,
        )
