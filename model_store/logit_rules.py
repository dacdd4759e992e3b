"""The rules Whisper applies to the next-token logits while decoding (as OpenAI Whisper does).

Suppressed tokens, a blank-free start, and the timestamp grammar: timestamps come in pairs (except
just before the end), never decrease, the first token is a timestamp no later than 1 s, and a
timestamp is forced when timestamps together are likelier than any single text token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from model_store.whisper_tokens import MAX_INITIAL_TIMESTAMP_INDEX, SpecialTokens, suppressed_tokens


@dataclass(frozen=True)
class LogitRules:
    tokens: SpecialTokens
    suppress: tuple[int, ...]  # always suppressed
    begin_suppress: tuple[int, ...]  # suppressed at the first sampled position
    with_timestamps: bool
    max_initial_timestamp_index: int | None = MAX_INITIAL_TIMESTAMP_INDEX

    @classmethod
    def build(
        cls,
        tokens: SpecialTokens,
        *,
        suppress: list[int],
        begin_suppress: list[int],
        with_timestamps: bool,
    ) -> LogitRules:
        return cls(
            tokens=tokens,
            suppress=suppressed_tokens(tokens, suppress, with_timestamps=with_timestamps),
            begin_suppress=tuple(begin_suppress),
            with_timestamps=with_timestamps,
        )

    def apply(self, logits: torch.Tensor, sampled: list[int]) -> torch.Tensor:
        """Mask ``logits`` (vocab,) in place for the position after ``sampled`` tokens; returns it."""
        self.apply_rows(logits.unsqueeze(0), [sampled])
        return logits

    def apply_rows(self, logits: torch.Tensor, sampled: Sequence[list[int]]) -> torch.Tensor:
        """Mask each row of ``logits`` (rows, vocab) in place for the position after that row's
        ``sampled`` tokens; returns it. Nothing here waits for the device, and the number of device
        operations does not grow with the rows (a GPU step pays per launch): each row's grammar is read
        from its token list into four numbers (:meth:`_grammar_masks`), copied once and applied as
        masked fills over all rows, and the forced-timestamp test is a masked fill too."""
        negative = -float("inf")
        device = logits.device
        logits[:, _indices(self.suppress, device)] = negative
        starting = [row for row, tokens in enumerate(sampled) if not tokens]
        if starting:
            rows = torch.tensor(starting, device=device).unsqueeze(1)  # the first step only
            logits[rows, _indices(self.begin_suppress, device)] = negative
        if self.with_timestamps:
            self._timestamp_rules(logits, sampled)
        return logits

    def _timestamp_rules(self, logits: torch.Tensor, sampled: Sequence[list[int]]) -> None:
        negative = -float("inf")
        begin = self.tokens.timestamp_begin
        eot = self.tokens.eot
        device = logits.device
        masks = torch.tensor(self._grammar_masks(sampled, logits.shape[-1] - begin)).to(device)
        logits[:, :eot].masked_fill_(masks[:, 0:1].bool(), negative)
        logits[:, eot:begin].masked_fill_(masks[:, 1:2].bool(), negative)
        offsets = _columns(logits.shape[-1] - begin, device)
        logits[:, begin:].masked_fill_((offsets < masks[:, 2:3]) | (offsets >= masks[:, 3:4]), negative)
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        timestamp_mass = torch.logsumexp(log_probs[:, begin:], dim=-1)
        best_text = log_probs[:, :begin].max(dim=-1).values
        logits[:, :begin].masked_fill_((timestamp_mass > best_text).unsqueeze(1), negative)

    def _grammar_masks(
        self, sampled: Sequence[list[int]], timestamps: int
    ) -> list[tuple[int, int, int, int]]:
        """Per row, what the timestamp grammar forbids next, as four numbers: mask the text tokens
        (below the end token), mask the special tokens between the end and the first timestamp, mask the
        timestamps before offset ``a`` (counted from the first timestamp token), and those from offset
        ``b`` on.

        After a closed pair (or a lone first timestamp) text must follow; after an opening timestamp a
        closing one or the end; timestamps never decrease; the first token is a timestamp no later than
        ``max_initial_timestamp_index``.
        """
        begin = self.tokens.timestamp_begin
        rows: list[tuple[int, int, int, int]] = []
        for tokens in sampled:
            if not tokens:
                latest = self.max_initial_timestamp_index
                rows.append((1, 1, 0, timestamps if latest is None else latest + 1))
                continue
            last_was_timestamp = tokens[-1] >= begin
            penultimate_was_timestamp = len(tokens) < 2 or tokens[-2] >= begin
            opening = last_was_timestamp and not penultimate_was_timestamp
            last_timestamp = next((token for token in reversed(tokens) if token >= begin), None)
            before = 0 if last_timestamp is None else last_timestamp - begin + (0 if opening else 1)
            if last_was_timestamp and penultimate_was_timestamp:  # a pair just closed: text must follow
                before = timestamps
            rows.append((int(opening), 0, before, timestamps))
        return rows


@functools.cache
def _indices(tokens: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``tokens`` as an index tensor on ``device``, made once (not copied to the device at every step)."""
    return torch.tensor(tokens, dtype=torch.long, device=device)


@functools.cache
def _columns(count: int, device: torch.device) -> torch.Tensor:
    """``0 .. count-1`` on ``device``, made once."""
    return torch.arange(count, device=device)
