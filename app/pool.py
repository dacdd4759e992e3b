"""The variants the server can route to, and the ones it holds in memory.

- The catalog mirrors the store: :meth:`VariantPool.sync_with_store` (polled by :func:`watch_store`)
  adds published variants, drops removed ones and retires replaced weights.
- Loading is lazy: a :class:`VariantLease` is taken when a request is routed (cheap, in the event loop)
  and loads the variant on first use (slow, in an inference thread). Leases are counted; a variant in use
  is never unloaded.
- A memory budget (estimated from parameter count and compute dtype, and a full decode batch's keys
  and values where the variant batches) unloads the least recently used
  idle variants before another loads. Unloading closes the transcriber, drops the pool's reference and
  collects garbage, in a background thread so that no caller waits for it.
- A removed or replaced variant leaves the catalog at once (no new request is routed to it) but stays
  loaded until its last lease is released: no request in flight is lost.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
import numpy as np

from app.metrics import HushMetrics
from model_store.backends.decoder_memory import full_batch_bytes
from model_store.batching import ObservesBatches
from model_store.errors import VariantNotFoundError
from model_store.manifest import Manifest
from model_store.opener import batches_windows_here, open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Transcriber

logger = logging.getLogger(__name__)

Opener = Callable[[ModelStore, str, RuntimeSettings, bool], Transcriber]
Fingerprint = tuple[tuple[str, int], ...]

# Bytes per parameter in memory for variants stored quantised; others run in the compute dtype.
_QUANTISED_BYTES_PER_PARAMETER = {"int8": 1.0, "int4": 0.5, "nf4": 0.5, "fp4": 0.5}
_COMPUTE_BYTES_PER_PARAMETER = {"float16": 2, "bfloat16": 2, "float32": 4}


def open_verified(store: ModelStore, variant_id: str, runtime: RuntimeSettings, verify: bool) -> Transcriber:
    """The default opener: the model store's own, then a warm-up (:func:`warm_up`)."""
    transcriber = open_variant(store, variant_id, runtime, verify=verify)
    warm_up(transcriber, variant_id)
    return transcriber


def warm_up(transcriber: Transcriber, variant_id: str) -> None:
    """Detect the language of a second of silence, so that the first request does not pay the engine's
    first-call costs, nor count them in the variant's observed latency (whisper-tiny.en-ptq-int8's
    first JFK transcription took 580 ms against 336 later; 359 after this warm-up). A failure is
    logged, not raised: the variant still serves, cold."""
    started = time.perf_counter()
    try:
        transcriber.detect_language(np.zeros(SAMPLE_RATE, dtype=np.float32))
    except Exception:
        logger.warning("warming up %s failed; it serves cold", variant_id, exc_info=True)
        return
    logger.debug("warmed up %s in %.0f ms", variant_id, 1000 * (time.perf_counter() - started))


def estimated_memory_bytes(
    manifest: Manifest, runtime: RuntimeSettings, batch_config: Mapping[str, Any] | None = None
) -> int:
    """Memory a loaded variant takes: parameters x bytes per parameter (the model store's backends load
    float weights in float32 on a CPU and in ``cuda_dtype`` on a GPU), plus, with ``batch_config`` (the
    transformers config of a variant whose windows are batched here), the keys and values of a full
    batch of ``max_batch`` windows (:func:`~model_store.backends.decoder_memory.full_batch_bytes`;
    whisper-base at 16 rows in float32: 766 MB, 2.6 times its weights). CTranslate2 variants size
    their batches inside the engine: not counted."""
    compute_bytes = (
        4 if runtime.resolved_device() == "cpu" else _COMPUTE_BYTES_PER_PARAMETER[runtime.cuda_dtype]
    )
    weights = int(manifest.parameters * _QUANTISED_BYTES_PER_PARAMETER.get(manifest.dtype, compute_bytes))
    if batch_config is None:
        return weights
    return weights + full_batch_bytes(batch_config, runtime.batching.max_batch, compute_bytes)


def loaded_memory_bytes(store: ModelStore, manifest: Manifest, runtime: RuntimeSettings) -> int:
    """:func:`estimated_memory_bytes`, with a full decode batch where the variant's windows are batched
    here (:func:`~model_store.opener.batches_windows_here`; the shapes from its ``config.json``).
    Called when the variant loads: it reads a file and, for a transformers variant, imports torch."""
    config: dict[str, Any] | None = None
    if batches_windows_here(manifest, runtime):
        try:
            read = json.loads((store.path(manifest.id) / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            read = None
        config = read if isinstance(read, dict) else None
    return estimated_memory_bytes(manifest, runtime, config)


@dataclass(eq=False)
class _Slot:
    """One variant's weights, loaded or not. A replaced variant gets a new slot."""

    manifest: Manifest
    memory_bytes: int
    transcriber: Transcriber | None = None
    refs: int = 0
    last_used: float = 0.0
    retired: str | None = None  # "removed" or "replaced" once it left the catalog
    load_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class CatalogChange:
    """What a sync with the store found."""

    added: tuple[str, ...]
    removed: tuple[str, ...]
    replaced: tuple[str, ...]
    updated: tuple[str, ...]  # manifest changed (e.g. new eval figures), weights unchanged


class VariantLease:
    """A claim on a variant for one request: it stays loaded (or loadable) until released."""

    def __init__(self, pool: VariantPool, slot: _Slot) -> None:
        self._pool = pool
        self._slot = slot
        self._released = False

    @property
    def manifest(self) -> Manifest:
        return self._slot.manifest

    def transcriber(self) -> Transcriber:
        """The loaded transcriber; loads it first if needed (blocking: call from a worker thread)."""
        if self._released:
            raise RuntimeError("the lease was released")
        return self._pool._ensure_loaded(self._slot)

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._pool._release(self._slot)

    def __enter__(self) -> VariantLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class VariantPool:
    """Lazy, ref-counted, memory-bounded variants that follow the store."""

    def __init__(
        self,
        store: ModelStore,
        runtime: RuntimeSettings,
        *,
        memory_budget_bytes: int,
        verify: bool = True,
        opener: Opener = open_verified,
        metrics: HushMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.runtime = runtime
        self.memory_budget_bytes = memory_budget_bytes
        self._verify = verify
        self._opener = opener
        self._metrics = metrics
        self._clock = clock
        self._lock = threading.Lock()  # guards the slots and their counts
        self._sync_lock = threading.Lock()  # one sync with the store at a time
        self._catalog: dict[str, _Slot] = {}
        self._retired: set[_Slot] = set()  # left the catalog, still leased
        self._fingerprint: Fingerprint | None = None
        self._unloader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hush-unload")

    # ---- the catalog ---------------------------------------------------------------------------
    def manifests(self) -> list[Manifest]:
        """The variants that can be routed to now."""
        with self._lock:
            return [slot.manifest for slot in self._catalog.values()]

    def manifest(self, variant_id: str) -> Manifest:
        with self._lock:
            slot = self._catalog.get(variant_id)
            if slot is None:
                raise VariantNotFoundError(variant_id, sorted(self._catalog))
            return slot.manifest

    def loaded_ids(self) -> list[str]:
        """Variants in memory, retired ones included."""
        with self._lock:
            return sorted({slot.manifest.id for slot in self._slots() if slot.transcriber is not None})

    def is_loaded(self, variant_id: str) -> bool:
        with self._lock:
            slot = self._catalog.get(variant_id)
            return slot is not None and slot.transcriber is not None

    def memory_in_use(self) -> int:
        with self._lock:
            return sum(slot.memory_bytes for slot in self._slots() if slot.transcriber is not None)

    def sync_with_store(self) -> CatalogChange | None:
        """Follow the store's publications and removals; None when nothing changed since the last sync."""
        with self._sync_lock:
            fingerprint = self.store.fingerprint()  # before listing: a change in between is seen next time
            if fingerprint == self._fingerprint:
                return None
            current = {manifest.id: manifest for manifest in self.store.list()}
            added: list[str] = []
            removed: list[str] = []
            replaced: list[str] = []
            updated: list[str] = []
            to_unload: list[tuple[_Slot, str]] = []
            with self._lock:
                for variant_id, slot in list(self._catalog.items()):
                    manifest = current.get(variant_id)
                    if manifest is None:
                        removed.append(variant_id)
                        to_unload += self._retire(variant_id, "removed")
                    elif manifest.weights != slot.manifest.weights:
                        replaced.append(variant_id)
                        to_unload += self._retire(variant_id, "replaced")
                        self._catalog[variant_id] = self._new_slot(manifest)
                    elif manifest != slot.manifest:
                        updated.append(variant_id)
                        slot.manifest = manifest
                for variant_id, manifest in current.items():
                    if variant_id not in self._catalog:
                        added.append(variant_id)
                        self._catalog[variant_id] = self._new_slot(manifest)
                self._fingerprint = fingerprint
            self._unload_later(to_unload)
        change = CatalogChange(tuple(added), tuple(removed), tuple(replaced), tuple(updated))
        if self._metrics is not None:
            self._metrics.track_variants(added)
        if added or removed or replaced or updated:
            logger.info(
                "store changed: added %s, removed %s, replaced %s, updated %s",
                added,
                removed,
                replaced,
                updated,
            )
        return change

    # ---- leasing and loading -------------------------------------------------------------------
    def lease(self, variant_id: str) -> VariantLease:
        """Claim a variant of the catalog (does not load it: see :meth:`VariantLease.transcriber`)."""
        with self._lock:
            slot = self._catalog.get(variant_id)
            if slot is None:
                raise VariantNotFoundError(variant_id, sorted(self._catalog))
            slot.refs += 1
            return VariantLease(self, slot)

    def preload(self, variant_ids: Iterable[str]) -> None:
        """Load these variants now (blocking)."""
        for variant_id in variant_ids:
            with self.lease(variant_id) as lease:
                lease.transcriber()

    def _ensure_loaded(self, slot: _Slot) -> Transcriber:
        with slot.load_lock:
            if slot.transcriber is not None:
                slot.last_used = self._clock()
                return slot.transcriber
            memory = loaded_memory_bytes(self.store, slot.manifest, self.runtime)
            with self._lock:
                slot.memory_bytes = memory  # the catalog's estimate left out what loading here adds
            self._unload_now(self._make_room(slot.memory_bytes))
            started = time.perf_counter()
            transcriber = self._opener(self.store, slot.manifest.id, self.runtime, self._verify)
            seconds = time.perf_counter() - started
            with self._lock:
                slot.transcriber = transcriber
                slot.last_used = self._clock()
            logger.info("loaded %s in %.2f s (~%d MB)", slot.manifest.id, seconds, slot.memory_bytes >> 20)
            if self._metrics is not None:
                self._metrics.variant_loaded(slot.manifest.id, seconds, slot.memory_bytes)
                if isinstance(transcriber, ObservesBatches) and transcriber.batched:
                    transcriber.observe_batches(self._metrics.batch_observer(slot.manifest.id))
            return transcriber

    def _release(self, slot: _Slot) -> None:
        with self._lock:
            slot.refs -= 1
            slot.last_used = self._clock()
            to_unload: list[tuple[_Slot, str]] = []
            if slot.refs == 0 and slot.retired is not None:
                self._retired.discard(slot)
                to_unload += self._detach(slot, slot.retired)
            to_unload += self._make_room_locked(0)  # a load past the budget may be paid back now
        self._unload_later(to_unload)

    def _make_room(self, needed: int) -> list[tuple[_Slot, str]]:
        with self._lock:
            return self._make_room_locked(needed)

    def _make_room_locked(self, needed: int) -> list[tuple[_Slot, str]]:
        """Detach idle variants, least recently used first, until ``needed`` more bytes fit the budget."""
        loaded = [slot for slot in self._slots() if slot.transcriber is not None]
        used = sum(slot.memory_bytes for slot in loaded)
        idle = sorted((slot for slot in loaded if slot.refs == 0), key=lambda slot: slot.last_used)
        victims: list[tuple[_Slot, str]] = []
        while used + needed > self.memory_budget_bytes and idle:
            victim = idle.pop(0)
            used -= victim.memory_bytes
            victims += self._detach(victim, "evicted")
        if needed and used + needed > self.memory_budget_bytes:
            logger.warning(
                "memory budget exceeded: %d MB in use by leased variants, %d MB more to load, budget %d MB",
                used >> 20,
                needed >> 20,
                self.memory_budget_bytes >> 20,
            )
        return victims

    def _retire(self, variant_id: str, cause: str) -> list[tuple[_Slot, str]]:
        slot = self._catalog.pop(variant_id)
        slot.retired = cause
        if slot.refs > 0:
            self._retired.add(slot)  # unloaded when its last lease is released
            return []
        return self._detach(slot, cause)

    @staticmethod
    def _detach(slot: _Slot, cause: str) -> list[tuple[_Slot, str]]:
        if slot.transcriber is None:
            return []
        return [(slot, cause)]

    def _new_slot(self, manifest: Manifest) -> _Slot:
        return _Slot(manifest, estimated_memory_bytes(manifest, self.runtime), last_used=self._clock())

    def _slots(self) -> list[_Slot]:
        return [*self._catalog.values(), *self._retired]

    # ---- unloading -----------------------------------------------------------------------------
    def _unload_later(self, victims: list[tuple[_Slot, str]]) -> None:
        if victims:
            self._unloader.submit(self._unload_now, victims)

    def _unload_now(self, victims: list[tuple[_Slot, str]]) -> None:
        for slot, cause in victims:
            with slot.load_lock, self._lock:
                transcriber, slot.transcriber = slot.transcriber, None
                if transcriber is None or (slot.refs > 0 and cause == "evicted"):
                    slot.transcriber = transcriber  # leased again since it was chosen: keep it
                    continue
            try:
                transcriber.close()
            except Exception:
                logger.exception("closing %s failed", slot.manifest.id)
            del transcriber
            gc.collect()
            logger.info("unloaded %s (%s)", slot.manifest.id, cause)
            if self._metrics is not None:
                self._metrics.variant_unloaded(slot.manifest.id, cause)

    def close(self) -> None:
        """Unload everything (at shutdown)."""
        with self._lock:
            victims = [(slot, "shutdown") for slot in self._slots() if slot.transcriber is not None]
            for slot in self._slots():
                slot.refs = 0
        self._unloader.shutdown(wait=True)
        self._unload_now(victims)


async def watch_store(pool: VariantPool, interval_seconds: float) -> None:
    """Sync the pool with the store every ``interval_seconds`` until cancelled."""
    while True:
        await anyio.sleep(interval_seconds)
        try:
            await anyio.to_thread.run_sync(pool.sync_with_store)
        except Exception:
            logger.exception("could not sync with the store at %s; retrying", pool.store.root)
