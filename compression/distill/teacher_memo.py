"""The frozen teacher's outputs on a training example, computed once and reused in every epoch and run.

With a frozen teacher and fixed labels, the teacher's logits and FFN features on an example never
change; on a CPU the teacher's forward pass costs as much as the student's training step. Entries are
``<root>/<teacher-fingerprint>/<sha256(utterance id, decoder input ids)[:32]>.safetensors`` with the
logits ``(length, vocab)`` and the FFN features ``(layers, length, ffn)`` in float16, written atomically.
float16 storage changes the teacher's probabilities by about 1e-3 relative, far below the noise of
the students' training.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


class TeacherMemo:
    """Disk-backed store of the teacher's per-example outputs."""

    def __init__(self, root: Path, teacher_fingerprint: str) -> None:
        self.directory = Path(root) / teacher_fingerprint
        self.directory.mkdir(parents=True, exist_ok=True)

    def _path(self, utterance_id: str, input_ids: list[int]) -> Path:
        key = hashlib.sha256(f"{utterance_id}|{','.join(map(str, input_ids))}".encode()).hexdigest()[:32]
        return self.directory / f"{key}.safetensors"

    def get(self, utterance_id: str, input_ids: list[int]) -> tuple[torch.Tensor, torch.Tensor] | None:
        path = self._path(utterance_id, input_ids)
        if not path.is_file():
            return None
        tensors = load_file(str(path))
        return tensors["logits"], tensors["ffn"]

    def put(self, utterance_id: str, input_ids: list[int], logits: torch.Tensor, ffn: torch.Tensor) -> None:
        target = self._path(utterance_id, input_ids)
        handle, temporary = tempfile.mkstemp(dir=self.directory, prefix=".", suffix=".tmp")
        os.close(handle)
        try:
            tensors = {
                "logits": logits.to("cpu", torch.float16).contiguous(),
                "ffn": ffn.to("cpu", torch.float16).contiguous(),
            }
            save_file(tensors, temporary)
            Path(temporary).replace(target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
