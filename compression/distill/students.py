"""Students: the teacher with fewer decoder layers (Distil-Whisper), or a smaller pretrained Whisper.

``shrink_student`` copies the teacher and keeps ``decoder_layers`` of its decoder layers, chosen
maximally spaced (``linspace(0, L-1, N)`` rounded, last forced to ``L-1``: 2 of 6 -> 0, 5; 4 of 12 ->
0, 4, 7, 11), and optionally fewer encoder layers the same way. Everything else (embeddings, layer
norms, the encoder when kept whole) is copied unchanged, so the student at init equals the teacher
on the copied layers. ``check_compatible`` guards the pretrained-student path: a student must share
the teacher's tokenizer (vocabulary and special tokens), though its width and depth may differ.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration


class IncompatibleStudentError(ValueError):
    """A student whose vocabulary or special tokens differ from the teacher's."""


@dataclass(frozen=True)
class Student:
    """A student model and where its decoder layers came from (``None`` for a pretrained student)."""

    model: WhisperForConditionalGeneration
    decoder_layers_from: tuple[int, ...] | None
    encoder_layers_from: tuple[int, ...] | None
    shares_encoder: bool  # the teacher's encoder unchanged: one encoder cache serves both


def maximally_spaced(total: int, keep: int) -> tuple[int, ...]:
    """``keep`` layer indices out of ``total``, evenly spread, first 0 and last ``total - 1``."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total} layers; choose 1..{total}")
    if keep == 1:
        return (total - 1,)
    chosen = torch.linspace(0, total - 1, keep).round().long().tolist()
    chosen[-1] = total - 1
    if len(set(chosen)) != keep:  # cannot happen for keep <= total, kept as a guard
        raise ValueError(f"layer choice {chosen} repeats a layer")
    return tuple(int(index) for index in chosen)


def _keep_layers(layers: nn.ModuleList, indices: tuple[int, ...]) -> nn.ModuleList:
    kept = nn.ModuleList([layers[index] for index in indices])
    for position, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                vars(module)["layer_idx"] = position  # key/value caches are indexed by position in the stack
    return kept


def shrink_student(
    teacher: WhisperForConditionalGeneration, decoder_layers: int, encoder_layers: int | None = None
) -> Student:
    """A deep copy of ``teacher`` with ``decoder_layers`` (and optionally ``encoder_layers``) kept."""
    model = copy.deepcopy(teacher)
    decoder_from = maximally_spaced(teacher.config.decoder_layers, decoder_layers)
    model.model.decoder.layers = _keep_layers(model.model.decoder.layers, decoder_from)
    model.config.decoder_layers = decoder_layers
    encoder_from: tuple[int, ...] | None = None
    if encoder_layers is not None and encoder_layers != teacher.config.encoder_layers:
        encoder_from = maximally_spaced(teacher.config.encoder_layers, encoder_layers)
        model.model.encoder.layers = _keep_layers(model.model.encoder.layers, encoder_from)
        model.config.encoder_layers = encoder_layers
    heads = [[layer, head] for layer, head in _alignment_heads(teacher) if layer in decoder_from]
    model.generation_config.alignment_heads = [  # type: ignore[attr-defined]
        [decoder_from.index(layer), head] for layer, head in heads
    ] or [[decoder_layers - 1, head] for head in range(teacher.config.decoder_attention_heads)]
    model.tie_weights()
    return Student(model, decoder_from, encoder_from, shares_encoder=encoder_from is None)


def _alignment_heads(model: WhisperForConditionalGeneration) -> list[tuple[int, int]]:
    heads = getattr(model.generation_config, "alignment_heads", None) or []
    return [(int(layer), int(head)) for layer, head in heads]


def check_compatible(
    teacher: WhisperForConditionalGeneration, student: WhisperForConditionalGeneration
) -> None:
    """Refuse a pretrained student that cannot be distilled from ``teacher`` token by token."""
    for field in ("vocab_size", "decoder_start_token_id", "eos_token_id", "num_mel_bins"):
        mine, theirs = getattr(student.config, field), getattr(teacher.config, field)
        if mine != theirs:
            raise IncompatibleStudentError(f"student {field} {mine} differs from the teacher's {theirs}")


def pretrained_student(
    teacher: WhisperForConditionalGeneration, student: WhisperForConditionalGeneration
) -> Student:
    """DQ-Whisper's setting: a smaller pretrained Whisper with the teacher's tokenizer."""
    check_compatible(teacher, student)
    same_encoder = (
        student.config.d_model == teacher.config.d_model
        and all(
            torch.equal(a, b)
            for a, b in zip(
                student.model.encoder.state_dict().values(),
                teacher.model.encoder.state_dict().values(),
                strict=False,
            )
        )
        and len(student.model.encoder.state_dict()) == len(teacher.model.encoder.state_dict())
    )
    return Student(student, None, None, shares_encoder=same_encoder)
