"""Helpers for the server's tests: settings, fake variants with stub transcribers, audio, a live server."""

from __future__ import annotations

import io
import socket
import struct
import threading
import time
import wave
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI

from app.settings import ServerSettings
from model_store.manifest import EvalReport, LanguageScore, Latency, MachineInfo, Manifest, Recipe
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Audio, Segment, TranscribeOptions, Transcription, Word

DATA = Path(__file__).parent / "data"
DEADLINE_SECONDS = 30.0


def wait_until(
    condition: Callable[[], bool], *, timeout: float = DEADLINE_SECONDS, what: str = "condition"
) -> None:
    """Poll ``condition`` until it holds; fail after ``timeout`` seconds (no fixed sleeps in tests)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.01)


def server_settings(root: Path, **server: Any) -> ServerSettings:
    """Settings for a test app: CPU, one thread, one fallback temperature (fast on random weights), no
    store polling."""
    options: dict[str, Any] = {"temperatures": [0.0], "store_poll_seconds": 0}
    options.update(server)
    return ServerSettings(store={"root": root}, runtime={"device": "cpu", "threads": 1}, server=options)


def wav_bytes(seconds: float = 1.0, frequency: float = 440.0) -> bytes:
    """A 16-bit mono WAV of a sine (0 seconds: a valid WAV with no samples)."""
    times = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    samples = (0.3 * np.sin(2 * np.pi * frequency * times) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as output:
        output.setnchannels(1)
        output.setsampwidth(2)
        output.setframerate(SAMPLE_RATE)
        output.writeframes(samples.tobytes())
    return buffer.getvalue()


def float_wav(samples: list[float]) -> bytes:
    """A 32-bit IEEE float mono WAV at 16 kHz holding exactly ``samples`` (NaN and infinities too)."""
    data = np.asarray(samples, dtype="<f4").tobytes()
    header = struct.pack(
        "<4sI4s4sIHHIIHH4sI",
        b"RIFF",
        36 + len(data),
        b"WAVE",
        b"fmt ",
        16,
        3,
        1,
        SAMPLE_RATE,
        SAMPLE_RATE * 4,
        4,
        32,
        b"data",
        len(data),
    )
    return header + data


def score(cer: float) -> LanguageScore:
    edits = round(cer * 1000)
    return LanguageScore(
        utterances=10,
        audio_seconds=60.0,
        cer=cer,
        wer=cer * 2,
        cer_raw=cer,
        wer_raw=cer * 2,
        char_edits=edits,
        ref_chars=1000,
        word_edits=edits // 5,
        ref_words=200,
    )


def eval_report(**cer_by_language: float) -> EvalReport:
    return EvalReport(
        corpus_id="test",
        corpus_sha256="0" * 64,
        split="dev",
        languages={language: score(cer) for language, cer in cer_by_language.items()},
    )


def latency(ms_per_audio_second: float) -> Latency:
    machine = MachineInfo(cpu="test", cores=2, threads=2, torch="2", platform="test")
    return Latency(
        ms_per_audio_second=ms_per_audio_second,
        real_time_factor=ms_per_audio_second / 1000,
        peak_memory_bytes=1,
        load_seconds=0.1,
        runs=1,
        device="cpu",
        machine=machine,
    )


def publish_fake_variant(
    store: ModelStore,
    variant_id: str,
    *,
    parameters: int = 1_000_000,
    cer: dict[str, float] | None = None,
    ms_per_audio_second: float | None = None,
    weights: bytes | None = None,
    **fields: Any,
) -> Manifest:
    """A variant whose 'weights' are one small file: for stub transcribers, published in milliseconds."""
    with store.publish(variant_id) as staging:
        (staging.directory / "weights.bin").write_bytes(weights or variant_id.encode())
        manifest_fields: dict[str, Any] = {
            "parent": None,
            "recipe": Recipe(method="import"),
            "backend": "transformers",
            "device": "cpu",
            "dtype": "float32",
            "parameters": parameters,
            "size_tier": "tiny",
            "multilingual": True,
            "languages": ("*",),
            "eval": eval_report(**cer) if cer else None,
            "latency": latency(ms_per_audio_second) if ms_per_audio_second else None,
        }
        manifest_fields.update(fields)
        return staging.commit(**manifest_fields)


class StubTranscriber:
    """Answers instantly (or when its gate opens) with a fixed transcript, words included when asked."""

    def __init__(self, manifest: Manifest, opener: StubOpener) -> None:
        self.manifest = manifest
        self.opener = opener
        self.closed = False
        self.calls = 0

    def transcribe(self, audio: Audio, options: TranscribeOptions) -> Transcription:
        self.calls += 1
        gate = self.opener.gates.get(self.manifest.id)
        if gate is not None:
            assert gate.wait(DEADLINE_SECONDS), "the test never opened the gate"
        if self.opener.failure is not None:
            raise self.opener.failure
        duration = len(audio) / SAMPLE_RATE
        words = (Word(0.0, 0.4, " hello", 0.9), Word(0.5, min(duration, 0.9), " world", 0.8))
        segment = Segment(
            id=0,
            start=0.0,
            end=round(duration, 3),
            text=" hello world",
            tokens=(1, 2),
            avg_logprob=-0.1,
            compression_ratio=1.2,
            no_speech_prob=0.01,
            temperature=options.temperatures[0],
            words=words if options.word_timestamps else None,
        )
        return Transcription(
            text="hello world",
            segments=(segment,),
            language=options.language or "en",
            language_probability=None,
            duration=duration,
            variant_id=self.manifest.id,
        )

    def detect_language(self, audio: Audio) -> dict[str, float]:
        return dict(self.opener.detected)

    def close(self) -> None:
        self.closed = True


@dataclass
class StubOpener:
    """Opens variants of a store as stub transcribers; gates let a test hold loads or transcriptions."""

    gates: dict[str, threading.Event] = field(default_factory=dict)  # variant id -> transcriptions wait
    load_gate: threading.Event | None = None
    failure: Exception | None = None
    detected: dict[str, float] = field(default_factory=lambda: {"en": 0.9, "de": 0.1})
    opened: list[StubTranscriber] = field(default_factory=list)

    def __call__(
        self, store: ModelStore, variant_id: str, runtime: RuntimeSettings, verify: bool
    ) -> StubTranscriber:
        manifest = store.verify(variant_id) if verify else store.get(variant_id)
        if self.load_gate is not None:
            assert self.load_gate.wait(DEADLINE_SECONDS), "the test never opened the load gate"
        transcriber = StubTranscriber(manifest, self)
        self.opened.append(transcriber)
        return transcriber

    def transcribers(self, variant_id: str) -> list[StubTranscriber]:
        return [transcriber for transcriber in self.opened if transcriber.manifest.id == variant_id]


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def live_server(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), what="uvicorn to start")
        assert server.started, "uvicorn failed to start"
        yield f"http://127.0.0.1:{config.port}"
    finally:
        server.should_exit = True
        thread.join(DEADLINE_SECONDS)
        assert not thread.is_alive(), "uvicorn did not stop"
