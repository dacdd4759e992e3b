"""A transformers variant with language experts: the request's language picks the expert."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from model_store.backends.experts.storage import load_experts
from model_store.backends.quantized_loading import load_model
from model_store.backends.transformers_backend import TransformersTranscriber
from model_store.manifest import Manifest
from model_store.transcription import Audio, TranscribeOptions, Transcription


class ExpertsTranscriber(TransformersTranscriber):
    """Transcribes with the hard-gated experts of the language given or detected.

    Detection runs the shared branch only (no expert is chosen yet); a language without an expert
    runs the base model unchanged.
    """

    def __init__(
        self, manifest: Manifest, directory: Path, *, device: str = "cpu", dtype: torch.dtype | None = None
    ) -> None:
        torch_device = torch.device(device)
        compute = dtype or (torch.float32 if torch_device.type == "cpu" else torch.float16)
        model = load_model(manifest, directory, torch_device, compute)
        self.experts = load_experts(model, directory)
        model.eval()
        super().__init__(manifest, directory, device=device, dtype=compute, model=model)

    def transcribe(self, audio: Audio, options: TranscribeOptions) -> Transcription:
        detected: dict[str, float] = {}
        language = options.language
        if language is None:
            detected = self.detect_language(audio)
            language = next(iter(detected))
        chosen = language if language in self.experts.languages else None
        with self.experts.control.use(chosen):
            result = super().transcribe(audio, dataclasses.replace(options, language=language))
        if detected:
            result = dataclasses.replace(
                result, language_probability=detected[language], all_language_probabilities=detected
            )
        return result
