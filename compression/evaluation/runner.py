"""``hush eval``: transcribe a corpus split with a variant, score it per language, record it."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from compression.data.corpus import Corpus, Utterance
from compression.evaluation.hypotheses import (
    Hypothesis,
    HypothesisLog,
    score_hypotheses,
    temperature_decoding,
)
from model_store.manifest import EvalReport, LanguageScore, Manifest
from model_store.opener import numerics_label, open_variant
from model_store.scoring import (
    LanguageComparison,
    bootstrap_ci,
    compare_by_language,
    summarize,
)
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import TranscribeOptions, Transcriber

# Greedy decoding without temperature fallback: deterministic, and what the compression papers report.
# Sampling fallbacks on languages a small model barely knows cost minutes of hallucinated tokens.
EVAL_TEMPERATURES = (0.0,)


@dataclass(frozen=True)
class EvalJob:
    """What to evaluate and where its transcripts are kept."""

    corpus: Corpus
    split: str
    languages: Sequence[str] | None
    hypotheses_root: Path
    bootstrap_resamples: int = 1000
    temperatures: tuple[float, ...] = EVAL_TEMPERATURES
    max_per_language: int | None = None  # a quick, deterministic slice: the first N utterances by id

    @property
    def split_label(self) -> str:
        """The split as recorded in the manifest; a slice says so (``dev:first8``)."""
        return self.split if self.max_per_language is None else f"{self.split}:first{self.max_per_language}"

    def select(self, utterances: Sequence[Utterance]) -> list[Utterance]:
        if self.max_per_language is None:
            return list(utterances)
        taken: dict[str, int] = {}
        chosen = []
        for utterance in sorted(utterances, key=lambda item: item.id):
            if taken.get(utterance.language, 0) < self.max_per_language:
                taken[utterance.language] = taken.get(utterance.language, 0) + 1
                chosen.append(utterance)
        return chosen


def evaluation_options(
    language: str, temperatures: tuple[float, ...] = EVAL_TEMPERATURES
) -> TranscribeOptions:
    """Decoding used for every evaluation: the reference language given, greedy (deterministic)."""
    return TranscribeOptions(language=language, condition_on_previous_text=False, temperatures=temperatures)


def transcribe_split(
    transcriber: Transcriber,
    utterances: Sequence[Utterance],
    log: HypothesisLog,
    *,
    temperatures: tuple[float, ...] = EVAL_TEMPERATURES,
    progress: bool = True,
) -> dict[str, Hypothesis]:
    """Transcribe what the log does not hold yet; returns every utterance's hypothesis."""

    def transcribe(utterance: Utterance) -> Hypothesis:
        audio = utterance.load_audio()
        started = time.perf_counter()
        result = transcriber.transcribe(audio, evaluation_options(utterance.language, temperatures))
        return Hypothesis.of(utterance, result.text, time.perf_counter() - started)

    return log.complete(utterances, transcribe, desc=f"eval {transcriber.manifest.id}", progress=progress)


def build_report(
    hypotheses: Sequence[Hypothesis], corpus: Corpus, split: str, *, resamples: int = 1000
) -> EvalReport:
    scores = score_hypotheses(hypotheses)
    seconds: dict[str, float] = {}
    for record in hypotheses:
        seconds[record.language] = seconds.get(record.language, 0.0) + record.audio_seconds
    languages = {}
    for language, summary in summarize(scores).items():
        mine = [score for score in scores if score.language == language]
        languages[language] = LanguageScore(
            utterances=summary.utterances,
            audio_seconds=round(seconds.get(language, 0.0), 3),
            cer=summary.cer,
            wer=summary.wer,
            cer_raw=summary.cer_raw,
            wer_raw=summary.wer_raw,
            char_edits=summary.chars.edits,
            ref_chars=summary.chars.reference_length,
            word_edits=summary.words.edits,
            ref_words=summary.words.reference_length,
            cer_ci95=bootstrap_ci(mine, metric="cer", resamples=resamples),
        )
    return EvalReport(corpus_id=corpus.id, corpus_sha256=corpus.sha256, split=split, languages=languages)


def evaluate_variant(
    store: ModelStore,
    variant_id: str,
    job: EvalJob,
    runtime: RuntimeSettings,
    *,
    progress: bool = True,
    routing_split: str = "dev",
) -> EvalReport:
    """Evaluate and return the report; record it in the variant's manifest unless
    :func:`records_over` says the manifest's report must stay (see there)."""
    manifest = store.verify(variant_id)
    utterances = job.corpus.utterances(job.split, job.languages)
    utterances = job.select([utterance for utterance in utterances if manifest.covers(utterance.language)])
    if not utterances:
        raise ValueError(
            f"no {job.split} utterances in {job.corpus.id} for the languages {variant_id} covers"
        )
    numerics = numerics_label(manifest, runtime)
    log = _hypothesis_log(job, manifest, numerics)
    transcriber = open_variant(store, variant_id, runtime, verify=False)
    try:
        hypotheses = transcribe_split(
            transcriber, utterances, log, temperatures=job.temperatures, progress=progress
        )
    finally:
        transcriber.close()
    report = merged_with_previous(
        manifest.eval,
        build_report(
            list(hypotheses.values()), job.corpus, job.split_label, resamples=job.bootstrap_resamples
        ).model_copy(update={"numerics": numerics}),
    )
    if records_over(manifest.eval, report, routing_split):
        store.update(variant_id, eval=report)
    return report


def records_over(previous: EvalReport | None, report: EvalReport, routing_split: str) -> bool:
    """Whether ``report`` replaces the manifest's ``previous`` one.

    The router reads the recorded report, so a report on another split than the routing one (``test``,
    measured for final figures) never replaces one on the routing split (or a slice of it); it is
    printed, and its transcripts are kept in the hypothesis log. Anything else is recorded (merged
    with ``previous`` where both are the same corpus and split).
    """
    if previous is None:
        return True
    return base_split(report.split) == routing_split or base_split(previous.split) != routing_split


def base_split(label: str) -> str:
    """``dev`` for ``dev`` and for a slice of it, ``dev:first10``."""
    return label.split(":", 1)[0]


def merged_with_previous(previous: EvalReport | None, report: EvalReport) -> EvalReport:
    """``report`` plus the languages ``previous`` measured on the same corpus and split, with the same
    numerics, that it did not: evaluating a few languages again (``--languages``) must not erase the
    others' figures, which the router reads. Each language keeps the figures of its latest
    measurement (with its own utterance count); where those come from different slices of the split
    (``dev:first8`` and ``dev``), the report's split says ``dev:mixed``."""
    if (
        previous is None
        or previous.corpus_sha256 != report.corpus_sha256
        or base_split(previous.split) != base_split(report.split)
        or previous.numerics != report.numerics
    ):
        return report
    kept = {
        language: score for language, score in previous.languages.items() if language not in report.languages
    }
    if not kept:
        return report
    split = report.split if previous.split == report.split else f"{base_split(report.split)}:mixed"
    return report.model_copy(update={"languages": {**kept, **report.languages}, "split": split})


def _hypothesis_log(job: EvalJob, manifest: Manifest, numerics: str) -> HypothesisLog:
    """The log of the transcripts ``job`` makes with the variant under ``numerics``
    (:func:`~model_store.opener.numerics_label`): one per decoding and numerics, so that a run with
    8-bit activations never reuses, or is compared with, transcripts made with 7-bit ones."""
    decoding = "-".join(part for part in (temperature_decoding(job.temperatures), numerics) if part)
    return HypothesisLog(job.hypotheses_root, manifest, job.corpus.sha256, job.split, decoding)


def compare_variants(
    store: ModelStore, variant_a: str, variant_b: str, job: EvalJob, runtime: RuntimeSettings
) -> list[LanguageComparison]:
    """Per-language CER of B minus A on the utterances both transcribed (with the numerics ``runtime``
    gives each here), with paired bootstrap intervals."""
    logs = []
    for variant in (variant_a, variant_b):
        manifest = store.get(variant)
        logs.append(_hypothesis_log(job, manifest, numerics_label(manifest, runtime)).load())
    for variant, log in zip((variant_a, variant_b), logs, strict=True):
        if not log:
            raise ValueError(
                f"{variant} has no {job.split} transcripts for {job.corpus.id}: run `hush eval {variant}`"
            )
    shared = sorted(set(logs[0]) & set(logs[1]))
    comparisons = compare_by_language(
        score_hypotheses([logs[0][key] for key in shared]),
        score_hypotheses([logs[1][key] for key in shared]),
        resamples=job.bootstrap_resamples,
    )
    return [row for row in comparisons if not job.languages or row.language in job.languages]
