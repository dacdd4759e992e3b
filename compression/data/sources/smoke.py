"""Small English clips for smoke tests: the transcribed recordings of ``pocketsphinx-testdata``.

Two sets have a transcript: five LibriVox sentences (one reader of *Sense and Sensibility*) and five
spoken card names. Their transcripts are lower-case words in ``<s> ... </s> (file-id)`` lines.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from compression.data.debian import PackageCache
from compression.data.items import Candidate, FileAudio, utterance_id

logger = logging.getLogger(__name__)

NAME = "smoke"
LANGUAGES = ("en",)
LICENCE = "BSD-2-Clause (pocketsphinx-testdata, CMU)"
_DATA = "usr/share/pocketsphinx/test/data"
_SETS = {  # directory -> (transcription file, speaker)
    "librivox": ("transcription", "librivox-sense-and-sensibility"),
    "cards": ("cards.transcription", "cards"),
}
_LINE = re.compile(r"^\s*<s>(?P<text>.*?)</s>\s*\((?P<id>[^)]+)\)\s*$")


def parse_transcription(listing: str) -> dict[str, str]:
    """``file-id -> text`` from a Sphinx transcription file."""
    found: dict[str, str] = {}
    for line in listing.splitlines():
        match = _LINE.match(line)
        if match is not None and match["text"].strip():
            found[match["id"]] = match["text"].strip()
    return found


def candidates(cache: PackageCache, languages: Sequence[str]) -> list[Candidate]:
    if "en" not in languages:
        return []
    data = cache.debian("pocketsphinx-testdata") / _DATA
    found: list[Candidate] = []
    for directory, (listing, speaker) in _SETS.items():
        transcripts = parse_transcription((data / directory / listing).read_text(encoding="utf-8"))
        for file_id, text in sorted(transcripts.items()):
            wav = data / directory / f"{file_id}.wav"
            if not wav.is_file():
                logger.warning("pocketsphinx-testdata: no recording %s for a transcript", wav.name)
                continue
            found.append(
                Candidate(
                    id=utterance_id(NAME, "en", directory, file_id),
                    language="en",
                    source=NAME,
                    text=text,
                    speaker=f"{NAME}:{speaker}",
                    licence=LICENCE,
                    synthetic=False,
                    unit=f"speaker:{speaker}",
                    audio=FileAudio(wav),
                )
            )
    return found
