"""What a source contributes before any audio is written: candidate utterances and how to make their audio."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from compression.data.tts import Voice

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class FileAudio:
    """Audio in a file of an unpacked package, decoded as it is (``container_format`` forces a demuxer)."""

    path: Path
    container_format: str | None = None


@dataclass(frozen=True)
class SpokenText:
    """Audio a TTS voice makes by reading ``text`` (the reference text, exactly)."""

    voice: Voice
    text: str


AudioSpec = FileAudio | SpokenText


@dataclass(frozen=True)
class Candidate:
    """An utterance a source can contribute; the split decides whether and where it goes."""

    id: str  # unique in the corpus, safe as a file name
    language: str  # ISO 639-1
    source: str  # the source's name, as given to ``--sources``
    text: str  # the exact reference transcript
    speaker: str  # who (or which voice) speaks it
    licence: str
    synthetic: bool
    unit: str  # what the split keeps together: a recording session, a voice, or the sentence itself
    audio: AudioSpec


def utterance_id(*parts: str) -> str:
    """A file-name-safe id from its parts: ``/`` becomes ``.``, other unsafe runs ``_``, joined by ``-``."""
    return "-".join(_UNSAFE.sub("_", part.replace("/", ".")) for part in parts)
