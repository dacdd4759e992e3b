"""Dynamic batching: concurrent calls merge into engine calls, never wait past the bound, fail together,
and leave every request's output exactly as it is decoded alone.

The batcher's contract on plain functions; the output on tiny random variants (CTranslate2 int8 and
transformers) and on the real whisper-base-ct2-int8 with real dev clips.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import cast

import ctranslate2
import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.metrics import HushMetrics
from app.pool import VariantPool
from app.settings import ServerSettings
from compression.quantize.methods import quantize_variant
from model_store.backends.transformers_backend import TransformersTranscriber
from model_store.batching import BatchedDecoder
from model_store.features import log_mel_spectrogram, window
from model_store.micro_batcher import BatcherClosedError, BatchTimeoutError, MicroBatcher
from model_store.opener import open_variant
from model_store.settings import BatchingSettings, HushSettings, RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Audio, TranscribeOptions, Transcriber, Transcription
from model_store.window_decoding import WindowDecoding
from tests.app_support import live_server, server_settings, wait_until, wav_bytes
from tests.factories import publish_tiny_variant

PARENT = "tiny-random"
CT2 = "tiny-random-ct2-int8"
INT8 = "tiny-random-ptq-int8"
UNBATCHED = RuntimeSettings(device="cpu", threads=1, batching=BatchingSettings(mode="off"))
# A long bound: the batches below form because every request is waiting, not because time ran out.
# The static decoder batch (continuous batching: tests/test_continuous_batching.py).
BATCHED = RuntimeSettings(
    device="cpu",
    threads=1,
    batching=BatchingSettings(mode="on", max_batch=8, max_wait_ms=1000, decoder="static"),
)
# Random weights: one temperature and a short budget keep the decoding bounded.
TEXT_ONLY = TranscribeOptions(language="en", temperatures=(0.0,), max_new_tokens=24, without_timestamps=True)
TIMED = TranscribeOptions(language="en", temperatures=(0.0,), max_new_tokens=24)

Sizes = list[tuple[str, int, float]]


# ---- the batcher on plain functions -----------------------------------------------------------


class Callers:
    """How many callers are in flight (what a transcriber's sessions count)."""

    def __init__(self, count: int = 0) -> None:
        self.count = count
        self.lock = threading.Lock()

    def __call__(self) -> int:
        with self.lock:
            return self.count

    def leave(self) -> None:
        with self.lock:
            self.count -= 1


def submit_together(
    batcher: MicroBatcher[str, int, int], callers: Callers, calls: Sequence[tuple[str, int]]
) -> list[int | BaseException]:
    """Submit ``calls`` from one thread each, released at once; results (or errors) in call order."""
    start = threading.Barrier(len(calls))

    def one(call: tuple[str, int]) -> int | BaseException:
        start.wait()
        try:
            return batcher.submit(*call)
        except Exception as error:
            return error
        finally:
            callers.leave()
            batcher.wake()

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(one, calls))


def recording_batcher(
    callers: Callable[[], int],
    *,
    max_batch: int = 8,
    max_wait_seconds: float = 5.0,
    timeout_seconds: float = 10.0,
    run: Callable[[str, list[int]], Sequence[int]] | None = None,
) -> tuple[MicroBatcher[str, int, int], list[tuple[str, list[int]]]]:
    """A batcher that squares its items and records each engine call (key, items)."""
    calls: list[tuple[str, list[int]]] = []

    def square(key: str, items: list[int]) -> list[int]:
        calls.append((key, list(items)))
        return [item * item for item in items]

    batcher: MicroBatcher[str, int, int] = MicroBatcher(
        "test",
        run or square,
        max_batch=max_batch,
        max_wait_seconds=max_wait_seconds,
        timeout_seconds=timeout_seconds,
        expected_callers=callers,
    )
    return batcher, calls


def test_concurrent_calls_become_one_engine_call() -> None:
    callers = Callers(6)
    batcher, calls = recording_batcher(callers)
    results = submit_together(batcher, callers, [("k", n) for n in range(6)])
    batcher.close()
    assert results == [n * n for n in range(6)]
    assert len(calls) == 1 and sorted(calls[0][1]) == list(range(6))


def test_max_batch_splits_a_burst() -> None:
    callers = Callers(5)
    batcher, calls = recording_batcher(callers, max_batch=2)
    results = submit_together(batcher, callers, [("k", n) for n in range(5)])
    batcher.close()
    assert results == [n * n for n in range(5)]
    assert sorted(len(items) for _, items in calls) == [1, 2, 2]


def test_incompatible_calls_are_not_merged() -> None:
    callers = Callers(6)
    batcher, calls = recording_batcher(callers)
    results = submit_together(batcher, callers, [("a" if n % 2 else "b", n) for n in range(6)])
    batcher.close()
    assert results == [n * n for n in range(6)]
    assert sorted(key for key, _ in calls) == ["a", "b"]
    for key, items in calls:
        assert all((item % 2 == 1) == (key == "a") for item in items)


def test_a_lone_call_waits_at_most_the_bound() -> None:
    # Three callers expected but only one comes: it goes after max_wait, not later.
    callers = Callers(3)
    batcher, calls = recording_batcher(callers, max_wait_seconds=0.05)
    started = time.perf_counter()
    assert batcher.submit("k", 3) == 9
    waited = time.perf_counter() - started
    batcher.close()
    assert 0.04 <= waited < 1.0
    assert calls == [("k", [3])]


def test_a_lone_request_does_not_wait_at_all() -> None:
    # Every caller that could join is already waiting: no reason to wait for the bound (10 s here).
    callers = Callers(1)
    batcher, _ = recording_batcher(callers, max_wait_seconds=10.0)
    started = time.perf_counter()
    assert batcher.submit("k", 4) == 16
    batcher.close()
    assert time.perf_counter() - started < 1.0


def test_an_engine_error_reaches_every_caller() -> None:
    def broken(key: str, items: list[int]) -> list[int]:
        raise RuntimeError(f"engine failed on {len(items)} items")

    callers = Callers(4)
    batcher, _ = recording_batcher(callers, run=broken)
    results = submit_together(batcher, callers, [("k", n) for n in range(4)])
    assert all(isinstance(result, RuntimeError) for result in results), results
    assert {str(result) for result in results} == {"engine failed on 4 items"}
    with pytest.raises(RuntimeError, match="engine failed on 1 items"):  # the dispatcher survived it
        batcher.submit("k", 1)
    batcher.close()


def test_a_short_result_list_is_an_error_for_everyone() -> None:
    callers = Callers(3)
    batcher, _ = recording_batcher(callers, run=lambda key, items: items[:-1])
    results = submit_together(batcher, callers, [("k", n) for n in range(3)])
    batcher.close()
    assert all(isinstance(result, RuntimeError) and "2 results for 3" in str(result) for result in results)


def test_closing_fails_the_waiting_calls_and_refuses_new_ones() -> None:
    callers = Callers(99)
    batcher, calls = recording_batcher(callers, max_wait_seconds=30.0)
    with ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(batcher.submit, "k", 2)
        deadline = time.monotonic() + 5
        while batcher.waiting == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        batcher.close()
        with pytest.raises(BatcherClosedError):
            waiting.result(timeout=5)
    with pytest.raises(BatcherClosedError):
        batcher.submit("k", 3)
    assert calls == []


def test_a_caller_gives_up_after_the_timeout() -> None:
    release = threading.Event()

    def stuck(key: str, items: list[int]) -> list[int]:
        release.wait(10)
        return items

    callers = Callers(1)
    batcher, _ = recording_batcher(callers, timeout_seconds=0.2, run=stuck)
    started = time.perf_counter()
    with pytest.raises(BatchTimeoutError):
        batcher.submit("k", 1)
    assert time.perf_counter() - started < 2.0
    release.set()
    batcher.close()


# ---- settings ---------------------------------------------------------------------------------


def test_batching_is_off_on_cpu_and_on_on_cuda_by_default() -> None:
    batching = BatchingSettings()
    assert not batching.active("cpu") and batching.active("cuda")
    assert BatchingSettings(mode="on").active("cpu") and not BatchingSettings(mode="off").active("cuda")
    assert not BatchingSettings(mode="on", max_batch=1).active("cpu")
    assert HushSettings(runtime={"batching": {"max_wait_ms": 7}}).runtime.batching.max_wait_ms == 7


def test_workers_are_raised_to_the_batch_size_where_batching_runs() -> None:
    settings = ServerSettings(runtime={"batching": {"max_batch": 12}}, server={"workers": 2})
    assert settings.inference_workers("cpu") == 2  # auto: off on the CPU
    assert settings.inference_workers("cuda") == 12
    more = ServerSettings(runtime={"batching": {"mode": "on", "max_batch": 4}}, server={"workers": 6})
    assert more.inference_workers("cpu") == 6


# ---- tiny random variants: same output, merged calls ------------------------------------------


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("batching-store"))
    publish_tiny_variant(store, PARENT)
    quantize_variant(store, PARENT, "ct2-int8")
    quantize_variant(store, PARENT, "ptq-int8")
    return store


@pytest.fixture(scope="module")
def clips(jfk_audio: Audio) -> list[Audio]:
    """Four different clips cut from the JFK recording (different lengths and content)."""
    return [
        jfk_audio[start * SAMPLE_RATE : (start + length) * SAMPLE_RATE]
        for start, length in [(0, 11), (1, 4), (3, 7), (5, 2)]
    ]


@contextlib.contextmanager
def opened(store: ModelStore, variant_id: str, runtime: RuntimeSettings) -> Iterator[Transcriber]:
    transcriber = open_variant(store, variant_id, runtime)
    try:
        yield transcriber
    finally:
        transcriber.close()


def concurrently(
    transcriber: Transcriber, clips: Sequence[Audio], options: Sequence[TranscribeOptions]
) -> list[Transcription]:
    start = threading.Barrier(len(clips))

    def one(clip: Audio, option: TranscribeOptions) -> Transcription:
        start.wait()
        return transcriber.transcribe(clip, option)

    with ThreadPoolExecutor(len(clips)) as pool:
        return list(pool.map(one, clips, options))


def assert_same_output(
    batched: Sequence[Transcription], alone: Sequence[Transcription], tolerance: float = 1e-5
) -> None:
    """Same tokens, text and times; scores equal up to ``tolerance`` (half precision on a GPU)."""
    for got, expected in zip(batched, alone, strict=True):
        assert got.text == expected.text
        assert [segment.tokens for segment in got.segments] == [
            segment.tokens for segment in expected.segments
        ]
        assert [(s.start, s.end) for s in got.segments] == [(s.start, s.end) for s in expected.segments]
        for mine, theirs in zip(got.segments, expected.segments, strict=True):
            assert mine.avg_logprob == pytest.approx(theirs.avg_logprob, abs=tolerance)
            assert mine.no_speech_prob == pytest.approx(theirs.no_speech_prob, abs=tolerance)


def recorded(transcriber: Transcriber) -> Sizes:
    sizes: Sizes = []
    batching = getattr(transcriber, "batching", None)
    assert isinstance(batching, BatchedDecoder)
    batching.observe(lambda stage, size, waited: sizes.append((stage, size, waited)))
    return sizes


@pytest.mark.parametrize("variant_id", [CT2, PARENT, INT8])
def test_concurrent_requests_give_the_output_of_lone_ones(
    variant_id: str, store: ModelStore, clips: list[Audio]
) -> None:
    """Both backends batch the encoder, the language detection and the decoder. The torch dynamic
    int8 variant's Linears quantize a whole batch with one scale: its backend runs a batch's windows
    one by one, so the output stays each window's own."""
    options = [TEXT_ONLY] * len(clips)
    with opened(store, variant_id, UNBATCHED) as plain:
        alone = [plain.transcribe(clip, option) for clip, option in zip(clips, options, strict=True)]
    with opened(store, variant_id, BATCHED) as batched:
        sizes = recorded(batched)
        together = concurrently(batched, clips, options)
    assert_same_output(together, alone)
    encodes = [size for stage, size, _ in sizes if stage == "encode"]
    decodes = [size for stage, size, _ in sizes if stage == "decode"]
    assert sum(encodes) == len(clips) and max(encodes) >= 2  # one window each, shared passes
    assert sum(decodes) == len(clips) and max(decodes) >= 2


@pytest.mark.parametrize("variant_id", [CT2, PARENT])
def test_incompatible_decodes_run_in_their_own_groups(
    variant_id: str, store: ModelStore, clips: list[Audio]
) -> None:
    """Text-only and timestamped prompts differ in length and mode: they never share a generate()."""
    options = [TEXT_ONLY, TIMED, TEXT_ONLY, TIMED]
    with opened(store, variant_id, UNBATCHED) as plain:
        alone = [plain.transcribe(clip, option) for clip, option in zip(clips, options, strict=True)]
    with opened(store, variant_id, BATCHED) as batched:
        sizes = recorded(batched)
        together = concurrently(batched, clips, options)
        detected = batched.detect_language(clips[0])
        with opened(store, variant_id, UNBATCHED) as plain:
            assert detected == pytest.approx(plain.detect_language(clips[0]), abs=1e-6)
    assert_same_output(together, alone)
    first_window_decodes = [size for stage, size, _ in sizes if stage == "decode"]
    assert first_window_decodes and max(first_window_decodes) <= 2
    assert ("detect", 1) in [(stage, size) for stage, size, _ in sizes]


def test_transformers_rows_that_end_early_keep_their_lone_output(
    store: ModelStore, clips: list[Audio]
) -> None:
    """In one batched decode, a window cut by its repetition limit stops growing while the others go
    on: each row gets exactly what ``decode`` gives it alone."""
    with opened(store, PARENT, UNBATCHED) as plain:
        decoder = cast(TransformersTranscriber, plain)._decoder
        encoded = [decoder.encode(window(log_mel_spectrogram(clip, 80), 0)) for clip in clips[:3]]
        tokens = decoder.tokens
        prompt = [tokens.sot, tokens.languages["en"], tokens.transcribe, tokens.no_timestamps]
        # A limit of 0.1 counts any text as a loop at the first check (48 tokens); None never stops.
        limits: list[float | None] = [None, 0.1, None]
        decodings = [
            WindowDecoding(temperature=0.0, max_new_tokens=64, with_timestamps=False, repetition_limit=limit)
            for limit in limits
        ]
        alone = [
            decoder.decode(one, prompt, decoding) for one, decoding in zip(encoded, decodings, strict=True)
        ]
        together = decoder.decode_batch(encoded, [prompt] * 3, decodings)
    assert [tokens for tokens, _, _ in together] == [tokens for tokens, _, _ in alone]
    assert len(alone[1][0]) < len(alone[0][0])  # the cut row really ended first
    for (_, summed, no_speech), (_, summed_alone, no_speech_alone) in zip(together, alone, strict=True):
        assert summed == pytest.approx(summed_alone, abs=1e-4)
        assert no_speech == pytest.approx(no_speech_alone, abs=1e-6)


def test_trimmed_windows_of_different_lengths_batch_by_shape(store: ModelStore, clips: list[Audio]) -> None:
    """A trimmed audio context gives windows of several lengths (11, 4, 7 and 2 s of audio: 1,200,
    600, 800 and 400 frames): only equal shapes share an engine call, and the output is unchanged."""
    trimmed = quantize_variant(store, PARENT, "ct2-int8", audio_context_seconds=1.0).id
    clips = [*clips, clips[1]]  # two 4 s clips: one shape shared
    options = [TEXT_ONLY] * len(clips)
    with opened(store, trimmed, UNBATCHED) as plain:
        alone = [plain.transcribe(clip, option) for clip, option in zip(clips, options, strict=True)]
    with opened(store, trimmed, BATCHED) as batched:
        sizes = recorded(batched)
        together = concurrently(batched, clips, options)
    assert_same_output(together, alone)
    encodes = [size for stage, size, _ in sizes if stage == "encode"]
    assert sum(encodes) == len(clips) and max(encodes) <= 2  # only the two 4 s windows can share


def test_the_pool_exports_batch_sizes(store: ModelStore, clips: list[Audio]) -> None:
    metrics = HushMetrics(CollectorRegistry())
    pool = VariantPool(store, BATCHED, memory_budget_bytes=1 << 30, verify=False, metrics=metrics)
    pool.sync_with_store()
    try:
        with pool.lease(CT2) as lease:
            transcriber = lease.transcriber()
            concurrently(transcriber, clips[:2], [TEXT_ONLY, TEXT_ONLY])
    finally:
        pool.close()
    count = metrics.registry.get_sample_value("hush_batch_size_count", {"variant": CT2, "stage": "encode"})
    total = metrics.registry.get_sample_value("hush_batch_size_sum", {"variant": CT2, "stage": "encode"})
    assert count is not None and 1 <= count <= 2 and total == 2


# ---- the real whisper-base-ct2-int8 on real dev clips -----------------------------------------


CUDA = pytest.param(
    "cuda",
    marks=[
        pytest.mark.gpu,
        pytest.mark.skipif(ctranslate2.get_cuda_device_count() == 0, reason="needs a CUDA GPU (none here)"),
    ],
)


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize("device", ["cpu", CUDA])
@pytest.mark.parametrize(
    ("variant_id", "decoder"), [("whisper-base-ct2-int8", "static"), ("whisper-base", "continuous")]
)
def test_real_base_batched_equals_unbatched_on_dev_clips(
    variant_id: str, decoder: str, device: str, real_store: ModelStore, jfk_audio: Audio
) -> None:
    """CTranslate2 int8 with the static decoder batch, transformers with continuous batching. On a GPU
    (int8_float16, float16) this is the check that the batched kernels keep greedy output.
    Four real dev clips (en, fr, de, es) where a corpus is built; four cuts of the JFK recording
    (real speech, English) on a fresh machine, so that CI runs it too."""
    from compression.data.corpus import Corpus, newest_corpus

    root = newest_corpus(HushSettings().corpus_root)
    if root is not None:
        corpus = Corpus.open(root)
        chosen = [
            next(u for u in corpus.utterances("dev", [language]) if u.duration > 2)
            for language in ("en", "fr", "de", "es")
        ]
        clips = [utterance.load_audio() for utterance in chosen]
        languages = [utterance.language for utterance in chosen]
    else:
        spans = [(0, 11), (1, 5), (3, 8), (6, 4)]  # (start, seconds)
        clips = [jfk_audio[start * SAMPLE_RATE : (start + length) * SAMPLE_RATE] for start, length in spans]
        languages = ["en"] * len(clips)
    # Two with the language given, two detected: encoder, detection and decoder batches all form.
    options = [
        TranscribeOptions(language=language if index % 2 == 0 else None)
        for index, language in enumerate(languages)
    ]
    if not real_store.exists(variant_id):
        quantize_variant(real_store, "whisper-base", "ct2-int8")
    unbatched = UNBATCHED.model_copy(update={"device": device})
    with opened(real_store, variant_id, unbatched) as plain:
        alone = [plain.transcribe(clip, option) for clip, option in zip(clips, options, strict=True)]
    batching = BATCHED.batching.model_copy(update={"decoder": decoder})
    with opened(
        real_store, variant_id, BATCHED.model_copy(update={"device": device, "batching": batching})
    ) as batched:
        sizes = recorded(batched)
        together = concurrently(batched, clips, options)
    assert_same_output(together, alone, tolerance=1e-5 if device == "cpu" else 1e-2)
    assert [t.language for t in together] == languages
    assert max(size for stage, size, _ in sizes if stage == "encode") >= 2
    assert max(size for stage, size, _ in sizes if stage == "decode") >= 2


def test_the_server_batches_concurrent_requests(store: ModelStore) -> None:
    """Through HTTP: max_batch workers run, concurrent requests share engine calls, texts are unchanged."""
    settings = server_settings(store.root, workers=1, default_variants=[CT2])
    settings.runtime.batching = BatchingSettings(mode="on", max_batch=4, max_wait_ms=1000)
    clips = [wav_bytes(seconds, frequency) for seconds, frequency in [(1, 300), (2, 500), (3, 700), (4, 900)]]

    def post(client: httpx.Client, clip: bytes) -> str:
        response = client.post(
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", clip, "audio/wav")},
            data={"model": CT2, "language": "en", "response_format": "json", "temperature": "0"},
        )
        assert response.status_code == 200, response.text
        return str(response.json()["text"])

    app = create_app(settings, store)
    with live_server(app) as base_url, httpx.Client(base_url=base_url, timeout=60) as client:
        wait_until(lambda: client.get("/readyz").status_code == 200, what="readiness")
        assert app.state.hush.queue.workers == 4
        alone = [post(client, clip) for clip in clips]
        start = threading.Barrier(len(clips))

        def together(clip: bytes) -> str:
            with httpx.Client(base_url=base_url, timeout=60) as own:
                start.wait()
                return post(own, clip)

        with ThreadPoolExecutor(len(clips)) as pool:
            assert list(pool.map(together, clips)) == alone
        metrics = client.get("/metrics").text
    families = {family.name: family for family in text_string_to_metric_families(metrics)}
    samples = {
        (sample.name, sample.labels.get("le")): sample.value
        for sample in families["hush_batch_size"].samples
        if sample.labels.get("stage") == "encode" and sample.labels.get("variant") == CT2
    }
    merged = samples[("hush_batch_size_count", None)] - samples[("hush_batch_size_bucket", "1.0")]
    assert merged >= 1  # at least one encoder pass ran more than one request's window
