"""Tiny randomly initialised Whispers for plumbing tests (never for accuracy claims).

They use the real multilingual tokenizer of the bundled base model, so every special token, language
and timestamp behaves as in a real checkpoint; only the weights are random and the sizes tiny.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

from compression.data.audio_io import write_flac
from compression.data.corpus import Record, write_index
from compression.importers.bundles import locate_bundle
from compression.importers.publish import publish_imported
from compression.importers.sources import ImportedWhisper
from compression.importers.whisper_assets import ct2_generation_settings, generation_config
from model_store.manifest import Manifest
from model_store.store import ModelStore
from model_store.transcription import Transcriber
from model_store.whisper_tokens import SpecialTokens, load_tokenizer, special_tokens


def tiny_random_whisper(seed: int = 0, *, d_model: int = 64, layers: int = 2) -> ImportedWhisper:
    files = locate_bundle("whisper-base", verify=False)
    tokenizer = load_tokenizer(files.tokenizer)
    tokens = special_tokens(tokenizer, multilingual=True)
    settings = ct2_generation_settings(files.config)
    config = WhisperConfig(
        vocab_size=len(tokenizer),
        num_mel_bins=80,
        d_model=d_model,
        encoder_layers=layers,
        decoder_layers=layers,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=4 * d_model,
        decoder_ffn_dim=4 * d_model,
        max_source_positions=1500,
        max_target_positions=448,
        pad_token_id=tokens.eot,
        bos_token_id=tokens.eot,
        eos_token_id=tokens.eot,
        decoder_start_token_id=tokens.sot,
        suppress_tokens=settings["suppress_tokens"],
        begin_suppress_tokens=settings["begin_suppress_tokens"],
    )
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    generation = generation_config(
        tokens,
        suppress=settings["suppress_tokens"],
        begin_suppress=settings["begin_suppress_tokens"],
        alignment_heads=[[layers - 1, 0]],
    )
    model.generation_config = generation
    return ImportedWhisper(
        model, tokenizer, generation, True, origin="random-init", details={"seed": seed, "d_model": d_model}
    )


def publish_tiny_variant(store: ModelStore, variant_id: str = "tiny-random", seed: int = 0) -> Manifest:
    return publish_imported(store, tiny_random_whisper(seed), variant_id)


def store_with_tiny_variants(root: Path, *variant_ids: str) -> ModelStore:
    store = ModelStore(root)
    for index, variant_id in enumerate(variant_ids or ("tiny-random",)):
        publish_tiny_variant(store, variant_id, seed=index)
    return store


def recorded_encoder_inputs(transcriber: Transcriber) -> list[int]:
    """Frames of every window the transcriber's engine encodes from now on (the real call, wrapped)."""
    decoder = transcriber._driver  # type: ignore[attr-defined]
    engine_encode = decoder.encode
    frames: list[int] = []

    def encode(features: Any) -> Any:
        frames.append(int(features.shape[-1]))
        return engine_encode(features)

    decoder.encode = encode
    return frames


def multilingual_special_tokens(languages: dict[str, int]) -> SpecialTokens:
    """Multilingual Whisper's special token ids, without loading a tokenizer (``languages``: code -> id;
    empty for an English-only model)."""
    return SpecialTokens(
        eot=50257,
        sot=50258,
        translate=50358,
        transcribe=50359,
        start_of_lm=50360,
        start_of_prev=50361,
        no_speech=50362,
        no_timestamps=50363,
        timestamp_begin=50364,
        languages=languages,
    )


def tiny_corpus(directory: Path) -> Path:
    records = []
    for language in ("en", "cs"):
        for number, split in enumerate(("train", "train", "train", "train", "dev", "test", "test")):
            path = f"audio/{language}/t/{language}{number}.flac"
            tone = 0.3 * np.sin(2 * np.pi * (200 + 70 * number) * np.arange(16_000) / 16_000)
            samples = (tone * 32767).astype(np.int16)
            write_flac(directory / path, samples)
            text = f"tone number {number}"
            records.append(
                Record(f"{language}-{number}", path, language, text, 1.0, "t", "s", split, True, "CC0")
            )
    write_index(directory, "tiny-corpus", records, {"made": "by a test"})
    return directory
