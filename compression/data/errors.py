"""Typed errors of the corpus builder and reader. Only entry points turn them into messages or exit codes."""

from __future__ import annotations

from collections.abc import Sequence

from model_store.errors import HushError


class DataError(HushError):
    """Base class of every error the corpus code raises on purpose."""


class ToolMissingError(DataError):
    """A command-line tool the build needs (apt-get, dpkg-deb, npm, espeak-ng, text2wave) is absent."""

    def __init__(self, tool: str, hint: str) -> None:
        super().__init__(f"{tool!r} was not found on PATH: {hint}")
        self.tool = tool


class DownloadError(DataError):
    """A package could not be fetched from its registry."""


class ChecksumError(DataError):
    """A download whose SHA-256 is not the pinned one."""

    def __init__(self, what: str, expected: str, actual: str) -> None:
        super().__init__(f"{what}: SHA-256 {actual} does not match the pinned {expected}")
        self.expected = expected
        self.actual = actual


class SystemDepsMissingError(DataError):
    """Debian packages the build needs are not installed."""

    def __init__(self, missing: Sequence[str], command: str) -> None:
        super().__init__(f"missing Debian packages: {', '.join(missing)}; install them with: {command}")
        self.missing = tuple(missing)
        self.command = command


class SynthesisError(DataError):
    """A text-to-speech engine failed on a sentence."""


class UnknownChoiceError(DataError, ValueError):
    """A language or source name the builder does not know."""

    def __init__(self, kind: str, name: str, choices: Sequence[str]) -> None:
        super().__init__(f"unknown {kind} {name!r}; choose from: {', '.join(sorted(choices))}")
        self.name = name
        self.choices = tuple(choices)


class CorpusNotFoundError(DataError, FileNotFoundError):
    """No built corpus at the given path."""


class CorruptCorpusError(DataError):
    """A corpus directory whose files are missing, malformed, or do not match its SHA-256."""
