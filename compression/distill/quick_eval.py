"""Quick CER/WER of a model on a split from cached encoder outputs (one window per utterance).

For students sharing a frozen encoder this skips the encoder, the expensive part on a CPU, and is
otherwise the greedy, language-given decoding of ``hush eval`` without timestamps; scored with the
same normaliser. ``hush eval VARIANT`` remains the reference measurement (it also times latency).
:func:`compare_quick` pairs two variants' scores on the same utterances, as ``hush eval compare``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from compression.data.corpus import Utterance
from compression.distill.cached_decoding import CachedGreedyDecoder
from compression.training.encoder_cache import EncoderCache
from model_store.scoring import ErrorCounts, UtteranceScore, paired_difference_ci, score_utterance, summarize

ALL_LANGUAGES = "all"  # the pooled row of a comparison: every compared utterance together


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
    *,
    progress: bool = True,
) -> list[UtteranceScore]:
    """Each scorable utterance's edits (normalised text) by ``decoder``."""
    scores: list[UtteranceScore] = []
    for utterance in tqdm(utterances, desc="quick eval", unit="utt", disable=not progress):
        text = decoder.text(cache.load(corpus_id, utterance.id).float(), utterance.language)
        score = score_utterance(utterance.id, utterance.language, utterance.text, text)
        if score is not None:
            scores.append(score)
    return scores


def summarize_quick(scores: Sequence[UtteranceScore]) -> dict[str, QuickScore]:
    """Per-language CER and WER of ``scores``."""
    return {
        language: QuickScore(summary.utterances, round(summary.cer, 4), round(summary.wer, 4))
        for language, summary in summarize(scores).items()
    }


def compare_quick(
    reference: Sequence[UtteranceScore], variant: Sequence[UtteranceScore], *, resamples: int = 1000
) -> dict[str, QuickComparison]:
    """Per language and pooled over all (:data:`ALL_LANGUAGES`): variant against reference on the
    utterances both scored, with paired bootstrap intervals of the CER difference."""
    by_id = {score.utterance_id: score for score in reference}
    pairs = [(by_id[score.utterance_id], score) for score in variant if score.utterance_id in by_id]
    groups = {
        language: [pair for pair in pairs if pair[0].language == language]
        for language in sorted({a.language for a, _ in pairs})
    }
    groups[ALL_LANGUAGES] = pairs
    result = {}
    for language, group in groups.items():
        ours = [b for _, b in group]
        theirs = [a for a, _ in group]
        difference = paired_difference_ci(theirs, ours, metric="cer", resamples=resamples)
        result[language] = QuickComparison(
            utterances=len(group),
            reference_cer=round(_pooled_cer(theirs), 4),
            variant_cer=round(_pooled_cer(ours), 4),
            difference=round(difference.estimate, 4),
            low=round(difference.low, 4),
            high=round(difference.high, 4),
            verdict=difference.verdict,
        )
    return result


def _pooled_cer(scores: Sequence[UtteranceScore]) -> float:
    return sum((score.chars for score in scores), ErrorCounts.zero()).rate
