"""Where the corpus's speech comes from: one module per source, and the registry of their names."""

from __future__ import annotations

from collections.abc import Sequence

from compression.data.debian import PackageCache
from compression.data.errors import UnknownChoiceError
from compression.data.items import Candidate
from compression.data.sources import asterisk, fillets, smoke, udhr
from compression.data.tts import VOICES

RECORDED = (asterisk.NAME, fillets.NAME, smoke.NAME)
SYNTHETIC = tuple(udhr.SOURCES)  # udhr-espeak, udhr-festival, udhr-piper
ALL_SOURCES = RECORDED + SYNTHETIC
ALIASES = {"udhr": SYNTHETIC, "recorded": RECORDED}  # names that stand for several sources


def source_languages(source: str) -> tuple[str, ...]:
    """The languages a source can contribute."""
    if source == asterisk.NAME:
        return asterisk.LANGUAGES
    if source == fillets.NAME:
        return fillets.LANGUAGES
    if source == smoke.NAME:
        return smoke.LANGUAGES
    if source in udhr.SOURCES:
        engine = udhr.SOURCES[source]
        return tuple(
            sorted({v.language for v in VOICES if v.engine == engine and v.language in udhr.LANGUAGES})
        )
    raise UnknownChoiceError("source", source, [*ALL_SOURCES, *ALIASES])


def expand_sources(names: Sequence[str]) -> tuple[str, ...]:
    """Source names with aliases expanded, in registry order; unknown names are refused."""
    wanted: set[str] = set()
    for name in names:
        if name in ALIASES:
            wanted.update(ALIASES[name])
        elif name in ALL_SOURCES:
            wanted.add(name)
        else:
            raise UnknownChoiceError("source", name, [*ALL_SOURCES, *ALIASES])
    return tuple(source for source in ALL_SOURCES if source in wanted)


def collect(source: str, cache: PackageCache, languages: Sequence[str], jobs: int) -> list[Candidate]:
    """The candidates ``source`` offers in ``languages`` (downloading and unpacking what it needs)."""
    if source == asterisk.NAME:
        return asterisk.candidates(cache, languages)
    if source == fillets.NAME:
        return fillets.candidates(cache, languages)
    if source == smoke.NAME:
        return smoke.candidates(cache, languages)
    if source in udhr.SOURCES:
        return udhr.candidates(cache, languages, source, jobs)
    raise UnknownChoiceError("source", source, ALL_SOURCES)
