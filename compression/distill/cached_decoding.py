"""Greedy decoding from cached encoder outputs, with the serving decoder's logit rules.

Pseudo-labelling the train split and the quick dev evaluation of students both decode one 30 s window
per utterance whose encoder output is already in an :class:`~compression.training.encoder_cache.EncoderCache`:
they skip the encoder (the expensive part on a CPU) and reuse hush's own window decoder
(:class:`model_store.backends.transformers_backend.TransformersWindowDecoder`), language given, no
timestamps, temperature 0, so the text is what ``hush eval`` would produce for a clip under 30 s
(without its temperature fallback, which evaluation disables too).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext

import torch
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperTokenizer

from model_store.backends.experts.attach import ExpertModel
from model_store.backends.transformers_backend import TransformersWindowDecoder
from model_store.transcription import TranscribeOptions
from model_store.whisper_tokens import MAX_TARGET_LENGTH, SpecialTokens, transcription_prompt
from model_store.window_decoding import WindowDecoding

MAX_NEW_TOKENS = MAX_TARGET_LENGTH // 2  # OpenAI Whisper's sample_len
# Greedy, no timestamps, and a looping window stopped where hush eval stops it (the default
# compression-ratio threshold).
GREEDY_TEXT = WindowDecoding(
    temperature=0.0,
    max_new_tokens=MAX_NEW_TOKENS,
    with_timestamps=False,
    repetition_limit=TranscribeOptions().compression_ratio_threshold,
)


class CachedGreedyDecoder:
    """Greedy text of a model from a cached ``(frames, d_model)`` encoder output. With ``experts``
    (decoder experts attached to ``model``), each utterance runs its language's experts, or the shared
    branch alone for a language without any, as the serving :class:`ExpertsTranscriber` does."""

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        tokenizer: WhisperTokenizer,
        tokens: SpecialTokens,
        generation: GenerationConfig,
        device: torch.device | None = None,
        experts: ExpertModel | None = None,
    ) -> None:
        if experts is not None and "encoder" in experts.spec.stacks:
            raise ValueError("encoder experts change the encoder's outputs per language: use `hush eval`")
        self.experts = experts
        self.tokens = tokens
        self.device = device or torch.device("cpu")
        dtype = next(model.parameters()).dtype
        self._decoder = TransformersWindowDecoder(model, tokenizer, tokens, generation, self.device, dtype)
        self._dtype = dtype

    def prompt(self, language: str) -> list[int]:
        return transcription_prompt(self.tokens, language)

    def token_ids(self, hidden: torch.Tensor, language: str) -> list[int]:
        encoded = hidden.unsqueeze(0).to(self.device, self._dtype)
        experts = self.experts
        routed = (
            nullcontext()
            if experts is None
            else experts.control.use(language if language in experts.languages else None)
        )
        with routed:
            tokens, _, _ = self._decoder.decode(encoded, self.prompt(language), GREEDY_TEXT)
        return tokens

    def token_ids_batch(self, hidden: torch.Tensor, prompts: Sequence[list[int]]) -> list[list[int]]:
        """Greedy token ids of each row of ``hidden`` ``(rows, frames, d_model)`` after its prompt (one
        length for all), one forward pass a step for every row; no experts."""
        if self.experts is not None:
            raise ValueError("a batched decode routes no experts: decode one utterance at a time")
        decoded = self._decoder.decode_batch(
            [row.unsqueeze(0).to(self.device, self._dtype) for row in hidden],
            prompts,
            [GREEDY_TEXT] * len(prompts),
        )
        return [tokens for tokens, _, _ in decoded]

    def text(self, hidden: torch.Tensor, language: str) -> str:
        return self._decoder.text(self.token_ids(hidden, language)).strip()

    def text_tokens(self, text: str) -> list[int]:
        return self._decoder.text_tokens(text)
