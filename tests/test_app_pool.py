"""The variant pool: readiness, memory budget with LRU unloading, hot reload without losing requests."""

from __future__ import annotations

import gc
import shutil
import threading
import weakref
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.main import create_app
from app.metrics import HushMetrics
from app.pool import VariantPool, estimated_memory_bytes, loaded_memory_bytes
from app.state import AppState
from model_store.opener import batches_windows_here
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from tests.app_support import (
    DATA,
    StubOpener,
    publish_fake_variant,
    server_settings,
    wait_until,
    wav_bytes,
)
from tests.factories import publish_tiny_variant

pytestmark = pytest.mark.timeout(120)

CPU = RuntimeSettings(device="cpu", threads=1)
CLIP = wav_bytes(1.0)


def post(client: TestClient, **data: str) -> httpx.Response:
    return client.post(
        "/v1/audio/transcriptions",
        files={"file": ("a.wav", CLIP, "audio/wav")},
        data={"language": "en", **data},
    )


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.hush  # type: ignore[attr-defined]
    return state


# ---- readiness -----------------------------------------------------------------------------------------


def test_ready_only_once_the_default_variant_is_loaded(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "slow", cer={"en": 0.2}, ms_per_audio_second=50.0)
    publish_fake_variant(store, "fast", cer={"en": 0.1}, ms_per_audio_second=10.0)
    opener = StubOpener(load_gate=threading.Event())
    with TestClient(create_app(server_settings(store.root), store, opener=opener)) as client:
        loading = client.get("/readyz")
        assert loading.status_code == 503
        assert loading.json()["status"] == "loading"
        assert loading.json()["default_variants"] == ["fast"]  # what auto picks for English
        assert client.get("/healthz").status_code == 200  # alive all along
        assert client.head("/healthz").status_code == 200 and client.head("/readyz").status_code == 503
        opener.load_gate.set()  # type: ignore[union-attr]
        wait_until(lambda: client.get("/readyz").status_code == 200, what="readiness")
        assert client.head("/readyz").status_code == 200  # load balancers' probes send HEAD
        assert client.get("/readyz").json() == {
            "status": "ready",
            "default_variants": ["fast"],
            "loaded": ["fast"],
        }


def test_not_ready_when_a_default_variant_is_missing(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "present")
    settings = server_settings(store.root, default_variants=["present", "absent"])
    with TestClient(create_app(settings, store, opener=StubOpener())) as client:
        wait_until(lambda: client.get("/readyz").json()["status"] == "failed", what="the preload to fail")
        body = client.get("/readyz").json()
        assert "absent" in body["error"] and client.get("/readyz").status_code == 503


def test_empty_store_is_not_ready_until_a_variant_is_published(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    settings = server_settings(store.root, store_poll_seconds=0.05)
    with TestClient(create_app(settings, store, opener=StubOpener())) as client:
        wait_until(lambda: client.get("/readyz").json()["status"] == "empty_store", what="empty_store")
        assert client.get("/readyz").status_code == 503
        publish_fake_variant(store, "late")
        wait_until(lambda: client.get("/readyz").status_code == 200, what="readiness after publishing")


# ---- memory budget ---------------------------------------------------------------------------------------


def test_least_recently_used_idle_variant_is_unloaded_for_real(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for variant_id in ("tiny-a", "tiny-b"):
        publish_tiny_variant(store, variant_id)
    one_variant = estimated_memory_bytes(store.get("tiny-a"), CPU)
    metrics = HushMetrics(CollectorRegistry())
    pool = VariantPool(store, CPU, memory_budget_bytes=int(one_variant * 1.5), metrics=metrics)
    pool.sync_with_store()
    try:
        with pool.lease("tiny-a") as lease:
            model = weakref.ref(lease.transcriber().model)  # type: ignore[attr-defined]
        assert pool.loaded_ids() == ["tiny-a"]
        with pool.lease("tiny-b") as lease:
            lease.transcriber()  # no room for both: tiny-a (idle) goes first
        assert pool.loaded_ids() == ["tiny-b"]
        gc.collect()
        assert model() is None, "the evicted model's weights are still referenced"
        assert metrics.model_unloads.labels(variant="tiny-a", cause="evicted")._value.get() == 1
        assert pool.memory_in_use() == one_variant
    finally:
        pool.close()
    assert pool.loaded_ids() == []


def test_a_batching_variant_counts_a_full_batch_of_keys_and_values(tmp_path: Path) -> None:
    """With batching on, a transformers variant's estimate adds its decoder's keys and values at
    ``max_batch`` rows (the continuous decoder keeps them allocated), sized from its config.json."""
    store = ModelStore(tmp_path / "store")
    manifest = publish_tiny_variant(store, "tiny-a")
    batched = RuntimeSettings(device="cpu", threads=1, batching={"mode": "on", "max_batch": 8})
    weights = loaded_memory_bytes(store, manifest, CPU)
    assert weights == manifest.parameters * 4  # batching off: the float32 weights alone
    # 2 layers x 8 rows x (448 + 1500) positions x 64 wide, keys and values, float32
    full_batch = 2 * 2 * 8 * (448 + 1500) * 64 * 4
    assert loaded_memory_bytes(store, manifest, batched) == weights + full_batch
    pool = VariantPool(store, batched, memory_budget_bytes=1 << 30, verify=False)
    pool.sync_with_store()
    try:
        with pool.lease("tiny-a") as lease:
            lease.transcriber()
        assert pool.memory_in_use() == weights + full_batch
    finally:
        pool.close()


@pytest.mark.parametrize(
    ("method", "backend", "device", "batches"),
    [
        ("import", "transformers", "cpu", True),
        ("import", "ctranslate2", "cpu", False),  # the engine sizes its own batches
        ("lang-experts", "transformers", "cpu", False),  # experts variants decode alone
        ("ptq-int8", "transformers", "cuda", False),  # dynamic int8 runs on the CPU, where auto is off
        ("import", "transformers", "cuda", True),
    ],
)
def test_only_variants_whose_windows_batch_here_count_a_batch(
    tmp_path: Path, method: str, backend: str, device: str, batches: bool
) -> None:
    """The pool counts a batch where the opener batches: the same rule (``batches_windows_here``)."""
    store = ModelStore(tmp_path / "store")
    published = publish_tiny_variant(store, "tiny-a")
    manifest = published.model_copy(
        update={"backend": backend, "recipe": published.recipe.model_copy(update={"method": method})}
    )
    mode = "on" if device == "cpu" else "auto"  # auto batches on CUDA only
    runtime = RuntimeSettings(device=device, threads=1, batching={"mode": mode, "max_batch": 8})
    assert batches_windows_here(manifest, runtime) is batches
    weights = estimated_memory_bytes(manifest, runtime)
    assert (loaded_memory_bytes(store, manifest, runtime) > weights) is batches


def test_a_variant_in_use_is_never_evicted(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    for variant_id in ("a", "b", "c"):
        publish_fake_variant(store, variant_id)
    opener = StubOpener()
    one = estimated_memory_bytes(store.get("a"), CPU)
    pool = VariantPool(store, CPU, memory_budget_bytes=2 * one, opener=opener)
    pool.sync_with_store()
    held = pool.lease("a")
    held.transcriber()
    with pool.lease("b") as lease:
        lease.transcriber()
    with pool.lease("c") as lease:  # over budget: b is idle and least recent; a is leased
        lease.transcriber()
    wait_until(lambda: pool.loaded_ids() == ["a", "c"], what="b to be unloaded")
    assert opener.transcribers("b")[0].closed and not opener.transcribers("a")[0].closed
    held.release()
    pool.close()


# ---- hot reload ------------------------------------------------------------------------------------------


@pytest.fixture
def hot_store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "old", cer={"en": 0.10}, ms_per_audio_second=10.0)
    return store


def test_removal_while_requests_are_in_flight_loses_none(hot_store: ModelStore) -> None:
    opener = StubOpener(gates={"old": threading.Event()})
    settings = server_settings(hot_store.root, workers=2, queue_size=4, store_poll_seconds=0.05)
    with (
        TestClient(create_app(settings, hot_store, opener=opener)) as client,
        ThreadPoolExecutor(4) as threads,
    ):
        state = state_of(client)
        in_flight = [threads.submit(post, client) for _ in range(3)]  # two running, one queued
        wait_until(
            lambda: state.queue.running == 2 and state.queue.waiting == 1, what="three requests in flight"
        )

        publish_fake_variant(hot_store, "new", cer={"en": 0.05}, ms_per_audio_second=10.0)
        hot_store.remove("old")
        wait_until(
            lambda: [m.id for m in state.pool.manifests()] == ["new"], what="the poller to see the swap"
        )
        listed = client.get("/v1/models").json()["data"]
        assert [model["id"] for model in listed if "alias_of" not in model] == ["new"]
        assert "old" in state.pool.loaded_ids()  # still serving what it was given
        after_swap = threads.submit(post, client)

        opener.gates["old"].set()
        answers = [future.result(timeout=30) for future in [*in_flight, after_swap]]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 200]
        assert [answer.headers["x-hush-variant"] for answer in answers] == ["old", "old", "old", "new"]
        assert all(answer.json()["text"] == "hello world" for answer in answers)
        wait_until(lambda: opener.transcribers("old")[0].closed, what="old to be unloaded")
        assert state.pool.loaded_ids() == ["new"]
        metrics = client.get("/metrics").text
        assert 'hush_model_unloads_total{cause="removed",variant="old"} 1.0' in metrics


def test_a_request_routed_to_a_variant_removed_before_loading_is_routed_again(hot_store: ModelStore) -> None:
    publish_fake_variant(hot_store, "backup", cer={"en": 0.30}, ms_per_audio_second=10.0)
    opener = StubOpener(gates={"backup": threading.Event()})
    settings = server_settings(hot_store.root, workers=1, queue_size=4, default_variants=["backup"])
    with (
        TestClient(create_app(settings, hot_store, opener=opener)) as client,
        ThreadPoolExecutor(2) as threads,
    ):
        state = state_of(client)
        wait_until(lambda: client.get("/readyz").status_code == 200, what="readiness")
        blocker = threads.submit(post, client, model="backup")  # holds the only worker
        wait_until(lambda: state.queue.running == 1, what="the worker to be busy")
        routed_to_old: Future[httpx.Response] = threads.submit(post, client)  # old is best; not loaded yet
        wait_until(lambda: state.queue.waiting == 1, what="the second request to queue")
        hot_store.remove("old")  # its files go before it was ever loaded
        opener.gates["backup"].set()
        assert blocker.result(timeout=30).status_code == 200
        answer = routed_to_old.result(timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.headers["x-hush-variant"] == "backup"
        assert opener.transcribers("old") == []


def test_new_figures_keep_the_loaded_variant(hot_store: ModelStore) -> None:
    with TestClient(create_app(server_settings(hot_store.root), hot_store, opener=StubOpener())) as client:
        state = state_of(client)
        wait_until(lambda: client.get("/readyz").status_code == 200, what="readiness")
        hot_store.update("old", eval=hot_store.get("old").eval.model_copy(update={"split": "test"}))  # type: ignore[union-attr]
        change = state.pool.sync_with_store()
        assert change is not None and change.updated == ("old",) and not change.replaced
        assert state.pool.is_loaded("old") and state.pool.manifest("old").eval.split == "test"  # type: ignore[union-attr]


def test_replaced_weights_are_swapped_after_in_flight_requests(hot_store: ModelStore) -> None:
    opener = StubOpener(gates={"old": threading.Event()})
    settings = server_settings(hot_store.root, workers=1, queue_size=2)
    with (
        TestClient(create_app(settings, hot_store, opener=opener)) as client,
        ThreadPoolExecutor(2) as threads,
    ):
        state = state_of(client)
        first = threads.submit(post, client)
        wait_until(lambda: state.queue.running == 1, what="a request in flight")
        shutil.rmtree(hot_store.path("old"))
        publish_fake_variant(hot_store, "old", parameters=2_000_000, cer={"en": 0.10}, weights=b"retrained")
        assert state.pool.sync_with_store() is not None
        opener.gates["old"].set()
        assert first.result(timeout=30).status_code == 200
        assert post(client).status_code == 200
        generations = opener.transcribers("old")
        assert [t.manifest.parameters for t in generations] == [1_000_000, 2_000_000]
        wait_until(lambda: generations[0].closed, what="the old weights to be unloaded")
        assert not generations[1].closed


def test_hot_publish_and_removal_with_real_variants(tmp_path: Path) -> None:
    """Real (tiny) transcribers and the real poller: publish and remove during a burst; all succeed."""
    store = ModelStore(tmp_path / "store")
    publish_tiny_variant(store, "tiny-a")
    settings = server_settings(store.root, workers=1, queue_size=8, store_poll_seconds=0.05)
    clip = (DATA / "jfk.wav").read_bytes()

    def transcribe(client: TestClient) -> httpx.Response:
        return client.post(
            "/v1/audio/transcriptions",
            files={"file": ("jfk.wav", clip, "audio/wav")},
            data={"language": "en"},
        )

    with TestClient(create_app(settings, store)) as client, ThreadPoolExecutor(3) as threads:
        state = state_of(client)
        burst = [threads.submit(transcribe, client) for _ in range(2)]
        wait_until(lambda: state.queue.running == 1, what="the burst to start")
        publish_tiny_variant(store, "tiny-b", seed=1)
        store.remove("tiny-a")
        wait_until(lambda: [m.id for m in state.pool.manifests()] == ["tiny-b"], what="the poller to swap")
        answers: list[Any] = [future.result(timeout=60) for future in burst]
        assert [answer.status_code for answer in answers] == [200, 200]
        after = transcribe(client)
        assert after.status_code == 200 and after.headers["x-hush-variant"] == "tiny-b"
        wait_until(lambda: state.pool.loaded_ids() == ["tiny-b"], what="tiny-a to be unloaded")


@pytest.fixture(autouse=True)
def _no_leaked_threads() -> Iterator[None]:
    before = {thread.name for thread in threading.enumerate()}
    yield
    wait_until(
        lambda: not {t.name for t in threading.enumerate() if t.name.startswith("hush-")} - before,
        what="the server's threads to stop",
    )


def test_a_loaded_variant_is_warmed_up_by_one_detection(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from app.pool import warm_up
    from model_store.opener import open_variant
    from tests.factories import recorded_encoder_inputs

    store = ModelStore(tmp_path / "store")
    publish_tiny_variant(store, "tiny")
    transcriber = open_variant(store, "tiny", CPU)
    encoded = recorded_encoder_inputs(transcriber)
    warm_up(transcriber, "tiny")
    assert encoded == [3000]  # one encoder pass over a (padded) window: the engine's first call is done
    transcriber.close()

    class Broken:
        def detect_language(self, audio: Any) -> dict[str, float]:
            raise RuntimeError("no detection here")

    warm_up(Broken(), "broken")  # type: ignore[arg-type]  # logged, not raised: it serves cold
    assert "warming up broken failed" in caplog.text
