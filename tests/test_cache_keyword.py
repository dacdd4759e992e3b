"""hush passes transformers' key/value cache under the name the installed version takes, so decoding
neither warns on every step (5.x) nor breaks when the old name is removed (5.40)."""

from __future__ import annotations

import warnings
from typing import Any

from torch import nn

from model_store.backends.cache_keyword import cache_keyword
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import TranscribeOptions
from tests.conftest import sine


class _NewStyle(nn.Module):
    def forward(self, inputs: Any, cache: Any = None, use_cache: bool = True) -> Any:
        return inputs


class _OldStyle(nn.Module):
    def forward(self, inputs: Any, past_key_values: Any = None, use_cache: bool = True) -> Any:
        return inputs


def test_the_keyword_follows_the_forward_signature() -> None:
    assert cache_keyword(_NewStyle()) == "cache"
    assert cache_keyword(_OldStyle()) == "past_key_values"


def test_decoding_with_the_cache_raises_no_deprecation(tiny_store: ModelStore) -> None:
    transcriber = open_variant(tiny_store, "tiny-random", RuntimeSettings(device="cpu"))
    options = TranscribeOptions(
        language="en", without_timestamps=True, max_new_tokens=12, temperatures=(0.0,)
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        transcriber.transcribe(sine(1.0), options)
    about_the_cache = [
        str(warning.message) for warning in caught if "past_key_values" in str(warning.message)
    ]
    assert about_the_cache == []
