"""Error counts, pooled rates and bootstrap intervals, checked against hand-computed values."""

import random
import time

import numpy as np
import pytest

from model_store.scoring import (
    ErrorCounts,
    UtteranceScore,
    bootstrap_ci,
    char_errors,
    paired_difference_ci,
    score_utterance,
    sum_runs,
    summarize,
    verdict,
    word_errors,
)


def _levenshtein(a: str, b: str) -> int:
    """Textbook O(n*m) edit distance, to check the minimality of the counts."""
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


# --- edit counts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("abc", "abc", ErrorCounts(0, 0, 0, 3)),  # identical
        ("abc", "abxc", ErrorCounts(0, 0, 1, 3)),  # insertion only
        ("abcd", "abd", ErrorCounts(0, 1, 0, 4)),  # deletion only
        ("abc", "abd", ErrorCounts(1, 0, 0, 3)),  # substitution only
        ("kitten", "sitting", ErrorCounts(2, 0, 1, 6)),  # k->s, e->i, +g
        ("hello", "", ErrorCounts(0, 5, 0, 5)),  # empty hypothesis: all deletions
        ("café", "cafe", ErrorCounts(1, 0, 0, 4)),  # é and e are different code points
        ("привет", "привед", ErrorCounts(1, 0, 0, 6)),
        ("你好世界", "你好世", ErrorCounts(0, 1, 0, 4)),
        ("a b", "ab", ErrorCounts(0, 1, 0, 3)),  # a space is a character
    ],
)
def test_char_errors(reference: str, hypothesis: str, expected: ErrorCounts) -> None:
    assert char_errors(reference, hypothesis) == expected


def test_kitten_sitting_rate() -> None:
    counts = char_errors("kitten", "sitting")
    assert counts.edits == 3
    assert counts.rate == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("reference", "hypothesis", "expected"),
    [
        ("the cat sat", "the cat sat", ErrorCounts(0, 0, 0, 3)),
        ("the cat sat", "the cat sat down", ErrorCounts(0, 0, 1, 3)),
        ("the cat sat", "a cat", ErrorCounts(1, 1, 0, 3)),
        ("the cat", "", ErrorCounts(0, 2, 0, 2)),
        ("你好世界", "你好世", ErrorCounts(1, 0, 0, 1)),  # no spaces: one "word"
    ],
)
def test_word_errors(reference: str, hypothesis: str, expected: ErrorCounts) -> None:
    assert word_errors(reference, hypothesis) == expected


def test_counts_are_minimal_and_consistent_on_random_strings() -> None:
    rng = random.Random(0)
    for _ in range(300):
        reference = "".join(rng.choices("abc é", k=rng.randint(0, 12)))
        hypothesis = "".join(rng.choices("abc é", k=rng.randint(0, 12)))
        counts = char_errors(reference, hypothesis)
        assert counts.edits == _levenshtein(reference, hypothesis)
        assert counts.deletions - counts.insertions == len(reference) - len(hypothesis)
        assert counts == char_errors(reference, hypothesis)  # ties broken the same way every time


def test_error_counts_add_and_zero() -> None:
    total = ErrorCounts(1, 2, 3, 10) + ErrorCounts(4, 0, 1, 5)
    assert total == ErrorCounts(5, 2, 4, 15)
    assert total.edits == 11
    assert ErrorCounts.zero() + total == total
    with pytest.raises(ValueError, match="empty reference"):
        _ = ErrorCounts.zero().rate


# --- utterances and languages --------------------------------------------------------------------


def test_score_utterance_raw_and_normalised() -> None:
    score = score_utterance("u1", "en", "Hello, World!", "hello world")
    assert score is not None
    assert score.chars == ErrorCounts(0, 0, 0, 11)
    assert score.words == ErrorCounts(0, 0, 0, 2)
    assert score.chars_raw == ErrorCounts(2, 2, 0, 13)  # H->h, W->w, minus "," and "!"
    assert score.words_raw == ErrorCounts(2, 0, 0, 2)


def test_score_utterance_spanish_ignores_accents() -> None:
    score = score_utterance("u1", "es", "que tal senor", "¿Qué tal, señor?")
    assert score is not None
    assert score.chars.edits == 0
    assert score.chars_raw.edits > 0


@pytest.mark.parametrize("reference", ["", "   ", "[noise]", "?!"])
def test_empty_reference_is_dropped(reference: str) -> None:
    assert score_utterance("u1", "en", reference, "something") is None


def test_summary_pools_counts_instead_of_averaging_rates() -> None:
    short = score_utterance("u1", "fr", "ab", "")  # 2 edits / 2 chars = 1.0
    long = score_utterance("u2", "fr", "abcdefgh", "abcdefgh")  # 0 edits / 8 chars = 0.0
    other = score_utterance("u3", "ru", "мир", "мор")
    assert short is not None and long is not None and other is not None
    summary = summarize([short, long, other])
    assert list(summary) == ["fr", "ru"]
    assert summary["fr"].utterances == 2
    assert summary["fr"].chars == ErrorCounts(0, 2, 0, 10)
    assert summary["fr"].cer == pytest.approx(0.2)  # pooled: 2 / 10
    assert (short.chars.rate + long.chars.rate) / 2 == pytest.approx(0.5)  # the mean it is not
    assert summary["fr"].wer == pytest.approx(0.5)  # 1 deleted word of 2
    assert summary["ru"].cer == pytest.approx(1 / 3)


# --- bootstrap -----------------------------------------------------------------------------------


def _synthetic(count: int, error_rate: float, seed: int, prefix: str = "u") -> list[UtteranceScore]:
    """Scores with lengths of 20-100 characters and binomially drawn errors."""
    rng = np.random.default_rng(seed)
    scores = []
    for i in range(count):
        length = int(rng.integers(20, 101))
        counts = ErrorCounts(int(rng.binomial(length, error_rate)), 0, 0, length)
        scores.append(UtteranceScore(f"{prefix}{i}", "en", counts, counts, counts, counts))
    return scores


def _with_extra_errors(scores: list[UtteranceScore], extra: int) -> list[UtteranceScore]:
    """The same utterances with ``extra`` more substitutions each."""
    worse = []
    for score in scores:
        counts = ErrorCounts(score.chars.edits + extra, 0, 0, score.chars.reference_length)
        worse.append(UtteranceScore(score.utterance_id, score.language, counts, counts, counts, counts))
    return worse


def _pooled(scores: list[UtteranceScore]) -> float:
    return summarize(scores)["en"].cer


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_data() -> None:
    few, many = _synthetic(30, 0.1, seed=1), _synthetic(2000, 0.1, seed=2)
    low_few, high_few = bootstrap_ci(few)
    low_many, high_many = bootstrap_ci(many)
    assert low_few <= _pooled(few) <= high_few
    assert low_many <= _pooled(many) <= high_many
    assert high_many - low_many < (high_few - low_few) / 3  # ~sqrt(2000/30) = 8x narrower


def test_bootstrap_is_deterministic_for_a_seed() -> None:
    scores = _synthetic(100, 0.1, seed=3)
    assert bootstrap_ci(scores, seed=7) == bootstrap_ci(scores, seed=7)
    assert bootstrap_ci(scores, seed=7) != bootstrap_ci(scores, seed=8)


def test_bootstrap_is_fast() -> None:
    scores = _synthetic(1000, 0.1, seed=4)
    start = time.perf_counter()
    bootstrap_ci(scores, resamples=1000)
    assert time.perf_counter() - start < 1.0


def test_bootstrap_rejects_bad_arguments() -> None:
    scores = _synthetic(10, 0.1, seed=5)
    with pytest.raises(ValueError, match="cer, wer, cer_raw, wer_raw"):
        bootstrap_ci(scores, metric="bleu")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no utterances"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(scores, confidence=1.0)


def test_paired_difference_detects_a_worse_and_a_better_variant() -> None:
    good = _synthetic(200, 0.05, seed=6)
    bad = _with_extra_errors(good, 5)
    worse = paired_difference_ci(good, list(reversed(bad)))  # matched by id, not position
    assert worse.estimate == pytest.approx(_pooled(bad) - _pooled(good))
    assert worse.low <= worse.estimate <= worse.high
    assert worse.verdict == "worse"
    assert paired_difference_ci(bad, good).verdict == "better"


def test_paired_difference_of_identical_outputs_is_not_significant() -> None:
    scores = _synthetic(200, 0.1, seed=7)
    same = paired_difference_ci(scores, scores)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert same.verdict == "not significant"


def test_paired_difference_requires_the_same_utterances() -> None:
    a = _synthetic(5, 0.1, seed=8)
    with pytest.raises(ValueError, match=r"1 only in a \['u4'\], 0 only in b"):
        paired_difference_ci(a, a[:4])
    with pytest.raises(ValueError, match="appears twice"):
        paired_difference_ci(a, [*a, a[0]])


def test_summed_runs_pool_to_the_mean_rate_and_pair_like_one_run() -> None:
    seed_a, seed_b = _synthetic(50, 0.1, seed=9), _synthetic(50, 0.3, seed=9)  # same lengths
    summed = sum_runs([seed_a, list(reversed(seed_b))])  # lined up by id, not position
    assert [score.utterance_id for score in summed] == [score.utterance_id for score in seed_a]
    assert summed[3].chars == seed_a[3].chars + seed_b[3].chars
    assert _pooled(summed) == pytest.approx((_pooled(seed_a) + _pooled(seed_b)) / 2)
    worse = sum_runs([_with_extra_errors(seed_a, 4), _with_extra_errors(seed_b, 4)])
    difference = paired_difference_ci(summed, worse)
    assert difference.estimate == pytest.approx(_pooled(worse) - _pooled(summed))
    assert difference.verdict == "worse"
    assert sum_runs([seed_a]) == seed_a


def test_summed_runs_must_share_utterances_and_references() -> None:
    run = _synthetic(5, 0.1, seed=10)
    with pytest.raises(ValueError, match="different utterances"):
        sum_runs([run, run[:4]])
    with pytest.raises(ValueError, match="different references"):
        sum_runs([run, _synthetic(5, 0.1, seed=11)])
    with pytest.raises(ValueError, match="no runs"):
        sum_runs([])


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (-0.02, -0.01, "better"),
        (0.01, 0.02, "worse"),
        (-0.01, 0.01, "not significant"),
        (0.0, 0.01, "not significant"),
    ],
)
def test_verdict(low: float, high: float, expected: str) -> None:
    assert verdict(low, high) == expected
