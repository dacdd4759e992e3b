"""Quantization benchmark: size, accuracy, speed and memory of a teacher and its CPU variants, with
faster-whisper on the same bundled weights as the speed reference.

    python -m tests.bench.bench_quantize                          # whisper-base, JFK clip, 3 runs
    python -m tests.bench.bench_quantize --store .hush/store --runs 5 --clip a.wav:en --clip b.wav:es
    python -m tests.bench.bench_quantize --store .hush/store --methods ct2-int8 --variant whisper-base-ct2-int8-ctx10

For each row: bytes on disk, CER on the clips (normalised text), milliseconds of compute per second of
audio (median over every timed pass: ``--rounds`` rounds of ``--runs`` passes, each after a warm-up
pass; ``--threads`` threads everywhere) and peak resident memory. Every measurement runs in a fresh
process (this module's ``--worker``: hush's variants are opened and decoded as
``compression.evaluation.latency`` does, with the evaluation's decoding options), and the rounds visit
the rows in turn, so a noisy minute slows every row rather than one; the ratios against
faster-whisper int8, measured in the same run, are what holds on a noisy machine. Decoding is greedy
with Whisper's temperature fallback, the language given, no conditioning on previous text, for hush
and faster-whisper alike. Peak memory is the worker's ``VmHWM`` (``ru_maxrss`` would include the
parent's peak, which Linux carries over ``execve``).

Not a test: numbers depend on the machine. A table is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CLIP = ROOT / "tests" / "data" / "jfk.wav"
DEFAULT_METHODS = ("ptq-int8", "ct2-int8", "bnb-int8", "bnb-nf4")
FASTER_WHISPER_TYPES = ("int8", "float32")


@dataclass(frozen=True)
class Row:
    name: str
    engine: str
    dtype: str
    bytes_on_disk: int
    cer: float | None
    ms_per_audio_second: float
    peak_memory_bytes: int


# ---- workers: each row measured in a fresh process ------------------------------------------


def _peak_rss_bytes() -> int:
    """This process's peak resident memory. Not ``ru_maxrss``: Linux carries that over ``execve`` from
    the (v)forked parent, so a child of a big process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _time_passes(transcribe: Any, clips: list[tuple[Any, str]], runs: int) -> dict[str, Any]:
    """One warm-up pass (its transcripts kept), then ``runs`` timed passes, in ms per audio second."""
    audio_seconds = sum(len(audio) for audio, _ in clips) / 16_000

    def one_pass() -> tuple[float, list[str]]:
        begin = time.perf_counter()
        texts = [transcribe(audio, language) for audio, language in clips]
        return time.perf_counter() - begin, texts

    _, texts = one_pass()
    per_pass_ms = [1000 * one_pass()[0] / audio_seconds for _ in range(runs)]
    return {"per_pass_ms": per_pass_ms, "texts": texts}


def faster_whisper_worker(request: dict[str, Any]) -> dict[str, Any]:
    """faster-whisper on the bundled weights; imports nothing of hush, so its memory is its own."""
    from faster_whisper import WhisperModel, decode_audio

    model = WhisperModel(
        request["model_dir"],
        device="cpu",
        compute_type=request["compute_type"],
        cpu_threads=request["threads"],
    )

    def transcribe(audio: Any, language: str) -> str:
        segments, _ = model.transcribe(
            audio, language=language, beam_size=1, best_of=1, condition_on_previous_text=False
        )
        return "".join(segment.text for segment in segments).strip()  # consumes the lazy generator

    clips = [(decode_audio(path), language) for path, language in request["clips"]]
    return _time_passes(transcribe, clips, request["runs"])


def hush_worker(request: dict[str, Any]) -> dict[str, Any]:
    """A hush variant, loaded and timed as ``compression.evaluation.latency`` does (same decoding).
    torch is imported only by variants that run on it (open_variant sets its threads)."""
    from compression.evaluation.runner import evaluation_options
    from model_store.audio import decode_audio
    from model_store.opener import open_variant
    from model_store.settings import RuntimeSettings
    from model_store.store import ModelStore

    runtime = RuntimeSettings(device="cpu", threads=request["threads"])
    transcriber = open_variant(ModelStore(Path(request["store_root"])), request["variant_id"], runtime)

    def transcribe(audio: Any, language: str) -> str:
        return transcriber.transcribe(audio, evaluation_options(language)).text

    clips = [(decode_audio(Path(path)), language) for path, language in request["clips"]]
    return _time_passes(transcribe, clips, request["runs"])


def worker() -> None:
    request = json.loads(sys.stdin.read())
    measure = faster_whisper_worker if request["engine"] == "faster-whisper" else hush_worker
    result = measure(request)
    print(json.dumps({**result, "peak_memory_bytes": _peak_rss_bytes()}))


def run_worker(request: dict[str, Any]) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-m", "tests.bench.bench_quantize", "--worker"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"measuring {request} failed:\n{completed.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


def _bundle_ct2_directory(bundle_name: str, target: Path) -> Path:
    """The bundled CTranslate2 weights as faster-whisper loads them (model.bin parts joined)."""
    from compression.importers.bundles import locate_bundle

    files = locate_bundle(bundle_name)
    target.mkdir(parents=True, exist_ok=True)
    with (target / "model.bin").open("wb") as joined:
        for part in files.model_parts:
            joined.write(part.read_bytes())
    for sibling in files.config.parent.iterdir():
        if sibling.is_file() and sibling.suffix in (".json", ".txt"):
            (target / sibling.name).write_bytes(sibling.read_bytes())
    return target


def _cer(references: list[str], hypotheses: list[str], languages: list[str]) -> float:
    from model_store.normalizer import normalize
    from model_store.scoring import char_errors

    edits = length = 0
    for reference, hypothesis, language in zip(references, hypotheses, languages, strict=True):
        errors = char_errors(normalize(reference, language), normalize(hypothesis, language))
        edits += errors.edits
        length += errors.reference_length
    return edits / max(1, length)


def _parse_clip(value: str) -> tuple[Path, str]:
    path, _, language = value.rpartition(":")
    return (Path(path), language) if path else (Path(value), "en")


def _references(clips: list[tuple[Path, str]], given: list[str]) -> list[str | None]:
    from tests.conftest import JFK_TEXT

    known = {DEFAULT_CLIP.resolve(): JFK_TEXT}
    return [
        given[index] if index < len(given) else known.get(path.resolve())
        for index, (path, _) in enumerate(clips)
    ]


def print_table(rows: list[Row], reference: Row | None) -> None:
    header = (
        f"{'variant':<26} {'engine':<14} {'dtype':<8} {'size MB':>8} {'CER':>6} {'ms/s':>7} "
        f"{'peak MB':>8} {'speed vs fw-int8':>17} {'mem vs fw-int8':>15}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        speed = memory = "-"
        if reference is not None:
            speed = f"{reference.ms_per_audio_second / row.ms_per_audio_second:.2f}x"
            memory = f"{row.peak_memory_bytes / reference.peak_memory_bytes:.2f}x"
        cer = f"{row.cer:.3f}" if row.cer is not None else "-"
        print(
            f"{row.name:<26} {row.engine:<14} {row.dtype:<8} {row.bytes_on_disk / 1e6:>8.1f} {cer:>6} "
            f"{row.ms_per_audio_second:>7.1f} {row.peak_memory_bytes / 1e6:>8.0f} {speed:>17} {memory:>15}"
        )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--store", type=Path, help="a model store; default: a temporary one")
    parser.add_argument("--parent", default="whisper-base", help="the bundled teacher to quantize")
    parser.add_argument("--methods", default=",".join(DEFAULT_METHODS), help="comma-separated")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="also time this variant of --store (e.g. whisper-base-ct2-int8-ctx10), repeatable",
    )
    parser.add_argument("--clip", action="append", type=_parse_clip, help="PATH[:LANG], repeatable")
    parser.add_argument("--reference", action="append", default=[], help="reference text per --clip")
    parser.add_argument("--runs", type=int, default=3, help="timed passes after one warm-up, per round")
    parser.add_argument("--rounds", type=int, default=1, help="times every row is measured, in turn")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)

    from compression.importers.publish import import_to_store
    from compression.quantize.methods import quantize_variant, variant_id_for
    from model_store.store import ModelStore

    clips: list[tuple[Path, str]] = args.clip or [(DEFAULT_CLIP, "en")]
    references = _references(clips, args.reference)
    languages = [language for _, language in clips]
    common: dict[str, Any] = {
        "clips": [[str(path), language] for path, language in clips],
        "runs": args.runs,
        "threads": args.threads,
    }

    with tempfile.TemporaryDirectory() as scratch:
        store = ModelStore(args.store or Path(scratch) / "store")
        if not store.exists(args.parent):
            import_to_store(store, args.parent)
        variant_ids = [args.parent]
        for method in filter(None, args.methods.split(",")):
            variant_id = variant_id_for(args.parent, method)
            if not store.exists(variant_id):
                quantize_variant(store, args.parent, method)
            variant_ids.append(variant_id)
        variant_ids += [variant_id for variant_id in args.variant if variant_id not in variant_ids]

        fw_dir = _bundle_ct2_directory(args.parent, Path(scratch) / "faster-whisper")
        fw_bytes = sum(path.stat().st_size for path in fw_dir.iterdir())
        specs: list[tuple[Row, dict[str, Any]]] = [
            (
                Row(f"faster-whisper {kind}", "faster-whisper", kind, fw_bytes, None, 0.0, 0),
                {"engine": "faster-whisper", "model_dir": str(fw_dir), "compute_type": kind},
            )
            for kind in FASTER_WHISPER_TYPES
        ]
        for variant_id in variant_ids:
            manifest = store.get(variant_id)
            row = Row(variant_id, manifest.backend, manifest.dtype, manifest.bytes_on_disk, None, 0.0, 0)
            specs.append((row, {"engine": "hush", "store_root": str(store.root), "variant_id": variant_id}))

        # Rounds visit every row in turn, so a noisy minute slows all of them rather than one.
        passes: dict[str, list[float]] = {row.name: [] for row, _ in specs}
        peaks: dict[str, int] = dict.fromkeys(passes, 0)
        texts: dict[str, list[str]] = {}
        for round_index in range(args.rounds):
            for row, request in specs:
                result = run_worker({**request, **common})
                passes[row.name] += result["per_pass_ms"]
                peaks[row.name] = max(peaks[row.name], result["peak_memory_bytes"])
                texts.setdefault(row.name, result["texts"])
                print(f"round {round_index + 1}: measured {row.name}", file=sys.stderr)

    known_references = None if any(reference is None for reference in references) else references
    rows = [
        Row(
            row.name,
            row.engine,
            row.dtype,
            row.bytes_on_disk,
            _cer([str(r) for r in known_references], texts[row.name], languages)
            if known_references
            else None,
            statistics.median(passes[row.name]),
            peaks[row.name],
        )
        for row, _ in specs
    ]
    print(
        f"\n{len(clips)} clip(s); median of {args.rounds} round(s) x {args.runs} timed passes after a "
        f"warm-up, each row in a fresh process; {args.threads} threads\n"
    )
    print_table(rows, next((row for row in rows if row.name == "faster-whisper int8"), None))
    if args.json:
        args.json.write_text(json.dumps([row.__dict__ for row in rows], indent=2))


if __name__ == "__main__":
    if "--worker" in sys.argv:
        worker()
    else:
        main()
