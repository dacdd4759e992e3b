"""The model store: publish, list, verify, update, remove, and refusing what is not a valid variant."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import pytest

from model_store.errors import (
    CorruptVariantError,
    InvalidVariantIdError,
    StoreRootError,
    VariantExistsError,
    VariantNotFoundError,
)
from model_store.manifest import Manifest, Recipe, size_tier_for
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from tests.factories import publish_tiny_variant

FIELDS = {
    "parent": "test",
    "recipe": Recipe(method="import"),
    "backend": "transformers",
    "device": "cpu",
    "dtype": "float32",
    "parameters": 1000,
    "size_tier": "tiny",
    "multilingual": True,
    "languages": ("*",),
}


def _publish_dummy(store: ModelStore, variant_id: str, payload: bytes = b"weights") -> Manifest:
    with store.publish(variant_id) as staging:
        (staging.directory / "weights.bin").write_bytes(payload)
        (staging.directory / "sub").mkdir()
        (staging.directory / "sub" / "more.bin").write_bytes(payload * 2)
        staging.commit(**FIELDS)
    assert staging.manifest is not None
    return staging.manifest


def test_round_trip(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    published = _publish_dummy(store, "alpha")
    assert store.ids() == ["alpha"]
    assert store.get("alpha") == published
    assert published.bytes_on_disk == len(b"weights") * 3
    assert {file.path for file in published.weights} == {"weights.bin", "sub/more.bin"}
    assert store.verify("alpha") == published
    assert [manifest.id for manifest in store.list()] == ["alpha"]


def test_real_tiny_variant_round_trip(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    manifest = publish_tiny_variant(store, "tiny-one")
    assert manifest.size_tier == "tiny"
    assert manifest.parameters > 1_000_000
    assert any(file.path == "model.safetensors" for file in manifest.weights)
    transcriber = open_variant(store, "tiny-one", RuntimeSettings())
    assert transcriber.manifest.id == "tiny-one"


def test_failed_publish_leaves_store_unchanged(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(RuntimeError, match="crash"), store.publish("beta") as staging:
        (staging.directory / "weights.bin").write_bytes(b"half")
        raise RuntimeError("simulated crash half-way")
    assert store.ids() == []
    assert list(tmp_path.iterdir()) == []  # no staging directory left behind


def test_killed_publish_is_invisible(tmp_path: Path) -> None:
    """A process killed mid-publish leaves only a hidden staging directory, never a listed variant."""
    store = ModelStore(tmp_path)
    leftover = tmp_path / ".staging-gamma-abc123"
    leftover.mkdir()
    (leftover / "manifest.json").write_text("{}")
    assert store.ids() == []
    assert not store.exists("gamma")


def test_scratch_is_removed_on_exit_and_swept_when_a_killed_run_left_it(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with store.publish("delta") as staging:
        with staging.scratch() as scratch:
            (scratch / "parent.bin").write_bytes(b"intermediate")
            assert scratch.parent == tmp_path and scratch.name.startswith(".staging-delta-scratch-")
        assert not scratch.exists()
        (staging.directory / "weights.bin").write_bytes(b"weights")
        staging.commit(**FIELDS)
    assert {path.name for path in tmp_path.iterdir()} == {"delta"}

    # kill -9 inside the block: the scratch stays until a later publish finds it stale
    with store.publish("epsilon") as staging:
        with staging.scratch() as scratch:
            kept = scratch.with_name(scratch.name + "-killed")
            scratch.rename(kept)
            scratch.mkdir()  # so the context's own cleanup finds its directory
        (staging.directory / "weights.bin").write_bytes(b"weights")
        staging.commit(**FIELDS)
    assert kept.is_dir()
    day_old = time.time() - 25 * 3600
    os.utime(kept, (day_old, day_old))
    _publish_dummy(store, "zeta")
    assert not kept.exists()
    assert {path.name for path in tmp_path.iterdir()} == {"delta", "epsilon", "zeta"}


def test_publish_without_commit_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(CorruptVariantError, match="commit"), store.publish("delta") as staging:
        (staging.directory / "weights.bin").write_bytes(b"x")
    assert store.ids() == []


def test_existing_id_refused_unless_replace(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _publish_dummy(store, "alpha")
    with pytest.raises(VariantExistsError):
        _publish_dummy(store, "alpha")
    with store.publish("alpha", replace=True) as staging:
        (staging.directory / "weights.bin").write_bytes(b"new")
        staging.commit(**FIELDS)
    assert store.verify("alpha").bytes_on_disk == 3


def test_tampered_weights_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _publish_dummy(store, "alpha")
    weights = tmp_path / "alpha" / "weights.bin"
    weights.write_bytes(b"weightz")  # same size, different bytes
    with pytest.raises(CorruptVariantError, match="SHA-256"):
        store.verify("alpha")


def test_tampered_real_variant_refused_on_open(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    publish_tiny_variant(store, "tiny-one")
    weights = tmp_path / "tiny-one" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptVariantError, match="SHA-256"):
        open_variant(store, "tiny-one", RuntimeSettings())


def test_missing_and_extra_files_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _publish_dummy(store, "alpha")
    (tmp_path / "alpha" / "sub" / "more.bin").unlink()
    with pytest.raises(CorruptVariantError, match="missing"):
        store.verify("alpha")
    _publish_dummy(store, "beta")
    (tmp_path / "beta" / "intruder.bin").write_bytes(b"?")
    with pytest.raises(CorruptVariantError, match="not in its manifest"):
        store.verify("beta")


def test_missing_foreign_and_corrupt_directories(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(VariantNotFoundError, match="store is empty"):
        store.get("nothing")
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "model.bin").write_bytes(b"?")
    assert store.ids() == []  # a directory without a manifest is not a variant
    with pytest.raises(CorruptVariantError, match="not a hush variant"):
        store.get("foreign")
    _publish_dummy(store, "alpha")
    (tmp_path / "alpha" / "manifest.json").write_text("{not json")
    with pytest.raises(CorruptVariantError, match="not a valid manifest"):
        store.get("alpha")
    assert store.list() == []  # listed variants are valid ones


def test_manifest_of_another_variant_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _publish_dummy(store, "alpha")
    (tmp_path / "alpha").rename(tmp_path / "beta")
    with pytest.raises(CorruptVariantError, match="belongs to variant 'alpha'"):
        store.get("beta")


def test_update_and_remove(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    _publish_dummy(store, "alpha")
    before = store.fingerprint()
    updated = store.update("alpha", languages=("en", "fr"))
    assert store.get("alpha").languages == ("en", "fr") == updated.languages
    assert store.verify("alpha")  # rewriting the manifest keeps the weights valid
    store.remove("alpha")
    assert store.ids() == []
    assert store.fingerprint() != before
    with pytest.raises(VariantNotFoundError):
        store.remove("alpha")


@pytest.mark.parametrize("bad", ["", "UPPER", "has space", "../escape", "-lead", "a/b"])
def test_invalid_ids_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(InvalidVariantIdError):
        ModelStore(tmp_path).path(bad)


@pytest.mark.parametrize("reserved", ["auto", "whisper-1"])
def test_the_servers_model_aliases_cannot_be_published(tmp_path: Path, reserved: str) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(InvalidVariantIdError, match="reserved"), store.publish(reserved):
        pass
    assert store.ids() == []


def test_size_tiers() -> None:
    assert size_tier_for(39_000_000) == "tiny"
    assert size_tier_for(74_000_000) == "base"
    assert size_tier_for(244_000_000) == "small"
    assert size_tier_for(769_000_000) == "medium"
    assert size_tier_for(1_550_000_000) == "large"


def test_covers() -> None:
    multilingual = Manifest.model_validate({**FIELDS, "id": "m", "weights": (), "bytes_on_disk": 0})
    english = multilingual.model_copy(update={"multilingual": False})
    assert multilingual.covers("cs")
    assert english.covers("en")
    assert not english.covers("cs")


def test_a_store_this_user_may_not_write_to_is_named_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(tmp_path)
    _publish_dummy(store, "kept")

    def refused(*args: object, **kwargs: object) -> str:  # what mkdtemp raises in a read-only directory
        raise PermissionError(13, "Permission denied", str(tmp_path / ".staging-x"))

    monkeypatch.setattr(tempfile, "mkdtemp", refused)  # chmod cannot stop root, who runs CI
    with pytest.raises(StoreRootError, match="is not writable"):
        _publish_dummy(store, "new")
    with pytest.raises(StoreRootError, match="is not writable"):
        store.remove("kept")
    assert store.ids() == ["kept"]
