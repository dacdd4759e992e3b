"""Every refusal is a 4xx in OpenAI's envelope naming the problem; failures are a 500 without details."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from model_store.store import ModelStore
from tests.app_support import (
    StubOpener,
    float_wav,
    publish_fake_variant,
    server_settings,
    wait_until,
    wav_bytes,
)

pytestmark = pytest.mark.timeout(60)

CLIP = wav_bytes(2.0)


def upload(audio: bytes = CLIP, name: str = "clip.wav") -> dict[str, tuple[str, bytes, str]]:
    return {"file": (name, audio, "application/octet-stream")}


def assert_error(response: httpx.Response, status: int, code: str | None, param: str | None = None) -> str:
    """Check the envelope and return its message."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["param"] == param
    assert error["type"] == (
        "invalid_request_error" if status < 500 and status not in (401, 429) else error["type"]
    )
    assert "Traceback" not in error["message"]
    assert response.headers["x-request-id"]
    return str(error["message"])


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "stub-a", cer={"en": 0.1}, ms_per_audio_second=10.0)
    return store


@pytest.fixture
def opener() -> StubOpener:
    return StubOpener()


def make_client(store: ModelStore, opener: StubOpener, **server: Any) -> TestClient:
    return TestClient(create_app(server_settings(store.root, **server), store, opener=opener))


@pytest.fixture
def client(store: ModelStore, opener: StubOpener) -> Iterator[TestClient]:
    with make_client(store, opener, max_upload_bytes=300_000, max_audio_seconds=5.0) as test_client:
        yield test_client


def test_413_declared_size(client: TestClient) -> None:
    response = client.post("/v1/audio/transcriptions", files=upload(wav_bytes(10.0)))  # 320 KB
    message = assert_error(response, 413, "file_too_large", "file")
    assert "300000 bytes" in message


def test_the_limit_is_the_files_not_the_bodys(client: TestClient) -> None:
    """A file of exactly the limit passes (the form's other bytes do not count against it); one byte more
    does not, whether the body declares its length or not."""
    at_limit = wav_bytes(9.0).ljust(300_000, b"\0")
    passed = client.post("/v1/audio/transcriptions", files=upload(at_limit), data={"language": "en"})
    assert_error(passed, 400, "audio_too_long", "file")  # past the size check: 9 s > the 5 s limit
    over = client.post("/v1/audio/transcriptions", files=upload(at_limit + b"\0"), data={"language": "en"})
    assert "300000 bytes" in assert_error(over, 413, "file_too_large", "file")


def test_413_chunked_upload(client: TestClient) -> None:
    boundary = "hushboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: audio/wav\r\n\r\n"
        ).encode()
        + wav_bytes(10.0)
        + f"\r\n--{boundary}--\r\n".encode()
    )

    def chunks() -> Iterator[bytes]:  # no Content-Length: the server must count
        for start in range(0, len(body), 16_384):
            yield body[start : start + 16_384]

    response = client.post(
        "/v1/audio/transcriptions",
        content=chunks(),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    assert_error(response, 413, "file_too_large", "file")


@pytest.mark.parametrize(
    ("body", "content_type", "words"),
    [
        (b"anything", "multipart/form-data", "boundary"),
        (
            b'--b\r\nContent-Disposition: form-data; name="prompt"\r\n\r\n'
            + b"a" * (1024 * 1024 + 1)
            + b"\r\n--b--\r\n",
            "multipart/form-data; boundary=b",
            "maximum size",
        ),
    ],
    ids=["no-boundary", "field-over-1MiB"],
)
def test_400_malformed_multipart(
    store: ModelStore, opener: StubOpener, body: bytes, content_type: str, words: str
) -> None:
    with make_client(store, opener) as client:  # the default upload limit, 25 MiB
        response = client.post(
            "/v1/audio/transcriptions", content=body, headers={"Content-Type": content_type}
        )
    assert words in assert_error(response, 400, "invalid_request_body")


def test_400_no_variant_names_the_field_to_change(tmp_path: Path, opener: StubOpener) -> None:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "stub-en", cer={"en": 0.1}, languages=("en",), multilingual=False)
    with make_client(store, opener) as client:
        for data, param in [
            ({"model": "stub-en", "language": "fr"}, "language"),
            ({"language": "fr"}, "language"),
            ({"language": "en", "tier": "base"}, "tier"),
        ]:
            response = client.post("/v1/audio/transcriptions", files=upload(), data=data)
            assert_error(response, 400, "no_variant_available", param)
        response = client.post("/v1/audio/translations", files=upload(), data={"model": "stub-en"})
        assert "cannot translate" in assert_error(response, 400, "no_variant_available", "model")


def test_400_audio_with_nan_samples(client: TestClient) -> None:
    message = assert_error(
        client.post("/v1/audio/transcriptions", files=upload(float_wav([0.1, float("nan")] * 8000))),
        400,
        "invalid_audio",
        "file",
    )
    assert "NaN or infinite" in message


def test_415_not_audio(client: TestClient) -> None:
    message = assert_error(
        client.post("/v1/audio/transcriptions", files=upload(b"%PDF-1.4 not audio at all" * 50, "doc.pdf")),
        415,
        "unsupported_audio_format",
        "file",
    )
    assert "could not decode audio" in message and "wav" in message


def test_400_empty_audio(client: TestClient) -> None:
    assert_error(client.post("/v1/audio/transcriptions", files=upload(b"")), 400, "empty_audio", "file")
    assert_error(
        client.post("/v1/audio/transcriptions", files=upload(wav_bytes(0.0))), 400, "empty_audio", "file"
    )


def test_400_audio_too_long(client: TestClient) -> None:
    message = assert_error(
        client.post("/v1/audio/transcriptions", files=upload(wav_bytes(6.0)), headers={}),
        400,
        "audio_too_long",
        "file",
    )
    assert "5 s" in message


def test_400_unknown_language_and_bad_combinations(client: TestClient) -> None:
    assert_error(
        client.post("/v1/audio/transcriptions", files=upload(), data={"language": "klingon"}),
        400,
        "unsupported_language",
        "language",
    )
    message = assert_error(
        client.post("/v1/audio/transcriptions", files=upload(), data={"language": "x" * 5000}),
        400,
        "unsupported_language",
        "language",
    )
    assert "x" * 40 + "..." in message and "x" * 41 not in message  # not the client's 5,000 characters
    for field in ("timestamp_granularities[]", "timestamp_granularities"):  # named as the client sent it
        assert_error(
            client.post(
                "/v1/audio/transcriptions", files=upload(), data={field: "word"}
            ),  # words need verbose_json
            400,
            "invalid_parameter",
            field,
        )
    message = assert_error(
        client.post("/v1/audio/transcriptions", files=upload(), data={"tier": "large", "language": "en"}),
        400,
        "no_variant_available",
        "tier",
    )
    assert "tier 'large'" in message and "stub-a" in message
    english = client.post("/v1/audio/transcriptions", files=upload(), data={"language": "English"})
    assert english.status_code == 200  # names are accepted for codes


def test_404_unknown_model(client: TestClient) -> None:
    message = assert_error(
        client.post("/v1/audio/transcriptions", files=upload(), data={"model": "whisper-huge"}),
        404,
        "model_not_found",
        "model",
    )
    assert "stub-a" in message  # lists the valid choices
    assert_error(client.get("/v1/models/whisper-huge"), 404, "model_not_found", "model")
    assert_error(client.get("/v1/nowhere"), 404, "not_found")


@pytest.mark.parametrize(
    ("data", "param"),
    [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": "1.5"}, "temperature"),
        ({"temperature": "warm"}, "temperature"),
        ({"temperature": "nan"}, "temperature"),
        (
            {"timestamp_granularities[]": "sentence", "response_format": "verbose_json"},
            "timestamp_granularities[]",
        ),
    ],
)
def test_422_bad_parameter(client: TestClient, data: dict[str, str], param: str) -> None:
    message = assert_error(
        client.post("/v1/audio/transcriptions", files=upload(), data=data), 422, "invalid_parameter", param
    )
    assert param in message


def test_422_missing_file(client: TestClient) -> None:
    assert_error(
        client.post("/v1/audio/transcriptions", data={"model": "auto"}), 422, "invalid_parameter", "file"
    )
    message = assert_error(
        client.post("/v1/audio/transcriptions", data={"file": "not a file"}), 422, "invalid_parameter", "file"
    )
    assert "uploaded file" in message and "class" not in message


def test_401_api_keys(store: ModelStore, opener: StubOpener) -> None:
    with make_client(store, opener, api_keys=["key-one", "key-two"]) as client:
        missing = client.get("/v1/models")
        assert_error(missing, 401, "missing_api_key")
        assert missing.json()["error"]["type"] == "authentication_error"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert_error(
            client.get("/v1/models", headers={"Authorization": "Bearer nope"}), 401, "invalid_api_key"
        )
        assert_error(
            client.post(
                "/v1/audio/transcriptions", files=upload(), headers={"Authorization": "Basic a2V5LW9uZQ=="}
            ),
            401,
            "missing_api_key",
        )
        assert client.get("/v1/models", headers={"Authorization": "Bearer key-two"}).status_code == 200
        ok = client.post(
            "/v1/audio/transcriptions", files=upload(), headers={"Authorization": "Bearer key-one"}
        )
        assert ok.status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open


def test_429_when_the_queue_is_full(store: ModelStore, opener: StubOpener) -> None:
    gate = opener.gates["stub-a"] = threading.Event()
    with make_client(store, opener, workers=1, queue_size=0) as client, ThreadPoolExecutor(1) as pool:
        queue = client.app.state.hush.queue  # type: ignore[attr-defined]
        first = pool.submit(client.post, "/v1/audio/transcriptions", files=upload(), data={"language": "en"})
        wait_until(lambda: queue.running == 1, what="the first request to occupy the worker")
        refused = client.post("/v1/audio/transcriptions", files=upload(), data={"language": "en"})
        assert_error(refused, 429, "queue_full")
        assert refused.json()["error"]["type"] == "rate_limit_error"
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.headers["x-hush-variant"] == "stub-a"  # routed, then refused
        gate.set()
        assert first.result(timeout=30).status_code == 200
        metrics = client.get("/metrics").text
        assert 'hush_queue_rejections_total{device="cpu"} 1.0' in metrics
        assert (
            'hush_http_requests_total{endpoint="/v1/audio/transcriptions",status="429",variant="stub-a"} 1.0'
            in (metrics)
        )


def test_504_when_a_transcription_takes_too_long(store: ModelStore, opener: StubOpener) -> None:
    gate = opener.gates["stub-a"] = threading.Event()
    with make_client(store, opener, request_timeout_seconds=0.2) as client:
        response = client.post("/v1/audio/transcriptions", files=upload(), data={"language": "en"})
        gate.set()
    assert_error(response, 504, "timeout")
    assert response.json()["error"]["type"] == "server_error"


def test_500_reveals_nothing(store: ModelStore, opener: StubOpener) -> None:
    opener.failure = RuntimeError("secret internals at /srv/hush/model.py line 42")
    with make_client(store, opener) as client:
        response = client.post("/v1/audio/transcriptions", files=upload(), data={"language": "en"})
    message = assert_error(response, 500, "internal_error")
    assert response.json()["error"]["type"] == "server_error"
    assert "secret" not in response.text and "/srv" not in response.text
    assert response.headers["x-request-id"] in message


def test_503_when_no_variant_runs_here(tmp_path: Path, opener: StubOpener) -> None:
    store = ModelStore(tmp_path / "gpu-only")
    publish_fake_variant(store, "gpu-only", device="cuda")
    with make_client(store, opener) as client:
        response = client.post("/v1/audio/transcriptions", files=upload(), data={"language": "en"})
        assert_error(response, 503, "no_variants")
        pinned = client.post(
            "/v1/audio/transcriptions", files=upload(), data={"model": "gpu-only", "language": "en"}
        )
        assert pinned.status_code == 503 and "CUDA" in pinned.json()["error"]["message"]
