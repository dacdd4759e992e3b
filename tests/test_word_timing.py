"""Word timestamps: the alignment path, word grouping, and real words on the JFK clip."""

from __future__ import annotations

import numpy as np
import pytest

from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import Audio, TranscribeOptions
from model_store.word_timing import dtw, median_filter, split_words


def test_dtw_follows_the_cheap_diagonal_band() -> None:
    cost = np.ones((3, 6))
    cost[0, 0:2] = cost[1, 2:4] = cost[2, 4:6] = 0.0  # token i is heard in frames 2i, 2i+1
    rows, columns = dtw(cost)
    assert rows.tolist() == [0, 0, 1, 1, 2, 2]
    assert columns.tolist() == [0, 1, 2, 3, 4, 5]


def test_dtw_path_is_monotone_and_complete() -> None:
    rng = np.random.default_rng(0)
    rows, columns = dtw(rng.random((7, 40)))
    assert rows[0] == 0 and columns[0] == 0 and rows[-1] == 6 and columns[-1] == 39
    assert np.all(np.diff(rows) >= 0) and np.all(np.diff(columns) >= 0)
    assert np.all(np.diff(rows) + np.diff(columns) >= 1)


def test_median_filter_removes_spikes() -> None:
    values = np.zeros((1, 20))
    values[0, 10] = 100.0
    assert median_filter(values, 7).max() == 0.0


def test_split_words_by_spaces_or_characters() -> None:
    pieces = {1: " Hello", 2: ",", 3: " wor", 4: "ld"}

    def decode(tokens: list[int]) -> str:
        return "".join(pieces[token] for token in tokens)

    words, groups = split_words([1, 2, 3, 4], decode, "en")
    assert words == [" Hello,", " world"] and groups == [[1, 2], [3, 4]]
    words, groups = split_words([1, 2], decode, "zh")
    assert groups == [[1], [2]]


@pytest.mark.real_model
def test_jfk_words(real_store: ModelStore, jfk_audio: Audio) -> None:
    transcriber = open_variant(real_store, "whisper-base", RuntimeSettings(device="cpu"))
    result = transcriber.transcribe(jfk_audio, TranscribeOptions(language="en", word_timestamps=True))
    words = [word for segment in result.segments for word in segment.words or ()]
    assert "".join(word.word for word in words).strip() == result.text
    starts = [word.start for word in words]
    assert starts == sorted(starts)
    assert all(0.0 <= word.start <= word.end <= 11.1 for word in words)
    by_text = {word.word.strip(" ,."): word for word in words}
    assert by_text["And"].start < 0.5  # the speech starts right away
    assert by_text["country"].start > 9.0  # the last word is near the end
    assert all(0.0 <= word.probability <= 1.0 for word in words)
