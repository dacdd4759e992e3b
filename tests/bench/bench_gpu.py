"""GPU check and benchmark: a float parent and its GPU-capable variants on CUDA, and dynamic batching.

On a machine with the corpus, export a few dev clips per language (decoded, so that the GPU machine
needs no audio decoder and no corpus)::

    HUSH_HOME=.hush python -m tests.bench.bench_gpu export-clips clips.npz --per-language 3

On the GPU machine, with the parent (whisper-base) in a store::

    python -m tests.bench.bench_gpu run --store STORE --clips clips.npz --out results.json

(``--device cpu`` runs the same on the CPU, without the GPU-only fp16 and bf16.)

``run`` makes the fp16, bf16, bnb-int8 and bnb-nf4 variants of the parent (those not in the store
yet), then for the parent in float32 and each variant, opened on CUDA with batching off: CER per
language on the clips (greedy, language given, as ``hush eval``), median ms per audio-second, peak
GPU memory (``torch.cuda.max_memory_allocated``) and size on disk. Then dynamic batching on the fp16
variant: ``--requests`` clips sent by 1 and by 16 concurrent callers, batching off and on,
throughput in audio-seconds per second and how many outputs equal the lone, unbatched ones.
The callers share one opened variant, as the server's worker threads do; HTTP is not involved (its
overhead is measured on the CPU by ``tests.bench.bench_server``).

Not a test: the numbers depend on the machine. ``--deadline-s`` skips what would not finish in time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from compression.quantize.methods import method_named, quantize_variant, variant_id_for
from model_store.opener import open_variant
from model_store.scoring import score_utterance, summarize
from model_store.settings import BatchingSettings, RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Audio, TranscribeOptions, Transcriber
from model_store.window_decoding import WindowDecoding

GPU_METHODS = ("fp16", "bf16", "bnb-int8", "bnb-nf4")
BATCH_LEVELS = (1, 4, 16)


@dataclass(frozen=True)
class Clip:
    id: str
    language: str
    text: str
    audio: Audio

    @property
    def seconds(self) -> float:
        return len(self.audio) / SAMPLE_RATE

    @property
    def options(self) -> TranscribeOptions:
        # hush eval's decoding (compression.evaluation.runner.evaluation_options): greedy, language given
        return TranscribeOptions(
            language=self.language, condition_on_previous_text=False, temperatures=(0.0,)
        )


def export_clips(path: Path, per_language: int) -> None:
    """The first ``per_language`` dev utterances of each language of the newest corpus, as 16-bit PCM."""
    from compression.data.corpus import Corpus, newest_corpus
    from model_store.settings import HushSettings

    root = newest_corpus(HushSettings().corpus_root)
    if root is None:
        raise SystemExit("no corpus: run `hush data build` first")
    taken: dict[str, int] = {}
    meta, chunks = [], []
    for utterance in Corpus.open(root).utterances("dev"):
        if taken.get(utterance.language, 0) >= per_language:
            continue
        taken[utterance.language] = taken.get(utterance.language, 0) + 1
        audio = utterance.load_audio()
        chunks.append(np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16))
        meta.append({"id": utterance.id, "language": utterance.language, "text": utterance.text})
    offsets = np.cumsum([0, *(len(chunk) for chunk in chunks)])
    np.savez_compressed(path, audio=np.concatenate(chunks), offsets=offsets, meta=json.dumps(meta))
    print(f"{len(meta)} clips, {offsets[-1] / SAMPLE_RATE:.0f} s of audio -> {path}")


def load_clips(path: Path) -> list[Clip]:
    data = np.load(path)
    audio, offsets = data["audio"], data["offsets"]
    return [
        Clip(item["id"], item["language"], item["text"], audio[start:end].astype(np.float32) / 32767)
        for item, start, end in zip(json.loads(str(data["meta"])), offsets[:-1], offsets[1:], strict=True)
    ]


def runtime_on(
    device: str,
    *,
    batching: str = "off",
    dtype: str = "float16",
    max_wait_ms: float = 5.0,
    decoder: str = "continuous",
) -> RuntimeSettings:
    return RuntimeSettings(
        device=device,
        cuda_dtype=dtype,
        batching=BatchingSettings(mode=batching, max_batch=16, max_wait_ms=max_wait_ms, decoder=decoder),
    )


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def disk_mb(store: ModelStore, variant_id: str) -> float:
    return sum(file.stat().st_size for file in store.path(variant_id).rglob("*") if file.is_file()) / 1e6


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    synchronize()
    started = time.perf_counter()
    result = call()
    synchronize()
    return result, time.perf_counter() - started


def measure(
    store: ModelStore, variant_id: str, clips: Sequence[Clip], runtime: RuntimeSettings
) -> dict[str, Any]:
    """Accuracy, speed and memory of one variant on the clips, one request at a time."""
    on_gpu = runtime.device == "cuda"
    held_before = 0
    if on_gpu:  # the peak is counted above what was already allocated (earlier runs' leftovers)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        held_before = torch.cuda.memory_allocated()
    transcriber, load_s = timed(lambda: open_variant(store, variant_id, runtime))
    try:
        transcriber.transcribe(clips[0].audio, clips[0].options)  # warm-up: kernels, allocator
        texts, ms_per_second = {}, []
        for clip in clips:
            result, seconds = timed(partial(transcriber.transcribe, clip.audio, clip.options))
            texts[clip.id] = result.text
            ms_per_second.append(1000 * seconds / clip.seconds)
        peak_mib = (torch.cuda.max_memory_allocated() - held_before) / 2**20 if on_gpu else None
    finally:
        transcriber.close()
    scores = [
        score
        for clip in clips
        if (score := score_utterance(clip.id, clip.language, clip.text, texts[clip.id])) is not None
    ]
    cer = {language: summary.cer for language, summary in sorted(summarize(scores).items())}
    manifest = store.get(variant_id)
    return {
        "variant": variant_id,
        "weights": manifest.dtype,
        "compute": manifest.dtype
        if manifest.device == "cuda"
        else runtime.cuda_dtype
        if on_gpu
        else "float32",
        "disk_mb": round(disk_mb(store, variant_id), 1),
        "load_s": round(load_s, 2),
        "ms_per_audio_s": round(statistics.median(ms_per_second), 2),
        "peak_gpu_mib": None if peak_mib is None else round(peak_mib),
        "held_before_mib": round(held_before / 2**20),
        "mean_cer": round(statistics.fmean(cer.values()), 4),
        "cer": {language: round(value, 4) for language, value in cer.items()},
        "texts": texts,
    }


def run_clients(transcriber: Transcriber, clips: Sequence[Clip], clients: int) -> tuple[list[str], float]:
    """``clients`` callers share the clips (caller i takes every clients-th one, in order)."""
    texts: list[str] = [""] * len(clips)

    def caller(first: int) -> None:
        for index in range(first, len(clips), clients):
            texts[index] = transcriber.transcribe(clips[index].audio, clips[index].options).text

    def all_callers() -> None:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(caller, range(clients)))

    _, seconds = timed(all_callers)
    return texts, seconds


def batching(
    store: ModelStore,
    variant_id: str,
    clips: Sequence[Clip],
    device: str,
    waits_ms: Sequence[float],
    decoders: Sequence[str] = ("static", "continuous"),
) -> list[dict[str, Any]]:
    """One caller unbatched (the reference output and speed), then 1, 4 and 16 callers batched with
    each decoder batching and each bound on the batcher's wait. For the continuous decoder, "decode
    calls" counts its steps and "mean decode batch" the rows a step ran."""
    audio_seconds = sum(clip.seconds for clip in clips)
    rows: list[dict[str, Any]] = []
    alone: list[str] = []
    plans = [("off", "static", 0.0), *(("on", decoder, wait) for decoder in decoders for wait in waits_ms)]
    for mode, decoder, wait_ms in plans:
        runtime = runtime_on(device, batching=mode, max_wait_ms=wait_ms, decoder=decoder)
        transcriber = open_variant(store, variant_id, runtime)
        try:
            transcriber.transcribe(clips[0].audio, clips[0].options)  # warm-up
            for clients in BATCH_LEVELS if mode == "on" else (1,):
                decode_sizes: list[int] = []

                def record(stage: str, size: int, _waited: float, sizes: list[int] = decode_sizes) -> None:
                    if stage == "decode":
                        sizes.append(size)

                transcriber.observe_batches(record)  # type: ignore[attr-defined]
                texts, seconds = run_clients(transcriber, clips, clients)
                alone = alone or texts  # the first run: batching off, one caller
                rows.append(
                    {
                        "batching": mode if mode == "off" else f"on, {decoder}, wait {wait_ms:g} ms",
                        "clients": clients,
                        "seconds": round(seconds, 2),
                        "audio_s_per_s": round(audio_seconds / seconds, 1),
                        "same_as_alone": sum(a == b for a, b in zip(texts, alone, strict=True)),
                        "requests": len(clips),
                        "decode_calls": len(decode_sizes),
                        "mean_decode_batch": round(statistics.fmean(decode_sizes), 2)
                        if decode_sizes
                        else None,
                    }
                )
                print(json.dumps(rows[-1]), flush=True)
        finally:
            transcriber.close()
    return rows


def step_times(store: ModelStore, variant_id: str, clip: Clip, device: str) -> list[dict[str, Any]]:
    """Milliseconds per decoding step of ``decode_batch`` on N copies of one window: how a step's cost
    grows with the batch (every row has the same length, so the step count is that of one). Each
    batch shape is run once untimed first (kernel selection, allocator); pass a long clip."""
    from model_store.features import log_mel_spectrogram, window

    transcriber = open_variant(store, variant_id, runtime_on(device))
    rows = []
    try:
        decoder = transcriber._decoder  # type: ignore[attr-defined]
        tokens = decoder.tokens
        encoded = decoder.encode(window(log_mel_spectrogram(clip.audio, 80), 0))
        prompt = [tokens.sot, tokens.languages[clip.language], tokens.transcribe]
        for size in (1, 4, 16):
            call = partial(
                decoder.decode_batch,
                [encoded] * size,
                [prompt] * size,
                [WindowDecoding(temperature=0.0, max_new_tokens=100, with_timestamps=True)] * size,
            )
            timed(call)  # warm-up at this shape
            decoded, seconds = timed(call)
            steps = len(decoded[0][0]) + 1
            rows.append({"rows": size, "steps": steps, "ms_per_step": round(1000 * seconds / steps, 2)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        transcriber.close()
    return rows


def print_tables(results: Sequence[dict[str, Any]], batches: Sequence[dict[str, Any]]) -> None:
    if results:
        languages = sorted({language for row in results for language in row["cer"]})
        print(
            "\n| variant | weights | compute | disk MB | ms / audio-s | peak GPU MiB | mean CER | "
            + " | ".join(languages)
            + " |"
        )
        print("|---" * (7 + len(languages)) + "|")
        for row in results:
            cells = [f"{row['cer'].get(language, float('nan')):.3f}" for language in languages]
            print(
                f"| {row['variant']} | {row['weights']} | {row['compute']} | {row['disk_mb']} | {row['ms_per_audio_s']} | "
                f"{row['peak_gpu_mib']} | {row['mean_cer']:.4f} | " + " | ".join(cells) + " |"
            )
    if batches:
        base = {row["clients"]: row["audio_s_per_s"] for row in batches if row["batching"] == "off"}
        print(
            "\n| batching | clients | requests | seconds | audio-s / s | vs 1 client unbatched | "
            "same text as alone | decode calls | mean decode batch |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for row in batches:
            print(
                f"| {row['batching']} | {row['clients']} | {row['requests']} | {row['seconds']} | "
                f"{row['audio_s_per_s']} | {row['audio_s_per_s'] / base[1]:.2f}x | "
                f"{row['same_as_alone']}/{row['requests']} | {row['decode_calls']} | {row['mean_decode_batch']} |"
            )


def run(arguments: argparse.Namespace) -> None:
    device = arguments.device
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: pass --device cpu for the CPU-capable methods only")
    started = time.monotonic()

    def time_left() -> float:
        return arguments.deadline_s - (time.monotonic() - started)

    store = ModelStore(arguments.store)
    clips = load_clips(arguments.clips)[: arguments.limit]
    machine = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"{machine}, torch {torch.__version__}, {len(clips)} clips", flush=True)
    results: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    out: Path = arguments.out

    def save() -> None:
        out.write_text(json.dumps({"variants": results, "batching": batches}, indent=1))

    plan: list[tuple[str, RuntimeSettings]] = [(arguments.parent, runtime_on(device, dtype="float32"))]
    if arguments.batching_only:
        plan = []
    for method in GPU_METHODS:
        if arguments.batching_only and method != "fp16":
            continue
        if device == "cpu" and method_named(method).device == "cuda":
            continue
        variant_id = variant_id_for(arguments.parent, method)
        if not store.exists(variant_id):
            _, seconds = timed(partial(quantize_variant, store, arguments.parent, method))
            print(f"made {variant_id} in {seconds:.1f} s", flush=True)
        if not arguments.batching_only:
            plan.append((variant_id, runtime_on(device)))
    batched = variant_id_for(arguments.parent, "fp16") if device == "cuda" else arguments.parent
    waits = [float(wait) for wait in arguments.max_wait_ms.split(",")]
    decoders = arguments.decoders.split(",")
    batch_clips = [clips[index % len(clips)] for index in range(arguments.requests)]
    for variant_id, runtime in plan:
        if time_left() < arguments.reserve_s:
            print(f"skipped {variant_id}: {time_left():.0f} s left", flush=True)
            continue
        row = measure(store, variant_id, clips, runtime)
        results.append(row)
        print(json.dumps({key: value for key, value in row.items() if key != "texts"}), flush=True)
        save()
        if variant_id == batched and not batches:  # batching right after its variant's row
            batches = batching(store, batched, batch_clips, device, waits, decoders)
            save()
    if arguments.step_bench:
        longest = max((clip for clip in clips if clip.seconds <= 30), key=lambda clip: clip.seconds)
        steps = step_times(store, batched, longest, device)
        out.with_name("steps.json").write_text(json.dumps(steps))
    if arguments.batching_only:
        batches = batching(store, batched, batch_clips, device, waits, decoders)
        save()
    print_tables(results, batches)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    export = commands.add_parser("export-clips", help="decode dev clips into an .npz (needs the corpus)")
    export.add_argument("path", type=Path)
    export.add_argument("--per-language", type=int, default=3)
    bench = commands.add_parser("run", help="measure on CUDA")
    bench.add_argument("--store", type=Path, required=True)
    bench.add_argument("--clips", type=Path, required=True)
    bench.add_argument("--parent", default="whisper-base")
    bench.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    bench.add_argument("--batching-only", action="store_true", help="skip the per-variant rows")
    bench.add_argument(
        "--max-wait-ms", default="5", help="the batcher's bounds on waiting for company, comma-separated"
    )
    bench.add_argument(
        "--decoders", default="static,continuous", help="decoder batchings to compare, comma-separated"
    )
    bench.add_argument(
        "--step-bench", action="store_true", help="time decoding steps at batch sizes 1, 4, 16"
    )
    bench.add_argument("--limit", type=int, default=None, help="use only the first N clips")
    bench.add_argument(
        "--requests", type=int, default=96, help="clips sent in the batching runs (cycling; 96: steady state)"
    )
    bench.add_argument("--out", type=Path, default=Path("bench_gpu.json"))
    bench.add_argument(
        "--deadline-s", type=float, default=420.0, help="stop starting new variants after this"
    )
    bench.add_argument("--reserve-s", type=float, default=45.0, help="time a variant's row needs at least")
    arguments = parser.parse_args(argv)
    if arguments.command == "export-clips":
        export_clips(arguments.path, arguments.per_language)
    else:
        run(arguments)


if __name__ == "__main__":
    main()
