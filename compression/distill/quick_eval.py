"""Quick CER/WER of a model on a split from cached encoder outputs (one window per utterance).

For students sharing a frozen encoder this skips the encoder, the expensive part on a CPU, and is
otherwise the greedy, language-given decoding of ``hush eval`` without timestamps; scored with the
same normaliser. ``hush eval VARIANT`` remains the reference measurement (it also times latency).
:func:`compare_quick` pairs two variants' scores on the same utterances, as ``hush eval compare``.
The transcripts go to a :class:`~compression.evaluation.hypotheses.HypothesisLog` of their own
(decoding ``quick``), so a variant's weights are decoded once per split and a killed run resumes.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from compression.data.corpus import Utterance
from compression.distill.cached_decoding import CachedGreedyDecoder
from compression.evaluation.hypotheses import Hypothesis, HypothesisLog, score_hypotheses
from compression.training.encoder_cache import EncoderCache
from model_store.scoring import UtteranceScore, compare_by_language, summarize

POOLED_ROW = "all"  # the pooled row of a comparison: every compared utterance together


@dataclass(frozen=True)
class QuickScore:
    utterances: int
    cer: float
    wer: float


@dataclass(frozen=True)
class QuickComparison:
    """CER of a variant and of a reference on the same utterances, and variant - reference with its
    paired bootstrap interval (negative: the variant makes fewer character errors)."""

    utterances: int
    reference_cer: float
    variant_cer: float
    difference: float
    low: float
    high: float
    verdict: str


def quick_scores(
    decoder: CachedGreedyDecoder,
    cache: EncoderCache,
    corpus_id: str,
    utterances: Sequence[Utterance],
    log: HypothesisLog,
    *,
    progress: bool = True,
) -> list[UtteranceScore]:
    """Each scorable utterance's edits (normalised text) by ``decoder``: the transcripts ``log`` holds
    are read instead of decoded again, and new ones are appended to it."""

    def transcribe(utterance: Utterance) -> Hypothesis:
        started = time.perf_counter()
        text = decoder.text(cache.load(corpus_id, utterance.id).float(), utterance.language)
        return Hypothesis.of(utterance, text, time.perf_counter() - started)

    return score_hypotheses(
        log.complete(utterances, transcribe, desc="quick eval", progress=progress).values()
    )


def summarize_quick(scores: Sequence[UtteranceScore]) -> dict[str, QuickScore]:
    """Per-language CER and WER of ``scores``."""
    return {
        language: QuickScore(summary.utterances, round(summary.cer, 4), round(summary.wer, 4))
        for language, summary in summarize(scores).items()
    }


def compare_quick(
    reference: Sequence[UtteranceScore], variant: Sequence[UtteranceScore], *, resamples: int = 1000
) -> dict[str, QuickComparison]:
    """Per language and pooled over all (:data:`POOLED_ROW`): variant against reference on the
    utterances both scored, with paired bootstrap intervals of the CER difference."""
    return {
        row.language: QuickComparison(
            utterances=row.utterances,
            reference_cer=round(row.cer_a, 4),
            variant_cer=round(row.cer_b, 4),
            difference=round(row.difference.estimate, 4),
            low=round(row.difference.low, 4),
            high=round(row.difference.high, 4),
            verdict=row.difference.verdict,
        )
        for row in compare_by_language(reference, variant, resamples=resamples, pooled=POOLED_ROW)
    }
