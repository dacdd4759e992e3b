"""Batches for frozen-encoder training: cached encoder outputs plus decoder token labels.

An :class:`Example` is one utterance's target text as Whisper tokens. :func:`decoder_sequences` turns it
into the teacher-forced decoder input ``<|startoftranscript|><|xx|><|transcribe|><|notimestamps|> t1 .. tn``
and labels ``-100 -100 -100 t1 .. tn <|endoftext|>`` (the forced prompt tokens are not learned).
:class:`CachedBatches` draws seeded batches (a fresh permutation per epoch, so step ``k`` of a run is
the same batch whether or not the run was resumed) and loads their encoder outputs from the cache;
with several training processes, each loads only its share of every batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from compression.training.distributed import SINGLE_PROCESS, Ranks
from compression.training.encoder_cache import EncoderCache
from model_store.whisper_tokens import SpecialTokens, transcription_prompt

IGNORE = -100


@dataclass(frozen=True)
class Example:
    """One training utterance: its id, language and target text tokens (no special tokens)."""

    utterance_id: str
    language: str
    tokens: tuple[int, ...]


@dataclass(frozen=True)
class Batch:
    """A padded batch. ``labels`` is -100 where nothing is predicted; ``mask`` marks real targets."""

    utterance_ids: tuple[str, ...]
    encoder_hidden: torch.Tensor  # (batch, frames, d_model) float32
    decoder_input_ids: torch.Tensor  # (batch, length)
    labels: torch.Tensor  # (batch, length)
    teacher_hidden: torch.Tensor | None = None  # the teacher's encoder output when its encoder differs

    @property
    def mask(self) -> torch.Tensor:
        return self.labels != IGNORE

    @property
    def teacher_encoder_hidden(self) -> torch.Tensor:
        """The encoder output the teacher decodes: its own where its encoder differs, else the shared one."""
        return self.teacher_hidden if self.teacher_hidden is not None else self.encoder_hidden

    @property
    def target_tokens(self) -> int:
        return int(self.mask.sum().item())

    def to(self, device: torch.device) -> Batch:
        return Batch(
            self.utterance_ids,
            self.encoder_hidden.to(device),
            self.decoder_input_ids.to(device),
            self.labels.to(device),
            None if self.teacher_hidden is None else self.teacher_hidden.to(device),
        )


def decoder_sequences(
    examples: Sequence[Example], tokens: SpecialTokens, max_length: int = 448
) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded decoder inputs and labels for ``examples`` (padding: end-of-text in, -100 out)."""
    inputs: list[list[int]] = []
    labels: list[list[int]] = []
    for example in examples:
        prompt = transcription_prompt(tokens, example.language)
        text = list(example.tokens)[: max_length - len(prompt)]
        inputs.append(prompt + text)
        labels.append([IGNORE] * (len(prompt) - 1) + text + [tokens.eot])
    width = max(len(row) for row in inputs)
    input_ids = torch.full((len(inputs), width), tokens.eot, dtype=torch.long)
    label_ids = torch.full((len(inputs), width), IGNORE, dtype=torch.long)
    for row, (sequence, target) in enumerate(zip(inputs, labels, strict=True)):
        input_ids[row, : len(sequence)] = torch.tensor(sequence)
        label_ids[row, : len(target)] = torch.tensor(target)
    return input_ids, label_ids


class CachedBatches:
    """Seeded batches of ``examples`` whose encoder outputs come from ``cache``."""

    def __init__(
        self,
        examples: Sequence[Example],
        cache: EncoderCache,
        corpus_id: str,
        tokens: SpecialTokens,
        batch_size: int,
        seed: int,
        teacher_cache: EncoderCache | None = None,
        device: torch.device | None = None,
        ranks: Ranks = SINGLE_PROCESS,
    ) -> None:
        if not examples:
            raise ValueError("no training examples")
        self.examples = list(examples)
        self.cache = cache
        self.corpus_id = corpus_id
        self.tokens = tokens
        self.batch_size = min(batch_size, len(self.examples))
        self.seed = seed
        self.teacher_cache = teacher_cache  # None: the teacher shares the student's encoder
        self.device = device or torch.device("cpu")
        self.ranks = ranks  # several training processes: each loads and learns from its share

    def with_examples(self, examples: Sequence[Example]) -> CachedBatches:
        """Batches of other ``examples`` from the same caches, with the same batch size, seed,
        processes and device (the examples must be in the caches)."""
        return CachedBatches(
            examples,
            self.cache,
            self.corpus_id,
            self.tokens,
            self.batch_size,
            self.seed,
            teacher_cache=self.teacher_cache,
            device=self.device,
            ranks=self.ranks,
        )

    @property
    def batches_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def indices(self, step: int) -> list[int]:
        """The example indices of training step ``step`` (0-based), the same on every run."""
        epoch, position = divmod(step, self.batches_per_epoch)
        order = torch.randperm(
            len(self.examples), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        )
        return order[position * self.batch_size : (position + 1) * self.batch_size].tolist()

    def batch(self, step: int) -> Batch:
        """This process's share of step ``step``'s batch (the whole batch for a single process)."""
        return self.collate([self.examples[index] for index in self.ranks.share(self.indices(step))])

    def whole_batch(self, step: int) -> Batch:
        """Step ``step``'s whole batch, whatever the process (for what every process must agree on)."""
        return self.collate([self.examples[index] for index in self.indices(step)])

    def collate(self, examples: Sequence[Example]) -> Batch:
        hidden = torch.stack([self.cache.load(self.corpus_id, e.utterance_id) for e in examples]).float()
        teacher_hidden = None
        if self.teacher_cache is not None:
            loads = [self.teacher_cache.load(self.corpus_id, e.utterance_id) for e in examples]
            teacher_hidden = torch.stack(loads).float()
        input_ids, labels = decoder_sequences(examples, self.tokens)
        batch = Batch(tuple(e.utterance_id for e in examples), hidden, input_ids, labels, teacher_hidden)
        return batch.to(self.device)
