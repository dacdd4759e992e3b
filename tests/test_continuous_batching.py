"""Continuous batching: rows join and leave a running decoder batch between steps, each keeping the
output it has decoded alone.

The row engine against transformers' own forward pass, the scheduler on a tiny random Whisper (joining
mid-flight, mixed prompt lengths and timestamps modes, errors, close, timeout), and the transcriber
opened with ``runtime.batching.decoder = "continuous"``. The real whisper-base check is in
``tests/test_batching.py`` (``test_real_base_batched_equals_unbatched_on_dev_clips``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import pytest
import torch
from transformers import WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from compression.quantize.methods import quantize_variant
from model_store.backends.decoder_memory import full_batch_bytes
from model_store.backends.decoder_rows import DecoderRows
from model_store.backends.transformers_backend import TransformersTranscriber, TransformersWindowDecoder
from model_store.batching import BatchedDecoder
from model_store.continuous_batching import ContinuousDecoder
from model_store.features import log_mel_spectrogram, window
from model_store.micro_batcher import BatcherClosedError, BatchTimeoutError
from model_store.opener import open_variant
from model_store.settings import BatchingSettings, RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Audio, TranscribeOptions, Transcription
from model_store.window_decoding import WindowDecoding
from tests.factories import store_with_tiny_variants, tiny_random_whisper

UNBATCHED = RuntimeSettings(device="cpu", threads=1, batching=BatchingSettings(mode="off"))
CONTINUOUS = RuntimeSettings(
    device="cpu", threads=1, batching=BatchingSettings(mode="on", max_batch=8, decoder="continuous")
)


def greedy(max_new_tokens: int, *, with_timestamps: bool = False) -> WindowDecoding:
    return WindowDecoding(temperature=0.0, max_new_tokens=max_new_tokens, with_timestamps=with_timestamps)


@pytest.fixture(scope="module")
def model() -> WhisperForConditionalGeneration:
    return tiny_random_whisper(0).model.float().eval()


@pytest.fixture(scope="module")
def encoded(model: WhisperForConditionalGeneration) -> torch.Tensor:
    """Encoder outputs of three random windows, (3, 1500, width)."""
    generator = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        return model.model.encoder(torch.randn(3, 80, 3000, generator=generator)).last_hidden_state


@pytest.fixture(scope="module")
def opened(tiny_store: ModelStore) -> Iterator[TransformersTranscriber]:
    transcriber = cast(TransformersTranscriber, open_variant(tiny_store, "tiny-random", UNBATCHED))
    yield transcriber
    transcriber.close()


@pytest.fixture(scope="module")
def windows(opened: TransformersTranscriber, jfk_audio: Audio) -> list[torch.Tensor]:
    """Encoder outputs of four different cuts of the JFK recording."""
    cuts = [(0, 11), (1, 4), (3, 7), (5, 2)]
    return [
        opened._decoder.encode(
            window(log_mel_spectrogram(jfk_audio[s * SAMPLE_RATE : (s + n) * SAMPLE_RATE], 80), 0)
        )
        for s, n in cuts
    ]


def forward_logits(
    model: WhisperForConditionalGeneration, encoded: torch.Tensor, ids: list[int]
) -> torch.Tensor:
    with torch.inference_mode():
        output = model(
            encoder_outputs=BaseModelOutput(last_hidden_state=encoded), decoder_input_ids=torch.tensor([ids])
        )
    return output.logits[0]


def prompt(
    decoder: TransformersWindowDecoder, *, timestamps: bool = False, previous: list[int] | None = None
) -> list[int]:
    tokens = decoder.tokens
    context = [tokens.start_of_prev, *previous] if previous else []
    tail = [] if timestamps else [tokens.no_timestamps]
    return [*context, tokens.sot, tokens.languages["en"], tokens.transcribe, *tail]


# ---- the row engine ------------------------------------------------------------------------------


def test_rows_at_different_positions_compute_the_models_own_logits(
    model: WhisperForConditionalGeneration, encoded: torch.Tensor
) -> None:
    """Rows join at different steps with prompts of different lengths, one leaves (the last row moves
    into its slot): every logit row is transformers' forward pass over that row's tokens alone."""
    rows: DecoderRows[str] = DecoderRows(model, capacity=3)
    prompts = {
        "a": [50258, 50259, 50359, 50363],
        "b": [50258, 50260, 50359],
        "c": [50361, 440, 441, 50258, 50259, 50359, 50363],
    }
    fed: dict[str, list[int]] = {name: [] for name in prompts}
    sources = {"a": encoded[0:1], "b": encoded[1:2], "c": encoded[2:3]}
    worst = 0.0

    def admit(name: str) -> None:
        nonlocal worst
        logits = rows.admit(name, sources[name], prompts[name])
        worst = max(worst, float((logits - forward_logits(model, sources[name], prompts[name])).abs().max()))

    def step() -> None:
        nonlocal worst
        tokens = [100 + len(fed[name]) + 10 * index for index, name in enumerate(rows.owners)]
        logits = rows.step(tokens)
        for row, (name, token) in enumerate(zip(rows.owners, tokens, strict=True)):
            fed[name].append(token)
            expected = forward_logits(model, sources[name], prompts[name] + fed[name])[-1]
            worst = max(worst, float((logits[row] - expected).abs().max()))

    admit("a")
    step()
    admit("b")
    step()
    admit("c")
    step()
    rows.release("a")
    assert rows.owners == ["c", "b"]
    step()
    step()
    assert worst < 1e-5


def test_a_full_batch_holds_the_bytes_the_pool_budgets_for_it(
    model: WhisperForConditionalGeneration, encoded: torch.Tensor
) -> None:
    """The server's memory estimate (:func:`full_batch_bytes`) is what the slots really take once
    every row is running 30 s windows; they start at one row and grow with the batch."""
    rows: DecoderRows[int] = DecoderRows(model, capacity=3)
    rows.admit(0, encoded[0:1], [50258])
    assert rows.slot_bytes == full_batch_bytes(model.config.to_dict(), 1, 4)
    for row in (1, 2):
        rows.admit(row, encoded[row : row + 1], [50258])
    assert rows.slot_bytes == full_batch_bytes(model.config.to_dict(), 3, 4)


def test_a_row_joins_only_with_the_encoder_positions_running(
    model: WhisperForConditionalGeneration, encoded: torch.Tensor
) -> None:
    rows: DecoderRows[int] = DecoderRows(model, capacity=2)
    shorter = encoded[0:1, :750]
    rows.admit(0, encoded[0:1], [50258])
    assert not rows.can_admit(shorter)
    rows.admit(1, encoded[1:2], [50258])
    assert not rows.can_admit(encoded[2:3])  # full
    with pytest.raises(ValueError, match="no room"):
        rows.admit(2, encoded[2:3], [50258])
    rows.release(0)
    rows.release(1)
    assert rows.can_admit(shorter)  # nothing running: the positions may change
    logits = rows.admit(3, shorter, [50258, 50259])
    assert torch.allclose(logits, forward_logits(model, shorter, [50258, 50259]), atol=1e-5)


# ---- the scheduler -----------------------------------------------------------------------------


def scheduler(
    decoder: TransformersWindowDecoder, *, max_batch: int = 4, timeout: float = 60.0
) -> ContinuousDecoder:
    return decoder.continuous_decoder("test", max_batch, timeout)


def test_a_window_that_arrives_joins_the_running_batch_and_both_keep_their_lone_output(
    opened: TransformersTranscriber, windows: list[torch.Tensor]
) -> None:
    decoder = opened._decoder
    long, short = prompt(decoder), prompt(decoder, timestamps=True, previous=[440, 441, 442])
    alone = [
        decoder.decode(windows[0], long, greedy(40)),
        decoder.decode(windows[1], short, greedy(12, with_timestamps=True)),
    ]
    assert len(alone[0][0]) > 8  # the first row outlives the moment the second one arrives
    sizes: list[int] = []
    third_step = threading.Event()

    def observe(size: int, _waited: float) -> None:
        sizes.append(size)
        if len(sizes) == 3:  # the second window is submitted now; hold this step until it waits
            third_step.set()
            deadline = time.monotonic() + 30
            while continuous.waiting == 0 and time.monotonic() < deadline:
                time.sleep(0.001)

    continuous = scheduler(decoder)
    continuous.observe(observe)
    try:
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(continuous.decode, windows[0], long, greedy(40))
            assert third_step.wait(30)
            second = pool.submit(continuous.decode, windows[1], short, greedy(12, with_timestamps=True))
            together = [first.result(60), second.result(60)]
    finally:
        continuous.close()
    assert sizes[:4] == [1, 1, 1, 2]  # alone, then sharing steps from the next one
    for (tokens, summed, no_speech), (tokens_alone, summed_alone, no_speech_alone) in zip(
        together, alone, strict=True
    ):
        assert tokens == tokens_alone
        assert summed == pytest.approx(summed_alone, abs=1e-4)
        assert no_speech == pytest.approx(no_speech_alone, abs=1e-6)


def test_a_static_batch_refuses_rows_that_cannot_step_together(
    opened: TransformersTranscriber, windows: list[torch.Tensor]
) -> None:
    """The continuous decoder mixes temperatures and modes; one static ``decode_batch`` cannot."""
    decoder = opened._decoder
    sampled = WindowDecoding(temperature=0.7, max_new_tokens=4, with_timestamps=False)
    with pytest.raises(ValueError, match="one temperature"):
        decoder.decode_batch(windows[:2], [prompt(decoder)] * 2, [greedy(4), sampled])


@pytest.mark.parametrize("stage", ["step", "admit"])
def test_an_engine_error_reaches_the_rows_and_the_scheduler_goes_on(
    stage: str, opened: TransformersTranscriber, windows: list[torch.Tensor]
) -> None:
    """A failing step fails the running rows; a failing prompt pass, the window being admitted."""
    decoder = opened._decoder
    continuous = scheduler(decoder)
    rows = continuous._rows
    engine_call = getattr(rows, stage)
    failures = iter([True])

    def failing_once(*arguments: object) -> torch.Tensor:
        if next(failures, False):
            raise RuntimeError("device lost")
        return engine_call(*arguments)  # type: ignore[no-any-return]

    setattr(rows, stage, failing_once)
    try:
        with pytest.raises(RuntimeError, match="device lost"):
            continuous.decode(windows[0], prompt(decoder), greedy(10))
        again = continuous.decode(windows[0], prompt(decoder), greedy(10))
    finally:
        continuous.close()
    assert again == decoder.decode(windows[0], prompt(decoder), greedy(10))


def test_closing_fails_new_windows_and_a_late_caller_times_out(
    opened: TransformersTranscriber, windows: list[torch.Tensor]
) -> None:
    decoder = opened._decoder
    impatient = scheduler(decoder, timeout=1e-4)
    try:
        with pytest.raises(BatchTimeoutError):
            impatient.decode(windows[0], prompt(decoder), greedy(200))
    finally:
        impatient.close()
    closed = scheduler(decoder)
    closed.close()
    with pytest.raises(BatcherClosedError):
        closed.decode(windows[0], prompt(decoder), greedy(4))


# ---- through the transcriber ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def variants(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    """tiny-random, its torch dynamic int8 variant and its CTranslate2 int8 variant."""
    store = store_with_tiny_variants(tmp_path_factory.mktemp("continuous-store"), "tiny-random")
    quantize_variant(store, "tiny-random", "ptq-int8")
    quantize_variant(store, "tiny-random", "ct2-int8")
    return store


def transcribe_concurrently(
    store: ModelStore, variant_id: str, clips: list[Audio], options: list[TranscribeOptions]
) -> tuple[list[Transcription], list[int]]:
    """Each clip from its own thread, released at once, on a variant opened with continuous batching;
    returns the transcriptions and the rows of every decoder step."""
    transcriber = open_variant(store, variant_id, CONTINUOUS)
    batching = transcriber.batching  # type: ignore[attr-defined]
    assert isinstance(batching, BatchedDecoder) and batching.continuous
    sizes: list[int] = []

    def observe(stage: str, size: int, _waited: float) -> None:
        if stage != "decode":
            return
        sizes.append(size)
        if len(sizes) == 1:  # hold the first step a moment, so that the other requests' windows
            time.sleep(1.0)  # are waiting to join by the next one however the threads were scheduled

    batching.observe(observe)
    start = threading.Barrier(len(clips))

    def one(index: int) -> Transcription:
        start.wait()
        return transcriber.transcribe(clips[index], options[index])

    try:
        with ThreadPoolExecutor(len(clips)) as pool:
            return list(pool.map(one, range(len(clips)))), sizes
    finally:
        transcriber.close()


def transcribe_alone(
    store: ModelStore, variant_id: str, clips: list[Audio], options: list[TranscribeOptions]
) -> list[Transcription]:
    transcriber = open_variant(store, variant_id, UNBATCHED)
    try:
        return [transcriber.transcribe(clip, option) for clip, option in zip(clips, options, strict=True)]
    finally:
        transcriber.close()


def assert_same_output(got: list[Transcription], expected: list[Transcription]) -> None:
    for mine, theirs in zip(got, expected, strict=True):
        assert mine.text == theirs.text
        assert [segment.tokens for segment in mine.segments] == [
            segment.tokens for segment in theirs.segments
        ]
        for segment, reference in zip(mine.segments, theirs.segments, strict=True):
            assert segment.avg_logprob == pytest.approx(reference.avg_logprob, abs=1e-5)
            assert segment.no_speech_prob == pytest.approx(reference.no_speech_prob, abs=1e-6)


@pytest.mark.parametrize("variant_id", ["tiny-random", "tiny-random-ptq-int8"])
def test_the_transcriber_decodes_concurrent_requests_continuously(
    variant_id: str, variants: ModelStore, jfk_audio: Audio
) -> None:
    """Text-only and timestamped requests (prompts of different lengths and modes) share decoder steps,
    which the static batch cannot do, and each keeps its lone output. On the int8 variant too, whose
    dynamic int8 Linears quantize a whole batch with one scale: they run row by row (two requests
    detect their language, so detection and the encoder batch are covered as well)."""
    clips = [jfk_audio[s * SAMPLE_RATE : (s + n) * SAMPLE_RATE] for s, n in [(0, 11), (1, 4), (3, 7), (5, 2)]]
    text_only = TranscribeOptions(
        language="en", temperatures=(0.0,), max_new_tokens=24, without_timestamps=True
    )
    timed = TranscribeOptions(temperatures=(0.0,), max_new_tokens=24)
    options = [text_only, timed, text_only, timed]
    expected = transcribe_alone(variants, variant_id, clips, options)
    got, sizes = transcribe_concurrently(variants, variant_id, clips, options)
    assert_same_output(got, expected)
    assert max(sizes) >= 3  # of 2 + 2: both modes in one step


def test_backends_that_cannot_step_rows_keep_the_static_batch(variants: ModelStore) -> None:
    transcriber = open_variant(variants, "tiny-random-ct2-int8", CONTINUOUS)
    try:
        assert not cast(BatchedDecoder, transcriber.batching).continuous  # type: ignore[attr-defined]
    finally:
        transcriber.close()
