"""Guided choice of which student layers to distil hidden states into (the guided paper's "which layers
to distil", chosen from each layer's distillation loss).

Before training, on calibration batches: the FFN feature distance ``d(i, j)`` between every student
layer ``i`` and teacher layer ``j`` (:func:`compression.distill.losses.layer_distances`, through the
adapter at init), averaged over the batches; DQ-Whisper's monotone greedy matching of that average;
then only the ``K`` student layers with the largest matched distance keep a hidden-state loss. The
matching stays fixed through training and is recorded in the manifest.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import WhisperForConditionalGeneration

from compression.distill.losses import (
    FeatureAdapter,
    FeatureNorm,
    dynamic_matching,
    layer_distances,
    most_distant_layers,
)
from compression.distill.objective import ffn_features, logits_of
from compression.training.dataset import Batch


@dataclass(frozen=True)
class GuidedMatching:
    matching: list[int]  # the teacher layer of each student layer
    layers: list[int]  # the student layers whose hidden states are distilled
    distances: list[list[float]]  # d(student layer, teacher layer), averaged over the calibration batches


@torch.no_grad()
def choose_matching(
    student: WhisperForConditionalGeneration,
    teacher: WhisperForConditionalGeneration,
    adapter: FeatureAdapter,
    batches: Sequence[Batch],
    count: int,
    norm: FeatureNorm = "standardize",
) -> GuidedMatching:
    """Match the ``count`` student layers furthest from their (dynamically matched) teacher layers."""
    total: torch.Tensor | None = None
    for batch in batches:
        with ffn_features(student) as student_features:
            logits_of(student, batch.encoder_hidden, batch.decoder_input_ids)
        with ffn_features(teacher) as teacher_features:
            logits_of(teacher, batch.teacher_encoder_hidden, batch.decoder_input_ids)
        distances = layer_distances(student_features, teacher_features, adapter, batch.mask, norm)
        total = distances if total is None else total + distances
    if total is None:
        raise ValueError("guided matching needs at least one calibration batch")
    average = total / len(batches)
    matching = dynamic_matching(average)
    return GuidedMatching(
        matching,
        most_distant_layers(average, matching, count),
        [[round(float(d), 6) for d in row] for row in average],
    )
