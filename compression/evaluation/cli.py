"""``hush eval VARIANT``, ``hush eval compare A B``, ``hush eval table ...`` and ``hush eval language-id ...``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from compression.data.corpus import Corpus, newest_corpus
from compression.evaluation.language_id import identify_languages, language_id_table
from compression.evaluation.latency import measure_latency
from compression.evaluation.latency_clips import latency_clips
from compression.evaluation.runner import EvalJob, compare_variants, evaluate_variant
from compression.evaluation.table import markdown_table
from model_store.manifest import EvalReport, Manifest
from model_store.settings import HushSettings, RuntimeSettings
from model_store.store import ModelStore


def find_corpus(settings: HushSettings, explicit: Path | None = None) -> Corpus:
    """The corpus named, configured, or the only/newest one built under <home>/corpus."""
    chosen = explicit or settings.eval.corpus
    if chosen is not None:
        return Corpus.open(chosen)
    newest = newest_corpus(settings.corpus_root)
    if newest is None:
        raise typer.BadParameter(
            f"no corpus under {settings.corpus_root}: build one with `hush data build` or pass --corpus"
        )
    return Corpus.open(newest)


def print_report(variant_id: str, report: EvalReport | None, manifest: Manifest) -> None:
    if report is not None:
        _print_scores(variant_id, report)
    if manifest.latency:
        latency = manifest.latency
        typer.echo(
            f"{variant_id} latency: {latency.ms_per_audio_second:.1f} ms per audio second "
            f"(RTF {latency.real_time_factor:.3f}), peak memory {latency.peak_memory_bytes / 2**20:.0f} MiB, "
            f"load {latency.load_seconds:.2f} s, {latency.machine.threads} threads on {latency.machine.cpu}"
        )


def _print_scores(variant_id: str, report: EvalReport) -> None:
    typer.echo(
        f"\n{variant_id} on {report.corpus_id} ({report.split}), corpus sha256 {report.corpus_sha256[:12]}"
    )
    typer.echo(f"{'lang':<5} {'utts':>5} {'min':>6} {'CER':>7} {'95% CI':>17} {'WER':>7} {'CER raw':>8}")
    for language, score in sorted(report.languages.items()):
        low, high = score.cer_ci95 or (float("nan"), float("nan"))
        typer.echo(
            f"{language:<5} {score.utterances:>5} {score.audio_seconds / 60:>6.1f} {score.cer:>7.3f} "
            f"[{low:>6.3f}, {high:>6.3f}] {score.wer:>7.3f} {score.cer_raw:>8.3f}"
        )


def eval_command(
    targets: Annotated[
        list[str],
        typer.Argument(help="VARIANT..., or: compare A B, or: table VARIANT..., or: language-id VARIANT..."),
    ],
    split: Annotated[
        str | None, typer.Option(help="train, dev or test (default from settings: dev).")
    ] = None,
    languages: Annotated[str | None, typer.Option(help="Comma-separated languages; default all.")] = None,
    corpus: Annotated[Path | None, typer.Option(help="Corpus directory; default the one built.")] = None,
    latency: Annotated[bool, typer.Option(help="Also measure latency on this machine.")] = True,
    accuracy: Annotated[
        bool,
        typer.Option(help="Transcribe the split and record CER/WER; --no-accuracy only re-measures latency."),
    ] = True,
    per_language: Annotated[
        int | None, typer.Option(min=1, help="Only the first N utterances per language (a quick slice).")
    ] = None,
) -> None:
    """Evaluate a variant on the corpus and record CER/WER per language and latency in its manifest.

    `hush eval compare A B` prints per-language CER differences (B - A) with paired bootstrap intervals.
    `hush eval table A B ...` prints the recorded figures side by side as a markdown table (`!`: CER
    over 0.5 points above the variant's parent on that language).
    `hush eval language-id A B ...` prints how often each variant identifies the split's languages
    (first 30 s of each utterance) and how long a detection takes; nothing is recorded.
    """
    settings = HushSettings()
    store = ModelStore(settings.store.root)
    if targets[0] == "table":
        _table(store, targets[1:])
        return
    if not accuracy and not latency:
        raise typer.BadParameter("--no-accuracy with --no-latency leaves nothing to measure")
    job = EvalJob(
        corpus=find_corpus(settings, corpus),
        split=split or settings.eval.split,
        languages=languages.split(",") if languages else None,
        hypotheses_root=settings.eval_dir,
        bootstrap_resamples=settings.eval.bootstrap_resamples,
        max_per_language=per_language,
    )
    if targets[0] == "language-id":
        _language_id(store, targets[1:], job, settings)
        return
    if targets[0] == "compare":
        if len(targets) != 3:
            raise typer.BadParameter("usage: hush eval compare A B")
        _compare(store, targets[1], targets[2], job, settings.runtime)
        return
    for variant_id in targets:
        report = None
        if accuracy:
            report = evaluate_variant(
                store, variant_id, job, settings.runtime, routing_split=settings.eval.split
            )
            recorded = store.get(variant_id).eval
            if recorded != report and recorded is not None:
                typer.echo(
                    f"{variant_id}: this {report.split} report is printed, not recorded: the manifest keeps "
                    f"its {recorded.split} report, which routing uses (HUSH_EVAL__SPLIT={settings.eval.split})",
                    err=True,
                )
        if latency:
            manifest = store.get(variant_id)
            clips = latency_clips(
                job.corpus, manifest, settings.eval.latency_clips, settings.eval.latency_clip_seconds
            )
            measured = measure_latency(
                settings.store.root, variant_id, clips, settings.eval.latency_runs, settings.runtime
            )
            store.update(variant_id, latency=measured)
        print_report(variant_id, report, store.get(variant_id))


def _compare(
    store: ModelStore, variant_a: str, variant_b: str, job: EvalJob, runtime: RuntimeSettings
) -> None:
    rows = compare_variants(store, variant_a, variant_b, job, runtime)
    typer.echo(
        f"CER of {variant_b} minus {variant_a} on {job.corpus.id} ({job.split}); negative: B is better"
    )
    typer.echo(f"{'lang':<5} {'utts':>5} {'CER A':>7} {'CER B':>7} {'B-A':>8} {'95% CI':>19}  verdict for B")
    for row in rows:
        diff = row.difference
        typer.echo(
            f"{row.language:<5} {row.utterances:>5} {row.cer_a:>7.3f} {row.cer_b:>7.3f} {diff.estimate:>+8.3f} "
            f"[{diff.low:>+7.3f}, {diff.high:>+7.3f}]  {diff.verdict}"
        )


def _table(store: ModelStore, variant_ids: list[str]) -> None:
    if not variant_ids:
        raise typer.BadParameter("usage: hush eval table VARIANT [VARIANT ...]")
    manifests = [store.get(variant_id) for variant_id in variant_ids]
    known = set(store.ids())
    parents = {m.id: store.get(m.parent) for m in manifests if m.parent is not None and m.parent in known}
    for line in markdown_table(manifests, parents):
        typer.echo(line)


def _language_id(store: ModelStore, variant_ids: list[str], job: EvalJob, settings: HushSettings) -> None:
    if not variant_ids:
        raise typer.BadParameter("usage: hush eval language-id VARIANT [VARIANT ...]")
    utterances = job.select(job.corpus.utterances(job.split, job.languages))
    results = []
    for variant_id in variant_ids:
        try:
            results.append(identify_languages(store, variant_id, utterances, settings.runtime))
        except ValueError as error:
            raise typer.BadParameter(str(error)) from None
    typer.echo(
        f"language identification on {job.corpus.id} ({job.split_label}), {len(utterances)} utterances"
    )
    for line in language_id_table(results):
        typer.echo(line)
