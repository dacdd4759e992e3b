"""Sampling (temperature > 0) is reproducible per request: ``TranscribeOptions.seed`` restarts the
generator, and each server worker thread samples from its own."""

from __future__ import annotations

import threading

from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import TranscribeOptions
from tests.conftest import sine


def _sampled(seed: int) -> TranscribeOptions:
    return TranscribeOptions(
        language="en",
        temperatures=(1.0,),
        without_timestamps=True,
        condition_on_previous_text=False,
        max_new_tokens=24,
        seed=seed,
        compression_ratio_threshold=None,
        log_prob_threshold=None,
        no_speech_threshold=None,
    )


def test_the_same_seed_samples_the_same_text_in_any_thread(tiny_store: ModelStore) -> None:
    transcriber = open_variant(tiny_store, "tiny-random", RuntimeSettings(device="cpu"))
    audio = sine(2.0)
    first = transcriber.transcribe(audio, _sampled(seed=7)).text
    again = transcriber.transcribe(audio, _sampled(seed=7)).text  # the generator restarts
    other_seeds = {transcriber.transcribe(audio, _sampled(seed=seed)).text for seed in range(3)}
    in_thread: list[str] = []
    worker = threading.Thread(
        target=lambda: in_thread.append(transcriber.transcribe(audio, _sampled(seed=7)).text)
    )
    worker.start()
    worker.join()
    assert first and again == first and in_thread == [first]
    assert len(other_seeds | {first}) > 1  # random weights at temperature 1 really sample
