"""Encoder outputs computed once per utterance and kept on disk (float16), for frozen-encoder training.

Every recipe that trains only a decoder (distillation, teacher adaptation, language experts) runs the
same frozen encoder over the same audio in every epoch. This cache runs it once:

    cache = EncoderCache(settings.cache_dir / "encoder", model.model.encoder)
    report = cache.fill(corpus.id, corpus.utterances("train", ["cs"]))   # resumable, progress bar
    hidden = cache.load(corpus.id, "fillets-cs-...")                      # (1500, d_model) float16

Layout: ``<root>/<fingerprint>/<corpus-id>/<utterance-id>.safetensors``, one tensor ``hidden``
(frames x d_model, float16) per utterance. ``fingerprint`` is the first 16 hex digits of a SHA-256 over
the encoder's tensors (names, dtypes, shapes, bytes), so two models with the same encoder weights (a
teacher and its shrunk student) share entries, and a changed encoder never reads stale ones.
Each file is written to a temporary name and renamed, so an interrupted fill leaves only whole
entries and the next ``fill`` computes just the missing ones.

Features are the serving path's (:func:`model_store.features.log_mel_spectrogram`, first 30 s
window), so training sees exactly what inference sees. Audio past 30 s is cut to the first window
(the corpus's utterances are all shorter).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from safetensors.torch import load_file
from torch import nn
from tqdm import tqdm

from model_store.features import log_mel_spectrogram, window
from model_store.safetensors_file import save_safetensors
from model_store.transcription import Audio

logger = logging.getLogger(__name__)

HIDDEN_KEY = "hidden"
STORAGE_DTYPE = torch.float16  # halves the disk and reading cost; the encoder's own precision is ~fp16
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$")


class CachedUtterance(Protocol):
    """What the cache needs of an utterance (a corpus ``Utterance`` fits)."""

    @property
    def id(self) -> str: ...

    def load_audio(self) -> Audio: ...


@dataclass(frozen=True)
class FillReport:
    """What one :meth:`EncoderCache.fill` did."""

    computed: int
    reused: int
    seconds: float


def encoder_fingerprint(encoder: nn.Module) -> str:
    """16 hex digits of a SHA-256 over the encoder's state (names, dtypes, shapes, bytes)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{data.dtype}|{tuple(data.shape)}".encode())
        digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()[:16]


def _file_name(utterance_id: str) -> str:
    if _SAFE_NAME.match(utterance_id):
        return f"{utterance_id}.safetensors"
    return f"id-{hashlib.sha256(utterance_id.encode()).hexdigest()[:32]}.safetensors"


class EncoderCache:
    """Cached outputs of one frozen encoder, keyed by corpus id and utterance id."""

    def __init__(
        self,
        root: Path,
        encoder: nn.Module,
        *,
        fingerprint: str | None = None,
        n_mels: int | None = None,
        device: str | torch.device = "cpu",
        batch_size: int = 4,
    ) -> None:
        self.encoder = encoder
        self.fingerprint = fingerprint or encoder_fingerprint(encoder)
        self.directory = Path(root) / self.fingerprint
        self.n_mels = n_mels or int(getattr(getattr(encoder, "config", None), "num_mel_bins", 80))
        self.device = torch.device(device)
        self.batch_size = batch_size

    def path(self, corpus_id: str, utterance_id: str) -> Path:
        return self.directory / corpus_id / _file_name(utterance_id)

    def has(self, corpus_id: str, utterance_id: str) -> bool:
        return self.path(corpus_id, utterance_id).is_file()

    def load(self, corpus_id: str, utterance_id: str) -> torch.Tensor:
        """The cached ``(frames, d_model)`` float16 output; ``KeyError`` if it was never computed."""
        path = self.path(corpus_id, utterance_id)
        if not path.is_file():
            raise KeyError(f"no cached encoder output for {corpus_id}/{utterance_id} in {self.directory}")
        return load_file(str(path))[HIDDEN_KEY]

    def features(self, audio: Audio) -> torch.Tensor:
        """The first 30 s window of the serving path's log-mel features, ``(n_mels, 3000)``."""
        return window(log_mel_spectrogram(audio, self.n_mels), 0)

    @torch.inference_mode()
    def encode(self, features: torch.Tensor) -> torch.Tensor:
        """Encoder outputs of a ``(batch, n_mels, 3000)`` batch, float32 on the CPU."""
        dtype = next(self.encoder.parameters()).dtype
        output = self.encoder(features.to(self.device, dtype))
        hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
        return hidden.float().cpu()

    def fill(
        self,
        corpus_id: str,
        utterances: Sequence[CachedUtterance],
        *,
        progress: bool = True,
        on_batch: Callable[[int], None] | None = None,
    ) -> FillReport:
        """Compute and store the outputs missing for ``utterances``; returns what was done."""
        import time

        started = time.perf_counter()
        missing = [u for u in utterances if not self.has(corpus_id, u.id)]
        (self.directory / corpus_id).mkdir(parents=True, exist_ok=True)
        was_training = self.encoder.training
        self.encoder.eval()
        bar = tqdm(
            total=len(missing), desc=f"encoder cache {self.fingerprint}", unit="utt", disable=not progress
        )
        try:
            for start in range(0, len(missing), self.batch_size):
                batch = missing[start : start + self.batch_size]
                features = torch.stack([self.features(u.load_audio()) for u in batch])
                hidden = self.encode(features)
                for utterance, output in zip(batch, hidden, strict=True):
                    self._write(corpus_id, utterance.id, output)
                bar.update(len(batch))
                if on_batch is not None:
                    on_batch(start + len(batch))
        finally:
            bar.close()
            self.encoder.train(was_training)
        report = FillReport(len(missing), len(utterances) - len(missing), time.perf_counter() - started)
        logger.info(
            "encoder cache %s: %d computed, %d reused", self.fingerprint, report.computed, report.reused
        )
        return report

    def _write(self, corpus_id: str, utterance_id: str, hidden: torch.Tensor) -> None:
        target = self.path(corpus_id, utterance_id)
        handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=".", suffix=".tmp")
        os.close(handle)
        try:
            tensors = {HIDDEN_KEY: hidden.to(STORAGE_DTYPE).contiguous()}
            save_safetensors(tensors, temporary, metadata={"corpus": corpus_id, "utterance": utterance_id})
            Path(temporary).replace(target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
