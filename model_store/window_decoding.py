"""How one 30 s window is decoded, and what decoding it returns.

The contract between the long-form driver (:mod:`model_store.longform`), the batchers
(:mod:`model_store.batching`, :mod:`model_store.continuous_batching`) and the backends' ``decode`` and
``decode_batch``: one object carries the options, so a new decoding option is added here and read
where it matters, not threaded through every signature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

DecodeResult = tuple[list[int], float, float]
"""Sampled tokens (without end-of-text), their summed log-probability, the no-speech probability."""


@dataclass(frozen=True)
class WindowDecoding:
    """How to decode one window.

    ``temperature`` 0 is greedy, above it the tokens are sampled; ``max_new_tokens`` bounds the sampled
    tokens; ``with_timestamps`` chooses the logit rules (and must agree with the prompt's last token);
    with ``repetition_limit`` a decoder may stop early once the text's compression ratio exceeds it (a
    hallucination loop, which the temperature fallback would reject anyway).
    """

    temperature: float
    max_new_tokens: int
    with_timestamps: bool
    repetition_limit: float | None = None

    def shared(self) -> WindowDecoding:
        """What the rows of one static batch must agree on: they step together, so everything but the
        repetition limit (a row that loops ends alone)."""
        return replace(self, repetition_limit=None)

    def steps_with(self, other: WindowDecoding) -> bool:
        """Whether the two windows can run in one static batch."""
        return self.shared() == other.shared()


def shared_decoding(decodings: Sequence[WindowDecoding]) -> WindowDecoding:
    """The options every row of one static batch shares (the first row's); refuses rows that cannot
    step together (see :meth:`WindowDecoding.steps_with`)."""
    if not decodings:
        raise ValueError("a batched decode needs at least one window")
    first = decodings[0]
    if not all(first.steps_with(other) for other in decodings[1:]):
        raise ValueError("a batched decode needs one temperature, token budget and timestamps mode")
    return first
