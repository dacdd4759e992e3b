"""Publishing an imported Whisper into the store as a variant."""

from __future__ import annotations

import logging

import torch

from compression.importers.sources import ImportedWhisper, load_source
from model_store.manifest import ALL_LANGUAGES, Manifest, Recipe, size_tier_for
from model_store.store import ModelStore

logger = logging.getLogger(__name__)


def default_variant_id(source: str) -> str:
    """``whisper-base`` for the bundle, ``whisper-small`` for ``openai/whisper-small``, ..."""
    return source.rstrip("/").rsplit("/", 1)[-1].lower().replace("_", "-")


def publish_imported(
    store: ModelStore, imported: ImportedWhisper, variant_id: str, *, replace: bool = False
) -> Manifest:
    parameters = sum(parameter.numel() for parameter in imported.model.parameters())
    with store.publish(variant_id, replace=replace) as staging:
        imported.save(staging.directory, dtype=torch.float16)
        return staging.commit(
            parent=imported.origin,
            recipe=Recipe(method="import", args=imported.details),
            backend="transformers",
            device="cpu",
            dtype="float16",
            parameters=parameters,
            size_tier=size_tier_for(parameters),
            multilingual=imported.multilingual,
            languages=(ALL_LANGUAGES,) if imported.multilingual else ("en",),
        )


def import_to_store(
    store: ModelStore, source: str, variant_id: str | None = None, *, replace: bool = False
) -> Manifest:
    """Import ``source`` (bundle, directory or hub id) and publish it; returns its manifest."""
    imported = load_source(source)
    return publish_imported(store, imported, variant_id or default_variant_id(source), replace=replace)
