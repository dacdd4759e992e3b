"""Word timestamps from cross-attention, as OpenAI Whisper computes them.

The decoder's alignment heads attend to the audio frames a token was heard in. Their attention over
a window's text tokens, normalised per token and median-filtered along time, gives a cost matrix whose
dynamic-time-warping path maps each token to a time; a word starts where its first token's path jumps.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from model_store.transcription import Word

TOKENS_PER_SECOND = 50  # encoder positions per second of audio (two mel frames each)
MEDIAN_FILTER_WIDTH = 7
NO_SPACE_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


def dtw(cost: npt.NDArray[np.float64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """The monotone path of least total cost through ``cost`` (tokens x frames): its row and column indices."""
    rows, columns = cost.shape
    total = np.full((rows + 1, columns + 1), np.inf)
    total[0, 0] = 0.0
    trace = np.zeros((rows + 1, columns + 1), dtype=np.int8)  # 0 diagonal, 1 from above, 2 from the left
    for i in range(1, rows + 1):
        previous, current, row_cost = total[i - 1].tolist(), total[i].tolist(), cost[i - 1].tolist()
        for j in range(1, columns + 1):
            diagonal, above, left = previous[j - 1], previous[j], current[j - 1]
            if diagonal <= above and diagonal <= left:
                best, choice = diagonal, 0
            elif above <= left:
                best, choice = above, 1
            else:
                best, choice = left, 2
            current[j] = row_cost[j - 1] + best
            trace[i, j] = choice
        total[i] = current
    i, j = rows, columns
    path: list[tuple[int, int]] = []
    while i > 0 and j > 0:
        path.append((i - 1, j - 1))
        step = trace[i, j]
        if step == 0:
            i, j = i - 1, j - 1
        elif step == 1:
            i -= 1
        else:
            j -= 1
    path.reverse()
    indices = np.array(path, dtype=np.int64)
    return indices[:, 0], indices[:, 1]


def median_filter(values: npt.NDArray[np.float64], width: int) -> npt.NDArray[np.float64]:
    """Median over a sliding window on the last axis, with reflected edges."""
    if values.shape[-1] <= width // 2:
        return values
    pad = width // 2
    padded = np.pad(values, [(0, 0)] * (values.ndim - 1) + [(pad, pad)], mode="reflect")
    windows = np.lib.stride_tricks.sliding_window_view(padded, width, axis=-1)
    return np.median(windows, axis=-1)


def split_words(
    tokens: list[int], decode: Callable[[list[int]], str], language: str
) -> tuple[list[str], list[list[int]]]:
    """Group text tokens into words: at spaces, or per character for languages written without them."""
    words: list[str] = []
    groups: list[list[int]] = []
    for token in tokens:
        text = decode([token])
        starts_word = not groups or language in NO_SPACE_LANGUAGES or text.startswith(" ")
        if starts_word:
            words.append(text)
            groups.append([token])
        else:
            words[-1] += text
            groups[-1].append(token)
    return words, groups


def align_words(
    attention: npt.NDArray[np.float64],
    text_tokens: list[int],
    token_probabilities: list[float],
    decode: Callable[[list[int]], str],
    language: str,
    time_offset: float,
    window_frames: int,
) -> list[Word]:
    """Words of one window. ``attention``: (heads, len(text_tokens) + 1, encoder positions), post-softmax,
    over the text tokens and the end-of-text token."""
    if not text_tokens:
        return []
    positions = max(1, window_frames // 2)
    weights = attention[:, :, :positions]
    mean = weights.mean(axis=-2, keepdims=True)
    std = weights.std(axis=-2, keepdims=True) + 1e-8
    matrix = median_filter((weights - mean) / std, MEDIAN_FILTER_WIDTH).mean(axis=0)
    token_index, time_index = dtw(-matrix)
    return words_from_path(
        token_index, time_index, text_tokens, token_probabilities, decode, language, time_offset
    )


def words_from_path(
    token_index: npt.NDArray[np.int64],
    time_index: npt.NDArray[np.int64],
    text_tokens: list[int],
    token_probabilities: list[float],
    decode: Callable[[list[int]], str],
    language: str,
    time_offset: float,
) -> list[Word]:
    """Words of one window from a token-to-encoder-position alignment path (rows: the text tokens, then
    the end-of-text token); a word starts where the path first reaches its first token."""
    jumps = np.pad(np.diff(token_index), (1, 0), constant_values=1).astype(bool)
    jump_times = time_index[jumps] / TOKENS_PER_SECOND
    words, groups = split_words(text_tokens, decode, language)
    boundaries = np.concatenate([[0], np.cumsum([len(group) for group in groups])])
    result = []
    for index, (word, group) in enumerate(zip(words, groups, strict=True)):
        start = float(jump_times[min(boundaries[index], len(jump_times) - 1)])
        end = float(jump_times[min(boundaries[index + 1], len(jump_times) - 1)])
        first = int(boundaries[index])
        probability = float(np.mean(token_probabilities[first : first + len(group)]))
        result.append(
            Word(
                start=round(time_offset + start, 3),
                end=round(time_offset + end, 3),
                word=word,
                probability=probability,
            )
        )
    return result
