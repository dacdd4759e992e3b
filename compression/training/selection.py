"""Choosing the training utterances of a corpus split: a seeded sample per language."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Sequence

from compression.data.corpus import Corpus, Utterance


def select_utterances(
    corpus: Corpus,
    split: str,
    languages: Sequence[str],
    per_language: int | None,
    *,
    seed: int = 0,
    max_seconds: float = 30.0,
) -> list[Utterance]:
    """Up to ``per_language`` utterances of each language (all when None), sampled with ``seed``.

    Utterances longer than one 30 s window are left out (the frozen-encoder recipes see one window).
    The result is sorted by id, so the same arguments always give the same list, and a smaller
    ``per_language`` gives a subset of a larger one (a prefix of one seeded shuffle per language).
    """
    chosen: list[Utterance] = []
    for language in _known(corpus, languages):
        pool = _shuffled_pool(corpus, split, language, seed, max_seconds)
        chosen.extend(pool if per_language is None else pool[:per_language])
    return sorted(chosen, key=lambda utterance: utterance.id)


def sample_digest(utterances: Sequence[Utterance]) -> str:
    """A short digest of which utterances a run trained on (order-free), recorded in its manifest so
    that two variants can be checked for having seen the same sample (a teacher and its student, say)."""
    joined = "\n".join(sorted(utterance.id for utterance in utterances))
    return hashlib.sha256(joined.encode()).hexdigest()[:16]


def held_out_utterances(
    corpus: Corpus,
    split: str,
    languages: Sequence[str],
    selected_per_language: int,
    count_per_language: int,
    *,
    seed: int = 0,
    max_seconds: float = 30.0,
) -> list[Utterance]:
    """Up to ``count_per_language`` utterances of each language that ``select_utterances`` with
    ``selected_per_language`` (same split, seed and length limit) does not choose: the next ones of the
    same seeded shuffle. Sorted by id; a language with nothing left contributes nothing."""
    chosen: list[Utterance] = []
    for language in _known(corpus, languages):
        pool = _shuffled_pool(corpus, split, language, seed, max_seconds)
        chosen.extend(pool[selected_per_language : selected_per_language + count_per_language])
    return sorted(chosen, key=lambda utterance: utterance.id)


def _known(corpus: Corpus, languages: Sequence[str]) -> Sequence[str]:
    unknown = sorted(set(languages) - set(corpus.languages))
    if unknown:
        raise ValueError(
            f"corpus {corpus.id} has no {', '.join(unknown)}; it has: {', '.join(corpus.languages)}"
        )
    return languages


def _shuffled_pool(
    corpus: Corpus, split: str, language: str, seed: int, max_seconds: float
) -> list[Utterance]:
    """One language's usable utterances of ``split`` in the seeded order every selection draws from."""
    pool = [u for u in corpus.utterances(split, [language]) if u.duration <= max_seconds and u.text.strip()]
    random.Random(f"{seed}:{language}").shuffle(pool)
    return pool
