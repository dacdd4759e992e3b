"""``hush compress quantize PARENT --method M``: publish a quantized variant of a stored one."""

from __future__ import annotations

from typing import Annotated

import typer

from compression.quantize.methods import METHODS, quantize_variant
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
) -> None:
    """Quantize PARENT with METHOD and publish the result as a new variant."""
    store = ModelStore(HushSettings().store.root)
    manifest = quantize_variant(
        store, parent, method, variant_id, replace=replace, audio_context_seconds=audio_context
    )
    typer.echo(
        f"published {manifest.id}: {manifest.recipe.method} of {manifest.parent}, {manifest.backend} "
        f"{manifest.dtype} on {manifest.device}, {manifest.bytes_on_disk:,} bytes",
        err=True,
    )
