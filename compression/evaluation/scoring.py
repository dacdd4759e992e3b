"""Error counts, rates and bootstrap intervals live in :mod:`model_store.scoring`, shared with the
server (live CER from feedback and shadow scoring); this module keeps the old import path working."""

from model_store.scoring import (
    METRICS,
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
    "METRICS",
    "ErrorCounts",
    "LanguageSummary",
    "Metric",
    "PairedDifference",
    "UtteranceScore",
    "Verdict",
    "bootstrap_ci",
    "char_errors",
    "paired_difference_ci",
    "score_utterance",
    "summarize",
    "verdict",
    "word_errors",
]
