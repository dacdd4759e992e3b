"""Parsing shared by the ``hush compress`` and ``hush data`` commands' options."""

from __future__ import annotations


def comma_list(text: str) -> tuple[str, ...]:
    """``"es, fr,,it"`` -> ``("es", "fr", "it")``: the items of a comma-separated option, stripped,
    empty ones dropped."""
    return tuple(item.strip() for item in text.split(",") if item.strip())
