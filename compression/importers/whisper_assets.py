"""Generation config for a Whisper imported from CTranslate2."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from transformers import GenerationConfig

from model_store.errors import SourceError
from model_store.whisper_tokens import MAX_INITIAL_TIMESTAMP_INDEX, MAX_TARGET_LENGTH, SpecialTokens


def ct2_generation_settings(config_json: Path) -> dict[str, Any]:
    """Suppressed tokens and alignment heads from CTranslate2's config.json."""
    try:
        raw = json.loads(config_json.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SourceError(f"cannot read {config_json}: {error}") from error
    return {
        "suppress_tokens": [int(token) for token in raw.get("suppress_ids", [])],
        "begin_suppress_tokens": [int(token) for token in raw.get("suppress_ids_begin", [])],
        "alignment_heads": [[int(layer), int(head)] for layer, head in raw.get("alignment_heads", [])],
    }


def generation_config(
    tokens: SpecialTokens, *, suppress: list[int], begin_suppress: list[int], alignment_heads: list[list[int]]
) -> GenerationConfig:
    """transformers' generation config, so ``generate()`` works on the checkpoint too."""
    settings: dict[str, Any] = {
        "decoder_start_token_id": tokens.sot,
        "eos_token_id": tokens.eot,
        "pad_token_id": tokens.eot,
        "bos_token_id": tokens.eot,
        "max_length": MAX_TARGET_LENGTH,
        "suppress_tokens": suppress,
        "begin_suppress_tokens": begin_suppress,
        "alignment_heads": alignment_heads,
        "no_timestamps_token_id": tokens.no_timestamps,
        "prev_sot_token_id": tokens.start_of_prev,
        "max_initial_timestamp_index": MAX_INITIAL_TIMESTAMP_INDEX,
        "is_multilingual": bool(tokens.languages),
        "task_to_id": {"transcribe": tokens.transcribe, "translate": tokens.translate},
    }
    if tokens.languages:
        # Not written for English-only models: transformers would then try to detect the language.
        settings["lang_to_id"] = {f"<|{code}|>": token for code, token in tokens.languages.items()}
    return GenerationConfig(**settings)
