"""Transcribing audio of any length: 30 s windows, temperature fallback, timestamped segments.

The driver follows OpenAI Whisper's ``transcribe``: each window is decoded (conditioned on the
previous window's text), retried at higher temperatures when the output is repetitive or unsure,
skipped when it is silence, and cut into segments at its timestamp tokens; the next window starts
where the last complete segment ended, so timestamps stay right across windows.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from model_store.features import Mel, encoder_frames, window
from model_store.transcription import (
    CHUNK_FRAMES,
    FRAMES_PER_SECOND,
    TIME_PRECISION,
    Segment,
    TranscribeOptions,
    Word,
)
from model_store.whisper_tokens import MAX_TARGET_LENGTH, SpecialTokens
from model_store.window_decoding import DecodeResult, WindowDecoding

logger = logging.getLogger(__name__)

INPUT_STRIDE = 2  # mel frames per encoder position (conv2 has stride 2)
MAX_PROMPT_TOKENS = MAX_TARGET_LENGTH // 2 - 1  # 223 tokens of previous text at most
SAMPLE_LENGTH = MAX_TARGET_LENGTH // 2  # 224 new tokens per window at most


@dataclass(frozen=True)
class WindowOutput:
    """One decoding of one window."""

    tokens: list[int]  # sampled tokens, without the end-of-text token
    sum_logprob: float
    no_speech_prob: float
    temperature: float
    text: str

    @property
    def avg_logprob(self) -> float:
        return self.sum_logprob / (len(self.tokens) + 1)

    @property
    def compression_ratio(self) -> float:
        return compression_ratio(self.text)


def compression_ratio(text: str) -> float:
    """Bytes of ``text`` over bytes of its zlib compression; repetitive output scores high."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0


LOOP_CHECK_FROM = 48  # tokens before a window is checked for a hallucination loop
LOOP_CHECK_EVERY = 16


def is_looping(sampled: list[int], text: Callable[[list[int]], str], limit: float) -> bool:
    """Whether a window being decoded has turned into a repetition loop (its text compresses beyond ``limit``)."""
    count = len(sampled)
    return (
        count >= LOOP_CHECK_FROM
        and count % LOOP_CHECK_EVERY == 0
        and compression_ratio(text(sampled)) > limit
    )


def loop_cut(sampled: list[int], text: Callable[[list[int]], str], limit: float) -> int | None:
    """Where a step-by-step decoder checking :func:`is_looping` would have stopped on ``sampled``, or None.

    For engines that decode a whole window in one call (CTranslate2): cutting their tokens here gives
    the output the transformers backend produces by stopping early.
    """
    for count in range(LOOP_CHECK_FROM, len(sampled) + 1, LOOP_CHECK_EVERY):
        if is_looping(sampled[:count], text, limit):
            return count
    return None


class WindowDecoder(Protocol):
    """What a backend provides to transcribe one 30 s window."""

    tokens: SpecialTokens

    def encode(self, features: Mel) -> Any:
        """Encoder output for (n_mels, 3000) features."""
        ...

    def decode(self, encoded: Any, prompt: list[int], decoding: WindowDecoding) -> DecodeResult:
        """The window's tokens after ``prompt``, decoded as ``decoding`` says."""
        ...

    def text(self, tokens: list[int]) -> str:
        """Text of the non-special tokens."""
        ...

    def text_tokens(self, text: str) -> list[int]:
        """Tokens of plain text (for prompts)."""
        ...

    def words(
        self,
        encoded: Any,
        prompt: list[int],
        text_tokens: list[int],
        language: str,
        time_offset: float,
        frames: int,
    ) -> list[Word]:
        """Timed words of a window's text tokens (``prompt`` ends with <|notimestamps|>)."""
        ...


def _needs_fallback(output: WindowOutput, options: TranscribeOptions) -> bool:
    if (
        options.compression_ratio_threshold is not None
        and output.compression_ratio > options.compression_ratio_threshold
    ):
        return True
    if options.log_prob_threshold is not None and output.avg_logprob < options.log_prob_threshold:
        silent = (
            options.no_speech_threshold is not None and output.no_speech_prob > options.no_speech_threshold
        )
        return not silent
    return False


def _decode_with_fallback(
    decoder: WindowDecoder, encoded: Any, prompt: list[int], options: TranscribeOptions, max_new_tokens: int
) -> WindowOutput:
    output: WindowOutput | None = None
    for temperature in options.temperatures:
        decoding = WindowDecoding(
            temperature=temperature,
            max_new_tokens=max_new_tokens,
            with_timestamps=not options.without_timestamps,
            repetition_limit=options.compression_ratio_threshold,
        )
        tokens, sum_logprob, no_speech_prob = decoder.decode(encoded, prompt, decoding)
        output = WindowOutput(tokens, sum_logprob, no_speech_prob, temperature, decoder.text(tokens))
        if not _needs_fallback(output, options):
            break
        logger.debug("window fell back from temperature %.1f", temperature)
    assert output is not None, "options.temperatures must not be empty"
    return output


def _segments_of_window(
    output: WindowOutput, tokens: SpecialTokens, time_offset: float, window_frames: int
) -> tuple[list[tuple[float, float, list[int]]], int]:
    """Cut a window's tokens into (start, end, tokens) pieces; return them and how far to seek."""
    begin = tokens.timestamp_begin
    sampled = output.tokens
    is_timestamp = [token >= begin for token in sampled]
    single_timestamp_ending = is_timestamp[-2:] == [False, True]
    consecutive = [
        index + 1 for index in range(len(sampled) - 1) if is_timestamp[index] and is_timestamp[index + 1]
    ]
    pieces: list[tuple[float, float, list[int]]] = []
    if consecutive:
        slices = [*consecutive, len(sampled)] if single_timestamp_ending else consecutive
        last = 0
        for current in slices:
            piece = sampled[last:current]
            start = time_offset + (piece[0] - begin) * TIME_PRECISION
            end = time_offset + (piece[-1] - begin) * TIME_PRECISION
            pieces.append((start, end, piece))
            last = current
        if single_timestamp_ending:
            return pieces, window_frames
        return pieces, (sampled[last - 1] - begin) * INPUT_STRIDE
    duration = window_frames / FRAMES_PER_SECOND
    stamps = [token for token in sampled if token >= begin]
    if stamps and stamps[-1] != begin:
        duration = (stamps[-1] - begin) * TIME_PRECISION
    return [(time_offset, time_offset + duration, sampled)], window_frames


def _words_per_piece(
    decoder: WindowDecoder,
    encoded: Any,
    sot_sequence: list[int],
    pieces: list[tuple[float, float, list[int]]],
    language: str,
    time_offset: float,
    window_frames: int,
) -> list[tuple[Word, ...]]:
    """Align the window's text once, then hand each piece the words of its own tokens."""
    eot = decoder.tokens.eot
    texts = [[token for token in piece if token < eot] for _, _, piece in pieces]
    words = decoder.words(
        encoded,
        [*sot_sequence, decoder.tokens.no_timestamps],
        [token for text in texts for token in text],
        language,
        time_offset,
        window_frames,
    )
    result: list[tuple[Word, ...]] = []
    consumed = 0
    for text in texts:
        budget = len(decoder.text(text))
        mine: list[Word] = []
        while consumed < len(words) and (budget > 0 or not mine) and len(mine) < len(text):
            mine.append(words[consumed])
            budget -= len(words[consumed].word)
            consumed += 1
        result.append(tuple(mine))
    return result


def transcribe_mel(
    decoder: WindowDecoder,
    mel: Mel,
    content_frames: int,
    language_token: int | None,
    options: TranscribeOptions,
    language: str = "en",
    audio_context_seconds: float | None = None,
    first_window_encoded: Any | None = None,
) -> list[Segment]:
    """Segments of the audio whose features are ``mel`` (content followed by 30 s of padding);
    ``audio_context_seconds`` trims each window's encoder input (:func:`encoder_frames`);
    ``first_window_encoded``, when given, is the encoder output of the first window (already computed
    to detect the language)."""
    special = decoder.tokens
    task_token = special.translate if options.task == "translate" else special.transcribe
    # English-only models take no language or task token (OpenAI Whisper's sot sequence is just <|sot|>).
    sot_sequence = [special.sot, language_token, task_token] if language_token is not None else [special.sot]
    task_prompt = [*sot_sequence, special.no_timestamps] if options.without_timestamps else sot_sequence
    max_new_tokens = min(options.max_new_tokens or SAMPLE_LENGTH, SAMPLE_LENGTH)

    history = decoder.text_tokens(" " + options.initial_prompt.strip()) if options.initial_prompt else []
    prompt_reset_since = 0
    segments: list[Segment] = []
    audio_end = content_frames / FRAMES_PER_SECOND
    seek = 0
    while seek < content_frames:
        window_frames = min(CHUNK_FRAMES, content_frames - seek)
        time_offset = seek / FRAMES_PER_SECOND
        if seek == 0 and first_window_encoded is not None:
            encoded = first_window_encoded
        else:
            frames = encoder_frames(window_frames, audio_context_seconds)
            encoded = decoder.encode(window(mel, seek)[:, :frames])
        previous = history[prompt_reset_since:][-MAX_PROMPT_TOKENS:]
        prompt = ([special.start_of_prev, *previous] if previous else []) + task_prompt
        room = MAX_TARGET_LENGTH - len(prompt)  # the decoder's positions end at 448
        output = _decode_with_fallback(decoder, encoded, prompt, options, min(max_new_tokens, room))

        if (
            options.no_speech_threshold is not None
            and output.no_speech_prob > options.no_speech_threshold
            and (options.log_prob_threshold is None or output.avg_logprob <= options.log_prob_threshold)
        ):
            seek += window_frames
            continue

        pieces, advance = _segments_of_window(output, special, time_offset, window_frames)
        piece_words = (
            # aligned from cross-attention on the text alone: text-only decoding gets words too
            _words_per_piece(decoder, encoded, sot_sequence, pieces, language, time_offset, window_frames)
            if options.word_timestamps
            else [None] * len(pieces)
        )
        for (start, end, piece), words in zip(pieces, piece_words, strict=True):
            text = decoder.text(piece)
            if start == end or not text.strip():
                continue
            # a timestamp token can name a time past the audio's end (the window is padded to 30 s)
            start, end = min(start, audio_end), min(end, audio_end)
            segments.append(
                Segment(
                    id=len(segments),
                    start=round(start, 3),
                    end=round(end, 3),
                    text=text,
                    tokens=tuple(piece),
                    avg_logprob=output.avg_logprob,
                    compression_ratio=output.compression_ratio,
                    no_speech_prob=output.no_speech_prob,
                    temperature=output.temperature,
                    words=words,
                    seek=seek,
                )
            )
        history.extend(output.tokens)
        if not options.condition_on_previous_text or output.temperature > 0.5:
            prompt_reset_since = len(history)
        # At least a second of progress per window: a degenerate model that closes a segment right at
        # the window's start would otherwise crawl through the audio a few frames at a time.
        seek += max(advance, min(window_frames, FRAMES_PER_SECOND))
    return segments
