"""Training examples (an utterance's tokens) and batches that each hold one language."""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import WhisperTokenizer

from compression.data.corpus import Utterance
from compression.experts.losses import IGNORE_INDEX
from model_store.whisper_tokens import MAX_TARGET_LENGTH, SpecialTokens, transcription_prompt


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
    prompt = transcription_prompt(tokens, utterance.language)
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


class LanguageBatches:
    """Batches of one language each, a pure function of (seed, step), so a resumed run sees the same.

    The languages take turns (step ``s`` is language ``s % n`` in sorted order); each language's
    examples form an endless stream of passes, each pass shuffled by its own seeded RNG, and its
    ``k``-th batch is the next ``batch_size`` examples of that stream.
    """

    def __init__(self, examples: Sequence[Example], batch_size: int, pad_id: int, *, seed: int = 0) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        by_language: dict[str, list[Example]] = defaultdict(list)
        for example in examples:
            by_language[example.language].append(example)
        if not by_language:
            raise ValueError("no training examples")
        self.languages = sorted(by_language)
        self.by_language = dict(by_language)
        self.batch_size = batch_size
        self.pad_id = pad_id
        self.seed = seed
        self._passes: dict[tuple[str, int], list[Example]] = {}

    def _pass(self, language: str, index: int) -> list[Example]:
        key = (language, index)
        if key not in self._passes:
            order = list(self.by_language[language])
            random.Random(f"{self.seed}-{language}-{index}").shuffle(order)
            if len(self._passes) > 64:  # batches move forward: older passes are not needed again
                self._passes.clear()
            self._passes[key] = order
        return self._passes[key]

    def batch(self, step: int) -> Batch:
        language = self.languages[step % len(self.languages)]
        pool = len(self.by_language[language])
        first = (step // len(self.languages)) * self.batch_size
        chosen = [
            self._pass(language, position // pool)[position % pool]
            for position in range(first, first + self.batch_size)
        ]
        return collate(chosen, self.pad_id)


def language_batches(
    examples: Sequence[Example], batch_size: int, pad_id: int, *, seed: int = 0
) -> LanguageBatches:
    """The batches of ``examples``: ``.batch(step)`` for any step (see :class:`LanguageBatches`)."""
    return LanguageBatches(examples, batch_size, pad_id, seed=seed)
