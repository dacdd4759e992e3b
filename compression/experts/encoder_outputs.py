"""Where a batch's encoder outputs come from: the shared encoder cache (frozen encoder) or a live pass.

Experts in the decoder only leave the encoder frozen, so its outputs are computed once into
:class:`compression.training.encoder_cache.EncoderCache` and read back every epoch. Experts in the
encoder change what it computes, so its forward pass (with gradients) runs in every step.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import torch
from torch import nn

from model_store.features import log_mel_spectrogram, window

if TYPE_CHECKING:
    from compression.experts.data import Example
    from compression.training.encoder_cache import EncoderCache


class EncoderOutputs(Protocol):
    """Encoder hidden states ``(batch, frames, d_model)`` for a batch's examples."""

    def __call__(self, examples: Sequence[Example]) -> torch.Tensor: ...


class CachedEncoderOutputs:
    """Reads the frozen encoder's outputs from the shared cache (filled beforehand)."""

    def __init__(self, cache: EncoderCache, corpus_id: str, device: torch.device, dtype: torch.dtype) -> None:
        self.cache = cache
        self.corpus_id = corpus_id
        self.device = device
        self.dtype = dtype

    def __call__(self, examples: Sequence[Example]) -> torch.Tensor:
        hidden = [self.cache.load(self.corpus_id, example.utterance.id) for example in examples]
        return torch.stack(hidden).to(self.device, self.dtype)


class LiveEncoderOutputs:
    """Runs the encoder on the batch's audio every time (with gradients when it has trainable parts)."""

    def __init__(self, encoder: nn.Module, n_mels: int, device: torch.device, dtype: torch.dtype) -> None:
        self.encoder = encoder
        self.n_mels = n_mels
        self.device = device
        self.dtype = dtype

    def __call__(self, examples: Sequence[Example]) -> torch.Tensor:
        features = torch.stack(
            [
                window(log_mel_spectrogram(example.utterance.load_audio(), self.n_mels), 0)
                for example in examples
            ]
        ).to(self.device, self.dtype)
        trains = any(parameter.requires_grad for parameter in self.encoder.parameters())
        with torch.set_grad_enabled(trains and torch.is_grad_enabled()):
            return self.encoder(features).last_hidden_state
