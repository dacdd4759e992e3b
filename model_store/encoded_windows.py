"""Recent first-window encoder outputs of one opened variant, keyed by the window's features.

The server detects a request's language on its first window with its detection variant, then
transcribes the clip on the variant it routes to, often the same one: the encoder pass, the bulk of a
short clip's cost, would run twice on identical input. ``detect_language`` remembers its encoder
output here, and the transcription takes it back. (A transcription that detects its own language
encodes the window once and uses it for both, without this map.) Keys are a digest of the features themselves, so only identical input is
ever reused; a few entries bound the memory (about 3 MB each for base).
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from model_store.features import Mel

DEFAULT_CAPACITY = 4


class EncodedWindows:
    """A small, thread-safe, least-recently-used map from window features to encoder output."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[bytes, Any] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(features: Mel) -> bytes:
        array = np.ascontiguousarray(features)
        digest = hashlib.blake2b(array.tobytes(), digest_size=16)
        digest.update(repr((array.shape, array.dtype.str)).encode())
        return digest.digest()

    def remember(self, features: Mel, encode: Callable[[Mel], Any]) -> Any:
        """``encode(features)``, kept for a later :meth:`take` of the same features."""
        encoded = encode(features)
        key = self.key(features)
        with self._lock:
            self._entries[key] = encoded
            self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)
        return encoded

    def take(self, features: Mel) -> Any | None:
        """The remembered encoder output of exactly these features (forgotten once taken), if any."""
        with self._lock:
            if not self._entries:  # the usual case: skip hashing
                return None
        key = self.key(features)
        with self._lock:
            return self._entries.pop(key, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
