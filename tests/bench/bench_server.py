"""Server benchmark: HTTP overhead over the transcriber's own time, and throughput under concurrency.

    python -m tests.bench.bench_server                       # tiny random variant (plumbing, ~1 min)
    python -m tests.bench.bench_server --store .hush/store --model whisper-base --requests 8

It starts hush under uvicorn on a loopback port (in this process), then:

1. overhead: the same clip sent by one client, one request at a time. The transcriber's own time is
   measured in-process on the very model object the server uses (same clip, same options), and
   also read back from each response's ``Server-Timing: inference``; overhead is the median HTTP
   latency minus the median direct time (and, per request, latency minus its own inference time).
2. throughput: 1, 4 and 16 concurrent clients (configurable) send the clip; requests/s, audio
   seconds per second, latency p50/p95 and errors per level.

Not a test: numbers depend on the machine. A table is printed on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from app.main import create_app
from app.settings import ServerSettings
from app.state import AppState
from model_store.audio import decode_audio
from model_store.store import ModelStore
from model_store.transcription import DEFAULT_TEMPERATURES, SAMPLE_RATE, Audio, TranscribeOptions, Transcriber
from tests.app_support import live_server, wait_until

DEFAULT_CLIP = Path(__file__).resolve().parents[1] / "data" / "jfk.wav"


@dataclass(frozen=True)
class Sample:
    latency_s: float
    inference_s: float | None
    ok: bool


def server_timing(header: str, stage: str) -> float | None:
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name == stage and duration:
            return float(duration) / 1000
    return None


def send(client: httpx.Client, clip: bytes, model: str, language: str) -> Sample:
    started = time.perf_counter()
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": ("clip.wav", clip, "audio/wav")},
        data={"model": model, "language": language, "response_format": "json"},
    )
    latency = time.perf_counter() - started
    inference = server_timing(response.headers.get("server-timing", ""), "inference")
    return Sample(latency, inference, response.status_code == 200)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def time_direct(transcriber: Transcriber, audio: Audio, options: TranscribeOptions, runs: int) -> list[float]:
    """Seconds of each of ``runs`` transcriptions, called directly."""
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        transcriber.transcribe(audio, options)
        seconds.append(time.perf_counter() - started)
    return seconds


def measure_overhead(
    base_url: str, state: AppState, clip: bytes, model: str, language: str, requests: int
) -> list[str]:
    audio = decode_audio(clip)
    options = TranscribeOptions(language=language, temperatures=state.settings.server.temperatures)
    with httpx.Client(base_url=base_url, timeout=600) as client:
        send(client, clip, model, language)  # warm-up: loads the model
        with state.pool.lease(model) as lease, ThreadPoolExecutor(1) as thread:
            # timed on a thread like the server's workers: torch's thread settings differ on the main one
            transcriber = thread.submit(lease.transcriber).result()
            direct = thread.submit(time_direct, transcriber, audio, options, requests).result()
        samples = [send(client, clip, model, language) for _ in range(requests)]
    assert all(sample.ok for sample in samples), "some requests failed"
    http = statistics.median(sample.latency_s for sample in samples)
    own = statistics.median(direct)
    per_request = statistics.median(s.latency_s - s.inference_s for s in samples if s.inference_s is not None)
    return [
        f"clip {len(audio) / SAMPLE_RATE:.1f} s, model {model}, {requests} requests, single client",
        f"{'median HTTP latency':<44} {http * 1000:9.1f} ms",
        f"{'median transcriber time (direct, in-process)':<44} {own * 1000:9.1f} ms",
        f"{'overhead: HTTP - direct':<44} {(http - own) * 1000:9.1f} ms",
        f"{'overhead: median(latency - own inference)':<44} {per_request * 1000:9.1f} ms",
    ]


def run_level(
    base_url: str, clip: bytes, model: str, language: str, clients: int, per_client: int
) -> list[Sample]:
    """``clients`` threads, each with its own connection, sending ``per_client`` requests one after another."""

    def client_session() -> list[Sample]:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            return [send(client, clip, model, language) for _ in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        sessions = [pool.submit(client_session) for _ in range(clients)]
        return [sample for session in sessions for sample in session.result()]


def measure_throughput(
    base_url: str,
    clip_seconds: float,
    clip: bytes,
    model: str,
    language: str,
    levels: Sequence[int],
    per_client: int,
) -> Iterator[str]:
    yield f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'audio s/s':>9} {'p50 ms':>8} {'p95 ms':>8}"
    for clients in levels:
        started = time.perf_counter()
        samples = run_level(base_url, clip, model, language, clients, per_client)
        wall = time.perf_counter() - started
        latencies = [sample.latency_s * 1000 for sample in samples]
        errors = sum(not sample.ok for sample in samples)
        total = len(samples)
        yield (
            f"{clients:>7} {total:>8} {errors:>6} {total / wall:>7.2f} {total * clip_seconds / wall:>9.2f} "
            f"{statistics.median(latencies):>8.0f} {percentile(latencies, 0.95):>8.0f}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--store", type=Path, help="a model store; default: a temporary one with a tiny variant"
    )
    parser.add_argument("--model", help="variant to pin (default: whisper-base if present, else the first)")
    parser.add_argument("--clip", type=Path, default=DEFAULT_CLIP)
    parser.add_argument("--language", default="en")
    parser.add_argument("--requests", type=int, default=10, help="single-client requests for the overhead")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--per-client", type=int, default=2, help="requests per client at each level")
    parser.add_argument("--workers", type=int, default=1, help="inference threads (server.workers)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (runtime.threads; 0: default)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as scratch:
        temperatures = list(DEFAULT_TEMPERATURES)
        if args.store is None:
            from tests.factories import store_with_tiny_variants

            store = store_with_tiny_variants(Path(scratch) / "store", "tiny-random")
            temperatures = [0.0]  # random weights would fall back through every temperature
        else:
            store = ModelStore(args.store)
        ids = store.ids()
        model = args.model or ("whisper-base" if "whisper-base" in ids else ids[0])
        levels = [int(level) for level in args.levels.split(",")]
        settings = ServerSettings(
            store={"root": store.root},
            runtime={"threads": args.threads},
            server={
                "workers": args.workers,
                "queue_size": max(levels) * 2,
                "store_poll_seconds": 0,
                "default_variants": [model],
                "temperatures": temperatures,
            },
        )
        app = create_app(settings, store)
        clip = args.clip.read_bytes()
        clip_seconds = len(decode_audio(clip)) / SAMPLE_RATE
        with live_server(app) as base_url:
            wait_until(
                lambda: httpx.get(f"{base_url}/readyz").status_code == 200, timeout=300, what="readiness"
            )
            state: AppState = app.state.hush
            print("## overhead")
            print("\n".join(measure_overhead(base_url, state, clip, model, args.language, args.requests)))
            print("\n## throughput")
            print(
                "\n".join(
                    measure_throughput(
                        base_url, clip_seconds, clip, model, args.language, levels, args.per_client
                    )
                )
            )


if __name__ == "__main__":
    main()
