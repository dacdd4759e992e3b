"""Dynamic batching at the window-decoder level: concurrent requests on one variant share forward passes.

Every request keeps running hush's long-form driver (:mod:`model_store.longform`) on its own thread and
calls ``encode`` / ``decode`` / ``language_probabilities`` as before. :class:`BatchedDecoder` sits
between the driver and the backend's decoder and sends those calls through one
:class:`~model_store.micro_batcher.MicroBatcher` per opened variant, which merges compatible calls:

* encoder: windows of one length (always 30 s, except for trimmed audio contexts): stacked, one pass;
* decoder: same prompt length and position of <|startoftranscript|>, temperature, timestamps mode and
  token budget: one ``generate`` with N prompts (CTranslate2 needs equal prompt lengths with the start
  token at the same index, and takes its decoding options per call);
* language detection: encoder outputs of one length.

With ``decoder = "continuous"`` and a backend that can step rows (:class:`StepsRows`: transformers),
decodes skip those groups and join one running batch between decoder steps instead
(:mod:`model_store.continuous_batching`).

A call that has no compatible company runs alone, after at most ``max_wait_ms`` (and at once when
every request in flight on the variant is already waiting). The backend opts in per stage by providing
``encode_batch`` (:class:`BatchEncoder`) and ``decode_batch`` + ``language_probabilities_batch``
(:class:`BatchDecoder`); a stage it does not batch calls straight through.

Why here and not around whole requests: requests differ in length, language, prompt and fallback
schedule, but their windows mostly have the same shape, so the window is the unit that batches; the driver's
logic (fallback, segments, timestamps) stays untouched and identical for batched and lone requests.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast, runtime_checkable

from model_store.features import Mel
from model_store.micro_batcher import MicroBatcher
from model_store.settings import BatchingSettings
from model_store.transcription import Word
from model_store.whisper_tokens import SpecialTokens
from model_store.window_decoding import DecodeResult, WindowDecoding

Stage = Literal["encode", "decode", "detect"]
STAGES: tuple[Stage, ...] = ("encode", "decode", "detect")
StageObserver = Callable[[Stage, int, float], None]
"""Called after each engine call with its stage, batch size and the wait of its oldest call (seconds)."""


@runtime_checkable
class BatchEncoder(Protocol):
    """A backend that encodes several windows in one pass."""

    def encode_batch(self, windows: Sequence[Mel]) -> list[Any]:
        """One encoder output per window, each usable by the backend's ``decode`` and ``words``."""
        ...


@runtime_checkable
class BatchDecoder(Protocol):
    """A backend that decodes several windows with prompts of one length in one call."""

    def decode_batch(
        self, encoded: Sequence[Any], prompts: Sequence[list[int]], decodings: Sequence[WindowDecoding]
    ) -> list[DecodeResult]:
        """What ``decode`` returns for each (encoded, prompt, decoding), computed in one engine call;
        the decodings must step together (:func:`~model_store.window_decoding.shared_decoding`)."""
        ...

    def language_probabilities_batch(self, encoded: Sequence[Any]) -> list[dict[str, float]]:
        """What ``language_probabilities`` returns for each encoded window, in one engine call."""
        ...


class RowScheduler(Protocol):
    """Decodes windows in one running batch that they join and leave between steps
    (:class:`~model_store.continuous_batching.ContinuousDecoder`)."""

    def decode(self, encoded: Any, prompt: list[int], decoding: WindowDecoding) -> DecodeResult: ...

    def observe(self, observer: Callable[[int, float], None] | None) -> None: ...

    def close(self) -> None: ...


@runtime_checkable
class StepsRows(Protocol):
    """A backend whose decoder can step rows that start and end independently (continuous batching)."""

    def continuous_decoder(self, name: str, max_batch: int, timeout_seconds: float) -> RowScheduler: ...


@runtime_checkable
class ObservesBatches(Protocol):
    """A transcriber that can report its batched engine calls (the server's metrics)."""

    @property
    def batched(self) -> bool:
        """Whether this transcriber was opened with batching active."""
        ...

    def observe_batches(self, observer: StageObserver | None) -> None: ...


def check_prompt(tokens: SpecialTokens, prompt: list[int], with_timestamps: bool) -> None:
    """Refuse a prompt whose last token disagrees with the timestamps mode (before it joins a batch)."""
    if with_timestamps == (prompt[-1] == tokens.no_timestamps):
        raise ValueError("the prompt must end with <|notimestamps|> exactly when decoding without them")


@dataclass(frozen=True)
class BatchKey:
    """Calls with equal keys run in one engine call."""

    stage: Stage
    frames: int = 0  # encoder input frames (encode) or encoder output positions (decode, detect)
    prompt_length: int = 0
    sot_index: int = 0
    decoding: WindowDecoding | None = None  # decode: what its rows share (WindowDecoding.shared)


@dataclass(frozen=True)
class _DecodeItem:
    encoded: Any
    prompt: list[int]
    decoding: WindowDecoding


class BatchedDecoder:
    """A backend decoder whose calls from concurrent requests are merged into batches.

    Implements :class:`~model_store.backends.window_transcriber.LanguageDecoder`. Requests announce
    themselves with :meth:`session`, so that the dispatcher knows when nobody else can join a batch.
    """

    def __init__(self, inner: Any, settings: BatchingSettings, name: str) -> None:
        self.inner: Any = inner  # a LanguageDecoder (typed loosely: that protocol is built on this module)
        if not isinstance(self.inner, BatchEncoder):
            raise TypeError(f"{type(inner).__name__} cannot encode in batches (no encode_batch)")
        self.tokens: SpecialTokens = inner.tokens
        # Trimmed audio contexts give windows of several lengths: only equal shapes share a batch.
        self.accepts_short_windows: bool = bool(inner.accepts_short_windows)
        self.batches_decoding = isinstance(inner, BatchDecoder)
        self._continuous: RowScheduler | None = None
        if settings.decoder == "continuous" and isinstance(inner, StepsRows):
            self._continuous = inner.continuous_decoder(name, settings.max_batch, settings.timeout_seconds)
        self._sessions = 0
        self._sessions_lock = threading.Lock()
        self._observer: StageObserver | None = None
        self._batcher: MicroBatcher[BatchKey, object, object] = MicroBatcher(
            name,
            self._run,
            max_batch=settings.max_batch,
            max_wait_seconds=settings.max_wait_ms / 1000,
            timeout_seconds=settings.timeout_seconds,
            expected_callers=self._active_sessions,
            observer=self._observed,
        )

    @property
    def max_batch(self) -> int:
        return self._batcher.max_batch

    @property
    def continuous(self) -> bool:
        """Whether window decodes run in one continuously refilled batch."""
        return self._continuous is not None

    def observe(self, observer: StageObserver | None) -> None:
        """Report every engine call (batch size, wait) to ``observer`` (metrics); with continuous
        decoding, every decoder step (the rows it ran, the longest wait of a row that joined)."""
        self._observer = observer
        if self._continuous is not None:
            self._continuous.observe(None if observer is None else self._observed_step)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Mark one request in flight on this variant for as long as the block runs."""
        with self._sessions_lock:
            self._sessions += 1
        try:
            yield
        finally:
            with self._sessions_lock:
                self._sessions -= 1
            self._batcher.wake()  # the calls waiting for this request need not wait any longer

    def close(self) -> None:
        self._batcher.close()
        if self._continuous is not None:
            self._continuous.close()

    # ---- LanguageDecoder ------------------------------------------------------------------------

    def encode(self, features: Mel) -> Any:
        return self._batcher.submit(BatchKey("encode", frames=int(features.shape[-1])), features)

    def decode(self, encoded: Any, prompt: list[int], decoding: WindowDecoding) -> DecodeResult:
        if self.batches_decoding:
            check_prompt(self.tokens, prompt, decoding.with_timestamps)
        if not self.batches_decoding or self._continuous is not None:
            # unbatched, or the running batch of the continuous decoder: both decode one window per call
            engine = self._continuous or self.inner
            return cast(DecodeResult, engine.decode(encoded, prompt, decoding))
        key = BatchKey(
            "decode",
            frames=_positions(encoded),
            prompt_length=len(prompt),
            sot_index=prompt.index(self.tokens.sot),
            decoding=decoding.shared(),
        )
        return cast(DecodeResult, self._batcher.submit(key, _DecodeItem(encoded, prompt, decoding)))

    def language_probabilities(self, encoded: Any) -> dict[str, float]:
        if not self.batches_decoding or not self.tokens.languages:
            return cast(dict[str, float], self.inner.language_probabilities(encoded))
        return cast(
            dict[str, float], self._batcher.submit(BatchKey("detect", frames=_positions(encoded)), encoded)
        )

    def words(
        self,
        encoded: Any,
        prompt: list[int],
        text_tokens: list[int],
        language: str,
        time_offset: float,
        frames: int,
    ) -> list[Word]:
        return cast(list[Word], self.inner.words(encoded, prompt, text_tokens, language, time_offset, frames))

    def seed_sampling(self, seed: int) -> None:
        self.inner.seed_sampling(seed)

    def text(self, tokens: list[int]) -> str:
        return cast(str, self.inner.text(tokens))

    def text_tokens(self, text: str) -> list[int]:
        return cast(list[int], self.inner.text_tokens(text))

    # ---- the dispatcher's side ------------------------------------------------------------------

    def _active_sessions(self) -> int:
        with self._sessions_lock:
            return self._sessions

    def _run(self, key: BatchKey, items: list[object]) -> Sequence[object]:
        if key.stage == "encode":
            return cast(BatchEncoder, self.inner).encode_batch(cast(list[Mel], items))
        decoder = cast(BatchDecoder, self.inner)
        if key.stage == "detect":
            return decoder.language_probabilities_batch(items)
        calls = cast(list[_DecodeItem], items)
        return decoder.decode_batch(
            [call.encoded for call in calls],
            [call.prompt for call in calls],
            [call.decoding for call in calls],
        )

    def _observed_step(self, size: int, waited: float) -> None:
        if self._observer is not None:
            self._observer("decode", size, waited)

    def _observed(self, key: BatchKey, size: int, waited: float) -> None:
        if self._observer is not None:
            self._observer(key.stage, size, waited)


def _positions(encoded: Any) -> int:
    """The encoder output's positions: ``(1, positions, width)``."""
    return int(encoded.shape[1])
