"""Whisper's tokenizer and its special tokens, as both the importer and the backends need them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# WhisperTokenizerFast reads tokenizer.json in transformers 4.x and 5.x alike (5.x: an alias of
# WhisperTokenizer, whose 4.x form is the slow tokenizer); the stubs do not list the lazy export.
from transformers import WhisperTokenizer, WhisperTokenizerFast  # type: ignore[attr-defined]

from model_store.errors import SourceError

TIMESTAMP_TOKENS = 1501  # <|0.00|> ... <|30.00|> in steps of 0.02 s
MAX_TARGET_LENGTH = 448  # tokens in the decoder's context
MAX_INITIAL_TIMESTAMP_INDEX = 50  # the first timestamp is at most 1.00 s


def timestamp_token(index: int) -> str:
    return f"<|{index * 0.02:.2f}|>"


@dataclass(frozen=True)
class SpecialTokens:
    """Ids of Whisper's special tokens, read from the tokenizer."""

    eot: int
    sot: int
    translate: int
    transcribe: int
    start_of_lm: int
    start_of_prev: int
    no_speech: int
    no_timestamps: int
    timestamp_begin: int
    languages: dict[str, int]  # empty for English-only models


def transcription_prompt(tokens: SpecialTokens, language: str) -> list[int]:
    """The decoder prompt of greedy transcription without timestamps, as training and calibration
    teacher-force it: ``<|startoftranscript|><|xx|><|transcribe|><|notimestamps|>``; English-only
    models have no language or task token."""
    if not tokens.languages:
        return [tokens.sot, tokens.no_timestamps]
    return [tokens.sot, tokens.languages[language], tokens.transcribe, tokens.no_timestamps]


def load_tokenizer(tokenizer_json: Path) -> WhisperTokenizer:
    """The tokenizer, with the 1501 timestamp tokens appended when the file lacks them."""
    tokenizer = WhisperTokenizerFast(tokenizer_file=str(tokenizer_json))
    vocabulary = tokenizer.get_vocab()
    if timestamp_token(0) not in vocabulary:
        tokenizer.add_tokens([timestamp_token(index) for index in range(TIMESTAMP_TOKENS)])
    return tokenizer


def special_tokens(tokenizer: WhisperTokenizer, *, multilingual: bool) -> SpecialTokens:
    vocabulary = tokenizer.get_vocab()

    def token_id(*candidates: str) -> int:
        for candidate in candidates:
            if candidate in vocabulary:
                return int(vocabulary[candidate])
        raise SourceError(f"tokenizer lacks the special token {candidates[0]}")

    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    languages = (
        {code: int(vocabulary[f"<|{code}|>"]) for code in LANGUAGES if f"<|{code}|>" in vocabulary}
        if multilingual
        else {}
    )
    return SpecialTokens(
        eot=token_id("<|endoftext|>"),
        sot=token_id("<|startoftranscript|>"),
        translate=token_id("<|translate|>"),
        transcribe=token_id("<|transcribe|>"),
        start_of_lm=token_id("<|startoflm|>"),
        start_of_prev=token_id("<|startofprev|>"),
        no_speech=token_id("<|nospeech|>", "<|nocaptions|>"),
        no_timestamps=token_id("<|notimestamps|>"),
        timestamp_begin=token_id(timestamp_token(0)),
        languages=languages,
    )


def suppressed_tokens(
    tokens: SpecialTokens, suppress: list[int], *, with_timestamps: bool
) -> tuple[int, ...]:
    """The tokens never sampled: the model's own list plus the task tokens (and ``<|notimestamps|>``
    when decoding with timestamps), as OpenAI Whisper suppresses them."""
    specials = {
        tokens.transcribe,
        tokens.translate,
        tokens.sot,
        tokens.start_of_prev,
        tokens.start_of_lm,
        tokens.no_speech,
    }
    if with_timestamps:
        specials.add(tokens.no_timestamps)
    return tuple(sorted(set(suppress) | specials))
