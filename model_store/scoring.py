"""Character and word error rates per utterance and per language, with bootstrap intervals.

Conventions:

* Errors are the minimum Levenshtein edits (substitutions, deletions, insertions) over Unicode code
  points for characters and over whitespace-split words for words. When several alignments have
  the minimum cost, rapidfuzz's ``Levenshtein.editops`` picks one deterministically (the same
  one jiwer reports), so the split into kinds of edits is reproducible.
* CER is computed on the text with whitespace collapsed (``normalizer.raw`` or
  ``normalizer.normalize``), spaces included: a missing word boundary is one error.
* WER splits on whitespace only, so for scripts written without spaces (Chinese, Japanese, Thai) a
  sentence is one "word"; CER is the metric for those languages.
* Empty references (after normalisation) are dropped, as distil-whisper does: a rate has no
  denominator there.
* Rates over many utterances pool counts (summed edits over summed reference lengths), never
  average per-utterance rates, so long utterances weigh what their length says.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt
from rapidfuzz.distance import Levenshtein

from model_store.normalizer import normalize, raw

Metric = Literal["cer", "wer", "cer_raw", "wer_raw"]
Verdict = Literal["better", "worse", "not significant"]
METRICS: tuple[str, ...] = get_args(Metric)
_BOOTSTRAP_CELLS = 1 << 22  # resamples x utterances per chunk: 4M indices, 32 MiB of int64


@dataclass(frozen=True)
class ErrorCounts:
    """Edits that turn a reference into a hypothesis, and the reference's length (chars or words)."""

    substitutions: int
    deletions: int  # reference units missing from the hypothesis
    insertions: int  # hypothesis units not in the reference
    reference_length: int

    @classmethod
    def zero(cls) -> ErrorCounts:
        return cls(0, 0, 0, 0)

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Edits per reference unit; can exceed 1 when the hypothesis has many insertions."""
        if self.reference_length == 0:
            raise ValueError("the error rate is undefined for an empty reference")
        return self.edits / self.reference_length

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(
            self.substitutions + other.substitutions,
            self.deletions + other.deletions,
            self.insertions + other.insertions,
            self.reference_length + other.reference_length,
        )


def _errors(reference: Sequence[str], hypothesis: Sequence[str]) -> ErrorCounts:
    counts = {"replace": 0, "delete": 0, "insert": 0}
    for editop in Levenshtein.editops(reference, hypothesis):
        counts[editop.tag] += 1
    return ErrorCounts(counts["replace"], counts["delete"], counts["insert"], len(reference))


def char_errors(reference: str, hypothesis: str) -> ErrorCounts:
    """Edits over code points; pass text with whitespace already collapsed (spaces count)."""
    return _errors(reference, hypothesis)


def word_errors(reference: str, hypothesis: str) -> ErrorCounts:
    """Edits over whitespace-split words."""
    return _errors(reference.split(), hypothesis.split())


@dataclass(frozen=True)
class UtteranceScore:
    """One utterance's errors, on the raw and on the normalised text."""

    utterance_id: str
    language: str  # ISO 639-1 code
    chars_raw: ErrorCounts  # on raw(): case, punctuation and diacritics count
    words_raw: ErrorCounts
    chars: ErrorCounts  # on normalize(): the headline CER
    words: ErrorCounts

    def counts(self, metric: Metric) -> ErrorCounts:
        """The counts behind one metric."""
        if metric == "cer":
            return self.chars
        if metric == "wer":
            return self.words
        if metric == "cer_raw":
            return self.chars_raw
        if metric == "wer_raw":
            return self.words_raw
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")


def score_utterance(
    utterance_id: str, language: str, reference: str, hypothesis: str
) -> UtteranceScore | None:
    """Score one hypothesis; None when the normalised reference is empty (the utterance is dropped)."""
    reference_norm = normalize(reference, language)
    if not reference_norm:
        return None
    hypothesis_norm = normalize(hypothesis, language)
    reference_raw, hypothesis_raw = raw(reference), raw(hypothesis)
    return UtteranceScore(
        utterance_id=utterance_id,
        language=language,
        chars_raw=char_errors(reference_raw, hypothesis_raw),
        words_raw=word_errors(reference_raw, hypothesis_raw),
        chars=char_errors(reference_norm, hypothesis_norm),
        words=word_errors(reference_norm, hypothesis_norm),
    )


@dataclass(frozen=True)
class LanguageSummary:
    """Counts pooled over one language's utterances; rates are summed edits over summed lengths."""

    language: str
    utterances: int
    chars_raw: ErrorCounts
    words_raw: ErrorCounts
    chars: ErrorCounts
    words: ErrorCounts

    @property
    def cer(self) -> float:
        return self.chars.rate

    @property
    def wer(self) -> float:
        return self.words.rate

    @property
    def cer_raw(self) -> float:
        return self.chars_raw.rate

    @property
    def wer_raw(self) -> float:
        return self.words_raw.rate


def summarize(scores: Sequence[UtteranceScore]) -> dict[str, LanguageSummary]:
    """Pool the scores per language, keyed and ordered by language code."""
    summaries: dict[str, LanguageSummary] = {}
    for language in sorted({score.language for score in scores}):
        mine = [score for score in scores if score.language == language]
        summaries[language] = LanguageSummary(
            language=language,
            utterances=len(mine),
            chars_raw=sum((score.chars_raw for score in mine), ErrorCounts.zero()),
            words_raw=sum((score.words_raw for score in mine), ErrorCounts.zero()),
            chars=sum((score.chars for score in mine), ErrorCounts.zero()),
            words=sum((score.words for score in mine), ErrorCounts.zero()),
        )
    return summaries


def sum_runs(runs: Sequence[Sequence[UtteranceScore]]) -> list[UtteranceScore]:
    """Each utterance's errors and reference lengths summed over several runs of one recipe (e.g.
    the students of several training seeds), for comparisons averaged over those runs: the pooled rate
    of the result is the runs' mean pooled rate, and a paired bootstrap over it resamples utterances
    (not runs, too few to resample).

    Raises ValueError unless every run scored the same utterances, in the same languages, against the
    same references.
    """
    if not runs:
        raise ValueError("no runs to sum")
    first = runs[0]
    aligned = [first] + [_paired(first, run)[1] for run in runs[1:]]
    summed = []
    for scores in zip(*aligned, strict=True):
        if len({score.chars.reference_length for score in scores}) != 1:
            raise ValueError(f"utterance {scores[0].utterance_id!r} has different references in the runs")
        summed.append(
            UtteranceScore(
                utterance_id=scores[0].utterance_id,
                language=scores[0].language,
                chars_raw=sum((score.chars_raw for score in scores), ErrorCounts.zero()),
                words_raw=sum((score.words_raw for score in scores), ErrorCounts.zero()),
                chars=sum((score.chars for score in scores), ErrorCounts.zero()),
                words=sum((score.words for score in scores), ErrorCounts.zero()),
            )
        )
    return summed


def bootstrap_ci(
    scores: Sequence[UtteranceScore],
    *,
    metric: Metric = "cer",
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled rate, resampling utterances with replacement.

    Pass one language's scores for that language's interval; a mixed list pools across languages.
    """
    _check_bootstrap(len(scores), metric, resamples, confidence)
    edits, lengths = _arrays(scores, metric)
    return pooled_rate_ci(edits, lengths, resamples=resamples, seed=seed, confidence=confidence)


def pooled_rate_ci(
    edits: npt.NDArray[np.int64],
    lengths: npt.NDArray[np.int64],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of sum(edits) / sum(lengths), resampling items with replacement."""
    _check_bootstrap(len(edits), "cer", resamples, confidence)
    rates = [
        edits[chunk].sum(axis=1) / np.maximum(lengths[chunk].sum(axis=1), 1)
        for chunk in _resample_indices(len(edits), resamples, seed)
    ]
    return _percentiles(np.concatenate(rates), confidence)


def unpaired_difference_ci(
    a: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    b: tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]],
    *,
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDifference:
    """Bootstrap rate_b - rate_a for two independent samples of (edits, lengths), e.g. two A/B arms
    that served different requests; each side is resampled on its own."""
    (edits_a, lengths_a), (edits_b, lengths_b) = a, b
    _check_bootstrap(min(len(edits_a), len(edits_b)), "cer", resamples, confidence)
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CELLS // max(len(edits_a), len(edits_b)))
    differences = []
    for start in range(0, resamples, rows):
        count = min(rows, resamples - start)
        chunk_a = rng.integers(0, len(edits_a), size=(count, len(edits_a)))
        chunk_b = rng.integers(0, len(edits_b), size=(count, len(edits_b)))
        rate_a = edits_a[chunk_a].sum(axis=1) / np.maximum(lengths_a[chunk_a].sum(axis=1), 1)
        rate_b = edits_b[chunk_b].sum(axis=1) / np.maximum(lengths_b[chunk_b].sum(axis=1), 1)
        differences.append(rate_b - rate_a)
    estimate = float(edits_b.sum() / max(lengths_b.sum(), 1) - edits_a.sum() / max(lengths_a.sum(), 1))
    low, high = _percentiles(np.concatenate(differences), confidence)
    return PairedDifference(estimate, low, high)


@dataclass(frozen=True)
class PairedDifference:
    """Variant b's pooled rate minus variant a's on the same utterances, with its interval."""

    estimate: float  # rate_b - rate_a on all utterances
    low: float
    high: float

    @property
    def verdict(self) -> Verdict:
        return verdict(self.low, self.high)


def paired_difference_ci(
    scores_a: Sequence[UtteranceScore],
    scores_b: Sequence[UtteranceScore],
    *,
    metric: Metric = "cer",
    resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> PairedDifference:
    """Bootstrap rate_b - rate_a, drawing the same utterances for both in every resample.

    Raises ValueError when the two lists do not hold the same utterance ids (each once).
    """
    a, b = _paired(scores_a, scores_b)
    _check_bootstrap(len(a), metric, resamples, confidence)
    edits_a, lengths = _arrays(a, metric)
    edits_b, lengths_b = _arrays(b, metric)
    if not np.array_equal(lengths, lengths_b):
        raise ValueError("the two variants were scored against different references")
    differences = [
        (edits_b[chunk].sum(axis=1) - edits_a[chunk].sum(axis=1)) / lengths[chunk].sum(axis=1)
        for chunk in _resample_indices(len(a), resamples, seed)
    ]
    estimate = float((edits_b.sum() - edits_a.sum()) / lengths.sum())
    low, high = _percentiles(np.concatenate(differences), confidence)
    return PairedDifference(estimate, low, high)


@dataclass(frozen=True)
class LanguageComparison:
    """CER of variants a and b on the utterances of one language that both scored, and b - a."""

    language: str
    utterances: int
    cer_a: float
    cer_b: float
    difference: PairedDifference


def compare_by_language(
    scores_a: Sequence[UtteranceScore],
    scores_b: Sequence[UtteranceScore],
    *,
    resamples: int = 1000,
    pooled: str | None = None,
) -> list[LanguageComparison]:
    """Per language (in code order) of the utterances both a and b scored: each one's CER and the paired
    bootstrap interval of b - a; with ``pooled``, a last row under that name holds every language."""
    by_id_b = {score.utterance_id: score for score in scores_b}
    pairs = [(score, by_id_b[score.utterance_id]) for score in scores_a if score.utterance_id in by_id_b]
    groups = {
        language: [pair for pair in pairs if pair[0].language == language]
        for language in sorted({a.language for a, _ in pairs})
    }
    if pooled is not None:
        groups[pooled] = pairs
    comparisons = []
    for language, group in groups.items():
        a = [score_a for score_a, _ in group]
        b = [score_b for _, score_b in group]
        comparisons.append(
            LanguageComparison(
                language,
                len(group),
                _pooled(a, "cer").rate,
                _pooled(b, "cer").rate,
                paired_difference_ci(a, b, metric="cer", resamples=resamples),
            )
        )
    return comparisons


def _pooled(scores: Sequence[UtteranceScore], metric: Metric) -> ErrorCounts:
    return sum((score.counts(metric) for score in scores), ErrorCounts.zero())


def verdict(low: float, high: float) -> Verdict:
    """Judge an interval of b - a in an error rate: below zero throughout means b makes fewer errors."""
    if high < 0:
        return "better"
    if low > 0:
        return "worse"
    return "not significant"


def _check_bootstrap(utterances: int, metric: Metric, resamples: int, confidence: float) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    if utterances == 0:
        raise ValueError("no utterances to resample")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")


def _arrays(
    scores: Sequence[UtteranceScore], metric: Metric
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    counts = [score.counts(metric) for score in scores]
    edits = np.fromiter((c.edits for c in counts), dtype=np.int64, count=len(counts))
    lengths = np.fromiter((c.reference_length for c in counts), dtype=np.int64, count=len(counts))
    return edits, lengths


def _resample_indices(utterances: int, resamples: int, seed: int) -> Iterator[npt.NDArray[np.int64]]:
    """Index matrices (resamples x utterances), drawn in chunks that keep memory bounded."""
    rng = np.random.default_rng(seed)
    rows = max(1, _BOOTSTRAP_CELLS // utterances)
    for start in range(0, resamples, rows):
        yield rng.integers(0, utterances, size=(min(rows, resamples - start), utterances))


def _percentiles(values: npt.NDArray[np.float64], confidence: float) -> tuple[float, float]:
    tail = (1 - confidence) / 2
    low, high = np.quantile(values, [tail, 1 - tail])
    return float(low), float(high)


def _paired(
    scores_a: Sequence[UtteranceScore], scores_b: Sequence[UtteranceScore]
) -> tuple[list[UtteranceScore], list[UtteranceScore]]:
    """Line b up with a by utterance id."""
    by_id_a = _by_id(scores_a, "a")
    by_id_b = _by_id(scores_b, "b")
    only_a, only_b = sorted(by_id_a.keys() - by_id_b), sorted(by_id_b.keys() - by_id_a)
    if only_a or only_b:
        raise ValueError(
            "the variants were scored on different utterances: "
            f"{len(only_a)} only in a {_sample(only_a)}, {len(only_b)} only in b {_sample(only_b)}"
        )
    a = list(by_id_a.values())
    b = [by_id_b[score.utterance_id] for score in a]
    for score_a, score_b in zip(a, b, strict=True):
        if score_a.language != score_b.language:
            raise ValueError(
                f"utterance {score_a.utterance_id!r} is {score_a.language!r} in a "
                f"but {score_b.language!r} in b"
            )
    return a, b


def _by_id(scores: Sequence[UtteranceScore], side: str) -> dict[str, UtteranceScore]:
    by_id: dict[str, UtteranceScore] = {}
    for score in scores:
        if score.utterance_id in by_id:
            raise ValueError(f"utterance {score.utterance_id!r} appears twice in {side}")
        by_id[score.utterance_id] = score
    return by_id


def _sample(ids: list[str], shown: int = 5) -> str:
    more = f", ... {len(ids) - shown} more" if len(ids) > shown else ""
    return "[" + ", ".join(repr(i) for i in ids[:shown]) + more + "]"
