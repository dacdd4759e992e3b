"""The distillation objective: a weighted sum of CE, KL and matched FFN hidden-state distances.

``L = w_ce * CE + w_kl * KL_T + w_hid * L_hid / M`` with ``M`` the student's decoder layers.
Presets (``LOSS_PRESETS``):

* ``ce``: CE only (the fair control: the same student, data and steps, no teacher);
* ``distil-whisper``: ``0.8 * CE + 1.0 * KL``, ``T = 2`` (Distil-Whisper's released code);
* ``dq-whisper``: ``0.1 * CE + 0.9 * (L_hid / M + KL)``, ``T = 1``, dynamic matching (DQ-Whisper).

With ``guided`` matching only the chosen student layers are matched, and ``M`` is their number.

Teacher and student run teacher-forced on the same decoder inputs; the teacher in ``no_grad`` and
eval mode. FFN features are read by forward pre-hooks on each decoder layer's ``fc2`` (its input is
``GELU(fc1(x))``); the causal mask is the model's own (DQ-Whisper's side branch omitted it).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Literal, get_args

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from compression.distill.losses import (
    FeatureAdapter,
    FeatureNorm,
    cross_entropy,
    dynamic_matching,
    kl_divergence,
    layer_distances,
    matched_distance,
)
from compression.distill.teacher_memo import TeacherMemo
from compression.training.dataset import Batch
from compression.training.loop import LossTerms

Matching = Literal["none", "static", "dynamic", "guided"]
MATCHINGS: tuple[Matching, ...] = get_args(Matching)


@dataclass(frozen=True)
class LossConfig:
    """Weights of the loss terms and how hidden states are matched."""

    ce: float = 1.0
    kl: float = 0.0
    hidden: float = 0.0
    temperature: float = 1.0
    matching: Matching = "none"
    feature_norm: FeatureNorm = "standardize"

    def __post_init__(self) -> None:
        if self.hidden > 0 and self.matching == "none":
            raise ValueError("a hidden-state weight needs matching 'static', 'dynamic' or 'guided'")
        if self.matching not in MATCHINGS:
            raise ValueError(f"matching must be static, dynamic or guided, not {self.matching!r}")
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")

    @property
    def needs_teacher(self) -> bool:
        return self.kl > 0 or self.hidden > 0


LOSS_PRESETS: dict[str, LossConfig] = {
    "ce": LossConfig(ce=1.0),
    "distil-whisper": LossConfig(ce=0.8, kl=1.0, temperature=2.0),
    "dq-whisper": LossConfig(ce=0.1, kl=0.9, hidden=0.9, temperature=1.0, matching="dynamic"),
}


def loss_config(preset: str, **overrides: Any) -> LossConfig:
    """A preset, with some fields replaced (``None`` values are ignored)."""
    if preset not in LOSS_PRESETS:
        raise ValueError(f"unknown loss preset {preset!r}; choose one of: {', '.join(LOSS_PRESETS)}")
    changes = {name: value for name, value in overrides.items() if value is not None}
    return replace(LOSS_PRESETS[preset], **changes)


@contextmanager
def ffn_features(model: WhisperForConditionalGeneration) -> Iterator[list[torch.Tensor]]:
    """Collects each decoder layer's FFN intermediate activation (fc2's input) during a forward pass."""
    captured: list[torch.Tensor] = []

    def hook(_module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        captured.append(inputs[0])

    handles = [layer.fc2.register_forward_pre_hook(hook) for layer in model.model.decoder.layers]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def logits_of(
    model: WhisperForConditionalGeneration, hidden: torch.Tensor, decoder_input_ids: torch.Tensor
) -> torch.Tensor:
    output = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
        decoder_input_ids=decoder_input_ids,
        use_cache=False,
    )
    return output.logits


class DistillObjective:
    """Callable loss for :func:`compression.training.loop.train`."""

    def __init__(
        self,
        student: WhisperForConditionalGeneration,
        config: LossConfig,
        teacher: WhisperForConditionalGeneration | None = None,
        adapter: FeatureAdapter | None = None,
        static_matching: Sequence[int] | None = None,
        memo: TeacherMemo | None = None,
        matched_layers: Sequence[int] | None = None,
    ) -> None:
        if config.needs_teacher and teacher is None:
            raise ValueError("this loss needs a teacher")
        if config.hidden > 0 and adapter is None:
            raise ValueError("hidden-state distillation needs a FeatureAdapter")
        if config.matching in ("static", "guided") and static_matching is None:
            raise ValueError(f"{config.matching} matching needs the teacher layer of each student layer")
        if config.matching == "guided" and not matched_layers:
            raise ValueError("guided matching needs the student layers it matches")
        self.student = student
        self.teacher = teacher
        self.adapter = adapter
        self.config = config
        self.static_matching = list(static_matching or [])
        self.matched_layers = list(matched_layers or []) if config.matching == "guided" else None
        self.memo = memo
        self.matches: Counter[tuple[int, ...]] = Counter()  # how often each matching was chosen
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    def __call__(self, batch: Batch) -> LossTerms:
        config = self.config
        parts: dict[str, float] = {}
        mask = batch.mask
        with ffn_features(self.student) as student_features:
            student_logits = logits_of(self.student, batch.encoder_hidden, batch.decoder_input_ids)
        ce = cross_entropy(student_logits, batch.labels)
        loss = config.ce * ce
        parts["ce"] = float(ce.item())
        if config.needs_teacher:
            teacher_logits, teacher_features = self._teacher_outputs(batch)
            if config.kl > 0:
                kl = kl_divergence(student_logits, teacher_logits, mask, config.temperature)
                loss = loss + config.kl * kl
                parts["kl"] = float(kl.item())
            if config.hidden > 0:
                assert self.adapter is not None
                distances = layer_distances(
                    student_features, teacher_features, self.adapter, mask, config.feature_norm
                )
                matching = (
                    dynamic_matching(distances) if config.matching == "dynamic" else self.static_matching
                )
                if torch.is_grad_enabled():  # count training steps, not evaluations
                    self.matches[tuple(matching)] += 1
                layers = self.matched_layers
                hidden = matched_distance(distances, matching, layers) / len(layers or student_features)
                loss = loss + config.hidden * hidden
                parts["hidden"] = float(hidden.item())
        return LossTerms(loss, parts, batch.target_tokens)

    def _teacher_outputs(self, batch: Batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Teacher logits and per-layer FFN features for the batch, from the memo where it has them."""
        teacher_hidden = batch.teacher_encoder_hidden
        if self.memo is None:
            assert self.teacher is not None
            with torch.no_grad(), ffn_features(self.teacher) as features:
                logits = logits_of(self.teacher, teacher_hidden, batch.decoder_input_ids)
            return logits, list(features)
        lengths = [int(row.nonzero().max().item()) + 1 for row in batch.mask]
        rows = [batch.decoder_input_ids[i, : lengths[i]].tolist() for i in range(len(lengths))]
        found = [self.memo.get(uid, ids) for uid, ids in zip(batch.utterance_ids, rows, strict=True)]
        missing = [i for i, entry in enumerate(found) if entry is None]
        if missing:
            assert self.teacher is not None, "a memo miss needs the teacher"
            with torch.no_grad(), ffn_features(self.teacher) as features:
                logits = logits_of(self.teacher, teacher_hidden[missing], batch.decoder_input_ids[missing])
            stacked = torch.stack(list(features), dim=1)  # (rows, layers, length, ffn)
            for position, i in enumerate(missing):
                computed = (logits[position, : lengths[i]], stacked[position, :, : lengths[i]])
                self.memo.put(batch.utterance_ids[i], rows[i], *computed)
                found[i] = computed
        entries = [entry for entry in found if entry is not None]
        assert len(entries) == len(found)
        width = batch.decoder_input_ids.shape[1]
        layers, _, ffn = entries[0][1].shape
        device = batch.decoder_input_ids.device  # memo entries come from the CPU, computed ones not
        all_logits = torch.zeros(len(rows), width, entries[0][0].shape[-1], device=device)
        all_features = torch.zeros(len(rows), layers, width, ffn, device=device)
        for i, entry in enumerate(entries):
            all_logits[i, : lengths[i]] = entry[0].float()
            all_features[i, :, : lengths[i]] = entry[1].float()
        return all_logits, [all_features[:, layer] for layer in range(layers)]
