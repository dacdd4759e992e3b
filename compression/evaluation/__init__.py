"""Measuring transcripts: text normalisation, error counts and rates, bootstrap intervals."""

from compression.evaluation.normalizer import normalize, raw
from compression.evaluation.scoring import (
    ErrorCounts,
    LanguageSummary,
    Metric,
    PairedDifference,
    UtteranceScore,
    Verdict,
    bootstrap_ci,
    char_errors,
    paired_difference_ci,
    score_utterance,
    summarize,
    verdict,
    word_errors,
)

__all__ = [
    "ErrorCounts",
    "LanguageSummary",
    "Metric",
    "PairedDifference",
    "UtteranceScore",
    "Verdict",
    "bootstrap_ci",
    "char_errors",
    "normalize",
    "paired_difference_ci",
    "raw",
    "score_utterance",
    "summarize",
    "verdict",
    "word_errors",
]
