"""A built corpus on disk: its layout, writing its index atomically, and reading it back.

Layout of ``<out>/<corpus-id>/``::

    audio/<language>/<source>/<utterance-id>.flac   16 kHz mono 16-bit FLAC
    train.jsonl, dev.jsonl, test.jsonl                one utterance per line, sorted by id
    corpus.json                                       id, sha256, build parameters, per-language stats

``sha256`` is one SHA-256 over the bytes of train.jsonl, dev.jsonl and test.jsonl (in that order),
then of every audio file in utterance-id order. ``corpus.json`` is written last: a directory without
it is an unfinished build.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compression.data.audio_io import read_flac
from compression.data.errors import CorpusNotFoundError, CorruptCorpusError
from compression.data.splits import SPLITS
from model_store.atomic_write import write_atomically
from model_store.transcription import Audio

FORMAT_VERSION = 1
CORPUS_FILE = "corpus.json"
_RECORD_FIELDS = (
    "id",
    "path",
    "language",
    "text",
    "duration",
    "source",
    "speaker",
    "split",
    "synthetic",
    "licence",
)


@dataclass(frozen=True)
class Record:
    """One line of a split's JSONL file."""

    id: str
    path: str  # relative to the corpus directory
    language: str  # ISO 639-1
    text: str  # the exact reference transcript
    duration: float  # seconds, 3 decimals
    source: str
    speaker: str
    split: str
    synthetic: bool
    licence: str


@dataclass(frozen=True)
class Utterance(Record):
    """A record of an opened corpus, with its audio file's absolute path."""

    audio_path: Path = field(default=Path(), compare=False)

    def load_audio(self) -> Audio:
        """The utterance's samples: float32 mono at 16 kHz."""
        return read_flac(self.audio_path)


def split_file(split: str) -> str:
    return f"{split}.jsonl"


def _jsonl(records: Iterable[Record]) -> bytes:
    lines = (json.dumps(asdict(record), ensure_ascii=False) + "\n" for record in records)
    return "".join(lines).encode("utf-8")


def corpus_sha256(directory: Path, records: Sequence[Record]) -> str:
    """The corpus's SHA-256: the three JSONL files, then the audio files in id order."""
    digest = hashlib.sha256()
    for split in SPLITS:
        digest.update((directory / split_file(split)).read_bytes())
    for record in sorted(records, key=lambda record: record.id):
        with (directory / record.path).open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def summarize(records: Sequence[Record]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per language and split: utterances, minutes, speakers, sources and licences."""
    groups: dict[tuple[str, str], list[Record]] = defaultdict(list)
    for record in records:
        groups[record.language, record.split].append(record)
    summary: dict[str, dict[str, dict[str, Any]]] = {}
    for language in sorted({record.language for record in records}):
        summary[language] = {}
        for split in SPLITS:
            members = groups.get((language, split), [])
            summary[language][split] = {
                "utterances": len(members),
                "minutes": round(sum(record.duration for record in members) / 60, 2),
                "speakers": len({record.speaker for record in members}),
                "sources": sorted({record.source for record in members}),
                "licences": sorted({record.licence for record in members}),
            }
    return summary


def write_index(
    directory: Path, corpus_id: str, records: Sequence[Record], parameters: dict[str, Any]
) -> str:
    """Write the JSONL files and then ``corpus.json`` (each atomically); return the corpus SHA-256."""
    (directory / CORPUS_FILE).unlink(missing_ok=True)
    ordered = sorted(records, key=lambda record: record.id)
    for split in SPLITS:
        write_atomically(directory / split_file(split), _jsonl(r for r in ordered if r.split == split))
    sha256 = corpus_sha256(directory, ordered)
    info = {
        "format": FORMAT_VERSION,
        "id": corpus_id,
        "sha256": sha256,
        "parameters": parameters,
        "languages": summarize(ordered),
    }
    write_atomically(
        directory / CORPUS_FILE, (json.dumps(info, indent=2, ensure_ascii=False) + "\n").encode()
    )
    return sha256


class Corpus:
    """A built corpus, opened read-only. ``Corpus.open(path)`` checks its index, not its audio."""

    def __init__(self, directory: Path, info: dict[str, Any]) -> None:
        self.directory = directory
        self.info = info
        self.id: str = info["id"]
        self.sha256: str = info["sha256"]
        self.languages: tuple[str, ...] = tuple(sorted(info["languages"]))
        self._cache: dict[str, list[Utterance]] = {}

    @classmethod
    def open(cls, path: Path) -> Corpus:
        directory = Path(path)
        index = directory / CORPUS_FILE
        if not index.is_file():
            built = (
                sorted(p.parent.name for p in directory.glob(f"*/{CORPUS_FILE}"))
                if directory.is_dir()
                else []
            )
            hint = f"; corpora in it: {', '.join(built)}" if built else ""
            state = "an unfinished build" if (directory / "audio").is_dir() else "not a corpus"
            raise CorpusNotFoundError(f"no {CORPUS_FILE} in {directory} ({state}){hint}")
        try:
            info = json.loads(index.read_text(encoding="utf-8"))
            if info.get("format") != FORMAT_VERSION:
                raise CorruptCorpusError(f"{index}: format {info.get('format')!r}, expected {FORMAT_VERSION}")
            missing = {"id", "sha256", "languages"} - set(info)
        except (OSError, ValueError, AttributeError) as error:
            raise CorruptCorpusError(f"{index} is not a corpus index: {error}") from error
        if missing:
            raise CorruptCorpusError(f"{index} lacks {', '.join(sorted(missing))}")
        for split in SPLITS:
            if not (directory / split_file(split)).is_file():
                raise CorruptCorpusError(f"{directory} lacks {split_file(split)}")
        return cls(directory.resolve(), info)

    def utterances(self, split: str, languages: Sequence[str] | None = None) -> list[Utterance]:
        """The split's utterances (sorted by id), optionally only those of ``languages``."""
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from: {', '.join(SPLITS)}")
        if split not in self._cache:
            self._cache[split] = self._read(split)
        if languages is None:
            return list(self._cache[split])
        wanted = set(languages)
        return [utterance for utterance in self._cache[split] if utterance.language in wanted]

    def _read(self, split: str) -> list[Utterance]:
        path = self.directory / split_file(split)
        found: list[Utterance] = []
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            try:
                fields = json.loads(line)
                values = {name: fields[name] for name in _RECORD_FIELDS}
            except (ValueError, KeyError, TypeError) as error:
                raise CorruptCorpusError(f"{path}:{number}: not a corpus record ({error})") from error
            if values["split"] != split:
                raise CorruptCorpusError(f"{path}:{number}: record of split {values['split']!r}")
            found.append(Utterance(**values, audio_path=self.directory / values["path"]))
        return found

    def verify(self) -> None:
        """Recompute the SHA-256 over index and audio; :class:`CorruptCorpusError` when it differs."""
        records = [utterance for split in SPLITS for utterance in self.utterances(split)]
        try:
            actual = corpus_sha256(self.directory, records)
        except OSError as error:
            raise CorruptCorpusError(f"{self.directory}: {error}") from error
        if actual != self.sha256:
            raise CorruptCorpusError(
                f"{self.directory}: SHA-256 {actual} does not match corpus.json's {self.sha256}"
            )


def newest_corpus(root: Path) -> Path | None:
    """The most recently built corpus directory under ``root`` (one with a corpus.json), if any."""
    built = sorted(root.glob(f"*/{CORPUS_FILE}"), key=lambda path: path.stat().st_mtime)
    return built[-1].parent if built else None
