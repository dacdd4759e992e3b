"""hush's offline commands: importing, building the corpus, evaluating, compressing."""

from __future__ import annotations

from typing import Annotated

import typer

from compression.importers.publish import import_to_store
from model_store.settings import HushSettings
from model_store.store import ModelStore


def register(cli: typer.Typer) -> None:
    """Add compression's commands to the ``hush`` command line."""
    store_group = next(group.typer_instance for group in cli.registered_groups if group.name == "store")
    assert store_group is not None, "model_store.cli defines the store group"
    store_group.command("import")(store_import)
    store_group.command("bootstrap")(store_bootstrap)
    from compression.data.cli import data_app
    from compression.evaluation.cli import eval_command
    from compression.experts.cli import experts_command
    from compression.quantize.cli import compress_app

    compress_app.command("experts")(experts_command)

    cli.add_typer(data_app, name="data", help="Build the evaluation and training speech corpus.")
    from compression.distill.cli import distill_command, quick_eval_command

    compress_app.command("distill")(distill_command)
    compress_app.command("quick-eval")(quick_eval_command)
    cli.add_typer(compress_app, name="compress")
    cli.command("eval")(eval_command)


def store_import(
    source: Annotated[
        str,
        typer.Argument(
            help="A bundled model (whisper-base, whisper-tiny.en), a checkpoint directory, or a hub id."
        ),
    ],
    variant_id: Annotated[
        str | None, typer.Option("--id", help="Variant id; default from the source.")
    ] = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing variant with this id.")] = False,
) -> None:
    """Import a Whisper checkpoint into the store as a variant (weights checked against their pin)."""
    if not source.strip():
        raise typer.BadParameter(
            "is empty: name a bundled model, a directory or a hub id", param_hint="SOURCE"
        )
    store = ModelStore(HushSettings().store.root)
    manifest = import_to_store(store, source, variant_id, replace=replace)
    typer.echo(
        f"imported {manifest.id}: {manifest.parameters:,} parameters, {manifest.bytes_on_disk:,} bytes",
        err=True,
    )


def store_bootstrap(
    evaluate: Annotated[bool, typer.Option(help="Evaluate every variant on the dev split.")] = True,
) -> None:
    """Build the default store: import the bundled teachers, make their int8 variants, evaluate them."""
    from compression.bootstrap import BootstrapPlan, bootstrap

    settings = HushSettings()
    store = bootstrap(settings, BootstrapPlan(evaluate=evaluate, log=lambda line: typer.echo(line, err=True)))
    typer.echo(f"store ready at {store.root}: {', '.join(store.ids())}", err=True)
