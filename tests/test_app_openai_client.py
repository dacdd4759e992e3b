"""The official ``openai`` client against a live uvicorn on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from app.main import create_app
from model_store.store import ModelStore
from tests.app_support import DATA, StubOpener, live_server, publish_fake_variant, server_settings

pytestmark = pytest.mark.timeout(120)

API_KEY = "test-key"
JFK = DATA / "jfk.wav"


@pytest.fixture(scope="module")
def base_url(tiny_store: ModelStore) -> Iterator[str]:
    settings = server_settings(tiny_store.root, api_keys=[API_KEY])
    with live_server(create_app(settings, tiny_store)) as url:
        yield url


@pytest.fixture(scope="module")
def client(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def test_transcription_verbose_json_with_headers(client: openai.OpenAI) -> None:
    with JFK.open("rb") as audio:
        raw = client.audio.transcriptions.with_raw_response.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
            language="en",
        )
    assert raw.headers["x-hush-variant"] == "tiny-random"
    assert raw.headers["x-request-id"]
    transcript = raw.parse()
    assert transcript.language == "english"
    assert transcript.duration == pytest.approx(11.0, abs=0.01)
    assert transcript.segments and transcript.segments[0].end > transcript.segments[0].start


def test_text_and_models(client: openai.OpenAI) -> None:
    with JFK.open("rb") as audio:
        text = client.audio.transcriptions.create(
            model="auto", file=audio, response_format="text", language="en"
        )
    assert isinstance(text, str) and text.strip()
    assert [model.id for model in client.models.list()] == ["tiny-random", "whisper-1", "auto"]
    assert client.models.retrieve("tiny-random").owned_by == "hush"
    assert client.models.retrieve("whisper-1").model_extra == {"alias_of": "auto"}


def test_errors_become_the_clients_exceptions(client: openai.OpenAI, base_url: str) -> None:
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{base_url}/v1", api_key="wrong", max_retries=0).models.list()
    with pytest.raises(openai.NotFoundError) as not_found, JFK.open("rb") as audio:
        client.audio.transcriptions.create(model="whisper-huge", file=audio)
    assert not_found.value.code == "model_not_found"
    with pytest.raises(openai.APIStatusError) as unsupported:
        client.audio.transcriptions.create(model="auto", file=("notes.txt", b"just some text" * 100))
    assert unsupported.value.status_code == 415
    assert unsupported.value.code == "unsupported_audio_format"
    with pytest.raises(openai.BadRequestError) as bad, JFK.open("rb") as audio:
        client.audio.transcriptions.create(model="auto", file=audio, language="xx")
    assert bad.value.code == "unsupported_language"


def test_json_translation_and_words_from_a_stub_server(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    publish_fake_variant(store, "stub-a", cer={"en": 0.1}, ms_per_audio_second=10.0)
    with live_server(create_app(server_settings(store.root), store, opener=StubOpener())) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with JFK.open("rb") as audio:
            assert client.audio.transcriptions.create(model="whisper-1", file=audio).text == "hello world"
        with JFK.open("rb") as audio:
            words = client.audio.transcriptions.create(
                model="stub-a", file=audio, response_format="verbose_json", timestamp_granularities=["word"]
            )
        assert [word.word for word in words.words or []] == ["hello", "world"]
        with JFK.open("rb") as audio:
            assert client.audio.translations.create(model="whisper-1", file=audio).text == "hello world"
