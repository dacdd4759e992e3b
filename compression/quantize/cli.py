"""``hush compress quantize PARENT --method M``: publish a quantized variant of a stored one."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compression.evaluation.cli import find_corpus
from compression.quantize.calibration import calibration_utterances
from compression.quantize.methods import METHODS, quantize_variant
from compression.quantize.smoothed_parent import SmoothingPlan
from model_store.manifest import EncoderAttention
from model_store.settings import HushSettings
from model_store.store import ModelStore

compress_app = typer.Typer(help="Make compressed variants of the store's models.", no_args_is_help=True)

_METHOD_HELP = "One of: " + "; ".join(f"{name} ({spec.summary})" for name, spec in METHODS.items())


@compress_app.command("quantize")
def quantize_command(
    parent: Annotated[str, typer.Argument(help="The variant to quantize (a float transformers variant).")],
    method: Annotated[str, typer.Option("--method", "-m", help=_METHOD_HELP)],
    variant_id: Annotated[
        str | None, typer.Option("--id", help="Id of the new variant; default PARENT-METHOD.")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing variant with this id.")] = False,
    audio_context: Annotated[
        float | None,
        typer.Option(
            min=1,
            max=30,
            help="Trim the encoder's input to the audio plus about 1 s of padding, at least this many "
            "seconds (CTranslate2 methods; default: Whisper's full 30 s). Faster on short clips, at an "
            "accuracy cost that `hush eval` measures per language.",
        ),
    ] = None,
    smooth: Annotated[
        float | None,
        typer.Option(
            min=0,
            max=1,
            help="Fold SmoothQuant activation smoothing of this strength (alpha; 0.5 is the paper's "
            "default) into the parent first, calibrated on the corpus's train split. For methods that "
            "quantize activations (ptq-int8, ct2-int8...); the default id gains -sqNN.",
        ),
    ] = None,
    encoder_attention: Annotated[
        EncoderAttention,
        typer.Option(
            help="Precision of the encoder's self-attention on a CPU: bfloat16 runs it about twice as fast "
            "where the CPU multiplies bfloat16 natively (AVX512-BF16, AMX), a numerics change that `hush "
            "eval` measures; transformers CPU methods (ptq-int8...); the default id gains -bf16att.",
        ),
    ] = "float32",
    calibration_per_language: Annotated[
        int, typer.Option(min=1, help="Train utterances per corpus language to calibrate smoothing on.")
    ] = 4,
    corpus: Annotated[
        Path | None, typer.Option(help="Corpus directory for calibration (default: the one built).")
    ] = None,
) -> None:
    """Quantize PARENT with METHOD and publish the result as a new variant."""
    settings = HushSettings()
    store = ModelStore(settings.store.root)
    smoothing = None
    if smooth is not None:
        utterances = calibration_utterances(
            find_corpus(settings, corpus), store.verify(parent), calibration_per_language
        )
        smoothing = SmoothingPlan(smooth, utterances)
    manifest = quantize_variant(
        store,
        parent,
        method,
        variant_id,
        replace=replace,
        audio_context_seconds=audio_context,
        smoothing=smoothing,
        encoder_attention=encoder_attention,
    )
    typer.echo(
        f"published {manifest.id}: {manifest.recipe.method} of {manifest.parent}, {manifest.backend} "
        f"{manifest.dtype} on {manifest.device}, {manifest.bytes_on_disk:,} bytes",
        err=True,
    )
