"""Text normalisation before computing error rates, after OpenAI Whisper's ``BasicTextNormalizer``.

``normalize`` follows ``whisper/normalizers/basic.py``: lowercase; remove text between ``[...]`` or
``<...>`` and between ``(...)``; NFKC; replace every character of Unicode category S (symbols) or
P (punctuation) with a space; lowercase again; collapse runs of whitespace.

Deviations from Whisper, all on purpose:

* Combining marks (category M) are not all replaced with a space. Whisper's rule deletes the vowel
  signs and viramas of Indic scripts (``"हिन्दी"`` becomes ``"ह न द"``), which turns every word into
  fragments and makes CER meaningless for Hindi, Tamil, Thai, vowelled Arabic and the like. Here a
  mark is judged by its base, the nearest preceding character that is not a mark:

  - base is a letter of another script than Latin, Greek or Cyrillic: the mark is part of the
    spelling and is kept (``"हिन्दी"`` stays ``"हिन्दी"``);
  - base is a Latin, Greek or Cyrillic letter: the mark survived NFKC composition, so no
    precomposed letter exists for it (stress marks as in ``"молоко́"``, rare stacked accents); it
    is dropped, not spaced, so the word stays whole (``"молоко"``). Precomposed letters such as
    ``é`` are untouched, as in Whisper;
  - no base, or a base that is not a letter (space, digit, punctuation): the mark is free-standing
    and becomes a space, as in Whisper.

* Spanish (``language="es"``) first strips diacritics from Latin letters (NFKD, then drop the
  nonspacing marks, category Mn, on a Latin base), because the Spanish reference transcripts of our
  corpus are written without accents: ``"Muñoz, ¿qué?"`` gives ``"munoz que"``. Whisper's
  ``remove_diacritics=True`` does this to every script and also maps letters such as ``ß`` and ``ø``;
  here other scripts and those letters are left alone.

* The result has no leading or trailing space (Whisper's keeps one where the text began or ended
  with removed characters).

``raw`` only trims and collapses whitespace, for error rates on the text as written.
"""

from __future__ import annotations

import re
import unicodedata

# Scripts whose standard spelling is fully precomposed under NFKC: a combining mark left on one of
# their letters is an annotation (stress, tone in transliteration), not a letter's part.
PRECOMPOSED_SCRIPTS = frozenset({"LATIN", "GREEK", "CYRILLIC"})

# Languages whose reference transcripts are written without diacritics on Latin letters.
DIACRITIC_FREE_LANGUAGES = frozenset({"es"})

_BRACKETED = re.compile(r"[<\[][^>\]]*[>\]]")  # Whisper's: [...] and <...>
_PARENTHESISED = re.compile(r"\(([^)]+?)\)")  # Whisper's: (...) with something inside
_WHITESPACE = re.compile(r"\s+")


def raw(text: str) -> str:
    """Trim the text and collapse every run of whitespace to one space; nothing else."""
    return " ".join(text.split())


def normalize(text: str, language: str | None = None) -> str:
    """Normalise a transcript for error rates; ``language`` is an ISO 639-1 code such as ``"es"``.

    See the module docstring for the rules and how they differ from Whisper's.
    """
    text = text.lower()
    text = _BRACKETED.sub("", text)
    text = _PARENTHESISED.sub("", text)
    if language in DIACRITIC_FREE_LANGUAGES:
        text = _strip_latin_diacritics(text)
    text = _replace_symbols_and_punctuation(unicodedata.normalize("NFKC", text)).lower()
    return _WHITESPACE.sub(" ", text).strip()


def _script(char: str) -> str:
    """The script of a letter, read from the first word of its Unicode name (``"LATIN"``, ...)."""
    return unicodedata.name(char, "").partition(" ")[0]


def _strip_latin_diacritics(text: str) -> str:
    """Decompose, drop the nonspacing marks that sit on Latin letters, and compose the rest again."""
    kept: list[str] = []
    base = " "  # the nearest preceding character that is not a mark; a space at the start
    for char in unicodedata.normalize("NFKD", text):
        category = unicodedata.category(char)
        if category[0] != "M":
            base = char
        elif category == "Mn" and unicodedata.category(base).startswith("L") and _script(base) == "LATIN":
            continue
        kept.append(char)
    return unicodedata.normalize("NFKC", "".join(kept))


def _replace_symbols_and_punctuation(text: str) -> str:
    """Space out symbols, punctuation and free-standing marks; judge attached marks by their base."""
    out: list[str] = []
    base = " "  # the nearest preceding character that is not a mark; a space at the start
    for char in text:
        category = unicodedata.category(char)
        if category[0] != "M":
            base = char
            out.append(" " if category[0] in "SP" else char)
        elif not unicodedata.category(base).startswith("L"):
            out.append(" ")  # free-standing mark
        elif _script(base) not in PRECOMPOSED_SCRIPTS:
            out.append(char)  # part of the spelling
        # else: a leftover accent on a Latin, Greek or Cyrillic letter, dropped
    return "".join(out)
