"""How often the hard gates open at inference, measured teacher-forced on held-out transcripts."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from compression.experts.data import Example, collate
from compression.experts.encoder_outputs import EncoderOutputs
from compression.experts.trainer import decoder_logits
from model_store.backends.experts.attach import ExpertModel


@torch.no_grad()
def mean_gate_opening(
    experts: ExpertModel, examples: Sequence[Example], encoder_outputs: EncoderOutputs, pad_id: int
) -> dict[str, float]:
    """Per language: the fraction of (token, layer) decisions that chose the expert (batch of one: no padding)."""
    experts.model.eval()
    opening: dict[str, float] = {}
    for language in sorted({example.language for example in examples}):
        if language not in experts.languages:
            continue
        experts.control.reset_statistics()
        with experts.control.use(language):
            for example in (example for example in examples if example.language == language):
                batch = collate([example], pad_id)
                decoder_logits(experts.model, encoder_outputs(batch.examples), batch)
        opened = experts.control.mean_gate_opening()
        if opened is not None:
            opening[language] = round(opened, 4)
    experts.control.reset_statistics()
    return opening
