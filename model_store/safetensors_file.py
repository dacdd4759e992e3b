"""safetensors files whose bytes depend only on their content.

The safetensors library writes a file's metadata in hash-map order, which changes from one process to
the next: the same weights saved twice get different bytes, so a variant rebuilt from the same recipe
would get another SHA-256. :func:`save_safetensors` writes the file, then rewrites its JSON header
with the metadata's keys sorted (the same characters in another order, so the header keeps its
length and every tensor its offset).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import save_file

_LENGTH = struct.Struct("<Q")  # the header's length, little-endian, before the header
_METADATA = "__metadata__"


def save_safetensors(
    tensors: Mapping[str, torch.Tensor], path: Path | str, metadata: Mapping[str, str] | None = None
) -> None:
    save_file(dict(tensors), str(path), metadata=dict(metadata) if metadata else None)
    if metadata and len(metadata) > 1:
        _sort_metadata(Path(path))


def _sort_metadata(path: Path) -> None:
    with path.open("r+b") as file:
        (length,) = _LENGTH.unpack(file.read(_LENGTH.size))
        raw = file.read(length)
        header = json.loads(raw)
        header[_METADATA] = dict(sorted(header[_METADATA].items()))
        rewritten = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(rewritten) > length:
            return  # not written as expected: left as is rather than moving the tensors
        file.seek(_LENGTH.size)
        file.write(rewritten.ljust(length, b" "))  # safetensors pads its header with spaces
