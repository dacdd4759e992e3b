"""Dynamic batching benchmark: server throughput at 1, 4 and 16 clients with batching off and on.

    HUSH_HOME=.hush python -m tests.bench.bench_batching --store .hush/store   # CPU, 1 thread, ~4 min
    python -m tests.bench.bench_batching --store .hush/store --threads 0 --requests 64   # on a GPU

For each mode (``--modes off,on``) it starts hush under uvicorn on a loopback port, pinned to one
variant (default whisper-base-ct2-int8), and at each level N runs N clients that together send the
same ``--requests`` dev clips (from the newest corpus under HUSH_HOME, one per language in turn,
languages given), each client its own clips one after another: every level transcribes the same
audio. It prints requests/s, audio seconds/s, latency p50/p95, the mean batch size of the encoder and
decoder calls (from the server's own ``hush_batch_size`` histogram), the speed-up over the unbatched
run at the same level, and how many responses have exactly the text of their clip sent alone to the
first mode's server.

Decoding is greedy by default (``--temperatures 0``): a window that falls back to sampling draws from
CTranslate2's random stream, which is not reproducible across requests (batched or not), so only
greedy output can be compared exactly.

Not a test: numbers depend on the machine. A table is printed on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from app.main import create_app
from app.settings import ServerSettings
from compression.data.corpus import Corpus, newest_corpus
from model_store.settings import HushSettings
from model_store.store import ModelStore
from model_store.window_decoding import WindowDecoding
from tests.app_support import live_server, wait_until
from tests.bench.bench_server import percentile

DEFAULT_VARIANT = "whisper-base-ct2-int8"
STAGES = ("encode", "decode")


@dataclass(frozen=True)
class Clip:
    filename: str
    language: str
    data: bytes  # the corpus's FLAC file, as a client would upload it
    seconds: float


@dataclass(frozen=True)
class Reply:
    clip: int
    latency_s: float
    text: str | None  # None: the request failed


@dataclass(frozen=True)
class Level:
    mode: str
    clients: int
    replies: list[Reply]
    wall_s: float
    audio_s: float
    mean_batch: dict[str, float]


def dev_clips(count: int, max_seconds: float) -> list[Clip]:
    """``count`` dev utterances of the newest corpus, taking languages in turn (all under ``max_seconds``)."""
    root = newest_corpus(HushSettings().corpus_root)
    if root is None:
        raise SystemExit("no corpus under HUSH_HOME: build one with `hush data build`")
    corpus = Corpus.open(root)
    by_language: dict[str, list[Clip]] = {}
    for utterance in corpus.utterances("dev"):
        if 1.0 <= utterance.duration <= max_seconds:
            path = utterance.audio_path
            clip = Clip(path.name, utterance.language, path.read_bytes(), utterance.duration)
            by_language.setdefault(utterance.language, []).append(clip)
    chosen: list[Clip] = []
    while len(chosen) < count and any(by_language.values()):
        for clips in by_language.values():
            if clips and len(chosen) < count:
                chosen.append(clips.pop(0))
    return chosen


def batch_totals(base_url: str) -> dict[str, tuple[float, float]]:
    """(sum, count) of ``hush_batch_size`` per stage, over every variant."""
    totals = dict.fromkeys(STAGES, (0.0, 0.0))
    text = httpx.get(f"{base_url}/metrics", timeout=30).text
    for family in text_string_to_metric_families(text):
        if family.name != "hush_batch_size":
            continue
        for sample in family.samples:
            stage = sample.labels.get("stage", "")
            if stage in totals and sample.name.endswith(("_sum", "_count")):
                total, count = totals[stage]
                if sample.name.endswith("_sum"):
                    totals[stage] = (total + sample.value, count)
                else:
                    totals[stage] = (total, count + sample.value)
    return totals


def send(client: httpx.Client, clips: Sequence[Clip], index: int, model: str) -> Reply:
    clip = clips[index]
    started = time.perf_counter()
    response = client.post(
        "/v1/audio/transcriptions",
        files={"file": (clip.filename, clip.data, "application/octet-stream")},
        data={"model": model, "language": clip.language, "response_format": "json"},
    )
    latency = time.perf_counter() - started
    text = str(response.json()["text"]) if response.status_code == 200 else None
    return Reply(index, latency, text)


def run_level(
    base_url: str, mode: str, clips: Sequence[Clip], model: str, clients: int, requests: int
) -> Level:
    """Requests ``0 .. requests-1`` (clip ``r mod len(clips)``), client ``c`` sending ``c, c + clients, ...``."""

    def session(client_index: int) -> list[Reply]:
        with httpx.Client(base_url=base_url, timeout=600) as client:
            return [
                send(client, clips, request % len(clips), model)
                for request in range(client_index, requests, clients)
            ]

    before = batch_totals(base_url)
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        replies = [reply for replies in pool.map(session, range(clients)) for reply in replies]
    wall = time.perf_counter() - started
    after = batch_totals(base_url)
    mean_batch = {}
    for stage in STAGES:
        total, count = (after[stage][0] - before[stage][0], after[stage][1] - before[stage][1])
        mean_batch[stage] = total / count if count else 1.0
    audio = sum(clips[reply.clip].seconds for reply in replies)
    return Level(mode, clients, replies, wall, audio, mean_batch)


def is_ready(base_url: str) -> bool:
    return httpx.get(f"{base_url}/readyz").status_code == 200


def server_settings(store: ModelStore, mode: str, args: argparse.Namespace) -> ServerSettings:
    levels = [int(level) for level in args.levels.split(",")]
    return ServerSettings(
        store={"root": store.root, "verify_on_open": False},
        runtime={
            "threads": args.threads,
            "batching": {"mode": mode, "max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms},
        },
        server={
            "workers": args.workers,
            "queue_size": max(levels) * 2,
            "store_poll_seconds": 0,
            "default_variants": [args.model],
            "temperatures": [float(t) for t in args.temperatures.split(",")],
        },
    )


def measure(
    store: ModelStore, args: argparse.Namespace, clips: Sequence[Clip]
) -> tuple[list[Level], dict[int, str]]:
    """Every mode's server runs at once; each level is measured mode after mode (round after round), so
    that a noisy minute on a shared machine slows every mode alike. Also returns each clip's text sent
    alone to the first mode's server."""
    modes = args.modes.split(",")
    levels = [int(level) for level in args.levels.split(",")]
    with contextlib.ExitStack() as stack:
        urls = {
            mode: stack.enter_context(live_server(create_app(server_settings(store, mode, args), store)))
            for mode in modes
        }
        for mode, base_url in urls.items():
            wait_until(partial(is_ready, base_url), timeout=300, what=f"{mode} readiness")
            with httpx.Client(base_url=base_url, timeout=600) as client:
                send(client, clips, 0, args.model)  # warm-up
        with httpx.Client(base_url=urls[modes[0]], timeout=600) as client:
            single = [send(client, clips, index, args.model) for index in range(len(clips))]
        measured: list[Level] = []
        for clients in levels:
            for _ in range(args.rounds):
                for mode, base_url in urls.items():
                    measured.append(run_level(base_url, mode, clips, args.model, clients, args.requests))
            print(f"  {clients} clients: done", flush=True)
    return measured, {reply.clip: reply.text for reply in single if reply.text is not None}


def engine_timings(store: ModelStore, args: argparse.Namespace, clips: Sequence[Clip]) -> list[str]:
    """The engine alone, no server: ``--engine-batch`` windows encoded and decoded (greedy, language
    given) one by one, then as one batch; best of ``--rounds``."""
    from model_store.audio import decode_audio
    from model_store.backends.ctranslate2_backend import CTranslate2WindowDecoder
    from model_store.features import log_mel, window
    from model_store.opener import open_variant
    from model_store.settings import RuntimeSettings

    runtime = RuntimeSettings(threads=args.threads, batching={"mode": "off"})
    transcriber = open_variant(store, args.model, runtime, verify=False)
    decoder = getattr(transcriber, "_decoder", None)
    if not isinstance(decoder, CTranslate2WindowDecoder):
        raise SystemExit(f"--engine-only times CTranslate2 variants; {args.model} is not one")
    chosen = list(clips[: args.engine_batch])
    windows = [window(log_mel(decode_audio(clip.data), int(decoder.model.n_mels)), 0) for clip in chosen]
    tokens = decoder.tokens
    prompts = [[tokens.sot, tokens.languages[clip.language], tokens.transcribe] for clip in chosen]
    decoding = WindowDecoding(temperature=0.0, max_new_tokens=224, with_timestamps=True)
    greedy = partial(decoder.decode, decoding=decoding)
    greedy_batch = partial(decoder.decode_batch, decodings=[decoding] * len(prompts))

    def best(work: Callable[[], object]) -> float:
        seconds = []
        for _ in range(args.rounds):
            started = time.perf_counter()
            work()
            seconds.append(time.perf_counter() - started)
        return min(seconds)

    encoded = decoder.encode_batch(windows)
    one_by_one = [
        best(lambda: [decoder.encode(features) for features in windows]),
        best(lambda: [greedy(e, p) for e, p in zip(encoded, prompts, strict=True)]),
    ]
    batched = [
        best(lambda: decoder.encode_batch(windows)),
        best(lambda: greedy_batch(encoded, prompts)),
    ]
    transcriber.close()
    lines = [f"engine only, {len(chosen)} windows, best of {args.rounds}: one by one vs one batch"]
    for stage, alone, together in zip(("encode", "decode"), one_by_one, batched, strict=True):
        lines.append(f"  {stage}: {alone:6.2f} s vs {together:6.2f} s ({alone / together:.2f}x)")
    return lines


def report(results: Sequence[Level], reference: dict[int, str]) -> list[str]:
    unbatched: dict[int, Level] = {}  # the latest unbatched measurement of each level
    lines = [
        f"{'mode':<4} {'clients':>7} {'requests':>8} {'errors':>6} {'req/s':>7} {'audio s/s':>9} "
        f"{'p50 ms':>8} {'p95 ms':>8} {'enc batch':>9} {'dec batch':>9} {'vs off':>6} {'same text':>9}"
    ]
    for level in results:
        latencies = [reply.latency_s * 1000 for reply in level.replies]
        errors = sum(reply.text is None for reply in level.replies)
        rate = len(level.replies) / level.wall_s
        if level.mode == "off":
            unbatched[level.clients] = level
        off = unbatched.get(level.clients)
        speedup = f"{rate / (len(off.replies) / off.wall_s):.2f}x" if off is not None else "-"
        compared = [reply for reply in level.replies if reply.clip in reference]
        same = sum(reply.text == reference[reply.clip] for reply in compared)
        lines.append(
            f"{level.mode:<4} {level.clients:>7} {len(level.replies):>8} {errors:>6} {rate:>7.2f} "
            f"{level.audio_s / level.wall_s:>9.2f} {statistics.median(latencies):>8.0f} "
            f"{percentile(latencies, 0.95):>8.0f} {level.mean_batch['encode']:>9.2f} "
            f"{level.mean_batch['decode']:>9.2f} {speedup:>6} {same:>4}/{len(compared):<4}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, default=None, help="model store (default: HUSH_STORE__ROOT)")
    parser.add_argument("--model", default=DEFAULT_VARIANT, help="variant to pin")
    parser.add_argument("--modes", default="off,on", help="runtime.batching.mode values to compare")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=16, help="requests per level (all clients)")
    parser.add_argument("--rounds", type=int, default=1, help="measurements of each level and mode")
    parser.add_argument("--engine-only", action="store_true", help="time the engine's batches, no server")
    parser.add_argument("--engine-batch", type=int, default=4, help="windows per batch with --engine-only")
    parser.add_argument("--clips", type=int, default=16, help="different dev clips sent")
    parser.add_argument(
        "--temperatures", default="0", help="server.temperatures (greedy by default: see above)"
    )
    parser.add_argument("--max-seconds", type=float, default=30.0, help="longest clip (one window)")
    parser.add_argument("--threads", type=int, default=1, help="engine threads (runtime.threads; 0: default)")
    parser.add_argument("--workers", type=int, default=1, help="server.workers (raised to max_batch when on)")
    parser.add_argument("--max-batch", type=int, default=16, help="runtime.batching.max_batch")
    parser.add_argument("--max-wait-ms", type=float, default=5.0, help="runtime.batching.max_wait_ms")
    args = parser.parse_args(argv)

    store = ModelStore(args.store or HushSettings().store.root)
    clips = dev_clips(args.clips, args.max_seconds)
    print(
        f"{len(clips)} dev clips ({sum(c.seconds for c in clips):.0f} s, "
        f"{len({c.language for c in clips})} languages), model {args.model}, threads {args.threads}, "
        f"max_batch {args.max_batch}, max_wait_ms {args.max_wait_ms:g}, temperatures {args.temperatures}, "
        f"{args.requests} requests per level",
        flush=True,
    )
    if args.engine_only:
        print("\n".join(engine_timings(store, args, clips)))
        return
    results, reference = measure(store, args, clips)
    print("\n".join(report(results, reference)))


if __name__ == "__main__":
    main()
