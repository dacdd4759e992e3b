"""Whisper's decoder stepped for rows that join and leave independently (continuous batching).

transformers' key/value caches keep one length for every row of a batch, and their internals differ
between 4.x and 5.x, so rows that start at different times cannot share them. :class:`DecoderRows`
computes the decoder itself from the model's own modules (embeddings, layer norms, Linears: whatever
the loader put there, float, dynamic int8, per-token int8 or 4-bit), with key/value tensors it owns:

* cross-attention keys and values: one slot per row, computed once when the row joins;
* self-attention keys and values: one slot per row of ``max_target_positions`` positions; a row's
  step writes its own next position and attends to its own positions only (a boolean mask).

Rows fill slots ``0..n-1`` with no gaps, so a step runs on views of the tensors, never gathers: a row
that leaves is replaced by the last row (that row's slot is copied over it), so rows move between slots
but their contents never change. The arithmetic is transformers' Whisper decoder, step for step (queries
scaled before the product, as transformers does, scaled dot-product attention with scale 1).

A row's output does not depend on the rows beside it, with one exception handled here: PyTorch's
dynamic int8 Linear quantizes its whole input with one scale, so in a step those Linears run row by row
(one row is what the row's lone decode gives them; fbgemm at one row is fast, see the README).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch
from torch import nn
from torch.nn import functional
from transformers import WhisperForConditionalGeneration

from model_store.backends.legacy_int8 import quantizes_per_matrix

Owner = TypeVar("Owner", bound=Hashable)


def per_matrix_decoding_modules(model: WhisperForConditionalGeneration) -> list[nn.Module]:
    """The modules decoding runs (the decoder and the output projection; the encoder never runs in a
    step) that quantize a whole input matrix with one scale, so that rows batched through them would
    change each other's output."""
    decoding = [*model.model.decoder.modules(), model.proj_out]
    return [module for module in decoding if quantizes_per_matrix(module)]


@dataclass
class _Slots:
    """Keys and values of every layer, ``(layers, slots, heads, positions, head_dim)`` each."""

    self_keys: torch.Tensor
    self_values: torch.Tensor
    cross_keys: torch.Tensor
    cross_values: torch.Tensor

    @property
    def allocated(self) -> int:
        return int(self.self_keys.shape[1])

    @property
    def encoder_positions(self) -> int:
        return int(self.cross_keys.shape[3])

    def grown(self, slots: int) -> _Slots:
        """The same contents in ``slots`` slots (the new ones zero: masked positions must be finite)."""

        def grow(tensor: torch.Tensor) -> torch.Tensor:
            extra = torch.zeros(
                (tensor.shape[0], slots - tensor.shape[1], *tensor.shape[2:]),
                dtype=tensor.dtype,
                device=tensor.device,
            )
            return torch.cat((tensor, extra), dim=1)

        return _Slots(*(grow(tensor) for tensor in self.tensors()))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.self_keys, self.self_values, self.cross_keys, self.cross_values

    def move(self, source: int, target: int) -> None:
        for tensor in self.tensors():
            tensor[:, target] = tensor[:, source]


class DecoderRows(Generic[Owner]):
    """Rows of a Whisper decoder, each with its own encoder output, prompt and position.

    :meth:`admit` runs a row's prompt and returns its logits; :meth:`step` feeds every row one token
    and returns each row's next logits; :meth:`release` frees a row's slot. ``owners`` gives the rows
    in slot order, the order of :meth:`step`'s tokens and logits. Not thread-safe: one scheduler
    thread drives it.
    """

    def __init__(self, model: WhisperForConditionalGeneration, *, capacity: int) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        config = model.config
        self.capacity = capacity
        self._model = model
        self._decoder: Any = model.model.decoder  # module attributes, typed loosely
        self._heads = int(config.decoder_attention_heads)
        self._head_dim = int(config.d_model) // self._heads
        self._scaling = self._head_dim**-0.5
        self.max_positions = int(config.max_target_positions)
        self._owners: list[Owner] = []
        self._lengths: list[int] = []  # positions written in each slot
        self._slots: _Slots | None = None
        # Linears that quantize their whole input at once: a step runs them one row at a time
        self._per_matrix = {id(module) for module in per_matrix_decoding_modules(model)}

    @property
    def owners(self) -> list[Owner]:
        return list(self._owners)

    @property
    def slot_bytes(self) -> int:
        """Bytes of the key/value slots allocated now (kept at their high-water mark for reuse)."""
        return 0 if self._slots is None else sum(tensor.nbytes for tensor in self._slots.tensors())

    def __len__(self) -> int:
        return len(self._owners)

    def can_admit(self, encoded: torch.Tensor) -> bool:
        """Room for one more row, and its encoder output has the positions of the rows running."""
        if len(self._owners) >= self.capacity:
            return False
        return not self._owners or self._slots is None or self._slots.encoder_positions == encoded.shape[1]

    @torch.inference_mode()
    def admit(self, owner: Owner, encoded: torch.Tensor, prompt: list[int]) -> torch.Tensor:
        """Start a row: ``encoded`` is its encoder output ``(1, positions, width)``; returns the
        logits of every prompt position ``(len(prompt), vocabulary)``."""
        if not self.can_admit(encoded):
            raise ValueError("no room for this row (full, or its encoder output has other positions)")
        if not prompt or len(prompt) >= self.max_positions:
            raise ValueError(f"a prompt needs 1 to {self.max_positions - 1} tokens, got {len(prompt)}")
        if owner in self._owners:
            raise ValueError(f"{owner!r} already has a row")
        slot = len(self._owners)
        length = len(prompt)
        ids = torch.tensor([prompt], device=encoded.device)
        hidden = self._decoder.embed_tokens(ids) + self._decoder.embed_positions.weight[:length]
        for index, layer in enumerate(self._decoder.layers):
            query, keys, values = self._projections(layer.self_attn, layer.self_attn_layer_norm(hidden))
            cross_keys, cross_values = self._keys_values(layer.encoder_attn, encoded)
            slots = self._room(slot, keys, cross_keys)
            slots.self_keys[index, slot, :, :length] = keys[0]
            slots.self_values[index, slot, :, :length] = values[0]
            slots.cross_keys[index, slot] = cross_keys[0]
            slots.cross_values[index, slot] = cross_values[0]
            attended = functional.scaled_dot_product_attention(query, keys, values, is_causal=True, scale=1.0)
            hidden = hidden + self._output(layer.self_attn, attended)
            hidden = hidden + self._cross(layer, hidden, cross_keys, cross_values)
            hidden = hidden + self._feed_forward(layer, hidden)
        self._owners.append(owner)
        self._lengths.append(length)
        return self._logits(hidden)[0]

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed each row (in slot order) its next token; returns the next logits ``(rows, vocabulary)``."""
        rows = len(self._owners)
        if len(tokens) != rows or self._slots is None:
            raise ValueError(f"{rows} rows need {rows} tokens, got {len(tokens)}")
        if max(self._lengths) >= self.max_positions:
            raise ValueError(f"a row has reached the decoder's {self.max_positions} positions")
        slots = self._slots
        device = slots.self_keys.device
        ids = torch.tensor(tokens, device=device).unsqueeze(1)
        positions = torch.tensor(self._lengths, device=device)
        span = max(self._lengths) + 1
        visible = (torch.arange(span, device=device) <= positions.unsqueeze(1)).view(rows, 1, 1, span)
        row_index = torch.arange(rows, device=device)
        position_embeddings = self._decoder.embed_positions.weight[positions].unsqueeze(1)
        hidden = self._decoder.embed_tokens(ids) + position_embeddings
        for index, layer in enumerate(self._decoder.layers):
            query, keys, values = self._projections(layer.self_attn, layer.self_attn_layer_norm(hidden))
            slots.self_keys[index, row_index, :, positions] = keys[:, :, 0]
            slots.self_values[index, row_index, :, positions] = values[:, :, 0]
            attended = self._self_attention(query, slots, index, span, visible)
            hidden = hidden + self._output(layer.self_attn, attended)
            hidden = hidden + self._cross(
                layer, hidden, slots.cross_keys[index, :rows], slots.cross_values[index, :rows]
            )
            hidden = hidden + self._feed_forward(layer, hidden)
        self._lengths = [length + 1 for length in self._lengths]
        return self._logits(hidden)[:, 0]

    @torch.inference_mode()
    def release(self, owner: Owner) -> None:
        """Free ``owner``'s slot (the last row moves into it)."""
        slot = self._owners.index(owner)
        last = len(self._owners) - 1
        if slot != last and self._slots is not None:
            self._slots.move(last, slot)
            self._owners[slot] = self._owners[last]
            self._lengths[slot] = self._lengths[last]
        self._owners.pop()
        self._lengths.pop()

    def clear(self) -> None:
        """Drop every row and the key/value memory."""
        self._owners.clear()
        self._lengths.clear()
        self._slots = None

    # ---- the arithmetic of transformers' WhisperDecoderLayer ---------------------------------------

    def _run(self, module: Any, states: torch.Tensor) -> torch.Tensor:
        """``module(states)``, row by row where the module would couple the rows."""
        if states.shape[0] > 1 and id(module) in self._per_matrix:
            return torch.cat([module(states[row : row + 1]) for row in range(states.shape[0])])
        return module(states)

    def _heads_first(self, states: torch.Tensor) -> torch.Tensor:
        batch, length, _ = states.shape
        return states.view(batch, length, self._heads, self._head_dim).transpose(1, 2)

    def _projections(
        self, attention: Any, states: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        query = self._heads_first(self._run(attention.q_proj, states) * self._scaling)
        keys, values = self._keys_values(attention, states)
        return query, keys, values

    def _keys_values(self, attention: Any, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keys = self._run(attention.k_proj, states)
        return self._heads_first(keys), self._heads_first(self._run(attention.v_proj, states))

    def _output(self, attention: Any, attended: torch.Tensor) -> torch.Tensor:
        batch, _, length, _ = attended.shape
        return self._run(attention.out_proj, attended.transpose(1, 2).reshape(batch, length, -1))

    def _self_attention(
        self, query: torch.Tensor, slots: _Slots, layer: int, span: int, visible: torch.Tensor
    ) -> torch.Tensor:
        """Each row's query over its own keys: one masked product for all rows, or (where the model has
        row-coupling Linears, whose int8 rounding would magnify the float rounding of another shape)
        one unmasked product per row over exactly its positions, as its lone decode computes it."""
        rows = query.shape[0]
        keys, values = slots.self_keys[layer], slots.self_values[layer]
        if not self._per_matrix or rows == 1:
            return functional.scaled_dot_product_attention(
                query, keys[:rows, :, :span], values[:rows, :, :span], attn_mask=visible, scale=1.0
            )
        return torch.cat(
            [
                functional.scaled_dot_product_attention(
                    query[row : row + 1],
                    keys[row : row + 1, :, : self._lengths[row] + 1],
                    values[row : row + 1, :, : self._lengths[row] + 1],
                    scale=1.0,
                )
                for row in range(rows)
            ]
        )

    def _cross(
        self, layer: Any, hidden: torch.Tensor, keys: torch.Tensor, values: torch.Tensor
    ) -> torch.Tensor:
        attention = layer.encoder_attn
        query = self._run(attention.q_proj, layer.encoder_attn_layer_norm(hidden)) * self._scaling
        attended = functional.scaled_dot_product_attention(self._heads_first(query), keys, values, scale=1.0)
        return self._output(attention, attended)

    def _feed_forward(self, layer: Any, hidden: torch.Tensor) -> torch.Tensor:
        inner = layer.activation_fn(self._run(layer.fc1, layer.final_layer_norm(hidden)))
        return self._run(layer.fc2, inner)

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self._run(self._model.proj_out, self._decoder.layer_norm(hidden))

    def _room(self, slot: int, keys: torch.Tensor, cross_keys: torch.Tensor) -> _Slots:
        """Slots with room for ``slot``: allocated at the first row, doubled (up to capacity) as rows come."""
        slots = self._slots
        if slots is not None and (not self._owners and slots.encoder_positions != cross_keys.shape[2]):
            slots = None  # no row is running: the encoder positions may change
        if slots is None:
            layers = len(self._decoder.layers)
            shape = (layers, 1, self._heads, self.max_positions, self._head_dim)
            cross_shape = (layers, 1, self._heads, int(cross_keys.shape[2]), self._head_dim)
            slots = _Slots(
                torch.zeros(shape, dtype=keys.dtype, device=keys.device),
                torch.zeros(shape, dtype=keys.dtype, device=keys.device),
                torch.zeros(cross_shape, dtype=cross_keys.dtype, device=cross_keys.device),
                torch.zeros(cross_shape, dtype=cross_keys.dtype, device=cross_keys.device),
            )
        if slot >= slots.allocated:
            slots = slots.grown(min(self.capacity, max(slot + 1, 2 * slots.allocated)))
        self._slots = slots
        return slots
