"""``hush compress experts``: train language experts (or a baseline) and publish them as a variant."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, cast

import typer

from compression.cli_options import comma_list
from compression.evaluation.cli import find_corpus
from compression.experts.job import ExpertsJob, MissingTrainDataError, run_experts_job
from compression.experts.students import METHODS, Method
from compression.experts.trainer import TrainingConfig
from compression.training.checkpoint import PlanMismatchError
from model_store.backends.experts.attach import STACKS, ExpertSpec, Stack
from model_store.backends.experts.clsr import EXPERT_KINDS
from model_store.settings import HushSettings
from model_store.store import ModelStore


def experts_command(
    base: Annotated[str, typer.Option(help="Student variant (a float transformers checkpoint).")],
    languages: Annotated[str, typer.Option(help="Comma-separated languages to train, e.g. cs,nl.")],
    teacher: Annotated[
        str | None,
        typer.Option(help="Teacher variant for JS-divergence KD; omit to train on transcripts only."),
    ] = None,
    method: Annotated[
        str, typer.Option(help=f"One of {', '.join(METHODS)} (lora and finetune are the baselines).")
    ] = "clsr",
    expert: Annotated[str, typer.Option(help=f"Expert kind: {', '.join(EXPERT_KINDS)}.")] = "lowrank",
    rank: Annotated[int, typer.Option(min=1, help="Rank of a low-rank expert.")] = 16,
    stacks: Annotated[
        str, typer.Option(help=f"Where the experts go: {', '.join(STACKS)} (comma-separated).")
    ] = ("decoder"),
    steps: Annotated[
        int, typer.Option(min=1, help="Optimiser steps (one batch of one language each).")
    ] = 200,
    batch_size: Annotated[int, typer.Option(min=1)] = 8,
    lr: Annotated[float, typer.Option(help="AdamW learning rate.")] = 1e-4,
    per_language: Annotated[
        int | None, typer.Option(min=1, help="Train on a seeded sample of N utterances per language.")
    ] = None,
    gate_budget: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Target mean gate opening in training (DistilWhisper: 0.5); CLSR only."
        ),
    ] = 0.5,
    train_embeddings: Annotated[
        bool,
        typer.Option(
            help="--method finetune: train the token embedding too (frozen by default, the better recipe)."
        ),
    ] = False,
    seed: Annotated[int, typer.Option()] = 0,
    corpus: Annotated[Path | None, typer.Option(help="Corpus directory; default the one built.")] = None,
    variant_id: Annotated[str | None, typer.Option("--id", help="Id of the new variant.")] = None,
    replace: Annotated[bool, typer.Option(help="Replace an existing variant with this id.")] = False,
    restart: Annotated[
        bool, typer.Option(help="Discard the run's checkpoint and train from the start.")
    ] = False,
    checkpoint_every: Annotated[int, typer.Option(min=1, help="Steps between checkpoints.")] = 50,
) -> None:
    """Train per-language CLSR experts of BASE (optionally distilled from TEACHER) and publish them.

    Only the experts and gates train (or, for the baselines, a LoRA adapter or the whole decoder);
    the encoder's outputs come from the shared encoder cache unless experts sit in the encoder.
    The run keeps checkpoints in <home>/runs/experts/<id>/ and resumes an interrupted run of the
    same plan from there (--restart starts over).
    """
    if method not in METHODS:
        raise typer.BadParameter(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    if expert not in EXPERT_KINDS:
        raise typer.BadParameter(f"unknown expert kind {expert!r}; choose one of: {', '.join(EXPERT_KINDS)}")
    if train_embeddings and method != "finetune":
        raise typer.BadParameter(
            "only --method finetune trains the embedding", param_hint="--train-embeddings"
        )
    if not comma_list(languages):
        raise typer.BadParameter("names no language, e.g. cs,nl", param_hint="--languages")
    settings = HushSettings()
    if settings.runtime.threads:
        import torch

        torch.set_num_threads(settings.runtime.threads)
    try:
        spec = ExpertSpec(kind=expert, rank=rank, stacks=cast(tuple[Stack, ...], comma_list(stacks)))
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    job = ExpertsJob(
        base=base,
        languages=comma_list(languages),
        method=cast(Method, method),
        teacher=teacher,
        spec=spec,
        training=TrainingConfig(
            steps=steps, batch_size=batch_size, learning_rate=lr, seed=seed, gate_budget=gate_budget
        ),
        max_per_language=per_language,
        train_embeddings=train_embeddings,
        variant_id=variant_id,
    )
    run_dir = settings.runs_dir / "experts" / (job.variant_id or job.default_id())
    try:
        manifest = run_experts_job(
            ModelStore(settings.store.root),
            find_corpus(settings, corpus),
            job,
            cache_root=settings.cache_dir / "encoder",
            run_dir=run_dir,
            restart=restart,
            checkpoint_every=checkpoint_every,
            replace=replace,
            log=lambda line: typer.echo(line, err=True),
        )
    except PlanMismatchError as error:
        typer.echo(
            f"error: {error}; pass --restart to discard it, or --id to train another variant", err=True
        )
        raise typer.Exit(2) from error
    except MissingTrainDataError as error:
        raise typer.BadParameter(str(error), param_hint="--languages") from None
    typer.echo(
        f"published {manifest.id}: {manifest.recipe.method} of {manifest.parent} for "
        f"{', '.join(manifest.languages)}, {manifest.bytes_on_disk:,} bytes",
        err=True,
    )
