"""Seeded per-language samples of a corpus split, and the utterances a sample leaves out."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from compression.data.corpus import Corpus, Utterance
from compression.training.selection import held_out_utterances, select_utterances
from tests.factories import tiny_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return Corpus.open(tiny_corpus(tmp_path_factory.mktemp("corpus") / "tiny-corpus"))


def ids(utterances: Sequence[Utterance]) -> set[str]:
    return {utterance.id for utterance in utterances}


def test_a_smaller_sample_is_part_of_a_larger_one(corpus: Corpus) -> None:
    one = select_utterances(corpus, "train", ["en", "cs"], 1, seed=3)
    three = select_utterances(corpus, "train", ["en", "cs"], 3, seed=3)
    assert len(one) == 2 and len(three) == 6 and ids(one) < ids(three)
    assert [u.id for u in three] == sorted(u.id for u in three)


def test_held_out_utterances_are_the_next_of_the_same_shuffle_and_never_in_the_sample(
    corpus: Corpus,
) -> None:
    sample = select_utterances(corpus, "train", ["en", "cs"], 2, seed=3)
    held_out = held_out_utterances(corpus, "train", ["en", "cs"], 2, 1, seed=3)
    assert len(held_out) == 2 and {u.language for u in held_out} == {"en", "cs"}
    assert not ids(sample) & ids(held_out)
    assert ids(sample) | ids(held_out) == ids(select_utterances(corpus, "train", ["en", "cs"], 3, seed=3))
    # what is left is all there is: 4 train utterances a language
    assert len(held_out_utterances(corpus, "train", ["en"], 2, 10, seed=3)) == 2
    assert held_out_utterances(corpus, "train", ["en"], 4, 10, seed=3) == []


def test_an_unknown_language_is_named(corpus: Corpus) -> None:
    with pytest.raises(ValueError, match="has no xx"):
        held_out_utterances(corpus, "train", ["en", "xx"], 1, 1)
