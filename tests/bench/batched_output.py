"""Does batching keep each request's output? Concurrent requests against the same clips decoded alone.

``python -m tests.bench.batched_output VARIANT [VARIANT ...] --clips 8`` opens each variant three
times (batching off, static decoder batches, continuous batching), sends the same dev clips (one per
language in turn: en, fr, de, es, it, ru, nl, cs; every second one with its language detected) one by
one and then all at once from one thread each, and prints how many batched transcripts equal the lone
ones, the largest log-probability difference, and the seconds each pass took. Needs the corpus.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from compression.data.corpus import Corpus, newest_corpus
from model_store.opener import open_variant
from model_store.settings import BatchingSettings, HushSettings, RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import Audio, TranscribeOptions, Transcription

LANGUAGES = ("en", "fr", "de", "es", "it", "ru", "nl", "cs")


def dev_clips(settings: HushSettings, count: int) -> tuple[list[Audio], list[TranscribeOptions]]:
    root = newest_corpus(settings.corpus_root)
    if root is None:
        raise SystemExit("no corpus: build one with `hush data build`")
    corpus = Corpus.open(root)
    clips: list[Audio] = []
    options: list[TranscribeOptions] = []
    for index in range(count):
        language = LANGUAGES[index % len(LANGUAGES)]
        utterances = [u for u in corpus.utterances("dev", [language]) if u.duration > 2]
        clips.append(utterances[index // len(LANGUAGES)].load_audio())
        options.append(TranscribeOptions(language=language if index % 2 == 0 else None, temperatures=(0.0,)))
    return clips, options


def transcribe(
    store: ModelStore,
    variant_id: str,
    runtime: RuntimeSettings,
    clips: Sequence[Audio],
    options: Sequence[TranscribeOptions],
    *,
    together: bool,
) -> tuple[list[Transcription], float]:
    transcriber = open_variant(store, variant_id, runtime)
    try:
        started = time.perf_counter()
        if not together:
            results = [
                transcriber.transcribe(clip, option) for clip, option in zip(clips, options, strict=True)
            ]
            return results, time.perf_counter() - started
        barrier = threading.Barrier(len(clips))

        def one(index: int) -> Transcription:
            barrier.wait()
            return transcriber.transcribe(clips[index], options[index])

        with ThreadPoolExecutor(len(clips)) as pool:
            results = list(pool.map(one, range(len(clips))))
        return results, time.perf_counter() - started
    finally:
        transcriber.close()


def compare(batched: Sequence[Transcription], alone: Sequence[Transcription]) -> tuple[int, float]:
    same = sum(a.text == b.text for a, b in zip(batched, alone, strict=True))
    gaps = [
        abs(x.avg_logprob - y.avg_logprob)
        for a, b in zip(batched, alone, strict=True)
        if a.text == b.text
        for x, y in zip(a.segments, b.segments, strict=True)
    ]
    return same, max(gaps, default=0.0)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--clips", type=int, default=8)
    parser.add_argument("--threads", type=int, default=1)
    arguments = parser.parse_args(argv)
    settings = HushSettings()
    store = ModelStore(settings.store.root)
    clips, options = dev_clips(settings, arguments.clips)

    def runtime(mode: str, decoder: str = "continuous") -> RuntimeSettings:
        batching = BatchingSettings(mode=mode, max_batch=max(2, len(clips)), decoder=decoder)
        return RuntimeSettings(device="cpu", threads=arguments.threads, batching=batching)

    print(
        "| variant | alone s | static: same text | static: max logprob gap | static s | continuous: same text | continuous: max logprob gap | continuous s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for variant_id in arguments.variants:
        alone, alone_seconds = transcribe(store, variant_id, runtime("off"), clips, options, together=False)
        cells = [variant_id, f"{alone_seconds:.1f}"]
        for decoder in ("static", "continuous"):
            batched, seconds = transcribe(
                store, variant_id, runtime("on", decoder), clips, options, together=True
            )
            same, gap = compare(batched, alone)
            cells += [f"{same}/{len(clips)}", f"{gap:.1e}", f"{seconds:.1f}"]
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
