"""What a running decode batch holds in memory, from a variant's config alone (no torch import: the
server sizes its memory budget with it, and a server of CTranslate2 variants never loads torch)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def full_batch_bytes(config: Mapping[str, Any], rows: int, element_bytes: int) -> int:
    """Bytes of :class:`~model_store.backends.decoder_rows.DecoderRows`' key/value slots at ``rows``
    rows of full 30 s windows: self-attention keys and values for ``max_target_positions`` and
    cross-attention ones for ``max_source_positions`` (the encoder's output positions), in every
    decoder layer, for a transformers Whisper ``config`` (its ``config.json``) and elements of
    ``element_bytes``."""
    positions = int(config["max_target_positions"]) + int(config["max_source_positions"])
    return 2 * int(config["decoder_layers"]) * rows * positions * int(config["d_model"]) * element_bytes
