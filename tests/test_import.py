"""Importing Whisper checkpoints: exact conversion from CTranslate2, pinned checksums, every source kind."""

from __future__ import annotations

import shutil
from pathlib import Path

import ctranslate2
import pytest
import torch

from compression.importers.bundles import BUNDLES, locate_bundle, verify_parts
from compression.importers.ct2_format import read_ct2_model
from compression.importers.publish import import_to_store
from compression.importers.sources import load_source
from model_store.errors import ChecksumMismatchError, SourceError
from model_store.store import ModelStore
from tests.factories import tiny_random_whisper


@pytest.fixture(scope="module")
def tiny_ct2(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, torch.Tensor]]:
    """A tiny random transformers Whisper converted to CTranslate2 by CTranslate2's own converter."""
    root = tmp_path_factory.mktemp("tiny-ct2")
    whisper = tiny_random_whisper(seed=3)
    whisper.save(root / "hf", dtype=torch.float32)
    converter = ctranslate2.converters.TransformersConverter(str(root / "hf"), copy_files=["tokenizer.json"])
    converter.convert(str(root / "ct2"), quantization=None)
    return root / "ct2", {name: tensor.clone() for name, tensor in whisper.model.state_dict().items()}


def test_ct2_round_trip_is_exact(tiny_ct2: tuple[Path, dict[str, torch.Tensor]]) -> None:
    ct2_dir, original = tiny_ct2
    imported = load_source(str(ct2_dir))
    converted = imported.model.state_dict()
    assert set(converted) == set(original)
    for name, tensor in original.items():
        assert torch.equal(converted[name], tensor), name
    assert imported.multilingual
    assert imported.origin.startswith("ct2:")


def test_truncated_ct2_refused(tiny_ct2: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    ct2_dir, _ = tiny_ct2
    data = (ct2_dir / "model.bin").read_bytes()
    truncated = tmp_path / "model.bin"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(SourceError, match="truncated"):
        read_ct2_model([truncated])


def test_non_zero_key_bias_refused(tiny_ct2: tuple[Path, dict[str, torch.Tensor]], tmp_path: Path) -> None:
    """transformers' k_proj has no bias: a CTranslate2 file with one must not convert silently wrong."""
    from compression.importers.ct2_to_transformers import convert_ct2_whisper, whisper_config_from_ct2

    ct2_dir, _ = tiny_ct2
    model = read_ct2_model([ct2_dir / "model.bin"])
    name = "encoder/layer_0/self_attention/linear_0/bias"
    bias = model.variables[name].copy()
    bias[len(bias) // 3] = 1.0  # inside the key third
    model.variables[name] = bias
    config = whisper_config_from_ct2(model, eot=50257, sot=50258, suppress=[], begin_suppress=[])
    with pytest.raises(SourceError, match="non-zero bias"):
        convert_ct2_whisper(model, config)


def test_tampered_bundle_refused(tmp_path: Path) -> None:
    files = locate_bundle("whisper-tiny.en", verify=False)
    copy = tmp_path / "model.bin"
    shutil.copyfile(files.model_parts[0], copy)
    with copy.open("r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00\x01\x02")
    with pytest.raises(ChecksumMismatchError, match="SHA-256"):
        verify_parts(BUNDLES["whisper-tiny.en"], (copy,))
    truncated = tmp_path / "short.bin"
    truncated.write_bytes(files.model_parts[0].read_bytes()[:1000])
    with pytest.raises(ChecksumMismatchError, match="truncated"):
        verify_parts(BUNDLES["whisper-tiny.en"], (truncated,))


def test_local_transformers_directory(tmp_path: Path) -> None:
    whisper = tiny_random_whisper(seed=5)
    whisper.save(tmp_path / "checkpoint", dtype=torch.float32)
    store = ModelStore(tmp_path / "store")
    manifest = import_to_store(store, str(tmp_path / "checkpoint"), "local-tiny")
    assert manifest.parent is not None and manifest.parent.startswith("local:")
    assert manifest.recipe.method == "import"
    assert store.verify("local-tiny").parameters == sum(p.numel() for p in whisper.model.parameters())


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("no-such-bundle", "unknown source"),
        ("./missing/dir", "not a directory"),
    ],
)
def test_bad_sources(source: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        load_source(source)


def test_directory_that_is_no_checkpoint(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SourceError, match="neither"):
        load_source(str(tmp_path))
