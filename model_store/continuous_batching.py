"""Continuous batching of window decodes: rows join and leave the running batch between steps.

The static decode batch (:mod:`model_store.batching`) runs until its longest window ends, and a window
that arrives meanwhile waits for the next batch, so at 16 clients most rows of a step are finished or
absent. Here one scheduler thread per opened variant keeps a running batch of rows in a
:class:`~model_store.backends.decoder_rows.DecoderRows`: every iteration it

1. feeds every running row its last token (one forward pass for all of them),
2. admits the waiting windows there is room for (each runs its prompt, one pass per window),
3. picks each row's next token (Whisper's logit rules for the row's timestamps mode, greedy or sampled
   at the row's own temperature), and ends the rows that produced end-of-text, hit their token budget
   or started looping; their callers get their results at once.

Rows need not share anything but the encoder output's positions: prompt length, temperature,
timestamps mode and token budget are per row. A row's arithmetic does not depend on the others
(attention masks keep it to its own positions), so greedy output is that of the window decoded alone
up to the float rounding of a different batch shape. Errors: an engine exception fails the rows of
that iteration (and clears the batch); closing fails every row and waiting call; a caller gives up
after ``timeout_seconds`` and its row is dropped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeoutError
from dataclasses import dataclass, field

import torch

from model_store.backends.decoder_rows import DecoderRows
from model_store.logit_rules import LogitRules
from model_store.longform import is_looping
from model_store.micro_batcher import BatcherClosedError, BatchTimeoutError
from model_store.whisper_tokens import SpecialTokens
from model_store.window_decoding import DecodeResult, WindowDecoding

logger = logging.getLogger(__name__)

StepObserver = Callable[[int, float], None]
"""Called after each iteration with the rows it stepped or admitted and the longest wait of a row
admitted in it (seconds, 0 when none joined)."""


@dataclass(frozen=True)
class WindowRequest:
    """One window to decode, as ``decode`` takes it."""

    encoded: torch.Tensor
    prompt: list[int]
    decoding: WindowDecoding


@dataclass(eq=False)
class _Row:
    request: WindowRequest
    arrived: float
    future: Future[DecodeResult] = field(default_factory=Future)
    sampled: list[int] = field(default_factory=list)
    log_probability: float = 0.0
    no_speech: float = 0.0
    picks: int = 0
    next_token: int = -1
    abandoned: bool = False  # its caller gave up waiting


class ContinuousDecoder:
    """Decodes windows submitted from many threads in one continuously refilled batch."""

    def __init__(
        self,
        name: str,
        rows: DecoderRows[_Row],
        *,
        tokens: SpecialTokens,
        rules: Mapping[bool, LogitRules],
        text: Callable[[list[int]], str],
        timeout_seconds: float,
        generator: torch.Generator | None = None,
        observer: StepObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if timeout_seconds <= 0:
            raise ValueError(f"timeout_seconds must be positive, got {timeout_seconds}")
        self.name = name
        self.timeout_seconds = timeout_seconds
        self.observer = observer
        self._rows = rows
        self._tokens = tokens
        self._rules = rules
        self._text = text
        self._generator = generator or torch.Generator().manual_seed(0)
        self._clock = clock
        self._condition = threading.Condition()
        self._waiting: list[_Row] = []  # submitted, not yet admitted; the running rows are ``rows.owners``
        self._closed = False
        self._thread: threading.Thread | None = None

    @property
    def max_batch(self) -> int:
        return self._rows.capacity

    @property
    def waiting(self) -> int:
        """Windows submitted and not yet admitted to the running batch."""
        with self._condition:
            return len(self._waiting)

    def observe(self, observer: StepObserver | None) -> None:
        """Report every iteration (rows, longest admission wait) to ``observer`` (metrics)."""
        self.observer = observer

    def decode(self, encoded: torch.Tensor, prompt: list[int], decoding: WindowDecoding) -> DecodeResult:
        """What a window decoder's ``decode`` returns, computed in the running batch."""
        return self.submit(WindowRequest(encoded, prompt, decoding))

    def submit(self, request: WindowRequest) -> DecodeResult:
        """Decode ``request`` in the running batch; blocks until its tokens are back."""
        if request.prompt.count(self._tokens.sot) != 1:
            raise ValueError("a window's prompt holds <|startoftranscript|> exactly once")
        row = _Row(request, self._clock())
        with self._condition:
            if self._closed:
                raise BatcherClosedError(f"the {self.name} decoder is closed")
            self._waiting.append(row)
            self._start_locked()
            self._condition.notify_all()
        try:
            return row.future.result(timeout=self.timeout_seconds)
        except FutureTimeoutError:
            row.abandoned = True  # the scheduler drops it at its next iteration
            with self._condition:
                if row in self._waiting:
                    self._waiting.remove(row)
            raise BatchTimeoutError(
                f"a {self.name} window decode did not come back within {self.timeout_seconds:g} s"
            ) from None

    def close(self, timeout_seconds: float = 5.0) -> None:
        """Fail the rows running and waiting, refuse new ones, stop the scheduler."""
        with self._condition:
            self._closed = True
            dropped, self._waiting = self._waiting, []
            self._condition.notify_all()
            thread = self._thread
        _fail(dropped, BatcherClosedError(f"the {self.name} decoder was closed"))
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_seconds)

    # ---- the scheduler thread -------------------------------------------------------------------

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(
                target=self._schedule, name=f"hush-decode-{self.name}", daemon=True
            )
            self._thread.start()

    def _schedule(self) -> None:
        try:
            while self._wait_for_work():
                try:
                    self._iterate()
                except Exception as error:  # the rows of this iteration get it; the thread goes on
                    logger.warning(
                        "continuous %s decode failed for %d rows: %s", self.name, len(self._rows), error
                    )
                    _fail(self._rows.owners, error)
                    self._rows.clear()
        finally:
            with self._condition:
                self._closed = True
                dropped, self._waiting = self._waiting, []
            _fail([*dropped, *self._rows.owners], BatcherClosedError(f"the {self.name} decoder stopped"))
            self._rows.clear()

    def _wait_for_work(self) -> bool:
        with self._condition:
            while not self._waiting and not len(self._rows) and not self._closed:
                self._condition.wait()
            return not self._closed

    def _iterate(self) -> None:
        self._drop_abandoned()
        logits: list[torch.Tensor] = []
        if len(self._rows):
            logits.append(self._rows.step([row.next_token for row in self._rows.owners]))
        joined, waited = self._admit()
        try:
            for row in joined:
                prompt_logits = self._rows.admit(row, row.request.encoded, row.request.prompt)
                sot_index = row.request.prompt.index(self._tokens.sot)
                row.no_speech = float(
                    torch.softmax(prompt_logits[sot_index].float(), dim=-1)[self._tokens.no_speech]
                )
                logits.append(prompt_logits[-1:])
        except Exception as error:  # rows taken from the queue but not yet admitted fail too
            _fail(joined, error)
            raise
        if not len(self._rows):
            return
        self._pick(torch.cat(logits).float())
        if self.observer is not None:
            try:
                self.observer(len(self._rows), waited)
            except Exception:
                logger.exception("the %s step observer failed", self.name)
        self._finish()

    def _drop_abandoned(self) -> None:
        for row in [row for row in self._rows.owners if row.abandoned]:
            self._rows.release(row)

    def _admit(self) -> tuple[list[_Row], float]:
        joined: list[_Row] = []
        waited = 0.0
        now = self._clock()
        with self._condition:
            for row in list(self._waiting):
                room = len(self._rows) + len(joined) < self._rows.capacity
                if not room:
                    break
                if not self._fits(row, joined):
                    continue
                self._waiting.remove(row)
                if row.future.set_running_or_notify_cancel():
                    joined.append(row)
                    waited = max(waited, now - row.arrived)
        return joined, waited

    def _fits(self, row: _Row, joined: list[_Row]) -> bool:
        """Same encoder positions as the batch it joins (the rows running, else the first joining)."""
        reference = (self._rows.owners or joined or [row])[0].request.encoded
        return bool(reference.shape[1] == row.request.encoded.shape[1])

    def _pick(self, logits: torch.Tensor) -> None:
        """Each running row's next token from its logits row (in ``rows.owners``' order)."""
        rows = self._rows.owners
        sampled = [row.sampled for row in rows]
        for with_timestamps, rules in self._rules.items():
            members = [
                index
                for index, row in enumerate(rows)
                if row.request.decoding.with_timestamps == with_timestamps
            ]
            if len(members) == len(rows):
                rules.apply_rows(logits, sampled)
            elif members:
                index = torch.tensor(members, device=logits.device)
                logits[index] = rules.apply_rows(logits[index], [sampled[member] for member in members])
        log_probs = torch.log_softmax(logits, dim=-1)
        chosen = logits.argmax(dim=-1, keepdim=True)
        temperatures = [row.request.decoding.temperature for row in rows]
        hot = [index for index, temperature in enumerate(temperatures) if temperature > 0]
        if hot:
            index = torch.tensor(hot, device=logits.device)
            scale = torch.tensor([temperatures[row] for row in hot], device=logits.device).unsqueeze(1)
            probs = torch.softmax(logits[index] / scale, dim=-1).cpu()
            chosen[index] = torch.multinomial(probs, 1, generator=self._generator).to(logits.device)
        picked = torch.cat((chosen.double(), log_probs.gather(1, chosen).double()), dim=1).tolist()
        for row, (token_id, log_prob) in zip(rows, picked, strict=True):
            row.next_token = int(token_id)
            row.picks += 1
            if row.next_token != self._tokens.eot:
                row.log_probability += log_prob
                row.sampled.append(row.next_token)

    def _finish(self) -> None:
        for row in self._rows.owners:
            decoding = row.request.decoding
            ended = (
                row.next_token == self._tokens.eot
                or row.picks >= decoding.max_new_tokens
                or (
                    decoding.repetition_limit is not None
                    and is_looping(row.sampled, self._text, decoding.repetition_limit)
                )
                or len(row.request.prompt) + row.picks > self._rows.max_positions  # no position left
            )
            if ended:
                self._rows.release(row)
                row.future.set_result((row.sampled, row.log_probability, row.no_speech))


def _fail(rows: list[_Row], error: BaseException) -> None:
    for row in rows:
        if not row.future.done():
            row.future.set_exception(error)
