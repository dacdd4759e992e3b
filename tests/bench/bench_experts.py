"""Language-experts benchmark: latency of variants on the same clips, and how often the hard gates open.

    python -m tests.bench.bench_experts whisper-base whisper-base-clsr-r16-dec-kd-cs-nl --languages cs,nl

Every variant transcribes the same first ``--clips`` dev utterances of each language (greedy, the
language given, no conditioning: the evaluation's options) in one process, ``--rounds`` rounds that
visit the variants in turn, so a noisy minute slows every variant rather than one. Reported: median
milliseconds of compute per audio second, the ratio to the first variant, and for an experts variant
the fraction of (token, layer) hard-gate decisions that chose the expert while decoding freely.

Not a test: numbers depend on the machine. A table is printed on stdout.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence

from compression.data.corpus import Utterance
from compression.evaluation.cli import find_corpus
from compression.evaluation.runner import evaluation_options
from model_store.backends.experts.transcriber import ExpertsTranscriber
from model_store.opener import open_variant
from model_store.settings import HushSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Transcriber


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("variants", nargs="+", help="variant ids; the first is the reference")
    parser.add_argument("--languages", default="cs,nl")
    parser.add_argument("--clips", type=int, default=4, help="dev utterances per language")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    settings = HushSettings()
    store = ModelStore(settings.store.root)
    corpus = find_corpus(settings)
    languages = args.languages.split(",")
    clips: list[Utterance] = []
    for language in languages:
        clips += corpus.utterances("dev", [language])[: args.clips]
    audio = [(clip.load_audio(), clip.language) for clip in clips]
    seconds = sum(len(samples) for samples, _ in audio) / SAMPLE_RATE
    opened: dict[str, Transcriber] = {
        variant: open_variant(store, variant, settings.runtime) for variant in args.variants
    }
    for transcriber in opened.values():  # warm-up
        transcriber.transcribe(audio[0][0], evaluation_options(audio[0][1]))
        if isinstance(transcriber, ExpertsTranscriber):
            transcriber.experts.control.reset_statistics()
    timings: dict[str, list[float]] = {variant: [] for variant in args.variants}
    for _ in range(args.rounds):
        for variant, transcriber in opened.items():
            started = time.perf_counter()
            for samples, language in audio:
                transcriber.transcribe(samples, evaluation_options(language))
            timings[variant].append(1000 * (time.perf_counter() - started) / seconds)
    reference = statistics.median(timings[args.variants[0]])
    print(
        f"{len(audio)} clips ({seconds:.1f} s of {', '.join(languages)} dev audio), {args.rounds} rounds, "
        f"{settings.runtime.threads or 'default'} threads"
    )
    print(f"{'variant':<48} {'ms/audio-s':>10} {'vs first':>9} {'gate open':>10}")
    for variant, transcriber in opened.items():
        median = statistics.median(timings[variant])
        gate = (
            transcriber.experts.control.mean_gate_opening()
            if isinstance(transcriber, ExpertsTranscriber)
            else None
        )
        gate_text = "-" if gate is None else f"{gate:.3f}"
        print(f"{variant:<48} {median:>10.1f} {median / reference:>8.2f}x {gate_text:>10}")


if __name__ == "__main__":
    main()
