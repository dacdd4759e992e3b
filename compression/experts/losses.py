"""DistilWhisper's loss terms: label-smoothed cross-entropy, Jensen-Shannon KD, gate budget."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F  # noqa: N812

IGNORE_INDEX = -100  # label of padding positions


def label_smoothed_ce(logits: torch.Tensor, labels: torch.Tensor, smoothing: float = 0.1) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions of ``(batch, length, vocab)`` logits."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(),
        labels.flatten(),
        ignore_index=IGNORE_INDEX,
        label_smoothing=smoothing,
    )


def js_divergence(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """Mean Jensen-Shannon divergence between the two token distributions over the labelled positions.

    ``JS(p, q) = (KL(p || m) + KL(q || m)) / 2`` with ``m = (p + q) / 2``; symmetric and bounded by log 2.
    """
    mask = labels != IGNORE_INDEX
    student = F.log_softmax(student_logits[mask].float() / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits[mask].float() / temperature, dim=-1)
    mixture = torch.logsumexp(torch.stack([student, teacher]), dim=0) - math.log(2.0)
    kl_student = F.kl_div(mixture, student, log_target=True, reduction="none").sum(-1)
    kl_teacher = F.kl_div(mixture, teacher, log_target=True, reduction="none").sum(-1)
    return ((kl_student + kl_teacher) / 2).mean()


def gate_budget(gates: list[torch.Tensor], budget: float = 0.5) -> torch.Tensor:
    """``|mean(g) - budget|`` over every token of every gated layer of the step (0 when none was gated)."""
    if not gates:
        return torch.zeros(())
    mean = torch.cat([gate.flatten() for gate in gates]).mean()
    return (mean - budget).abs()
