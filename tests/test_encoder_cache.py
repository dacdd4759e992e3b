"""The encoder-output cache: computed once, equal to the encoder's output, resumable, keyed by weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from compression.training.encoder_cache import EncoderCache, encoder_fingerprint
from model_store.transcription import Audio
from tests.conftest import sine
from tests.factories import tiny_random_whisper


@dataclass(frozen=True)
class ToneUtterance:
    id: str
    frequency: float

    def load_audio(self) -> Audio:
        return sine(1.5, self.frequency)


UTTERANCES = [ToneUtterance(f"tone-{index}", 200.0 + 150 * index) for index in range(5)]


@pytest.fixture(scope="module")
def encoder() -> torch.nn.Module:
    return tiny_random_whisper(seed=3).model.model.encoder


def test_fill_stores_the_encoder_output_once(tmp_path: Path, encoder: torch.nn.Module) -> None:
    cache = EncoderCache(tmp_path, encoder, batch_size=2)
    report = cache.fill("corpus-a", UTTERANCES, progress=False)
    assert (report.computed, report.reused) == (5, 0)
    stored = cache.load("corpus-a", "tone-3")
    assert stored.dtype == torch.float16 and stored.shape == (1500, 64)
    with torch.no_grad():
        direct = encoder(cache.features(UTTERANCES[3].load_audio()).unsqueeze(0)).last_hidden_state[0]
    torch.testing.assert_close(stored.float(), direct, atol=2e-3, rtol=2e-3)
    again = cache.fill("corpus-a", UTTERANCES, progress=False)
    assert (again.computed, again.reused) == (0, 5)
    with pytest.raises(KeyError):
        cache.load("corpus-b", "tone-3")  # keyed by corpus too


def test_interrupted_fill_resumes_with_only_the_missing(tmp_path: Path, encoder: torch.nn.Module) -> None:
    cache = EncoderCache(tmp_path, encoder, batch_size=2)

    def stop_after_first_batch(done: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.fill("c", UTTERANCES, progress=False, on_batch=stop_after_first_batch)
    assert sorted(p.name for p in (cache.directory / "c").iterdir()) == [
        "tone-0.safetensors",
        "tone-1.safetensors",
    ]  # whole entries only, no temporary files left
    report = cache.fill("c", UTTERANCES, progress=False)
    assert (report.computed, report.reused) == (3, 2)


def test_fingerprint_follows_the_weights(encoder: torch.nn.Module) -> None:
    other = tiny_random_whisper(seed=4).model.model.encoder
    same = tiny_random_whisper(seed=3).model.model.encoder
    assert encoder_fingerprint(encoder) == encoder_fingerprint(same)
    assert encoder_fingerprint(encoder) != encoder_fingerprint(other)


def test_odd_utterance_ids_get_safe_file_names(tmp_path: Path, encoder: torch.nn.Module) -> None:
    cache = EncoderCache(tmp_path, encoder)
    odd = ToneUtterance("../weird id/é", 300.0)
    cache.fill("c", [odd], progress=False)
    assert cache.path("c", odd.id).parent == cache.directory / "c"
    assert np.isfinite(cache.load("c", odd.id).float().numpy()).all()
