"""Distillation losses: CE, KL with temperature, and FFN hidden-state distillation with matching.

* ``cross_entropy``: CE of the student on the labels (pseudo-labels or gold), mean over real tokens.
* ``kl_divergence``: ``T^2 * KL(softmax(z_t / T) || softmax(z_s / T))``, mean over real tokens
  (Hinton's ``T^2`` keeps the gradient scale independent of ``T``).
* hidden states: each decoder block's FFN intermediate activation (fc1 + GELU, the input of fc2).
  Teacher features pass through a trainable linear :class:`FeatureAdapter` to the student's width.
  ``layer_distances`` gives ``d(i, j)`` between student layer ``i`` and teacher layer ``j`` for the batch:
  the mean over real tokens of the squared difference of the two features after normalisation.
  ``softmax`` normalisation is DQ-Whisper's code; its terms are ~1e-8 at width 2048 and vanish next
  to the KL, so the default ``standardize`` (zero mean, unit variance per token) keeps ``d`` of order 1.
* matching: ``static`` pairs each student layer with a fixed teacher layer; ``dynamic_matching`` is
  DQ-Whisper's per-batch monotone greedy choice: student layers in order, each takes the teacher
  layer at or after the previous match with the smallest distance; ``guided`` (the guided paper's
  "which layers to distil") fixes, before training, the dynamic matching of the distances averaged
  over calibration batches and keeps only the ``K`` student layers with the largest matched distance
  (``most_distant_layers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn
from torch.nn import functional

IGNORE = -100  # label of positions without a target (prompt tokens, padding)
FeatureNorm = Literal["standardize", "softmax"]


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean CE over positions whose label is not :data:`IGNORE`."""
    return functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE)


def kl_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``T^2 * KL(teacher || student)`` at temperature ``T``, mean over positions where ``mask``."""
    student = functional.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    teacher = functional.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    per_token = functional.kl_div(student, teacher, log_target=True, reduction="none").sum(-1)
    return temperature**2 * per_token.mean()


class FeatureAdapter(nn.Module):
    """Linear map of teacher FFN features (width ``teacher_width``) to the student's width.

    Identity at init when the widths agree (a shrunk student), so matching starts from the copied
    layers' own distances; otherwise a small random projection.
    """

    def __init__(self, teacher_width: int, student_width: int) -> None:
        super().__init__()
        self.linear = nn.Linear(teacher_width, student_width, bias=False)
        if teacher_width == student_width:
            with torch.no_grad():
                self.linear.weight.copy_(torch.eye(student_width))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear(features)


def _normalise(features: torch.Tensor, how: FeatureNorm) -> torch.Tensor:
    if how == "softmax":
        return torch.softmax(features.float(), dim=-1)
    features = features.float()
    return (features - features.mean(-1, keepdim=True)) / (features.std(-1, keepdim=True) + 1e-5)


def layer_distances(
    student: Sequence[torch.Tensor],
    teacher: Sequence[torch.Tensor],
    adapter: nn.Module,
    mask: torch.Tensor,
    norm: FeatureNorm = "standardize",
) -> torch.Tensor:
    """``(len(student), len(teacher))`` distances between layers' features on the real tokens."""
    normalised_student = [_normalise(features[mask], norm) for features in student]
    rows = []
    for features in teacher:
        mapped = _normalise(adapter(features[mask]), norm)
        rows.append(torch.stack([((s - mapped) ** 2).mean() for s in normalised_student]))
    return torch.stack(rows, dim=1)


def dynamic_matching(distances: torch.Tensor) -> list[int]:
    """DQ-Whisper's monotone greedy matching: per student layer, the argmin at or after the last match."""
    chosen: list[int] = []
    start = 0
    for row in distances.detach():
        best = start + int(torch.argmin(row[start:]).item())
        chosen.append(best)
        start = best
    return chosen


def matched_distances(distances: torch.Tensor, matching: Sequence[int]) -> torch.Tensor:
    """``d(i, matching[i])`` of each student layer ``i``."""
    return torch.stack([distances[i, j] for i, j in enumerate(matching)])


def matched_distance(
    distances: torch.Tensor, matching: Sequence[int], layers: Sequence[int] | None = None
) -> torch.Tensor:
    """Sum of the chosen ``d(i, matching[i])``, over the student ``layers`` given (default: all)."""
    matched = matched_distances(distances, matching)
    return (matched if layers is None else matched[list(layers)]).sum()


def most_distant_layers(distances: torch.Tensor, matching: Sequence[int], count: int) -> list[int]:
    """The ``count`` student layers whose matched distance is largest (in layer order): where the
    student is furthest from its teacher layer, so where hidden-state guidance has the most to teach."""
    if not 1 <= count <= len(matching):
        raise ValueError(f"can match 1 to {len(matching)} student layers, not {count}")
    return sorted(int(i) for i in torch.topk(matched_distances(distances, matching), count).indices)
