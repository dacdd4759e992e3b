"""The variant a quantized one is made from: a float transformers checkpoint in the store."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import WhisperForConditionalGeneration

from model_store.backends.experts import METHOD as EXPERTS_METHOD
from model_store.backends.quantized_loading import weights_format
from model_store.errors import HushError
from model_store.manifest import MANIFEST_FILENAME, Manifest
from model_store.store import ModelStore

# Files of a transformers checkpoint that hold weights; everything else (configs, tokenizer,
# processor) is copied unchanged into a variant that keeps the transformers layout.
_WEIGHT_PATTERNS = ("*.safetensors", "*.safetensors.index.json", "pytorch_model*.bin")


class UnsupportedParentError(HushError, ValueError):
    """A parent variant that a quantization method cannot start from."""


@dataclass(frozen=True)
class Parent:
    """A float transformers variant opened for quantization."""

    manifest: Manifest
    directory: Path

    @classmethod
    def from_store(cls, store: ModelStore, variant_id: str) -> Parent:
        manifest = store.verify(variant_id)
        if manifest.recipe.method == EXPERTS_METHOD:
            raise UnsupportedParentError(
                f"variant {variant_id!r} carries language experts beside its weights; start from its parent "
                f"{manifest.parent!r} instead"
            )
        if manifest.backend != "transformers" or weights_format(manifest) != "transformers":
            raise UnsupportedParentError(
                f"variant {variant_id!r} ({manifest.backend}, {manifest.recipe.method}) is not a float "
                "transformers checkpoint; quantize its own parent instead"
            )
        return cls(manifest, store.path(variant_id))

    def load_float(self, dtype: torch.dtype = torch.float32) -> WhisperForConditionalGeneration:
        model = WhisperForConditionalGeneration.from_pretrained(
            self.directory, torch_dtype=dtype, local_files_only=True
        )
        return model.eval()

    def weights_digest(self) -> str:
        """One SHA-256 over the parent's weight files (their hashes, in path order)."""
        return self.manifest.weights_sha256()

    def copy_assets(self, target: Path, *, skip_existing: bool = True) -> None:
        """Copy the configs, tokenizer and processor files (not the weights) into ``target``."""
        weights = {path for pattern in _WEIGHT_PATTERNS for path in self.directory.glob(pattern)}
        for path in sorted(self.directory.iterdir()):
            if not path.is_file() or path in weights or path.name == MANIFEST_FILENAME:
                continue
            if skip_existing and (target / path.name).exists():
                continue
            shutil.copy2(path, target / path.name)

    def with_weights(self, model: WhisperForConditionalGeneration, directory: Path) -> Parent:
        """This parent with ``model``'s weights (say, smoothed) in place of its own: a checkpoint saved
        (in ``model``'s precision) into ``directory`` (a scratch directory the caller removes), with this
        parent's manifest (so lineage names the stored parent) and its tokenizer and processor files."""
        model.save_pretrained(directory)
        self.copy_assets(directory)  # keeps the config and generation config just saved
        return Parent(self.manifest, directory)
