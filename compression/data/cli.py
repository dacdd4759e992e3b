"""``hush data``: build the speech corpus, show its statistics, list the system packages it needs.

Run it standalone with ``python -m compression.data.cli build ...`` until it is wired under ``hush data``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Annotated

import typer

from compression.cli_options import comma_list
from compression.data.build import DEFAULT_MAX_DEV, DEFAULT_MAX_TEST, BuildOptions, build
from compression.data.corpus import CORPUS_FILE, Corpus
from compression.data.report import format_summary
from compression.data.system_deps import apt_install_command, debian_packages, missing_packages
from model_store.settings import HushSettings

data_app = typer.Typer(help="Build and inspect hush's speech corpus.", no_args_is_help=True)


def _names(value: str | None) -> tuple[str, ...] | None:
    if value is None:
        return None
    names = comma_list(value)
    return names or None


@data_app.command("build")
def build_command(
    out: Annotated[
        Path | None, typer.Option(help="Corpora go to OUT/<corpus-id>/ (default: <home>/corpus)")
    ] = None,
    languages: Annotated[
        str | None, typer.Option(help="Comma list of ISO 639-1 codes (default: all)")
    ] = None,
    sources: Annotated[
        str | None,
        typer.Option(
            help="Comma list: asterisk, fillets, smoke, udhr-espeak, udhr-festival, udhr-piper; udhr (the "
            "three udhr-*), recorded (asterisk, fillets, smoke) (default: all)"
        ),
    ] = None,
    limit_per_language: Annotated[
        int | None, typer.Option(min=0, help="Quick slice: utterances per language")
    ] = None,
    max_dev: Annotated[int, typer.Option(min=0, help="Dev utterances per language")] = DEFAULT_MAX_DEV,
    max_test: Annotated[int, typer.Option(min=0, help="Test utterances per language")] = DEFAULT_MAX_TEST,
    jobs: Annotated[int, typer.Option(min=1, help="Worker processes")] = max(1, os.cpu_count() or 1),
    cache: Annotated[Path | None, typer.Option(help="Package cache (default: <home>/cache)")] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar")] = True,
) -> None:
    """Build the corpus (or finish a build that was stopped), then print its table."""
    settings = HushSettings()
    options = BuildOptions(
        out=out if out is not None else settings.corpus_root,
        cache=cache if cache is not None else settings.cache_dir,
        languages=_names(languages),
        sources=_names(sources),
        limit_per_language=limit_per_language,
        max_dev=max_dev,
        max_test=max_test,
        jobs=jobs,
        progress=progress,
    )
    # A plain SIGTERM would leave the worker processes behind: exit through Python's cleanup instead,
    # which stops handing out work and lets the running jobs finish their files.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    result = build(options)  # a DataError ends the command as every hush error does (hush's main)
    info = json.loads((result.directory / CORPUS_FILE).read_text(encoding="utf-8"))
    typer.echo(format_summary(info, str(result.directory)))
    if result.left_out:
        typer.echo(f"{len(result.left_out)} utterances left out after the split (see the log)")


@data_app.command("stats")
def stats_command(
    path: Annotated[Path, typer.Argument(help="A corpus directory (<out>/<corpus-id>)")],
) -> None:
    """Print the table of a built corpus from its corpus.json."""
    corpus = Corpus.open(path)
    typer.echo(format_summary(corpus.info, str(corpus.directory)))


@data_app.command("deps")
def deps_command(
    missing: Annotated[bool, typer.Option(help="Only the packages not installed here")] = False,
) -> None:
    """Print the apt-get line that installs the Debian packages the build needs."""
    packages = missing_packages() if missing else debian_packages()
    typer.echo(apt_install_command(packages) if packages else "nothing is missing")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    data_app()
