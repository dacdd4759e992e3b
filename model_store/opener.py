"""Opening a stored variant into a runnable :class:`Transcriber`, on the device the settings allow."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from model_store.errors import BackendUnavailableError
from model_store.manifest import Manifest
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import Transcriber

logger = logging.getLogger(__name__)

Opener = Callable[[Manifest, Path, str, RuntimeSettings], Transcriber]


def _open_transformers(
    manifest: Manifest, directory: Path, device: str, runtime: RuntimeSettings
) -> Transcriber:
    import torch

    from model_store.backends.experts import METHOD as EXPERTS_METHOD
    from model_store.backends.quantized_loading import load_device
    from model_store.backends.transformers_backend import TransformersTranscriber

    cuda_dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    device = load_device(manifest, device)  # dynamic int8 runs on the CPU even where a GPU is present
    if device == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"variant {manifest.id!r} was asked to run on cuda (HUSH_RUNTIME__DEVICE), but torch sees no "
            "CUDA GPU here; use HUSH_RUNTIME__DEVICE=auto or cpu"
        )
    logger.info("loading %s (transformers) on %s", manifest.id, device)
    if device == "cpu":
        dtype = torch.float32
    elif manifest.device == "cuda" and manifest.dtype in cuda_dtypes:
        dtype = cuda_dtypes[manifest.dtype]  # a half-precision GPU variant computes in its own dtype
    else:
        dtype = cuda_dtypes[runtime.cuda_dtype]
    if manifest.recipe.method == EXPERTS_METHOD:
        from model_store.backends.experts.transcriber import ExpertsTranscriber

        return ExpertsTranscriber(manifest, directory, device=device, dtype=dtype)
    batching = runtime.batching if batches_windows_here(manifest, runtime) else None
    return TransformersTranscriber(
        manifest,
        directory,
        device=device,
        dtype=dtype,
        batching=batching,
        int8_full_range=runtime.resolved_int8_full_range(),
        bf16_encoder_attention=uses_bf16_attention(manifest, runtime),
    )


def _open_ctranslate2(
    manifest: Manifest, directory: Path, device: str, runtime: RuntimeSettings
) -> Transcriber:
    from model_store.backends.ctranslate2_backend import CTranslate2Transcriber, compute_type_for

    compute_type = compute_type_for(manifest.dtype, device, runtime.cuda_dtype)
    logger.info("loading %s (ctranslate2, %s) on %s", manifest.id, compute_type, device)
    return CTranslate2Transcriber(
        manifest,
        directory,
        device=device,
        compute_type=compute_type,
        threads=runtime.threads,
        batching=runtime.batching if runtime.batching.active(device) else None,
    )


OPENERS: dict[str, Opener] = {"transformers": _open_transformers, "ctranslate2": _open_ctranslate2}


def device_for(manifest: Manifest, runtime: RuntimeSettings) -> str:
    """The device a variant opens on. CTranslate2 variants ask CTranslate2 whether a GPU is there, so
    that serving them never imports torch (about 200 MB of resident memory)."""
    if runtime.device == "auto" and manifest.backend == "ctranslate2":
        import ctranslate2

        return "cuda" if ctranslate2.get_cuda_device_count() > 0 else "cpu"
    return runtime.resolved_device()


def numerics_label(manifest: Manifest, runtime: RuntimeSettings) -> str:
    """What, beside its weights and the decoding, decides a variant's transcripts on this machine, as
    a label for results computed with it (``""`` when nothing does): ``a8`` for dynamic int8 weights
    run with 8-bit activations (``runtime.int8_full_range``), whose transcripts differ from 7-bit ones;
    ``f32`` for them run as float Linears where PyTorch lacks its dynamic int8 Linear (see
    :mod:`model_store.backends.legacy_int8`); ``att32`` for a variant published with bfloat16 encoder attention that runs it in float32 here
    (``runtime.bf16_attention``). Parts are joined with ``-``."""
    if manifest.backend != "transformers":
        return ""
    from model_store.backends import legacy_int8
    from model_store.backends.quantized_loading import weights_format

    parts = []
    if weights_format(manifest) == "torch-dynamic-int8":
        if not legacy_int8.available():
            parts.append("f32")
        elif runtime.resolved_int8_full_range():
            parts.append("a8")
    if manifest.encoder_attention == "bfloat16" and not uses_bf16_attention(manifest, runtime):
        parts.append("att32")
    return "-".join(parts)


def uses_bf16_attention(manifest: Manifest, runtime: RuntimeSettings) -> bool:
    """Whether the variant runs its encoder's self-attention in bfloat16 here: published so, run on a
    CPU (dynamic int8 variants are, even where a GPU is present), and ``runtime.bf16_attention``
    (unset: where the CPU multiplies bfloat16 natively)."""
    if manifest.encoder_attention != "bfloat16":
        return False
    from model_store.backends.quantized_loading import load_device

    runs_on = load_device(manifest, device_for(manifest, runtime))
    return runs_on == "cpu" and runtime.resolved_bf16_attention()


def batches_windows_here(manifest: Manifest, runtime: RuntimeSettings) -> bool:
    """Whether the transformers backend batches this variant's windows here (and so holds a running
    batch's keys and values): batching is active on the device the variant really runs on (dynamic
    int8 stays on the CPU), and it is no language-experts variant (those decode alone)."""
    if manifest.backend != "transformers":
        return False
    from model_store.backends.experts import METHOD as EXPERTS_METHOD

    if manifest.recipe.method == EXPERTS_METHOD:
        return False
    from model_store.backends.quantized_loading import load_device

    return runtime.batching.active(load_device(manifest, device_for(manifest, runtime)))


def runnable_here(manifest: Manifest, runtime: RuntimeSettings) -> bool:
    """Whether this machine can run the variant (a CUDA-only variant needs a GPU)."""
    return manifest.device == "cpu" or runtime.resolved_device() == "cuda"


def open_variant(
    store: ModelStore, variant_id: str, runtime: RuntimeSettings, *, verify: bool = True
) -> Transcriber:
    """Load a variant after checking its weights; raises a typed error if it cannot run here."""
    manifest = store.verify(variant_id) if verify else store.get(variant_id)
    if not runnable_here(manifest, runtime):
        raise BackendUnavailableError(f"variant {variant_id!r} needs a CUDA GPU and none is available here")
    if manifest.backend not in OPENERS:
        raise BackendUnavailableError(
            f"variant {variant_id!r} uses backend {manifest.backend!r}; available: {', '.join(OPENERS)}"
        )
    if runtime.threads and manifest.backend != "ctranslate2":  # CTranslate2 takes its own thread count
        import torch

        torch.set_num_threads(runtime.threads)
    device = device_for(manifest, runtime)
    return OPENERS[manifest.backend](manifest, store.path(variant_id), device, runtime)
