"""Server benchmark: HTTP overhead over the transcriber's own time, and throughput under concurrency.

    python -m tests.bench.bench_server                       # tiny random variant (plumbing, ~1 min)
    python -m tests.bench.bench_server --store .hush/store --model whisper-base --requests 8

It starts ``hush serve`` in a process of its own, as it is deployed (a server sharing this process
would share its interpreter lock with the clients, and the clients' Python would count as server
time), then:

1. overhead: the same clip sent by one client, one request at a time, over one keep-alive
   connection, with the multipart body built once (building it is the client's work, not the
   server's). The transcriber's own time is read back from each response's ``Server-Timing:
   inference`` and also measured here, on the same variant loaded in this process with the same
   threads while the server idles; overhead is the median of latency minus each request's own
   inference time (and, as a cross-check, the median latency minus the median direct time).
2. throughput: 1, 4 and 16 concurrent clients (configurable) send the clip; requests/s, audio
   seconds per second, latency p50/p95 and errors per level.

Not a test: numbers depend on the machine. A table is printed on stdout.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from model_store.audio import decode_audio
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import DEFAULT_TEMPERATURES, SAMPLE_RATE, Audio, TranscribeOptions, Transcriber
from tests.app_support import free_port, wait_until

DEFAULT_CLIP = Path(__file__).resolve().parents[1] / "data" / "jfk.wav"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
READY_TIMEOUT_SECONDS = 600


@dataclass(frozen=True)
class Sample:
    latency_s: float
    inference_s: float | None
    ok: bool


@dataclass(frozen=True)
class ServerConfig:
    """What the served process is started with (as ``HUSH_...`` settings)."""

    store_root: Path
    model: str
    threads: int
    workers: int
    queue_size: int
    temperatures: Sequence[float]

    def environment(self) -> dict[str, str]:
        return {
            **os.environ,
            "HUSH_STORE__ROOT": str(self.store_root),
            "HUSH_RUNTIME__THREADS": str(self.threads),
            "HUSH_SERVER__WORKERS": str(self.workers),
            "HUSH_SERVER__QUEUE_SIZE": str(self.queue_size),
            "HUSH_SERVER__STORE_POLL_SECONDS": "0",
            "HUSH_SERVER__DEFAULT_VARIANTS": json.dumps([self.model]),
            "HUSH_SERVER__TEMPERATURES": json.dumps(list(self.temperatures)),
            "HUSH_LOG_LEVEL": "WARNING",
        }


@contextmanager
def served(config: ServerConfig) -> Iterator[str]:
    """``hush serve`` on a free loopback port, in its own process; yields its base URL once ready."""
    port = free_port()
    command = [sys.executable, "-m", "model_store.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    process = subprocess.Popen(command, env=config.environment())
    base_url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"hush serve exited with status {process.returncode}")
        try:
            return httpx.get(f"{base_url}/readyz").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(ready, timeout=READY_TIMEOUT_SECONDS, what="the server's readiness")
        yield base_url
    finally:
        process.terminate()
        process.wait(60)


@dataclass(frozen=True)
class PreparedRequest:
    """A transcription request's multipart body and content type, built once."""

    body: bytes
    content_type: str

    @classmethod
    def of(cls, clip: bytes, model: str, language: str) -> PreparedRequest:
        request = httpx.Request(
            "POST",
            f"http://localhost{TRANSCRIPTIONS}",
            files={"file": ("clip.wav", clip, "audio/wav")},
            data={"model": model, "language": language, "response_format": "json"},
        )
        return cls(request.read(), request.headers["content-type"])


def server_timing(header: str, stage: str) -> float | None:
    for part in header.split(","):
        name, _, duration = part.strip().partition(";dur=")
        if name == stage and duration:
            return float(duration) / 1000
    return None


def send(connection: http.client.HTTPConnection, request: PreparedRequest) -> Sample:
    started = time.perf_counter()
    connection.request(
        "POST", TRANSCRIPTIONS, body=request.body, headers={"Content-Type": request.content_type}
    )
    response = connection.getresponse()
    response.read()
    latency = time.perf_counter() - started
    inference = server_timing(response.getheader("server-timing", ""), "inference")
    return Sample(latency, inference, response.status == 200)


@contextmanager
def connection_to(base_url: str) -> Iterator[http.client.HTTPConnection]:
    host, _, port = base_url.removeprefix("http://").partition(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=600)
    try:
        yield connection
    finally:
        connection.close()


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
    base_url: str, config: ServerConfig, clip: bytes, language: str, requests: int
) -> list[str]:
    audio = decode_audio(clip)
    prepared = PreparedRequest.of(clip, config.model, language)
    with connection_to(base_url) as connection:
        send(connection, prepared)  # warm-up
        samples = [send(connection, prepared) for _ in range(requests)]
    assert all(sample.ok for sample in samples), "some requests failed"
    runtime = RuntimeSettings(threads=config.threads)
    options = TranscribeOptions(language=language, temperatures=tuple(config.temperatures))
    with ThreadPoolExecutor(1) as thread:
        # timed on a thread like the server's workers: torch's thread settings differ on the main one
        transcriber = thread.submit(
            open_variant, ModelStore(config.store_root), config.model, runtime
        ).result()
        thread.submit(transcriber.transcribe, audio, options).result()  # warm-up
        direct = thread.submit(time_direct, transcriber, audio, options, requests).result()
    http_latency = statistics.median(sample.latency_s for sample in samples)
    own = statistics.median(direct)
    served_inference = statistics.median(s.inference_s for s in samples if s.inference_s is not None)
    per_request = statistics.median(s.latency_s - s.inference_s for s in samples if s.inference_s is not None)
    return [
        f"clip {len(audio) / SAMPLE_RATE:.1f} s, model {config.model}, {requests} requests, single client",
        f"{'median HTTP latency':<44} {http_latency * 1000:9.1f} ms",
        f"{'median inference (Server-Timing)':<44} {served_inference * 1000:9.1f} ms",
        f"{'median transcriber time (direct, here)':<44} {own * 1000:9.1f} ms",
        f"{'overhead: median(latency - own inference)':<44} {per_request * 1000:9.1f} ms",
        f"{'overhead: HTTP - direct':<44} {(http_latency - own) * 1000:9.1f} ms",
    ]


def run_level(base_url: str, prepared: PreparedRequest, clients: int, per_client: int) -> list[Sample]:
    """``clients`` threads, each with its own connection, sending ``per_client`` requests one after another."""

    def client_session() -> list[Sample]:
        with connection_to(base_url) as connection:
            return [send(connection, prepared) for _ in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        sessions = [pool.submit(client_session) for _ in range(clients)]
        return [sample for session in sessions for sample in session.result()]


def measure_throughput(
    base_url: str, clip_seconds: float, prepared: PreparedRequest, levels: Sequence[int], per_client: int
) -> Iterator[str]:
    yield f"{'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'audio s/s':>9} {'p50 ms':>8} {'p95 ms':>8}"
    for clients in levels:
        started = time.perf_counter()
        samples = run_level(base_url, prepared, clients, per_client)
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
        temperatures: Sequence[float] = DEFAULT_TEMPERATURES
        if args.store is None:
            from tests.factories import store_with_tiny_variants

            store = store_with_tiny_variants(Path(scratch) / "store", "tiny-random")
            temperatures = (0.0,)  # random weights would fall back through every temperature
        else:
            store = ModelStore(args.store)
        ids = store.ids()
        levels = [int(level) for level in args.levels.split(",")]
        config = ServerConfig(
            store_root=store.root,
            model=args.model or ("whisper-base" if "whisper-base" in ids else ids[0]),
            threads=args.threads,
            workers=args.workers,
            queue_size=max(levels) * 2,
            temperatures=temperatures,
        )
        clip = args.clip.read_bytes()
        clip_seconds = len(decode_audio(clip)) / SAMPLE_RATE
        with served(config) as base_url:
            print("## overhead")
            print("\n".join(measure_overhead(base_url, config, clip, args.language, args.requests)))
            print("\n## throughput")
            prepared = PreparedRequest.of(clip, config.model, args.language)
            print("\n".join(measure_throughput(base_url, clip_seconds, prepared, levels, args.per_client)))


if __name__ == "__main__":
    main()
