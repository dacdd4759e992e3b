"""A directory of variants: atomic publish, listing, verification and removal.

Layout: ``<root>/<variant-id>/manifest.json`` plus the weights. A publish writes into
``<root>/.staging-<id>-<random>/`` and renames it into place only once the manifest is written, so a
crash half-way leaves the store as it was (the staging directory is ignored, and swept later).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from model_store.atomic_write import write_atomically
from model_store.errors import (
    CorruptVariantError,
    InvalidVariantIdError,
    StoreRootError,
    VariantExistsError,
    VariantNotFoundError,
)
from model_store.hashing import sha256_file
from model_store.manifest import (
    MANIFEST_FILENAME,
    RESERVED_MODEL_NAMES,
    Manifest,
    WeightFile,
    validate_variant_id,
)

logger = logging.getLogger(__name__)

_STAGING_PREFIX = ".staging-"
_TRASH_PREFIX = ".trash-"
_STALE_STAGING_SECONDS = 24 * 3600


def _weight_files(directory: Path) -> list[Path]:
    return sorted(
        path
        for path in directory.rglob("*")
        if path.is_file() and path.relative_to(directory).as_posix() != MANIFEST_FILENAME
    )


def describe_weights(directory: Path) -> tuple[tuple[WeightFile, ...], int]:
    """Hash every file of a variant directory except its manifest; return them and their total size."""
    files = tuple(
        WeightFile(
            path=path.relative_to(directory).as_posix(),
            bytes=path.stat().st_size,
            sha256=sha256_file(path),
        )
        for path in _weight_files(directory)
    )
    return files, sum(file.bytes for file in files)


class Staging:
    """A variant being written. Put the weights in :attr:`directory`, then call :meth:`commit`."""

    def __init__(self, variant_id: str, directory: Path) -> None:
        self.variant_id = variant_id
        self.directory = directory
        self.manifest: Manifest | None = None

    def commit(self, **fields: Any) -> Manifest:
        """Hash the weights and write the manifest; the rename into the store follows on exit."""
        weights, total = describe_weights(self.directory)
        if not weights:
            raise CorruptVariantError(f"variant {self.variant_id!r} has no weight files to publish")
        manifest = Manifest.model_validate(
            {**fields, "id": self.variant_id, "weights": weights, "bytes_on_disk": total}
        )
        write_atomically(self.directory / MANIFEST_FILENAME, manifest.model_dump_json(indent=2))
        self.manifest = manifest
        return manifest

    @contextmanager
    def scratch(self) -> Iterator[Path]:
        """A directory for intermediate files (say, a smoothed parent checkpoint), removed on exit.
        It sits beside the staging directory under a staging name, so one left by a killed run is
        swept like an abandoned staging directory."""
        prefix = f"{_STAGING_PREFIX}{self.variant_id}-scratch-"
        with tempfile.TemporaryDirectory(dir=self.directory.parent, prefix=prefix) as path:
            yield Path(path)


class ModelStore:
    """The variants under one root directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    # ---- reading -------------------------------------------------------------------------------
    def ids(self) -> list[str]:
        self._check_root()
        if not self.root.is_dir():
            return []
        return sorted(
            entry.name
            for entry in self.root.iterdir()
            if entry.is_dir() and not entry.name.startswith(".") and (entry / MANIFEST_FILENAME).is_file()
        )

    def path(self, variant_id: str) -> Path:
        return self.root / validate_variant_id(variant_id)

    def exists(self, variant_id: str) -> bool:
        return (self.path(variant_id) / MANIFEST_FILENAME).is_file()

    def get(self, variant_id: str) -> Manifest:
        """The manifest of a variant (weights not checked: see :meth:`verify`)."""
        directory = self.path(variant_id)
        manifest_path = directory / MANIFEST_FILENAME
        if not directory.is_dir():
            raise VariantNotFoundError(variant_id, self.ids())
        if not manifest_path.is_file():
            raise CorruptVariantError(f"{directory} is not a hush variant: it has no {MANIFEST_FILENAME}")
        try:
            manifest = Manifest.model_validate_json(manifest_path.read_text(encoding="utf-8"))
        except (ValidationError, ValueError) as error:
            raise CorruptVariantError(f"{manifest_path} is not a valid manifest: {error}") from error
        if manifest.id != variant_id:
            raise CorruptVariantError(
                f"{manifest_path} belongs to variant {manifest.id!r}, not to {variant_id!r}"
            )
        return manifest

    def list(self) -> list[Manifest]:
        """Every valid variant; invalid directories are logged and skipped."""
        manifests = []
        for variant_id in self.ids():
            try:
                manifests.append(self.get(variant_id))
            except CorruptVariantError as error:
                logger.warning("skipping %s: %s", variant_id, error)
        return manifests

    def verify(self, variant_id: str) -> Manifest:
        """The manifest, after checking every weight file's size and SHA-256 against it."""
        manifest = self.get(variant_id)
        directory = self.path(variant_id)
        expected = {file.path: file for file in manifest.weights}
        present = {path.relative_to(directory).as_posix() for path in _weight_files(directory)}
        missing = sorted(set(expected) - present)
        if missing:
            raise CorruptVariantError(f"variant {variant_id!r} is missing weight files: {missing}")
        unexpected = sorted(present - set(expected))
        if unexpected:
            raise CorruptVariantError(f"variant {variant_id!r} has files not in its manifest: {unexpected}")
        for relative, file in expected.items():
            path = directory / relative
            if path.stat().st_size != file.bytes or sha256_file(path) != file.sha256:
                raise CorruptVariantError(
                    f"variant {variant_id!r}: {relative} does not match the SHA-256 in its manifest "
                    "(corrupted or modified); re-publish the variant"
                )
        return manifest

    def fingerprint(self) -> tuple[tuple[str, int], ...]:
        """Changes whenever a variant is published, updated or removed (for hot reload)."""
        return tuple(
            (variant_id, (self.path(variant_id) / MANIFEST_FILENAME).stat().st_mtime_ns)
            for variant_id in self.ids()
        )

    # ---- writing -------------------------------------------------------------------------------
    @contextmanager
    def publish(self, variant_id: str, *, replace: bool = False) -> Iterator[Staging]:
        """Stage a new variant; it appears in the store atomically when the block ends without error."""
        validate_variant_id(variant_id)
        if variant_id in RESERVED_MODEL_NAMES:
            raise InvalidVariantIdError(
                f"variant id {variant_id!r} is reserved: the server reads it as a model alias "
                f"({', '.join(sorted(RESERVED_MODEL_NAMES))})"
            )
        self._check_root()
        if self.exists(variant_id) and not replace:
            raise VariantExistsError(
                f"variant {variant_id!r} already exists in {self.root}; remove it first or replace it "
                "(--replace)"
            )
        with self._writing():
            self.root.mkdir(parents=True, exist_ok=True)
            self._sweep_stale()
            staging_dir = Path(tempfile.mkdtemp(dir=self.root, prefix=f"{_STAGING_PREFIX}{variant_id}-"))
        staging = Staging(variant_id, staging_dir)
        try:
            yield staging
            if staging.manifest is None:
                raise CorruptVariantError(f"publishing {variant_id!r}: commit() was never called")
            target = self.path(variant_id)
            if target.exists():
                if not replace:
                    raise VariantExistsError(f"variant {variant_id!r} was published concurrently")
                self._discard(target)
            staging_dir.replace(target)
            logger.info("published %s (%d bytes)", variant_id, staging.manifest.bytes_on_disk)
        finally:
            if staging_dir.exists():
                shutil.rmtree(staging_dir, ignore_errors=True)

    def update(self, variant_id: str, **changes: Any) -> Manifest:
        """Rewrite some manifest fields (e.g. ``eval``, ``latency``) atomically."""
        manifest = self.get(variant_id)
        updated = Manifest.model_validate({**manifest.model_dump(), **changes})
        write_atomically(self.path(variant_id) / MANIFEST_FILENAME, updated.model_dump_json(indent=2))
        return updated

    def remove(self, variant_id: str) -> None:
        """Remove a variant: it leaves the listing at once (rename), then its files are deleted."""
        directory = self.path(variant_id)
        if not directory.is_dir():
            raise VariantNotFoundError(variant_id, self.ids())
        self._discard(directory)
        logger.info("removed %s", variant_id)

    def _check_root(self) -> None:
        """A root that does not exist yet is an empty store; one that is not a directory is an error."""
        if self.root.exists() and not self.root.is_dir():
            raise StoreRootError(f"the store root {self.root} is not a directory (HUSH_STORE__ROOT)")

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """Name a store the process may not write to as such (not as a temporary file's error)."""
        try:
            yield
        except PermissionError as error:
            raise StoreRootError(f"the store {self.root} is not writable by this user: {error}") from error

    def _discard(self, directory: Path) -> None:
        with self._writing():
            trash = Path(tempfile.mkdtemp(dir=self.root, prefix=_TRASH_PREFIX))
        directory.replace(trash / directory.name)
        shutil.rmtree(trash, ignore_errors=True)

    def _sweep_stale(self) -> None:
        now = time.time()
        for entry in self.root.iterdir():
            if not entry.name.startswith((_STAGING_PREFIX, _TRASH_PREFIX)):
                continue
            if entry.name.startswith(_TRASH_PREFIX) or now - entry.stat().st_mtime > _STALE_STAGING_SECONDS:
                shutil.rmtree(entry, ignore_errors=True)


def write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write a JSON file atomically."""
    write_atomically(path, json.dumps(payload, indent=2, ensure_ascii=False))
