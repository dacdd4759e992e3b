"""Shared fixtures: stores of tiny random variants (fast plumbing) and of real bundled weights (accuracy)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from model_store.audio import decode_audio
from model_store.errors import SourceError
from model_store.store import ModelStore
from model_store.transcription import Audio
from tests.factories import store_with_tiny_variants

DATA = Path(__file__).parent / "data"
JFK_TEXT = (
    "And so my fellow Americans, ask not what your country can do for you, "
    "ask what you can do for your country."
)


@pytest.fixture(scope="session")
def jfk_audio() -> Audio:
    return decode_audio(DATA / "jfk.wav")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """A store with one tiny random variant, shared by tests that only read it."""
    return store_with_tiny_variants(tmp_path_factory.mktemp("tiny-store"), "tiny-random")


@pytest.fixture(scope="session")
def real_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModelStore]:
    """The bundled whisper-base and whisper-tiny.en imported for real (about 10 s)."""
    from compression.importers.publish import import_to_store

    store = ModelStore(tmp_path_factory.mktemp("real-store"))
    try:
        import_to_store(store, "whisper-base")
        import_to_store(store, "whisper-tiny.en")
    except SourceError as error:
        pytest.skip(f"bundled models not installed: {error}")
    yield store


def sine(seconds: float, frequency: float = 440.0, amplitude: float = 0.3) -> Audio:
    times = np.arange(int(seconds * 16_000), dtype=np.float32) / 16_000
    return (amplitude * np.sin(2 * np.pi * frequency * times)).astype(np.float32)
