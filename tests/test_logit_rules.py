"""The decoding rules on a batch of rows equal OpenAI Whisper's rules applied to each row alone."""

from __future__ import annotations

import random

import pytest
import torch

from model_store.logit_rules import LogitRules
from model_store.whisper_tokens import SpecialTokens, special_tokens
from tests.factories import tiny_random_whisper

NEGATIVE = -float("inf")


@pytest.fixture(scope="module")
def tokens() -> SpecialTokens:
    return special_tokens(tiny_random_whisper().tokenizer, multilingual=True)


def reference_rules(rules: LogitRules, logits: torch.Tensor, sampled: list[int]) -> torch.Tensor:
    """One row, written out as OpenAI Whisper's SuppressTokens, SuppressBlank and ApplyTimestampRules."""
    out = logits.clone()
    out[list(rules.suppress)] = NEGATIVE
    if not sampled:
        out[list(rules.begin_suppress)] = NEGATIVE
    if not rules.with_timestamps:
        return out
    begin, eot = rules.tokens.timestamp_begin, rules.tokens.eot
    last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= begin
    penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= begin
    if last_was_timestamp:
        if penultimate_was_timestamp:
            out[begin:] = NEGATIVE
        else:
            out[:eot] = NEGATIVE
    timestamps = [token for token in sampled if token >= begin]
    if timestamps:
        floor = timestamps[-1] if last_was_timestamp and not penultimate_was_timestamp else timestamps[-1] + 1
        out[begin:floor] = NEGATIVE
    if not sampled:
        out[:begin] = NEGATIVE
        if rules.max_initial_timestamp_index is not None:
            out[begin + rules.max_initial_timestamp_index + 1 :] = NEGATIVE
    log_probs = torch.log_softmax(out.float(), dim=-1)
    if torch.logsumexp(log_probs[begin:], dim=-1) > log_probs[:begin].max():
        out[:begin] = NEGATIVE
    return out


def histories(tokens: SpecialTokens, count: int, seed: int) -> list[list[int]]:
    """Token histories covering the grammar's cases: empty, text only, an open or closed timestamp
    pair, two timestamps in a row, and timestamps late in the window."""
    generator = random.Random(seed)
    begin = tokens.timestamp_begin
    found: list[list[int]] = [[], [440], [begin + 3], [begin + 3, 440], [begin + 3, 440, begin + 9]]
    found.append([begin + 3, 440, begin + 9, begin + 9])
    while len(found) < count:
        history: list[int] = []
        for _ in range(generator.randrange(1, 12)):
            history.append(
                begin + generator.randrange(0, 1500)
                if generator.random() < 0.3
                else generator.randrange(0, 5000)
            )
        found.append(history)
    return found


@pytest.mark.parametrize("with_timestamps", [True, False], ids=["timestamps", "text-only"])
def test_rules_on_a_batch_equal_the_reference_on_each_row(
    tokens: SpecialTokens, with_timestamps: bool
) -> None:
    rules = LogitRules.build(
        tokens, suppress=[1, 2, 7], begin_suppress=[220, tokens.eot], with_timestamps=with_timestamps
    )
    sampled = histories(tokens, 40, seed=0)
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(len(sampled), tokens.timestamp_begin + 1501, generator=generator) * 3
    logits[::3, tokens.timestamp_begin :] += 6.0  # every third row: timestamps likely enough to be forced
    expected = torch.stack(
        [reference_rules(rules, row, history) for row, history in zip(logits, sampled, strict=True)]
    )
    batched = rules.apply_rows(logits.clone(), sampled)
    torch.testing.assert_close(batched, expected, rtol=0, atol=0)
    alone = torch.stack(
        [rules.apply(row.clone(), history) for row, history in zip(logits, sampled, strict=True)]
    )
    torch.testing.assert_close(alone, expected, rtol=0, atol=0)
    forced = (expected[:, : tokens.timestamp_begin] == NEGATIVE).all(dim=1)
    assert with_timestamps == bool(forced.any())  # the forced-timestamp case really occurs
