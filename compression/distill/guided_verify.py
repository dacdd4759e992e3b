"""Guided mixed precision, verified: the whole quantized model measured for each candidate choice.

The per-Linear sensitivities (:mod:`compression.distill.guided`) predict a choice's cost as a sum, one
Linear at a time. That sum was wrong where it mattered (README, sessions 10-12): a dozen Linears at 2
bits, each cheap alone or against the uniform model, made the decoder stop early together, and guided
ended worse than uniform precision at the same size. So the candidates of
:func:`~compression.distill.guided_bits.candidate_choices` (uniform first) are each applied to the whole
decoder and the calibration utterances decoded greedily, free-running; the candidate whose transcripts
differ least from the float model's (token edits) is kept, the fewer moves on a tie. Uniform precision
is a candidate, so the choice is never worse than uniform on the calibration transcripts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein
from tqdm import tqdm
from transformers import WhisperForConditionalGeneration

from compression.distill.fake_quant import QuantSpec, decoder_linears, fake_quantize
from compression.distill.guided import Transcriber
from compression.distill.guided_bits import Sensitivity
from compression.training.dataset import Batch


@dataclass(frozen=True)
class CandidateRecord:
    """One candidate as measured: how far it moved, what the sum predicted, what decoding showed."""

    moved: int  # Linears off the uniform width
    predicted: float  # summed sensitivity of its widths
    edits: int  # token edits of the calibration transcripts against the float model's
    reference_tokens: int  # tokens of the float model's transcripts (edits / this: a token error rate)


def verified_choice(
    model: WhisperForConditionalGeneration,
    calibration: Sequence[Batch],
    candidates: Sequence[dict[str, int]],
    sensitivities: Sensitivity,
    spec: Callable[[int], QuantSpec],
    transcribe: Transcriber,
    progress: bool = False,
) -> tuple[int, list[CandidateRecord]]:
    """The index of the candidate to keep (``candidates[0]`` must be the uniform choice) and every
    candidate's record. ``transcribe`` decodes with ``model``'s weights as they are at the call; the
    weights are restored at the end."""
    linears = dict(decoder_linears(model))
    originals = {name: linear.weight.data for name, linear in linears.items()}
    uniform = candidates[0]
    reference = [transcribe(batch) for batch in calibration]
    reference_tokens = sum(len(tokens) for rows in reference for tokens in rows)
    records: list[CandidateRecord] = []
    try:
        for choice in tqdm(candidates, desc="verify", unit="choice", disable=not progress):
            for name, bits in choice.items():
                linears[name].weight.data = fake_quantize(originals[name], spec(bits))
            edits = 0
            for batch, rows in zip(calibration, reference, strict=True):
                edits += sum(map(Levenshtein.distance, rows, transcribe(batch)))
            records.append(
                CandidateRecord(
                    moved=sum(choice[name] != uniform[name] for name in choice),
                    predicted=sum(sensitivities[name][bits] for name, bits in choice.items()),
                    edits=edits,
                    reference_tokens=reference_tokens,
                )
            )
    finally:
        for name, linear in linears.items():
            linear.weight.data = originals[name]
    best = min(range(len(candidates)), key=lambda index: (records[index].edits, records[index].moved))
    return best, records
