"""Text keys: when two transcripts count as the same sentence."""

from __future__ import annotations

import unicodedata


def sentence_key(text: str) -> str:
    """The sentence with case, punctuation, symbols and spacing removed (NFKC, casefolded).

    Two utterances with the same key say the same thing; the splits never put them in two splits.
    """
    folded = unicodedata.normalize("NFKC", text).casefold()
    kept = "".join(
        char if not unicodedata.category(char).startswith(("P", "S", "Z", "C")) else " " for char in folded
    )
    return " ".join(kept.split())
