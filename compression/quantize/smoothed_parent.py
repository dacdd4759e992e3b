"""A parent's float model with SmoothQuant smoothing folded in, calibrated on corpus utterances.

The smoothed model computes the same function as the parent (up to float rounding), so every
quantization method that starts from a float checkpoint can start from it instead; the methods
whose activations are quantized at run time (PyTorch dynamic int8, CTranslate2 int8) gain from it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import WhisperForConditionalGeneration, WhisperTokenizer

from compression.data.corpus import Utterance
from compression.quantize.calibration import CalibrationExample, calibration_examples, run_calibration
from compression.quantize.parent import Parent
from compression.quantize.smoothing import (
    consumers_of,
    recording_input_ranges,
    smooth,
    whisper_smoothing_groups,
)
from model_store.whisper_tokens import special_tokens

logger = logging.getLogger(__name__)

DEFAULT_ALPHA = 0.5  # SmoothQuant's default migration strength


@dataclass(frozen=True)
class SmoothingPlan:
    """How strongly to smooth (``alpha`` in [0, 1]) and on which calibration utterances."""

    alpha: float
    utterances: Sequence[Utterance]

    def __post_init__(self) -> None:
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"smoothing alpha must be between 0 and 1, not {self.alpha}")
        if not self.utterances:
            raise ValueError("smoothing needs at least one calibration utterance")


def calibration_ranges(
    model: WhisperForConditionalGeneration, examples: Sequence[CalibrationExample], *, progress: bool = True
) -> dict[str, torch.Tensor]:
    """The input range of every Linear that smoothing scales, over the calibration examples, measured
    on ``model`` as it is (smooth copies of it with any alpha from the same ranges)."""
    with recording_input_ranges(model, consumers_of(whisper_smoothing_groups(model))) as ranges:
        run_calibration(model, examples, progress=progress)
    return ranges


def smoothed_model(
    parent: Parent, plan: SmoothingPlan, *, progress: bool = True
) -> tuple[WhisperForConditionalGeneration, dict[str, Any]]:
    """The parent's float32 model with smoothing folded in, and the recipe's record of it."""
    model = parent.load_float(torch.float32)
    tokenizer = WhisperTokenizer.from_pretrained(parent.directory, local_files_only=True)
    tokens = special_tokens(tokenizer, multilingual=parent.manifest.multilingual)
    examples = calibration_examples(plan.utterances, tokenizer, tokens, model.config.num_mel_bins)
    ranges = calibration_ranges(model, examples, progress=progress)
    report = smooth(model, whisper_smoothing_groups(model), ranges, plan.alpha)
    logger.info(
        "smoothed %d Linears in %d groups (alpha %.2f): worst input spread %.1f -> %.1f",
        report.linears,
        report.groups,
        report.alpha,
        report.worst_spread_before,
        report.worst_spread_after,
    )
    languages = sorted({example.language for example in examples})
    record = {
        **report.as_dict(),
        "method": "SmoothQuant (Xiao et al., 2023), folded into LayerNorms and value projections",
        "calibration_split": "train",
        "calibration_utterances": len(examples),
        "calibration_languages": languages,
    }
    return model, record
