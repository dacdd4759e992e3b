"""Asterisk's core prompts: one professional voice per language, read from a prompt list.

Transcripts come from ``asterisk-core-sounds-XX`` (``core-sounds-XX.txt.gz``, lines ``key: text``), the
audio from ``asterisk-core-sounds-XX-g722`` (``sounds/<voice>/<key>.g722``, headerless G.722 at 16 kHz).
Silence prompts and empty lines are dropped; the text is otherwise kept exactly as written (the Spanish
list, for one, has no accents).
"""

from __future__ import annotations

import gzip
import logging
import re
from collections.abc import Sequence
from pathlib import Path

from compression.data.debian import PackageCache
from compression.data.items import Candidate, FileAudio, utterance_id
from compression.data.text import sentence_key

logger = logging.getLogger(__name__)

NAME = "asterisk"
LANGUAGES = ("en", "es", "fr", "it", "ru")
# From each package's debian/copyright: Allison Smith (en, es), June Wallack (fr) CC-BY-SA-3.0;
# Carlo Flora (it) and Maxim (ru) CC-BY-3.0.
_LICENCES = {
    "en": "CC-BY-SA-3.0",
    "es": "CC-BY-SA-3.0",
    "fr": "CC-BY-SA-3.0",
    "it": "CC-BY-3.0",
    "ru": "CC-BY-3.0",
}
_LINE = re.compile(r"^(?P<key>[^\s:;][^\s:]*):(?P<text>.*)$")
_SILENCE = re.compile(r"^\(\d+ seconds? of silence\)$")


def debian_packages(language: str) -> tuple[str, str]:
    return f"asterisk-core-sounds-{language}", f"asterisk-core-sounds-{language}-g722"


def parse_prompts(listing: str) -> dict[str, str]:
    """``key -> text`` from a ``core-sounds-XX.txt`` listing.

    Comments (``;``), blank and empty items and silence are dropped, and so is a key listed twice with
    different texts (which of the two the recording says is unknown).
    """
    prompts: dict[str, str] = {}
    conflicting: set[str] = set()
    for line in listing.splitlines():
        match = _LINE.match(line.strip())
        if match is None:
            continue
        key, text = match["key"], match["text"].strip()
        if not text or _SILENCE.match(text):
            continue
        if key in prompts and prompts[key] != text:
            conflicting.add(key)
        prompts[key] = text
    for key in sorted(conflicting):
        logger.warning("asterisk prompt %r is listed with different texts: dropped", key)
        del prompts[key]
    return prompts


def _sound_files(voice_dir: Path) -> dict[str, Path]:
    return {
        path.relative_to(voice_dir).with_suffix("").as_posix(): path for path in voice_dir.rglob("*.g722")
    }


def _match(key: str, files: dict[str, Path], lowercase: dict[str, list[Path]]) -> Path | None:
    """The recording of ``key``: same name, else the only one whose name differs in case (``letters/O``)."""
    if key in files:
        return files[key]
    matches = lowercase.get(key.lower(), [])
    return matches[0] if len(matches) == 1 else None


def candidates(cache: PackageCache, languages: Sequence[str]) -> list[Candidate]:
    found: list[Candidate] = []
    for language in LANGUAGES:
        if language not in languages:
            continue
        text_package, audio_package = debian_packages(language)
        listing = cache.debian(text_package) / f"usr/share/doc/{text_package}/core-sounds-{language}.txt.gz"
        prompts = parse_prompts(gzip.decompress(listing.read_bytes()).decode("utf-8-sig"))
        (voice_dir,) = sorted((cache.debian(audio_package) / "usr/share/asterisk/sounds").iterdir())
        files = _sound_files(voice_dir)
        lowercase: dict[str, list[Path]] = {}
        for name, path in files.items():
            lowercase.setdefault(name.lower(), []).append(path)
        missing = 0
        for key, text in sorted(prompts.items()):
            recording = _match(key, files, lowercase)
            if recording is None:
                missing += 1
                continue
            found.append(
                Candidate(
                    id=utterance_id(NAME, language, key),
                    language=language,
                    source=NAME,
                    text=text,
                    speaker=f"{NAME}:{voice_dir.name}",
                    licence=_LICENCES[language],
                    synthetic=False,
                    unit=f"sentence:{sentence_key(text)}",
                    audio=FileAudio(recording, container_format="g722"),
                )
            )
        logger.info(
            "asterisk %s: %d prompts, %d without a recording", language, len(prompts) - missing, missing
        )
    return found
