"""Runs a variant stored as a transformers Whisper checkpoint, with hush's own decoding loop."""

from __future__ import annotations

import gc
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperTokenizer
from transformers.modeling_outputs import BaseModelOutput

from model_store.backends.bf16_attention import use_bf16_encoder_attention
from model_store.backends.cache_keyword import cache_keyword
from model_store.backends.decoder_rows import DecoderRows, per_matrix_decoding_modules
from model_store.backends.legacy_int8 import quantizes_per_matrix
from model_store.backends.quantized_loading import load_model
from model_store.backends.window_transcriber import TokenizerText, WindowTranscriber
from model_store.continuous_batching import ContinuousDecoder
from model_store.features import Mel
from model_store.logit_rules import LogitRules
from model_store.longform import is_looping
from model_store.manifest import Manifest
from model_store.settings import BatchingSettings
from model_store.transcription import Word
from model_store.whisper_tokens import SpecialTokens, special_tokens
from model_store.window_decoding import DecodeResult, WindowDecoding, shared_decoding
from model_store.word_timing import align_words

logger = logging.getLogger(__name__)


class TransformersWindowDecoder(TokenizerText):
    """Greedy or sampled decoding of windows with a key/value cache, one at a time or several per pass."""

    accepts_short_windows = False  # transformers' Whisper encoder insists on 3,000 frames

    def __init__(
        self,
        model: WhisperForConditionalGeneration,
        tokenizer: WhisperTokenizer,
        tokens: SpecialTokens,
        generation: GenerationConfig,
        device: torch.device,
        dtype: torch.dtype,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.device = device
        self.dtype = dtype
        # dynamic int8 Linears quantize a whole batch with one scale: batched calls must not mix rows there
        self._encoder_per_matrix = any(
            quantizes_per_matrix(module) for module in model.model.encoder.modules()
        )
        self._decoder_per_matrix = bool(per_matrix_decoding_modules(model))
        self._cache_keyword = cache_keyword(model)  # "cache" in transformers 5, "past_key_values" in 4
        suppress = list(getattr(generation, "suppress_tokens", None) or [])
        begin_suppress = list(getattr(generation, "begin_suppress_tokens", None) or [])
        self._rules = {
            flag: LogitRules.build(
                tokens, suppress=suppress, begin_suppress=begin_suppress, with_timestamps=flag
            )
            for flag in (True, False)
        }
        self._seed = seed
        self._per_thread = threading.local()  # a server's worker threads share one decoder
        heads = getattr(generation, "alignment_heads", None) or []
        last = model.config.decoder_layers - 1
        self._alignment_heads: list[tuple[int, int]] = [(int(layer), int(head)) for layer, head in heads] or [
            (last, head) for head in range(model.config.decoder_attention_heads)
        ]

    def seed_sampling(self, seed: int) -> None:
        """Restart this thread's sampling from ``seed`` (each transcription does, for reproducibility)."""
        self._per_thread.generator = torch.Generator().manual_seed(seed)

    def _generator(self) -> torch.Generator:
        """This thread's sampling generator: torch generators are not safe to share between threads."""
        generator: torch.Generator | None = getattr(self._per_thread, "generator", None)
        if generator is None:
            generator = torch.Generator().manual_seed(self._seed)
            self._per_thread.generator = generator
        return generator

    @torch.inference_mode()
    def encode(self, features: Mel | torch.Tensor) -> torch.Tensor:
        batch = torch.as_tensor(features).unsqueeze(0).to(self.device, self.dtype)
        return self.model.model.encoder(batch).last_hidden_state

    @torch.inference_mode()
    def encode_batch(self, windows: Sequence[Mel]) -> list[torch.Tensor]:
        """One encoder pass over the stacked windows; each window's output is a (1, positions, width) view.

        Where the encoder has dynamic int8 Linears (one activation scale per input matrix), the windows
        run one by one instead, so that each keeps the output it has alone."""
        if self._encoder_per_matrix:  # one activation scale over every window would couple them
            return [self.encode(one) for one in windows]
        batch = torch.as_tensor(np.stack(windows)).to(self.device, self.dtype)
        hidden = self.model.model.encoder(batch).last_hidden_state
        return [hidden[index : index + 1] for index in range(len(windows))]

    @torch.inference_mode()
    def decode(self, encoded: Any, prompt: list[int], decoding: WindowDecoding) -> DecodeResult:
        return self.decode_batch([encoded], [prompt], [decoding])[0]

    @torch.inference_mode()
    def decode_batch(
        self, encoded: Sequence[Any], prompts: Sequence[list[int]], decodings: Sequence[WindowDecoding]
    ) -> list[DecodeResult]:
        """``decode`` of each (window, prompt, decoding) with one forward pass a step for all of them.

        The prompts must have one length and the decodings must step together (the batcher groups
        them so; each row keeps its own repetition limit); a window that has ended keeps
        its row until every window has, and its result is not touched after its end. One decoding
        loop serves both: ``decode`` is a batch of one. Where the decoder has dynamic int8 Linears
        (one activation scale per input matrix), the windows are decoded one after the other.
        """
        if len({len(prompt) for prompt in prompts}) > 1:
            raise ValueError("a batched decode needs prompts of one length")
        if not len(encoded) == len(prompts) == len(decodings):
            raise ValueError("a batched decode needs one window, prompt and decoding a row")
        shared = shared_decoding(decodings)
        if self._decoder_per_matrix and len(prompts) > 1:  # dynamic int8 would mix the rows' scales
            return [
                self.decode(one, prompt, decoding)
                for one, prompt, decoding in zip(encoded, prompts, decodings, strict=True)
            ]
        temperature = shared.temperature
        rules = self._rules[shared.with_timestamps]
        rows = len(prompts)
        encoder_outputs = BaseModelOutput(last_hidden_state=torch.cat(list(encoded)))
        input_ids = torch.tensor([list(prompt) for prompt in prompts], device=self.device)
        sot_indices = torch.tensor([prompt.index(self.tokens.sot) for prompt in prompts], device=self.device)
        sampled: list[list[int]] = [[] for _ in range(rows)]
        sums = [0.0] * rows
        no_speech = [0.0] * rows
        finished = [False] * rows
        past: Any = None
        for step in range(shared.max_new_tokens):
            output = self.model(
                encoder_outputs=encoder_outputs,
                decoder_input_ids=input_ids,
                use_cache=True,
                **{self._cache_keyword: past},
            )
            past = getattr(output, self._cache_keyword)
            if step == 0:
                first = output.logits[torch.arange(rows, device=self.device), sot_indices].float()
                no_speech = torch.softmax(first, dim=-1)[:, self.tokens.no_speech].tolist()
            logits = output.logits[:, -1].float()
            rules.apply_rows(logits, sampled)  # masks in place
            log_probs = torch.log_softmax(logits, dim=-1)
            if temperature > 0:
                probs = torch.softmax(logits / temperature, dim=-1).cpu()
                chosen = torch.multinomial(probs, 1, generator=self._generator()).to(self.device)
            else:
                chosen = logits.argmax(dim=-1, keepdim=True)
            # One copy to the host a step: each row's token id (exact in float64) and its log-probability.
            picked = torch.cat((chosen.double(), log_probs.gather(1, chosen).double()), dim=1).tolist()
            for row, (token_id, log_prob) in enumerate(picked):
                token = int(token_id)
                if finished[row]:
                    continue
                if token == self.tokens.eot:
                    finished[row] = True
                    continue
                sums[row] += log_prob
                sampled[row].append(token)
                limit = decodings[row].repetition_limit
                if limit is not None and is_looping(sampled[row], self.text, limit):
                    finished[row] = True
            if all(finished):
                break
            input_ids = chosen
        return [(sampled[row], sums[row], no_speech[row]) for row in range(rows)]

    def continuous_decoder(self, name: str, max_batch: int, timeout_seconds: float) -> ContinuousDecoder:
        """A scheduler that decodes this model's windows in one running batch (continuous batching)."""
        return ContinuousDecoder(
            name,
            DecoderRows(self.model, capacity=max_batch),
            tokens=self.tokens,
            rules=self._rules,
            text=self.text,
            timeout_seconds=timeout_seconds,
            generator=torch.Generator().manual_seed(self._seed),
        )

    @torch.inference_mode()
    def language_probabilities_batch(self, encoded: Sequence[torch.Tensor]) -> list[dict[str, float]]:
        """``language_probabilities`` of each window, from one decoder pass (one per window where the
        decoder has dynamic int8 Linears, as :meth:`encode_batch` does for the encoder)."""
        if not self.tokens.languages:
            return [{"en": 1.0} for _ in encoded]
        if self._decoder_per_matrix and len(encoded) > 1:
            return [self.language_probabilities_batch([one])[0] for one in encoded]
        logits = (
            self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=torch.cat(list(encoded))),
                decoder_input_ids=torch.full((len(encoded), 1), self.tokens.sot, device=self.device),
            )
            .logits[:, -1]
            .float()
        )
        codes = list(self.tokens.languages)
        ids = torch.tensor([self.tokens.languages[code] for code in codes], device=logits.device)
        probabilities = torch.softmax(logits[:, ids], dim=-1).tolist()
        return [
            dict(sorted(zip(codes, row, strict=True), key=lambda item: -item[1])) for row in probabilities
        ]

    @torch.inference_mode()
    def words(
        self,
        encoded: Any,
        prompt: list[int],
        text_tokens: list[int],
        language: str,
        time_offset: float,
        frames: int,
    ) -> list[Word]:
        if not text_tokens:
            return []
        ids = [*prompt, *text_tokens, self.tokens.eot]
        attention, logits = self._alignment_attention(encoded, ids)
        rows = slice(len(prompt) - 1, len(ids) - 1)  # positions that predict each text token and the end
        probabilities = torch.softmax(logits[0, rows].float(), dim=-1)
        token_probabilities = [float(probabilities[index, token]) for index, token in enumerate(text_tokens)]
        return align_words(
            attention[:, rows].double().cpu().numpy(),
            text_tokens,
            token_probabilities,
            self.text,
            language,
            time_offset,
            frames,
        )

    def _alignment_attention(
        self, encoded: torch.Tensor, ids: list[int]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-attention weights of the alignment heads, (heads, len(ids), positions), and the logits.

        Queries are captured by hooks on the alignment layers (only in this thread, so concurrent requests
        on the same model are unaffected) and the keys recomputed from the encoder output.
        """
        layers = self.model.model.decoder.layers
        captured: dict[int, torch.Tensor] = {}
        caller = threading.get_ident()
        handles = []
        for layer in {layer for layer, _ in self._alignment_heads}:

            def keep(_module: Any, _inputs: Any, output: torch.Tensor, layer: int = layer) -> None:
                if threading.get_ident() == caller:
                    captured[layer] = output

            handles.append(layers[layer].encoder_attn.q_proj.register_forward_hook(keep))
        try:
            logits = self.model(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                decoder_input_ids=torch.tensor([ids], device=self.device),
                use_cache=False,
            ).logits
        finally:
            for handle in handles:
                handle.remove()
        heads = []
        for layer, head in self._alignment_heads:
            attention = layers[layer].encoder_attn
            head_dim = attention.head_dim
            query = captured[layer][0, :, head * head_dim : (head + 1) * head_dim].float()
            key = attention.k_proj(encoded)[0, :, head * head_dim : (head + 1) * head_dim].float()
            heads.append(torch.softmax(query @ key.T * head_dim**-0.5, dim=-1))
        return torch.stack(heads), logits

    def language_probabilities(self, encoded: torch.Tensor) -> dict[str, float]:
        return self.language_probabilities_batch([encoded])[0]


class TransformersTranscriber(WindowTranscriber):
    """A stored transformers checkpoint opened for transcription.

    The weights are loaded as the manifest's recipe stored them (float, dynamic int8, bitsandbytes):
    see :mod:`model_store.backends.quantized_loading`.
    """

    _decoder: TransformersWindowDecoder

    def __init__(
        self,
        manifest: Manifest,
        directory: Path,
        *,
        device: str = "cpu",
        dtype: torch.dtype | None = None,
        model: WhisperForConditionalGeneration | None = None,
        batching: BatchingSettings | None = None,
        int8_full_range: bool = False,
        bf16_encoder_attention: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype or (torch.float32 if self.device.type == "cpu" else torch.float16)
        self.model = (
            model
            if model is not None
            else load_model(manifest, directory, self.device, self.dtype, int8_full_range=int8_full_range)
        )
        if bf16_encoder_attention:
            use_bf16_encoder_attention(self.model)
        tokenizer = WhisperTokenizer.from_pretrained(directory, local_files_only=True)
        generation = GenerationConfig.from_pretrained(directory, local_files_only=True)
        tokens = special_tokens(tokenizer, multilingual=manifest.multilingual)
        decoder = TransformersWindowDecoder(
            self.model, tokenizer, tokens, generation, self.device, self.dtype
        )
        super().__init__(manifest, decoder, int(self.model.config.num_mel_bins), batching)

    def close(self) -> None:
        super().close()
        del self.model
        del self._decoder
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
