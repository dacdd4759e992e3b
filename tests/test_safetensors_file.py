"""Weights saved twice give the same bytes (the library writes metadata in hash-map order)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from model_store.safetensors_file import save_safetensors

METADATA = {f"key{index}": f"value {index}" for index in range(8)}
TENSORS = {"b.weight": torch.arange(6.0).reshape(2, 3), "a.codes": torch.tensor([1, -2, 3], dtype=torch.int8)}


def test_the_same_content_gives_the_same_bytes_and_reads_back(tmp_path: Path) -> None:
    digests = set()
    for attempt in range(6):  # eight keys: the library's order would differ between some of these
        path = tmp_path / f"{attempt}.safetensors"
        save_safetensors(TENSORS, path, metadata=METADATA)
        digests.add(hashlib.sha256(path.read_bytes()).hexdigest())
    assert len(digests) == 1
    loaded = load_file(str(path))
    assert loaded.keys() == TENSORS.keys()
    for name, tensor in TENSORS.items():
        assert torch.equal(loaded[name], tensor)
    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata() == METADATA
