"""A/B experiments, feedback, shadow scoring and their metrics, through the app factory on stub variants."""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from app.background import BackgroundBusyError, BackgroundWorkers
from app.experiments.assignment import assign, unit
from app.experiments.definitions import Arm, Experiment
from app.experiments.registry import read_experiment_file
from app.experiments.results import ExperimentTracker
from app.feedback import (
    DuplicateFeedbackError,
    ExpiredRequestError,
    RecentRequests,
    ServedRecord,
    UnknownRequestError,
)
from app.inference import InferenceQueue
from app.main import create_app
from app.settings import ServerSettings
from app.shadow import reference_variant
from app.state import AppState
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import Audio, TranscribeOptions, Transcription
from tests.app_support import (
    StubOpener,
    StubTranscriber,
    eval_report,
    publish_fake_variant,
    score,
    server_settings,
    wait_until,
    wav_bytes,
)

pytestmark = pytest.mark.timeout(120)

CLIP = wav_bytes(1.0)


class TextTranscriber(StubTranscriber):
    """A stub that answers with its variant's own text."""

    def transcribe(self, audio: Audio, options: TranscribeOptions) -> Transcription:
        answer = super().transcribe(audio, options)
        assert isinstance(self.opener, TextOpener)
        return dataclasses.replace(answer, text=self.opener.texts[self.manifest.id])


@dataclasses.dataclass
class TextOpener(StubOpener):
    texts: dict[str, str] = dataclasses.field(default_factory=dict)

    def __call__(
        self, store: ModelStore, variant_id: str, runtime: RuntimeSettings, verify: bool
    ) -> StubTranscriber:
        transcriber = TextTranscriber(store.get(variant_id), self)
        self.opened.append(transcriber)
        return transcriber


TEXTS = {"fast": "hello world", "ref": "hello word", "cand": "hallo world"}


def make_store(root: Path) -> ModelStore:
    """fast wins routing (cheap, CER 0.10); ref is the most accurate (CER 0.02) and the shadow reference."""
    store = ModelStore(root)
    publish_fake_variant(store, "fast", cer={"en": 0.10, "fr": 0.2}, ms_per_audio_second=10.0)
    publish_fake_variant(store, "ref", cer={"en": 0.02, "fr": 0.1}, ms_per_audio_second=500.0)
    publish_fake_variant(store, "cand", cer={"en": 0.05}, ms_per_audio_second=400.0)
    return store


def experiment_body(**extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "match": {"languages": ["en"]},
        "arms": [
            {"name": "control", "variant": "fast", "weight": 1},
            {"name": "slow", "variant": "ref", "weight": 1},
        ],
    }
    body.update(extra)
    return body


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


def app_client(tmp_path: Path, registry: CollectorRegistry, **sections: Any) -> TestClient:
    store = make_store(tmp_path / "store")
    settings = server_settings(store.root)
    settings = settings.model_copy(
        update={name: getattr(settings, name).model_copy(update=values) for name, values in sections.items()}
    )
    return TestClient(create_app(settings, store, opener=TextOpener(texts=TEXTS), registry=registry))


@pytest.fixture
def client(tmp_path: Path, registry: CollectorRegistry) -> Iterator[TestClient]:
    with app_client(tmp_path, registry) as test_client:
        yield test_client


def transcribe(client: TestClient, client_id: str | None = None, language: str = "en") -> Any:
    headers = {"X-Hush-Client-Id": client_id} if client_id else {}
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("clip.wav", CLIP, "audio/wav")},
        data={"language": language},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response


def state_of(client: TestClient) -> AppState:
    state: AppState = client.app.state.hush  # type: ignore[attr-defined]
    return state


def drain_shadow(client: TestClient) -> None:
    shadow = state_of(client).ab.shadow
    assert shadow is not None
    wait_until(lambda: shadow.pending == 0, what="shadow jobs")


# ---- sticky assignment ------------------------------------------------------------------------------


def test_assignment_is_deterministic_and_uniform() -> None:
    assert unit("exp", "client:42") == unit("exp", "client:42")
    assert unit("exp", "client:42") != unit("other", "client:42")
    # The pinned value is the contract between replicas and versions: changing the hash moves clients.
    assert unit("exp", "client:42") == pytest.approx(0.3725461, abs=1e-6)
    units = np.array([unit("exp", f"client:{i}") for i in range(20_000)])
    assert units.min() >= 0 and units.max() < 1
    assert abs(units.mean() - 0.5) < 0.01


def test_assignment_follows_weights_within_tolerance() -> None:
    experiment = Experiment(
        name="weights",
        arms=(
            Arm(name="a", variant="fast", weight=1),
            Arm(name="b", variant="ref", weight=3),
            Arm(name="off", variant="cand", weight=0),
        ),
    )
    keys = [f"client:{i}" for i in range(20_000)]
    counts = Counter(assign(experiment, key).name for key in keys)
    assert counts["off"] == 0
    assert counts["a"] / len(keys) == pytest.approx(0.25, abs=0.015)  # 5 sigma of a binomial at n=20000
    assert counts["b"] / len(keys) == pytest.approx(0.75, abs=0.015)
    again = [assign(experiment, key).name for key in keys[:500]]
    assert again == [assign(experiment, key).name for key in keys[:500]]


# ---- the experiments API and routing by arm --------------------------------------------------------


def test_experiment_crud(client: TestClient) -> None:
    assert client.get("/v1/experiments").json() == {"object": "list", "data": []}
    created = client.put("/v1/experiments/ab1", json=experiment_body())
    assert created.status_code == 201, created.text
    assert created.json()["arms"][1]["variant"] == "ref"
    replaced = client.put("/v1/experiments/ab1", json=experiment_body(description="again"))
    assert replaced.status_code == 200 and replaced.json()["description"] == "again"
    assert [e["name"] for e in client.get("/v1/experiments").json()["data"]] == ["ab1"]
    assert client.get("/v1/experiments/ab1").json()["match"]["languages"] == ["en"]
    unknown = client.put(
        "/v1/experiments/ab2", json=experiment_body(arms=[{"name": "x", "variant": "nope", "weight": 1}])
    )
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == "model_not_found"
    assert client.put("/v1/experiments/ab2", json={"arms": []}).status_code == 422
    assert client.delete("/v1/experiments/ab1").json() == {
        "id": "ab1",
        "object": "experiment",
        "deleted": True,
    }
    missing = client.get("/v1/experiments/ab1")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "experiment_not_found"
    assert client.get("/v1/experiments/ab1/results").status_code == 404


def test_router_honours_the_sticky_arm(client: TestClient, registry: CollectorRegistry) -> None:
    client.put("/v1/experiments/ab1", json=experiment_body())
    experiment = Experiment.model_validate({"name": "ab1", **experiment_body()})
    seen = set()
    for index in range(12):
        key = f"c{index}"
        arm = assign(experiment, f"client:{key}")
        for _ in range(2):  # the same client lands on the same arm every time
            response = transcribe(client, key)
            assert response.headers["x-hush-experiment"] == "ab1"
            assert response.headers["x-hush-arm"] == arm.name
            assert response.headers["x-hush-variant"] == arm.variant
            assert "experiment ab1 arm" in response.headers["x-hush-route-reason"]
        seen.add(arm.name)
    assert seen == {"control", "slow"}
    total = sum(
        registry.get_sample_value("hush_ab_assignments_total", {"experiment": "ab1", "arm": arm}) or 0
        for arm in ("control", "slow")
    )
    assert total == 24
    decisions = registry.get_sample_value(
        "hush_router_decisions_total", {"variant": "ref", "reason": "experiment"}
    )
    assert decisions is not None and decisions > 0
    # French is not matched: the usual router decides, and no experiment headers are sent.
    french = transcribe(client, "c0", language="fr")
    assert "x-hush-experiment" not in french.headers
    assert french.headers["x-hush-variant"] == "fast"
    results = client.get("/v1/experiments/ab1/results").json()
    assert sum(arm["requests"] for arm in results["arms"]) == 24
    assert all(arm["latency"]["p95_seconds"] >= arm["latency"]["p50_seconds"] > 0 for arm in results["arms"])


def test_experiments_are_read_from_the_settings_file(tmp_path: Path, registry: CollectorRegistry) -> None:
    file = tmp_path / "experiments.yaml"
    file.write_text(
        "experiments:\n  - name: from-file\n    arms:\n      - {name: only, variant: ref, weight: 1}\n",
        encoding="utf-8",
    )
    with app_client(tmp_path, registry, experiments={"file": file}) as client:
        response = transcribe(client, "anyone")
        assert response.headers["x-hush-arm"] == "only" and response.headers["x-hush-variant"] == "ref"
        # initialised at start, before any request of the arm was counted
        assert (
            registry.get_sample_value(
                "hush_ab_cer_edit_chars_total",
                {"experiment": "from-file", "arm": "only", "source": "feedback"},
            )
            == 0
        )


# ---- feedback -----------------------------------------------------------------------------------------


def test_feedback_scores_the_served_text(client: TestClient, registry: CollectorRegistry) -> None:
    labels = {"variant": "fast", "language": "en", "source": "feedback"}
    assert registry.get_sample_value("hush_cer_edit_chars_total", labels) == 0  # initialised at start
    request_id = transcribe(client).headers["x-request-id"]
    scored = client.post("/v1/feedback", json={"request_id": request_id, "text": "Hello, word!"})
    assert scored.status_code == 200, scored.text
    body = scored.json()
    assert body["variant"] == "fast" and body["language"] == "en"
    assert (body["edits"], body["reference_chars"]) == (1, 10)  # "hello world" against "hello word"
    assert registry.get_sample_value("hush_cer_edit_chars_total", labels) == 1
    assert registry.get_sample_value("hush_cer_reference_chars_total", labels) == 10
    assert registry.get_sample_value("hush_cer_edit_chars_total", {**labels, "source": "shadow"}) == 0
    again = client.post("/v1/feedback", json={"request_id": request_id, "text": "hello word"})
    assert again.status_code == 409 and again.json()["error"]["code"] == "feedback_already_given"
    unknown = client.post("/v1/feedback", json={"request_id": "never-served", "text": "x"})
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "request_not_found"
    assert registry.get_sample_value("hush_feedback_total", {"outcome": "scored"}) == 1
    assert registry.get_sample_value("hush_feedback_total", {"outcome": "duplicate"}) == 1


def test_expired_feedback_gets_410(tmp_path: Path, registry: CollectorRegistry) -> None:
    with app_client(tmp_path, registry, feedback={"max_requests": 2}) as client:
        first = transcribe(client).headers["x-request-id"]
        transcribe(client)
        transcribe(client)  # the memory holds two: the first is forgotten
        gone = client.post("/v1/feedback", json={"request_id": first, "text": "hello world"})
        assert gone.status_code == 410
        assert gone.json()["error"] == {
            "message": gone.json()["error"]["message"],
            "type": "invalid_request_error",
            "param": "request_id",
            "code": "feedback_expired",
        }
        assert "too old" in gone.json()["error"]["message"]


def test_recent_requests_expire_in_time() -> None:
    now = [0.0]
    recent = RecentRequests(ttl_seconds=60, max_requests=10, clock=lambda: now[0])
    recent.remember(ServedRecord("a", "fast", "en", "hi"))
    now[0] = 30
    recent.remember(ServedRecord("b", "fast", "en", "hi"))
    now[0] = 61
    with pytest.raises(ExpiredRequestError):
        recent.claim("a")
    assert recent.claim("b").request_id == "b"
    with pytest.raises(DuplicateFeedbackError):
        recent.claim("b")
    with pytest.raises(UnknownRequestError):
        recent.claim("c")
    assert len(recent) == 0


# ---- shadow scoring, mirror arms, load shedding --------------------------------------------------------


def test_shadow_cer_lands_in_the_served_variants_series(tmp_path: Path, registry: CollectorRegistry) -> None:
    with app_client(tmp_path, registry, shadow={"sample_rate": 1.0}) as client:
        for _ in range(3):
            assert transcribe(client).headers["x-hush-variant"] == "fast"
            drain_shadow(client)  # a background job still running when the next client comes is shed
        labels = {"variant": "fast", "language": "en", "source": "shadow"}
        assert registry.get_sample_value("hush_cer_edit_chars_total", labels) == 3  # vs ref's "hello word"
        assert registry.get_sample_value("hush_cer_reference_chars_total", labels) == 30
        assert registry.get_sample_value("hush_cer_scored_requests_total", labels) == 3
        assert registry.get_sample_value("hush_cer_edit_chars_total", {**labels, "source": "feedback"}) == 0
        assert registry.get_sample_value("hush_shadow_jobs_total", {"outcome": "scored"}) == 3
        # the reference served a request pinned to it: nothing to compare against
        client.post(
            "/v1/audio/transcriptions",
            files={"file": ("clip.wav", CLIP, "audio/wav")},
            data={"language": "en", "model": "ref"},
        )
        drain_shadow(client)
        assert registry.get_sample_value("hush_shadow_jobs_total", {"outcome": "is_reference"}) == 1


def test_mirror_arm_is_transcribed_and_scored_but_never_returned(
    tmp_path: Path, registry: CollectorRegistry
) -> None:
    with app_client(tmp_path, registry) as client:  # shadow sampling off: the mirror alone triggers it
        body = experiment_body(
            arms=[{"name": "control", "variant": "fast", "weight": 1}],
            mirror={"name": "candidate", "variant": "cand"},
        )
        assert client.put("/v1/experiments/mirror", json=body).status_code == 201
        for index in range(4):
            response = transcribe(client, f"k{index}")
            assert response.headers["x-hush-arm"] == "control"
            assert response.json()["text"] == "hello world"
            drain_shadow(client)  # a background job still running when the next client comes is shed
        arm = {"experiment": "mirror", "arm": "candidate"}
        assert registry.get_sample_value("hush_shadow_jobs_total", {"outcome": "shed"}) == 0
        assert registry.get_sample_value("hush_ab_assignments_total", arm) == 4
        # "hallo world" against ref's "hello word": 2 edits over 10 chars, each time
        assert registry.get_sample_value("hush_ab_cer_edit_chars_total", {**arm, "source": "shadow"}) == 8
        control = {"experiment": "mirror", "arm": "control", "source": "shadow"}
        assert registry.get_sample_value("hush_ab_cer_edit_chars_total", control) == 4
        results = client.get("/v1/experiments/mirror/results").json()
        candidate = next(arm for arm in results["arms"] if arm["name"] == "candidate")
        assert candidate["mirror"] is True and candidate["requests"] == 4
        assert candidate["cer"]["shadow"]["cer"] == pytest.approx(0.2)


def test_background_work_is_shed_first() -> None:
    """Background jobs run beside clients' jobs, never in their queue, and only while nobody waits."""

    async def scenario() -> None:
        queue = InferenceQueue("cpu", workers=1, capacity=2)
        background = BackgroundWorkers(queue, workers=1)
        first, second, slow = threading.Event(), threading.Event(), threading.Event()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(queue.run, first.wait)  # a client's job runs, nobody waits
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: queue.running == 1))
                # a worker is idle and no client waits: the background job runs now, beside it
                assert (await background.run(lambda: "shadow")).value == "shadow"
                group.start_soon(background.run, slow.wait)  # the background worker is now busy
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: background.running == 1))
                with pytest.raises(BackgroundBusyError):  # every background worker busy
                    await background.run(lambda: "more")
                slow.set()
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: background.running == 0))
                group.start_soon(queue.run, second.wait)  # a client's job now waits in the queue
                await anyio.to_thread.run_sync(lambda: wait_until(lambda: queue.waiting == 1))
                with pytest.raises(BackgroundBusyError):  # clients are waiting: shed
                    await background.run(lambda: "shadow")
                first.set()
                second.set()
            assert (await background.run(lambda: 2)).value == 2  # idle again: admitted
            with pytest.raises(BackgroundBusyError):
                await BackgroundWorkers(queue, workers=0).run(lambda: 3)  # background work off
        finally:
            for event in (first, second, slow):
                event.set()
            background.shutdown()
            queue.shutdown()

    anyio.run(scenario)


# ---- results and verdicts -------------------------------------------------------------------------------


def test_results_verdicts_on_constructed_data() -> None:
    experiment = Experiment(
        name="verdicts",
        arms=tuple(
            Arm(name=name, variant="fast", weight=1) for name in ("control", "better", "worse", "same", "few")
        ),
    )
    tracker = ExperimentTracker(window=1000)
    rng = np.random.default_rng(0)

    def draw(cer: float, requests: int) -> list[tuple[int, int]]:
        lengths = rng.integers(40, 80, size=requests)
        return [(int(rng.binomial(length, cer)), int(length)) for length in lengths]

    def feed(arm: str, scores: list[tuple[int, int]], source: str = "feedback") -> None:
        for edits, length in scores:
            tracker.scored("verdicts", arm, source, edits, length)  # type: ignore[arg-type]
            tracker.served("verdicts", arm, 0.1)

    control = draw(0.10, 200)
    feed("control", control)
    feed("better", draw(0.05, 200))
    feed("worse", draw(0.20, 200))
    feed("same", control[::-1])  # the control's own figures: a difference of exactly zero
    feed("few", draw(0.01, 5))
    results = tracker.results(experiment, resamples=500, min_scored=20)
    verdicts = {arm.name: arm.verdict for arm in results.arms}
    assert verdicts == {
        "control": "control",
        "better": "better",
        "worse": "worse",
        "same": "not yet significant",
        "few": "not yet significant",
    }
    better = next(arm for arm in results.arms if arm.name == "better").cer["feedback"]
    assert better.ci_low is not None and better.ci_high is not None
    assert better.ci_low < 0.05 < better.ci_high
    assert better.vs_control is not None and better.vs_control.ci_high < 0
    assert next(arm for arm in results.arms if arm.name == "few").cer["feedback"].vs_control is None
    # shadow decides when feedback does not
    feed("control", draw(0.10, 100), "shadow")
    feed("same", draw(0.30, 100), "shadow")
    assert {a.name: a.verdict for a in tracker.results(experiment, resamples=500).arms}["same"] == "worse"


# ---- metrics exported from the catalog ----------------------------------------------------------------


def test_variant_info_and_baselines(client: TestClient, registry: CollectorRegistry) -> None:
    client.get("/metrics")
    info = registry.get_sample_value(
        "hush_variant_info",
        {
            "variant": "cand",
            "family": "whisper",
            "parent": "",
            "recipe": "import",
            "backend": "transformers",
            "device": "cpu",
            "dtype": "float32",
            "size_tier": "tiny",
            "parameters": "1000000",
            "languages": "*",
            "eval_set": "test",
        },
    )
    assert info == 1
    assert registry.get_sample_value("hush_cer_baseline_ratio", {"variant": "fast", "language": "fr"}) == 0.2
    assert registry.get_sample_value("hush_cer_baseline_ratio", {"variant": "cand", "language": "fr"}) is None
    assert (
        registry.get_sample_value(
            "hush_cer_reference_chars_total", {"variant": "ref", "language": "fr", "source": "shadow"}
        )
        == 0
    )


def test_api_changes_persist_to_the_experiment_file(tmp_path: Path, registry: CollectorRegistry) -> None:
    file = tmp_path / "experiments.json"
    with app_client(tmp_path, registry, experiments={"file": file, "persist": True}) as client:
        assert client.put("/v1/experiments/kept", json=experiment_body()).status_code == 201
        assert client.put("/v1/experiments/gone", json=experiment_body()).status_code == 201
        assert client.delete("/v1/experiments/gone").status_code == 200
    assert [e.name for e in read_experiment_file(file)] == ["kept"]
    with app_client(tmp_path / "again", CollectorRegistry(), experiments={"file": file}) as client:
        assert [e["name"] for e in client.get("/v1/experiments").json()["data"]] == ["kept"]


def test_reference_is_the_most_accurate_well_evaluated_variant(tmp_path: Path) -> None:
    store = make_store(tmp_path / "store")
    manifests = store.list()
    runtime = RuntimeSettings(device="cpu")
    assert reference_variant(manifests, "en", runtime) == "ref"  # CER 0.02, the lowest
    assert reference_variant(manifests, "de", runtime) is None  # nobody was evaluated on German
    assert reference_variant(manifests, "en", runtime, preferred="cand") == "cand"
    # a perfect CER measured on one utterance loses to a well-measured one ...
    lucky = manifests[0].model_copy(
        update={
            "id": "lucky",
            "eval": eval_report(en=0.0).model_copy(
                update={"languages": {"en": score(0.0).model_copy(update={"utterances": 1})}}
            ),
        }
    )
    assert reference_variant([*manifests, lucky], "en", runtime, min_utterances=10) == "ref"
    # ... unless nobody has more
    assert reference_variant([lucky], "en", runtime, min_utterances=10) == "lucky"


def test_sections_read_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HUSH_EXPERIMENTS__FILE", str(tmp_path / "e.yaml"))
    monkeypatch.setenv("HUSH_SHADOW__SAMPLE_RATE", "0.25")
    monkeypatch.setenv("HUSH_FEEDBACK__TTL_SECONDS", "60")
    monkeypatch.setenv("HUSH_SERVER__BACKGROUND_WORKERS", "0")
    settings = ServerSettings()
    assert settings.experiments.file == tmp_path / "e.yaml"
    assert (settings.shadow.sample_rate, settings.feedback.ttl_seconds) == (0.25, 60)
    assert settings.server.background_workers == 0
    monkeypatch.setenv("HUSH_SHADOW__SAMPLE_RATE", "1.5")
    with pytest.raises(ValueError, match="sample_rate"):
        ServerSettings()
