"""The ``hush`` command line. The store's own commands live here; compression and the server plug
theirs in through the ``hush.commands`` entry points, so no side imports the other."""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from pydantic import ValidationError

from model_store import __version__
from model_store.audio import decode_audio
from model_store.errors import HushError
from model_store.opener import open_variant
from model_store.settings import HushSettings, describe_invalid_settings
from model_store.store import ModelStore
from model_store.transcription import DEFAULT_TEMPERATURES, TranscribeOptions

logger = logging.getLogger("hush")

cli = typer.Typer(
    name="hush",
    help="hush: compressed Whisper models, measured and served.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
store_app = typer.Typer(
    help="List, inspect, import and remove variants in the model store.", no_args_is_help=True
)
cli.add_typer(store_app, name="store")


def settings() -> HushSettings:
    return HushSettings()


def open_store() -> ModelStore:
    return ModelStore(settings().store.root)


def _human_bytes(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


@store_app.command("ls")
def store_ls() -> None:
    """List the variants with size, tier, languages and measured figures."""
    store = open_store()
    manifests = store.list()
    if not manifests:
        typer.echo(f"no variants in {store.root} (import one: hush store import whisper-base)", err=True)
        return
    id_width = max(28, *(len(manifest.id) for manifest in manifests))  # columns stay aligned
    recipe_width = max(12, *(len(manifest.recipe.method) for manifest in manifests))
    dtype_width = max(8, *(len(manifest.dtype) for manifest in manifests))  # mixed precision: int2/3/4/5/6
    header = (
        f"{'id':<{id_width}} {'recipe':<{recipe_width}} {'tier':<6} {'device':<6} {'dtype':<{dtype_width}} {'size':>9} "
        f"{'langs':<11} {'CER':>6} {'ms/s':>7}"
    )
    typer.echo(header)
    for manifest in manifests:
        languages = languages_cell(manifest.languages)
        cer = "-"
        if manifest.eval is not None and manifest.eval.languages:
            scores = manifest.eval.languages.values()
            pooled = sum(score.char_edits for score in scores) / max(
                1, sum(score.ref_chars for score in scores)
            )
            cer = f"{pooled:.3f}"
        latency = f"{manifest.latency.ms_per_audio_second:.1f}" if manifest.latency else "-"
        typer.echo(
            f"{manifest.id:<{id_width}} {manifest.recipe.method:<{recipe_width}} {manifest.size_tier:<6} "
            f"{manifest.device:<6} "
            f"{manifest.dtype:<{dtype_width}} {_human_bytes(manifest.bytes_on_disk):>9} {languages:<11} {cer:>6} {latency:>7}"
        )


def languages_cell(languages: Sequence[str], width: int = 11) -> str:
    """``*`` for every language, the list where it fits (``es,fr,it,ru``), else a count (``27 langs``):
    never a list cut in the middle."""
    if "*" in languages:
        return "*"
    listed = ",".join(languages)
    return listed if len(listed) <= width else f"{len(languages)} langs"


@store_app.command("show")
def store_show(variant_id: str) -> None:
    """Print a variant's manifest as JSON."""
    typer.echo(open_store().get(variant_id).model_dump_json(indent=2))


@store_app.command("rm")
def store_rm(variant_id: str) -> None:
    """Remove a variant from the store."""
    open_store().remove(variant_id)
    typer.echo(f"removed {variant_id}", err=True)


@store_app.command("verify")
def store_verify(variant_id: str) -> None:
    """Check a variant's weights against the SHA-256 in its manifest."""
    manifest = open_store().verify(variant_id)
    typer.echo(f"{variant_id}: {len(manifest.weights)} files match their SHA-256", err=True)


@cli.command("transcribe")
def transcribe(
    file: Annotated[
        Path,
        typer.Argument(
            help="Audio file (wav, flac, mp3, ogg, m4a, webm, ...).",
            exists=True,
            dir_okay=False,
            readable=True,
        ),
    ],
    model: Annotated[
        str | None,
        typer.Option("--model", "-m", help="Variant id; default: whisper-base if stored, else the first id."),
    ] = None,
    language: Annotated[
        str | None, typer.Option("--language", "-l", help="ISO code; default: detect.")
    ] = None,
    task: Annotated[str, typer.Option(help="transcribe or translate (to English).")] = "transcribe",
    segments: Annotated[bool, typer.Option("--segments", help="Print timed segments to stderr.")] = False,
    temperature: Annotated[
        float | None,
        typer.Option(help="Decode at this temperature only; default: 0 with Whisper's fallback."),
    ] = None,
) -> None:
    """Transcribe FILE: the transcript goes to stdout, everything else to stderr."""
    if task not in ("transcribe", "translate"):
        raise typer.BadParameter("task must be 'transcribe' or 'translate'", param_hint="--task")
    if temperature is not None and not 0.0 <= temperature <= 1.0:  # NaN fails too
        raise typer.BadParameter(f"{temperature} is not between 0 and 1", param_hint="--temperature")
    hush_settings = settings()
    store = ModelStore(hush_settings.store.root)
    variant_id = _default_variant(store) if model is None else model
    if task == "translate" and not store.get(variant_id).multilingual:
        raise HushError(f"{variant_id} is English-only: it cannot translate; pick a multilingual variant")
    audio = decode_audio(file)
    transcriber = open_variant(
        store, variant_id, hush_settings.runtime, verify=hush_settings.store.verify_on_open
    )
    temperatures = DEFAULT_TEMPERATURES if temperature is None else (temperature,)
    options = TranscribeOptions(language=language, task=task, temperatures=temperatures)  # type: ignore[arg-type]
    result = transcriber.transcribe(audio, options)
    if segments:
        for segment in result.segments:
            typer.echo(f"[{segment.start:7.2f} -> {segment.end:7.2f}] {segment.text.strip()}", err=True)
    detected = f" (p={result.language_probability:.2f})" if result.language_probability is not None else ""
    typer.echo(
        f"{variant_id}: language {result.language}{detected}, {result.duration:.1f} s of audio", err=True
    )
    typer.echo(result.text)


def _default_variant(store: ModelStore) -> str:
    ids = store.ids()
    if not ids:
        raise HushError(f"the store {store.root} is empty: run `hush store import whisper-base` first")
    return "whisper-base" if "whisper-base" in ids else ids[0]


@cli.callback()
def _root(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    level = logging.DEBUG if verbose else getattr(logging, settings().log_level)
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


@cli.command("version")
def version() -> None:
    """Print hush's version."""
    typer.echo(__version__)


def load_plugins(root: typer.Typer) -> None:
    """Let compression and the server add their commands (``hush.commands`` entry points)."""
    for entry in entry_points(group="hush.commands"):
        try:
            register = entry.load()
        except ImportError as error:  # a side not installed, or broken: the rest still works
            logger.warning("commands of %s unavailable: %s", entry.name, error)
            continue
        register(root)


def main() -> None:
    """The ``hush`` command. A user's mistake (a bad setting, option, path or id) ends in one line
    ``error: ...`` and exit status 2, never a traceback; ``--verbose`` logs the traceback too."""
    load_plugins(cli)
    try:
        cli()
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise SystemExit(130) from None
    except ValidationError as error:  # settings read from HUSH_* variables (or .env)
        settings_error = error.title.endswith("Settings")
        _fail(describe_invalid_settings(error) if settings_error else str(error).replace("\n", "; "), error)
    except HushError as error:  # hush's own refusals: the message is the whole story
        _fail(str(error), error)
    except (ValueError, OSError) as error:  # a bad value or path, or a bug: say where to see more
        hint = "" if logger.isEnabledFor(logging.DEBUG) else " (hush --verbose ... logs the traceback)"
        _fail(f"{error}{hint}", error)


def _fail(message: str, error: BaseException) -> NoReturn:
    logger.debug("traceback of the error below", exc_info=error)
    typer.echo(f"error: {message}", err=True)
    raise SystemExit(2) from error


if __name__ == "__main__":
    main()
