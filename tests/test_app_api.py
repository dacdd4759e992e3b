"""The HTTP API through the app factory: response formats, timestamps, models, health, headers, metrics."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.formats import render, timestamp, to_srt, to_verbose_json, to_vtt
from app.main import create_app
from model_store.store import ModelStore
from model_store.transcription import Segment, Transcription, Word
from tests.app_support import DATA, StubOpener, publish_fake_variant, server_settings, wait_until

pytestmark = pytest.mark.timeout(120)

JFK = (DATA / "jfk.wav").read_bytes()
SRT_TIME = r"\d\d:\d\d:\d\d,\d\d\d"
VTT_TIME = r"\d\d:\d\d:\d\d\.\d\d\d"


def upload(audio: bytes = JFK) -> dict[str, tuple[str, bytes, str]]:
    return {"file": ("clip.wav", audio, "audio/wav")}


@pytest.fixture(scope="module")
def client(tiny_store: ModelStore) -> Iterator[TestClient]:
    """The app on a store of one tiny random variant (real weights' shapes and tokenizer)."""
    app = create_app(server_settings(tiny_store.root), tiny_store)
    with TestClient(app) as test_client:
        wait_until(lambda: test_client.get("/readyz").status_code == 200, what="readiness")
        yield test_client


@pytest.fixture
def stub_client(tmp_path: Path) -> Iterator[TestClient]:
    """The app on fake variants with stub transcribers that time their words."""
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "stub-a", cer={"en": 0.1}, ms_per_audio_second=10.0)
    app = create_app(server_settings(store.root), store, opener=StubOpener())
    with TestClient(app) as test_client:
        yield test_client


# ---- each response format on a real (tiny, random) transcriber ---------------------------------------


def test_json(client: TestClient) -> None:
    response = client.post(
        "/v1/audio/transcriptions", files=upload(), data={"model": "auto", "language": "en"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert isinstance(body["text"], str) and body["text"]
    assert body["usage"] == {"type": "duration", "seconds": 11}
    assert response.headers["x-hush-variant"] == "tiny-random"
    assert "tiny-random" in response.headers["x-hush-route-reason"]
    assert re.fullmatch(r"[0-9a-f]{32}", response.headers["x-request-id"])
    assert re.fullmatch(
        r"decode;dur=[\d.]+, queue;dur=[\d.]+, inference;dur=[\d.]+", response.headers["server-timing"]
    )


def test_text(stub_client: TestClient) -> None:
    response = stub_client.post(
        "/v1/audio/transcriptions", files=upload(), data={"response_format": "text", "language": "en"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert response.text == "hello world\n"


def test_srt(client: TestClient) -> None:
    response = client.post(
        "/v1/audio/transcriptions", files=upload(), data={"response_format": "srt", "language": "en"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/x-subrip")
    cues = response.text.strip().split("\n\n")
    assert cues and cues[0].startswith("1\n")
    for index, cue in enumerate(cues, start=1):
        number, timing, *_ = cue.split("\n")
        assert number == str(index)
        assert re.fullmatch(f"{SRT_TIME} --> {SRT_TIME}", timing)


def test_vtt(stub_client: TestClient) -> None:
    response = stub_client.post(
        "/v1/audio/transcriptions", files=upload(), data={"response_format": "vtt", "language": "en"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/vtt")
    header, cue = response.text.strip().split("\n\n")
    assert header == "WEBVTT"
    timing, text = cue.split("\n")
    assert re.fullmatch(f"{VTT_TIME} --> {VTT_TIME}", timing) and timing.endswith("00:00:11.000")
    assert text == "hello world"


def test_verbose_json_with_detected_language(client: TestClient) -> None:
    response = client.post(
        "/v1/audio/transcriptions", files=upload(), data={"response_format": "verbose_json"}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["task"] == "transcribe"
    assert body["duration"] == pytest.approx(11.0, abs=0.01)
    assert isinstance(body["language"], str) and body["language"].isalpha()  # a name: "english", ...
    assert body["segments"], "a segment list"
    segment = body["segments"][0]
    for key in ("id", "seek", "start", "end", "text", "tokens", "temperature", "avg_logprob"):
        assert key in segment
    assert segment["temperature"] == 0.0 and segment["seek"] == 0  # an 11 s clip: one window, at frame 0
    assert "compression_ratio" in segment and "no_speech_prob" in segment
    assert "words" not in body
    assert "detected by tiny-random" in response.headers["x-hush-route-reason"]


def test_translation(stub_client: TestClient) -> None:
    response = stub_client.post(
        "/v1/audio/translations", files=upload(), data={"response_format": "verbose_json", "language": "de"}
    )
    assert response.status_code == 200
    assert response.json()["task"] == "translate"
    assert response.json()["language"] == "english"  # OpenAI: the output's language, not the speech's


# ---- timestamp granularities (words come from transcribers that time them: the stub does) -------------


@pytest.mark.parametrize("field", ["timestamp_granularities[]", "timestamp_granularities"])
def test_word_timestamps(stub_client: TestClient, field: str) -> None:
    response = stub_client.post(
        "/v1/audio/transcriptions",
        files=upload(),
        data={"response_format": "verbose_json", field: ["word", "segment"], "language": "en"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert [word["word"] for word in body["words"]] == ["hello", "world"]
    assert body["words"][0]["start"] == 0.0 and body["words"][0]["end"] == 0.4
    assert len(body["segments"]) == 1


def test_only_word_timestamps_leave_segments_out(stub_client: TestClient) -> None:
    response = stub_client.post(
        "/v1/audio/transcriptions",
        files=upload(),
        data={"response_format": "verbose_json", "timestamp_granularities[]": "word"},
    )
    assert response.status_code == 200
    assert "segments" not in response.json() and len(response.json()["words"]) == 2


def test_an_english_only_model_skips_detection(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "multi")
    publish_fake_variant(store, "tiny-en", multilingual=False)
    opener = StubOpener(detected={"de": 0.99})
    with TestClient(create_app(server_settings(store.root), store, opener=opener)) as client:
        pinned = client.post("/v1/audio/transcriptions", files=upload(), data={"model": "tiny-en"})
        assert pinned.status_code == 200 and pinned.headers["x-hush-variant"] == "tiny-en"
        assert "detected" not in pinned.headers["x-hush-route-reason"]
        routed = client.post(
            "/v1/audio/transcriptions", files=upload(), data={"response_format": "verbose_json"}
        )
        assert routed.headers["x-hush-variant"] == "multi"  # German was detected: tiny-en cannot serve it
        assert routed.json()["language"] == "german"
        assert "language de detected by multi (p=0.99)" in routed.headers["x-hush-route-reason"]


def test_temperature_starts_the_fallback_schedule(stub_client: TestClient) -> None:
    response = stub_client.post(
        "/v1/audio/transcriptions",
        files=upload(),
        data={"response_format": "verbose_json", "temperature": "0.4"},
    )
    assert response.json()["segments"][0]["temperature"] == 0.4


# ---- rendering, unit-level ------------------------------------------------------------------------------


def _transcription() -> Transcription:
    words = (Word(3725.5, 3726.0, " Hi", 0.9),)
    segments = (
        Segment(0, 0.0, 1.5, " Hello --> there", (1,), -0.2, 1.1, 0.01, 0.0),
        Segment(1, 3725.5, 3726.25, " Hi", (2,), -0.3, 1.0, 0.02, 0.2, words),
    )
    return Transcription("Hello --> there Hi", segments, "de", 0.9, 3726.3, "v")


def test_timestamps_and_subtitles() -> None:
    assert timestamp(3725.5, decimal_marker=",") == "01:02:05,500"
    assert timestamp(0.0004, decimal_marker=".") == "00:00:00.000"
    srt = to_srt(_transcription())
    assert srt == "1\n00:00:00,000 --> 00:00:01,500\nHello -> there\n\n2\n01:02:05,500 --> 01:02:06,250\nHi\n"
    vtt = to_vtt(_transcription())
    assert vtt.startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHello -> there\n")


def test_verbose_json_shape() -> None:
    body = to_verbose_json(_transcription(), "transcribe", ["word"])
    assert body["language"] == "german"
    assert body["words"] == [{"word": "Hi", "start": 3725.5, "end": 3726.0, "probability": 0.9}]
    assert "segments" not in body
    assert json.loads(render(_transcription(), "json").body) == {
        "text": "Hello --> there Hi",
        "usage": {"type": "duration", "seconds": 3727},
    }


# ---- models, health, headers, metrics -------------------------------------------------------------------


def test_models_listing(client: TestClient) -> None:
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    model, *aliases = body["data"]
    assert [(alias["id"], alias["alias_of"]) for alias in aliases] == [
        ("whisper-1", "auto"),
        ("auto", "auto"),
    ]
    assert model["id"] == "tiny-random" and model["object"] == "model" and model["owned_by"] == "hush"
    assert model["tier"] == "tiny" and model["languages"] == ["*"] and model["loaded"] is True
    assert model["bytes"] > 1_000_000 and model["recipe"] == "import"
    assert model["audio_context_seconds"] is None and model["encoder_attention"] == "float32"
    assert model["numerics"] == ""  # a float variant: nothing but its weights decides its transcripts
    assert client.get("/v1/models/tiny-random").json()["id"] == "tiny-random"


def test_whisper_1_names_the_pinned_default(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "stub-a", cer={"en": 0.1}, ms_per_audio_second=10.0)
    settings = server_settings(store.root, default_model="stub-a")
    with TestClient(create_app(settings, store, opener=StubOpener())) as client:
        alias = client.get("/v1/models/whisper-1").json()
        assert alias == {
            "id": "whisper-1",
            "object": "model",
            "created": 0,
            "owned_by": "hush",
            "alias_of": "stub-a",
        }
        assert client.get("/v1/models/auto").json()["alias_of"] == "auto"


def test_models_carry_figures(stub_client: TestClient) -> None:
    model = stub_client.get("/v1/models/stub-a").json()
    assert model["cer"] == {"en": 0.1} and model["ms_per_audio_second"] == 10.0
    assert model["observed_ms_per_audio_second"] is None
    stub_client.post("/v1/audio/transcriptions", files=upload(), data={"language": "en"})
    assert stub_client.get("/v1/models/stub-a").json()["observed_ms_per_audio_second"] is not None


def test_cors(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "stub-a")
    settings = server_settings(store.root, cors_origins=["https://app.example"])
    with TestClient(create_app(settings, store, opener=StubOpener())) as client:
        preflight = client.options(
            "/v1/audio/transcriptions",
            headers={"Origin": "https://app.example", "Access-Control-Request-Method": "POST"},
        )
        assert preflight.headers["access-control-allow-origin"] == "https://app.example"
        response = client.get("/v1/models", headers={"Origin": "https://app.example"})
        assert "x-hush-variant" in response.headers["access-control-expose-headers"].lower()
        other = client.get("/v1/models", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_health_and_request_ids(client: TestClient) -> None:
    response = client.get("/healthz", headers={"X-Request-Id": "client-chosen.42"})
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"] == "client-chosen.42"
    assert response.headers["x-hush-variant"] == "none"
    evil = client.get("/healthz", headers={"X-Request-Id": "bad id\twith spaces"})
    assert evil.headers["x-request-id"] != "bad id\twith spaces"


def test_metrics(stub_client: TestClient) -> None:
    stub_client.post("/v1/audio/transcriptions", files=upload(), data={"language": "en"})
    text = stub_client.get("/metrics").text
    assert re.search(
        r'hush_http_requests_total\{endpoint="/v1/audio/transcriptions",status="200",variant="stub-a"\} 1\.0',
        text,
    )
    assert re.search(r'hush_router_decisions_total\{reason="only_candidate",variant="stub-a"\} 1\.0', text)
    assert re.search(r'hush_audio_processed_seconds_total\{variant="stub-a"\} 11\.0', text)
    assert re.search(r'hush_model_loads_total\{variant="stub-a"\} 1\.0', text)
    assert 'hush_queue_depth{device="cpu"} 0.0' in text
    assert 'hush_inference_duration_seconds_count{variant="stub-a"} 1.0' in text
