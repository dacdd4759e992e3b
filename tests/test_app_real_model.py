"""The JFK clip through HTTP on the real bundled whisper-base (marked: slower, runs in CI)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from rapidfuzz.distance import Levenshtein

from app.main import create_app
from model_store.store import ModelStore
from tests.app_support import DATA, server_settings, wait_until
from tests.conftest import JFK_TEXT

pytestmark = [pytest.mark.real_model, pytest.mark.timeout(600)]

MAX_CER = 0.02


def normalised(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def cer(reference: str, hypothesis: str) -> float:
    return Levenshtein.distance(normalised(reference), normalised(hypothesis)) / len(normalised(reference))


@pytest.fixture(scope="module")
def client(real_store: ModelStore) -> Iterator[TestClient]:
    settings = server_settings(
        real_store.root, temperatures=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0], default_model="whisper-base"
    )
    with TestClient(create_app(settings, real_store)) as test_client:
        wait_until(
            lambda: test_client.get("/readyz").status_code == 200, timeout=120, what="whisper-base to load"
        )
        yield test_client


def test_jfk_through_http(client: TestClient) -> None:
    audio = (DATA / "jfk.wav").read_bytes()
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("jfk.wav", audio, "audio/wav")},
        data={
            "model": "whisper-1",
            "response_format": "verbose_json",
            "timestamp_granularities[]": ["word", "segment"],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert response.headers["x-hush-variant"] == "whisper-base"
    assert "language en detected by whisper-base" in response.headers["x-hush-route-reason"]
    assert body["language"] == "english"
    assert cer(JFK_TEXT, body["text"]) <= MAX_CER, body["text"]
    assert body["segments"][-1]["end"] == pytest.approx(11.0, abs=1.0)
    words = body["words"]
    assert all(word["word"] == word["word"].strip() for word in words)
    assert cer(JFK_TEXT, " ".join(word["word"] for word in words)) <= MAX_CER
    starts = [word["start"] for word in words]
    assert starts == sorted(starts) and starts[0] >= 0 and words[-1]["end"] <= 11.1
    assert all(word["end"] >= word["start"] for word in words)


def test_auto_routing_serves_english_too(client: TestClient) -> None:
    audio = (DATA / "jfk.wav").read_bytes()
    response = client.post(
        "/v1/audio/transcriptions", files={"file": ("jfk.wav", audio, "audio/wav")}, data={"model": "auto"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-hush-variant"] in {"whisper-base", "whisper-tiny.en"}
    assert cer(JFK_TEXT, response.json()["text"]) <= 0.1
