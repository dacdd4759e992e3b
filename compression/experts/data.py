"""Training examples (an utterance's tokens) and batches that each hold one language."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import WhisperTokenizer

from compression.data.corpus import Utterance
from compression.experts.losses import IGNORE_INDEX
from model_store.whisper_tokens import MAX_TARGET_LENGTH, SpecialTokens


@dataclass(frozen=True)
class Example:
    """One utterance to train on: the decoder's input tokens and the labels it should predict."""

    utterance: Utterance
    input_ids: tuple[int, ...]  # <|sot|> <|lang|> <|transcribe|> <|notimestamps|> text...
    labels: tuple[int, ...]  # the next token at each position; IGNORE_INDEX on the prompt

    @property
    def language(self) -> str:
        return self.utterance.language


def make_example(utterance: Utterance, tokenizer: WhisperTokenizer, tokens: SpecialTokens) -> Example:
    """Teacher forcing on the gold transcript, as Whisper is trained (text without timestamps)."""
    prompt = [tokens.sot, tokens.languages[utterance.language], tokens.transcribe, tokens.no_timestamps]
    text = list(tokenizer.encode(" " + utterance.text.strip(), add_special_tokens=False))
    sequence = [*prompt, *text, tokens.eot][:MAX_TARGET_LENGTH]
    labels = [IGNORE_INDEX] * (len(prompt) - 1) + sequence[len(prompt) :]
    return Example(utterance, tuple(sequence[:-1]), tuple(labels))


@dataclass(frozen=True)
class Batch:
    """Examples of one language, padded to one length."""

    language: str
    examples: tuple[Example, ...]
    input_ids: torch.Tensor  # (batch, length)
    labels: torch.Tensor  # (batch, length), IGNORE_INDEX on prompt and padding


def collate(examples: Sequence[Example], pad_id: int) -> Batch:
    languages = {example.language for example in examples}
    if len(languages) != 1:
        raise ValueError(f"a batch holds one language; got {sorted(languages)}")
    length = max(len(example.input_ids) for example in examples)
    input_ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
    for row, example in enumerate(examples):
        input_ids[row, : len(example.input_ids)] = torch.tensor(example.input_ids)
        labels[row, : len(example.labels)] = torch.tensor(example.labels)
    return Batch(languages.pop(), tuple(examples), input_ids, labels)


def language_batches(
    examples: Sequence[Example], batch_size: int, pad_id: int, *, seed: int = 0
) -> Iterator[Batch]:
    """Endless batches, each of one language; the languages take turns, each shuffled every pass."""
    by_language: dict[str, list[Example]] = defaultdict(list)
    for example in examples:
        by_language[example.language].append(example)
    if not by_language:
        raise ValueError("no training examples")
    generator = random.Random(seed)
    queues: dict[str, list[Example]] = {language: [] for language in by_language}
    while True:
        for language in sorted(by_language):
            if len(queues[language]) < batch_size:
                refill = list(by_language[language])
                generator.shuffle(refill)
                queues[language] += refill
            chosen, queues[language] = queues[language][:batch_size], queues[language][batch_size:]
            yield collate(chosen, pad_id)
