"""Fish Fillets NG's acted dialogue in Czech and Dutch: several actors, one recording session per level.

The audio is ``fillets-ng-data-XX`` (``sound/<level>/<XX>/<dialog-id>.ogg``); its text is the
``dialogStr`` after the ``dialogId`` of the same id in ``fillets-ng-data``'s ``script/<level>/
*dialogs_XX.lua``. The ``dialogId``'s second argument is the font of the character who speaks
(``font_small`` the small fish, ``font_big`` the big fish, ``font_statue``, ...): that is the speaker.
Recordings without a line of text, and lines without a recording, are left out.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

from compression.data.debian import PackageCache
from compression.data.items import Candidate, FileAudio, utterance_id

logger = logging.getLogger(__name__)

NAME = "fillets"
LANGUAGES = ("cs", "nl")
LICENCE = "GPL-2.0-only"  # fillets-ng-data's debian/copyright: "version 2 dated June, 1991"
_GAME = "usr/share/games/fillets-ng"
_STRING = r'"((?:[^"\\]|\\.)*)"'
_DIALOG = re.compile(
    rf"dialogId\(\s*{_STRING}\s*,\s*{_STRING}\s*,\s*{_STRING}\s*\)\s*dialogStr\(\s*{_STRING}\s*\)", re.DOTALL
)
_ESCAPE = re.compile(r"\\(.)", re.DOTALL)
_ESCAPES = {"n": "\n", "t": "\t"}
# Characters named by their font; the rest keep the font's name (viking1 ... viking8, parrot, ...)
_CHARACTERS = {"small": "small-fish", "big": "big-fish", "both": "both-fish"}


@dataclass(frozen=True)
class Line:
    """One spoken line of a level."""

    dialog_id: str
    character: str
    text: str


def _unescape(literal: str) -> str:
    return _ESCAPE.sub(lambda match: _ESCAPES.get(match[1], match[1]), literal)


def parse_dialogs(script: str) -> dict[str, Line]:
    """The lines of one ``dialogs_XX.lua``: ``dialogId(id, font, english)`` then ``dialogStr(text)``."""
    lines: dict[str, Line] = {}
    for dialog_id, font, _english, text in _DIALOG.findall(script):
        character = font.removeprefix("font_")
        lines[_unescape(dialog_id)] = Line(
            dialog_id=_unescape(dialog_id),
            character=_CHARACTERS.get(character, character),
            text=_unescape(text).strip(),
        )
    return lines


def candidates(cache: PackageCache, languages: Sequence[str]) -> list[Candidate]:
    selected = [language for language in LANGUAGES if language in languages]
    if not selected:
        return []
    scripts = cache.debian("fillets-ng-data") / _GAME / "script"
    found: list[Candidate] = []
    for language in selected:
        sounds = cache.debian(f"fillets-ng-data-{language}") / _GAME / "sound"
        unmatched = 0
        for level_dir in sorted(path for path in sounds.iterdir() if (path / language).is_dir()):
            level = level_dir.name
            lines: dict[str, Line] = {}
            for script in sorted((scripts / level).glob(f"*dialogs_{language}.lua")):
                lines.update(parse_dialogs(script.read_text(encoding="utf-8")))
            for recording in sorted((level_dir / language).glob("*.ogg")):
                line = lines.get(recording.stem)
                if line is None or not line.text or not line.character:
                    unmatched += 1
                    continue
                found.append(
                    Candidate(
                        id=utterance_id(NAME, language, level, line.dialog_id),
                        language=language,
                        source=NAME,
                        text=line.text,
                        speaker=f"{NAME}:{language}:{line.character}",
                        licence=LICENCE,
                        synthetic=False,
                        unit=f"level:{level}",
                        audio=FileAudio(recording),
                    )
                )
        count = sum(1 for candidate in found if candidate.language == language)
        logger.info("fillets %s: %d lines, %d recordings without a line of text", language, count, unmatched)
    return found
