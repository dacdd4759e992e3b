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
        ``sampled`` tokens; returns it. Nothing here waits for the device: the per-row decisions are
        read from the token lists, and the forced-timestamp test is a masked fill over all rows."""
        negative = -float("inf")
        logits[:, _indices(self.suppress, logits.device)] = negative
        for row, tokens in enumerate(sampled):
            if not tokens:
                logits[row, _indices(self.begin_suppress, logits.device)] = negative
        if self.with_timestamps:
            self._timestamp_rules(logits, sampled)
        return logits

    def _timestamp_rules(self, logits: torch.Tensor, sampled: Sequence[list[int]]) -> None:
        negative = -float("inf")
        begin = self.tokens.timestamp_begin
        eot = self.tokens.eot
        for row, tokens in enumerate(sampled):
            last_was_timestamp = len(tokens) >= 1 and tokens[-1] >= begin
            penultimate_was_timestamp = len(tokens) < 2 or tokens[-2] >= begin
            if last_was_timestamp:
                if penultimate_was_timestamp:  # a pair just closed: text must follow
                    logits[row, begin:] = negative
                else:  # an opening timestamp: a closing one (or the end) must follow
                    logits[row, :eot] = negative
            timestamps = [token for token in tokens if token >= begin]
            if timestamps:
                floor = (
                    timestamps[-1]
                    if last_was_timestamp and not penultimate_was_timestamp
                    else timestamps[-1] + 1
                )
                logits[row, begin:floor] = negative
            if not tokens:
                logits[row, :begin] = negative
                if self.max_initial_timestamp_index is not None:
                    logits[row, begin + self.max_initial_timestamp_index + 1 :] = negative
        log_probs = torch.log_softmax(logits.float(), dim=-1)
        timestamp_mass = torch.logsumexp(log_probs[:, begin:], dim=-1)
        best_text = log_probs[:, :begin].max(dim=-1).values
        logits[:, :begin].masked_fill_((timestamp_mass > best_text).unsqueeze(1), negative)


@functools.cache
def _indices(tokens: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``tokens`` as an index tensor on ``device``, made once (not copied to the device at every step)."""
    return torch.tensor(tokens, dtype=torch.long, device=device)
