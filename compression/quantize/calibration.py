"""Calibration audio for activation smoothing: corpus utterances run through the whole float model.

Each example is one utterance's first 30 s window of log-mel features (the serving path's) and its
gold transcript as the teacher-forced decoder input, so every Linear, encoder and decoder, sees the
activations it sees when transcribing that language.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch
from tqdm import tqdm
from transformers import WhisperForConditionalGeneration, WhisperTokenizer

from compression.data.corpus import Corpus, Utterance
from compression.training.selection import select_utterances
from model_store.errors import HushError
from model_store.features import log_mel_spectrogram, window
from model_store.manifest import Manifest
from model_store.whisper_tokens import MAX_TARGET_LENGTH, SpecialTokens, transcription_prompt


class CalibrationError(HushError, ValueError):
    """No calibration audio for a parent in the corpus."""


@dataclass(frozen=True)
class CalibrationExample:
    """One utterance as the model's input: features ``(1, n_mels, 3000)`` and decoder ids ``(1, n)``."""

    utterance_id: str
    language: str
    features: torch.Tensor
    decoder_input_ids: torch.Tensor


def covered_languages(corpus: Corpus, manifest: Manifest) -> list[str]:
    """The corpus languages the variant transcribes; refused when there are none."""
    languages = [language for language in corpus.languages if manifest.covers(language)]
    if not languages:
        raise CalibrationError(
            f"corpus {corpus.id} has none of {manifest.id}'s languages ({', '.join(manifest.languages)})"
        )
    return languages


def calibration_utterances(
    corpus: Corpus, manifest: Manifest, per_language: int, seed: int = 0
) -> list[Utterance]:
    """A seeded sample of the train split, ``per_language`` utterances of each corpus language the
    parent covers (the train split: dev and test stay unseen by anything that shapes a variant)."""
    return select_utterances(corpus, "train", covered_languages(corpus, manifest), per_language, seed=seed)


def calibration_examples(
    utterances: Sequence[Utterance], tokenizer: WhisperTokenizer, tokens: SpecialTokens, n_mels: int
) -> list[CalibrationExample]:
    examples = []
    for utterance in utterances:
        features = window(log_mel_spectrogram(utterance.load_audio(), n_mels), 0).unsqueeze(0)
        text = tokenizer.encode(" " + utterance.text.strip(), add_special_tokens=False)
        ids = [*transcription_prompt(tokens, utterance.language), *text][:MAX_TARGET_LENGTH]
        decoder_input_ids = torch.tensor([ids], dtype=torch.long)
        examples.append(CalibrationExample(utterance.id, utterance.language, features, decoder_input_ids))
    return examples


@torch.inference_mode()
def run_calibration(
    model: WhisperForConditionalGeneration, examples: Iterable[CalibrationExample], *, progress: bool = True
) -> None:
    """One forward pass per example (hooks installed by the caller observe the activations)."""
    examples = list(examples)
    dtype = next(model.parameters()).dtype
    for example in tqdm(examples, desc="calibration", unit="utt", disable=not progress):
        model(input_features=example.features.to(dtype), decoder_input_ids=example.decoder_input_ids)
