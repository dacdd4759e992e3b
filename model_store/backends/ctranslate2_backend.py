"""Runs a variant stored as a CTranslate2 Whisper directory (faster-whisper's engine).

hush drives the engine window by window with its own long-form loop and features, as it drives the
transformers backend; CTranslate2 does the encoding, the decoding of one window (greedy or sampled,
with Whisper's timestamp rules, which it applies itself unless the prompt ends with
``<|notimestamps|>``), language detection and the cross-attention alignment behind word timestamps.

Semantics that differ from the transformers backend, and why they do not matter to the driver:

* ``generate``'s ``max_length`` counts the prompt: the engine decodes at most
  ``min(max_length // 2, max_length - start_step)`` tokens, ``start_step`` being the prompt tokens
  before its last one, so :func:`max_length_for` picks the value that yields ``max_new_tokens``.
* The engine returns the *mean* log-probability of the decoded tokens, the end-of-text token
  included; the decoder turns it back into a sum, which then includes the end-of-text token's
  log-probability (OpenAI Whisper counts it too; the transformers backend stops before adding it).
* Word probabilities are softmaxed over the text vocabulary only (as faster-whisper reports them).
"""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import ctranslate2
import numpy as np
import numpy.typing as npt
from transformers import WhisperTokenizer

from model_store.backends.window_transcriber import TokenizerText, WindowTranscriber
from model_store.batching import check_prompt
from model_store.features import Mel
from model_store.longform import loop_cut
from model_store.manifest import Manifest
from model_store.settings import BatchingSettings
from model_store.transcription import Word
from model_store.whisper_tokens import SpecialTokens, load_tokenizer, special_tokens, suppressed_tokens
from model_store.window_decoding import DecodeResult, WindowDecoding, shared_decoding
from model_store.word_timing import MEDIAN_FILTER_WIDTH, words_from_path

logger = logging.getLogger(__name__)

CT2_CONFIG_FILENAME = "config.json"
TOKENIZER_FILENAME = "tokenizer.json"


def max_length_for(prompt_length: int, max_new_tokens: int) -> int:
    """The ``max_length`` for which CTranslate2 decodes exactly ``max_new_tokens`` tokens at most."""
    start_step = prompt_length - 1
    wanted = max(1, max_new_tokens)
    return max(2 * wanted, wanted + start_step)


def compute_type_for(dtype: str, device: str, cuda_dtype: str = "float16") -> str:
    """The CTranslate2 compute type of a variant stored in ``dtype`` (``int8``, ``int8_float16``, ...)."""
    quantized = dtype.startswith("int8")
    if device == "cuda":
        return f"int8_{cuda_dtype}" if quantized else cuda_dtype
    return "int8" if quantized else "float32"


class CTranslate2WindowDecoder(TokenizerText):
    """One window at a time through ``ctranslate2.models.Whisper``."""

    accepts_short_windows = True  # the engine encodes any number of frames up to 3,000

    def __init__(
        self,
        model: ctranslate2.models.Whisper,
        tokenizer: WhisperTokenizer,
        tokens: SpecialTokens,
        suppress: list[int],
    ) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.tokens = tokens
        # The same suppressed set as the transformers backend: the model's list plus the task tokens.
        self._suppress = list(suppressed_tokens(tokens, suppress, with_timestamps=False))

    def seed_sampling(self, seed: int) -> None:
        """CTranslate2's sampling seed is process-wide: concurrent requests share one random stream."""
        ctranslate2.set_random_seed(seed)

    def encode(self, features: Mel) -> ctranslate2.StorageView:
        batch = np.ascontiguousarray(features[None], dtype=np.float32)
        return self.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=False)

    def encode_batch(self, windows: Sequence[Mel]) -> list[Encoded]:
        """One encoder pass over the stacked windows; each window's output is kept on the host (a
        (1, positions, width) array) so that any subset can be stacked again for a batched decode (the
        engine moves it back to its device)."""
        batch = np.ascontiguousarray(np.stack(windows), dtype=np.float32)
        encoded = self.model.encode(ctranslate2.StorageView.from_array(batch), to_cpu=True)
        if encoded.dtype == ctranslate2.DataType.bfloat16:  # NumPy has no bfloat16; float32 holds it exactly
            encoded = encoded.to(ctranslate2.DataType.float32)
        array = np.asarray(encoded)
        return [array[index : index + 1] for index in range(len(windows))]

    def decode(self, encoded: Any, prompt: list[int], decoding: WindowDecoding) -> DecodeResult:
        check_prompt(self.tokens, prompt, decoding.with_timestamps)
        result = self._generate(_storage(encoded), [prompt], decoding)[0]
        return self._decoded(result, decoding)

    def decode_batch(
        self, encoded: Sequence[Any], prompts: Sequence[list[int]], decodings: Sequence[WindowDecoding]
    ) -> list[DecodeResult]:
        """``decode`` of each (window, prompt, decoding) in one ``generate``: the prompts must have one
        length, with <|startoftranscript|> at one index (CTranslate2's requirement), and the decodings
        must step together (each row keeps its own repetition limit)."""
        if len({len(prompt) for prompt in prompts}) > 1:
            raise ValueError("a batched decode needs prompts of one length")
        shared = shared_decoding(decodings)
        for prompt in prompts:
            check_prompt(self.tokens, prompt, shared.with_timestamps)
        results = self._generate(_stacked(encoded), list(prompts), shared)
        return [self._decoded(result, decoding) for result, decoding in zip(results, decodings, strict=True)]

    def _generate(
        self,
        features: ctranslate2.StorageView,
        prompts: list[list[int]],
        decoding: WindowDecoding,
    ) -> list[Any]:
        temperature = decoding.temperature
        return list(
            self.model.generate(
                features,
                prompts,
                beam_size=1,
                max_length=max_length_for(len(prompts[0]), decoding.max_new_tokens),
                return_scores=True,
                return_no_speech_prob=True,
                suppress_blank=True,
                suppress_tokens=self._suppress,
                sampling_topk=0 if temperature > 0 else 1,
                sampling_temperature=temperature if temperature > 0 else 1.0,
            )
        )

    def _decoded(self, result: Any, decoding: WindowDecoding) -> DecodeResult:
        # CTranslate2's generate() has no per-step hook to stop a looping window early: it runs to
        # max_length, and the tokens are then cut where the step-by-step check would have stopped, so
        # both backends return the same output for a loop (only the compute is not saved).
        sampled = [int(token) for token in result.sequences_ids[0] if token != self.tokens.eot]
        # The score is the mean log-probability over the decoded tokens, end-of-text included when it
        # was reached (the engine counts it before stripping it): undo the mean to get the sum.
        counted = len(sampled) + (1 if len(sampled) < decoding.max_new_tokens else 0)
        sum_logprob = float(result.scores[0]) * max(1, counted)
        limit = decoding.repetition_limit
        cut = loop_cut(sampled, self.text, limit) if limit is not None else None
        if cut is not None:
            # Only the mean is known: the kept tokens are credited with the window's mean log-probability.
            sum_logprob *= cut / max(1, counted)
            sampled = sampled[:cut]
        return sampled, sum_logprob, float(result.no_speech_prob)

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
        start = prompt[:-1] if prompt[-1] == self.tokens.no_timestamps else prompt  # align() appends it
        alignment = self.model.align(
            _storage(encoded), start, [text_tokens], frames, median_filter_width=MEDIAN_FILTER_WIDTH
        )[0]
        path = np.asarray(alignment.alignments, dtype=np.int64).reshape(-1, 2)
        return words_from_path(
            path[:, 0],
            path[:, 1],
            text_tokens,
            [float(probability) for probability in alignment.text_token_probs],
            self.text,
            language,
            time_offset,
        )

    def language_probabilities(self, encoded: Any) -> dict[str, float]:
        if not self.tokens.languages:
            return {"en": 1.0}
        scores = self.model.detect_language(_storage(encoded))[0]
        return self._languages(scores)

    def language_probabilities_batch(self, encoded: Sequence[Any]) -> list[dict[str, float]]:
        if not self.tokens.languages:
            return [{"en": 1.0} for _ in encoded]
        return [self._languages(scores) for scores in self.model.detect_language(_stacked(encoded))]

    def _languages(self, scores: list[tuple[str, float]]) -> dict[str, float]:
        """``[("<|en|>", p), ...]`` (most likely first) as ``{"en": p, ...}`` over the known languages."""
        known = self.tokens.languages
        return {token[2:-2]: float(p) for token, p in scores if token[2:-2] in known}


Encoded = npt.NDArray[Any]  # a window's encoder output on the host, (1, positions, width)


def _storage(encoded: Any) -> ctranslate2.StorageView:
    """The engine's view of an encoder output (``encode``'s StorageView, or ``encode_batch``'s array)."""
    if isinstance(encoded, np.ndarray):
        return ctranslate2.StorageView.from_array(np.ascontiguousarray(encoded))
    return cast(ctranslate2.StorageView, encoded)


def _stacked(encoded: Sequence[Any]) -> ctranslate2.StorageView:
    """Encoder outputs of several windows as one batch."""
    if len(encoded) == 1:
        return _storage(encoded[0])
    return ctranslate2.StorageView.from_array(np.concatenate([np.asarray(item) for item in encoded]))


class CTranslate2Transcriber(WindowTranscriber):
    """A stored CTranslate2 Whisper directory opened for transcription."""

    _decoder: CTranslate2WindowDecoder

    def __init__(
        self,
        manifest: Manifest,
        directory: Path,
        *,
        device: str = "cpu",
        compute_type: str | None = None,
        threads: int = 0,
        batching: BatchingSettings | None = None,
    ) -> None:
        self.device = device
        self.compute_type = compute_type or compute_type_for(manifest.dtype, device)
        self.model = ctranslate2.models.Whisper(
            str(directory),
            device=device,
            compute_type=self.compute_type,
            inter_threads=1,
            intra_threads=threads,
        )
        tokenizer = load_tokenizer(directory / TOKENIZER_FILENAME)
        tokens = special_tokens(tokenizer, multilingual=manifest.multilingual)
        config = json.loads((directory / CT2_CONFIG_FILENAME).read_text(encoding="utf-8"))
        suppress = [int(token) for token in config.get("suppress_ids", [])]
        decoder = CTranslate2WindowDecoder(self.model, tokenizer, tokens, suppress)
        super().__init__(manifest, decoder, int(self.model.n_mels), batching)
        logger.debug("opened %s with CTranslate2 (%s, %s)", manifest.id, device, self.compute_type)

    def close(self) -> None:
        super().close()
        del self._decoder
        del self.model
        gc.collect()
