"""The encoder's self-attention in bfloat16, blocked so that each block's scores stay in cache.

Whisper's encoder attends over 1,500 frames in each of its layers: on a CPU that is about 60% of the
encoder's time once its Linears run in int8, and torch's fused float32 kernel already runs it at the
core's float32 peak. With AVX512-BF16 (or AMX), oneDNN multiplies bfloat16 matrices at about twice
that rate. Materialising all scores (heads x 1,500 x 1,500) would cost more in memory traffic than it
saves, so queries go in blocks of :data:`QUERY_BLOCK`: scores of a block (bfloat16), softmax in float32,
probabilities rounded to bfloat16, then the block's output. Keys and values are converted once per
layer. The decoder's attention (one query a step, memory-bound) keeps the float32 kernel.

On Whisper-base's encoder (JFK) the output differs from float32 attention by 0.26-0.43% (relative,
per layer), mostly from rounding the scores to bfloat16: torch's CPU matmul returns bfloat16 for
bfloat16 inputs. That is a change of numerics, so a variant that uses it says so in its manifest
(``encoder_attention``) and is evaluated with it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS, AttentionInterface, PreTrainedModel

IMPLEMENTATION_NAME = "hush_bf16_encoder"
FALLBACK_IMPLEMENTATION = "sdpa"
QUERY_BLOCK = 64


def blocked_bf16_attention(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float
) -> torch.Tensor:
    """``softmax(q k^T * scaling) v`` for (batch, heads, positions, head_dim) tensors, returned as
    (batch, positions, heads, head_dim) float32 like transformers' attention functions."""
    batch, heads, positions, head_dim = query.shape
    scaled = query if scaling == 1.0 else query * scaling  # transformers' Whisper scales q itself
    query_rows = scaled.to(torch.bfloat16).reshape(batch * heads, positions, head_dim)
    keys_t = key.to(torch.bfloat16).reshape(batch * heads, -1, head_dim).transpose(1, 2).contiguous()
    values = value.to(torch.bfloat16).reshape(batch * heads, -1, head_dim)
    output = torch.empty(batch, positions, heads, head_dim, dtype=query.dtype, device=query.device)
    by_head = output.permute(0, 2, 1, 3)  # a view of output: (batch, heads, positions, head_dim)
    for start in range(0, positions, QUERY_BLOCK):
        stop = min(start + QUERY_BLOCK, positions)
        scores = torch.bmm(query_rows[:, start:stop], keys_t)
        probabilities = torch.softmax(scores, dim=-1, dtype=torch.float32).to(torch.bfloat16)
        block = torch.bmm(probabilities, values).view(batch, heads, stop - start, head_dim)
        by_head[:, :, start:stop] = block
    return output


def encoder_bf16_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: the encoder's unmasked self-attention in bfloat16
    blocks, everything else (the decoder, masks, training) through the float32 SDPA function."""
    if getattr(module, "is_decoder", True) or attention_mask is not None or module.training:
        fallback = ALL_ATTENTION_FUNCTIONS[FALLBACK_IMPLEMENTATION]
        result: tuple[torch.Tensor, None] = fallback(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
        return result
    scale = query.shape[-1] ** -0.5 if scaling is None else scaling
    return blocked_bf16_attention(query, key, value, scale), None


def use_bf16_encoder_attention(model: PreTrainedModel) -> None:
    """Route ``model``'s encoder self-attention through :func:`encoder_bf16_attention_forward`
    (registered with transformers under :data:`IMPLEMENTATION_NAME`; registering again is harmless)."""
    AttentionInterface.register(IMPLEMENTATION_NAME, encoder_bf16_attention_forward)
    model.config._attn_implementation = IMPLEMENTATION_NAME
