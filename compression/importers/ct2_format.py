"""Reader of CTranslate2's ``model.bin`` (binary version 6), possibly split into several parts.

Layout, little-endian: uint32 binary version; uint16-length model name; uint32 revision; uint32
number of variables; per variable: uint16-length name, uint8 rank, uint32 dims[rank], uint8 dtype,
uint32 byte count, raw bytes; then uint32 number of aliases and (alias, target) string pairs.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from model_store.errors import SourceError

SUPPORTED_BINARY_VERSIONS = (5, 6)

# CTranslate2's dtype codes.
_DTYPES: dict[int, np.dtype[np.generic]] = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
}
_BFLOAT16 = 5


@dataclass(frozen=True)
class Ct2Model:
    """The variables of a CTranslate2 model, by name (aliases resolved)."""

    name: str
    binary_version: int
    revision: int
    variables: dict[str, npt.NDArray[np.generic]]

    def __getitem__(self, name: str) -> npt.NDArray[np.generic]:
        try:
            return self.variables[name]
        except KeyError:
            raise SourceError(f"CTranslate2 model has no variable {name!r}") from None


class _ConcatenatedReader(io.RawIOBase):
    """Reads several files as one stream (``model.bin.part1``, ``model.bin.part2``, ...)."""

    def __init__(self, paths: Sequence[Path]) -> None:
        self._handles: list[io.BufferedReader] = [path.open("rb") for path in paths]
        self._index = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while self._index < len(self._handles):
            count = self._handles[self._index].readinto(buffer)
            if count:
                return count
            self._index += 1
        return 0

    def close(self) -> None:
        for handle in self._handles:
            handle.close()
        super().close()


class _Parser:
    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream

    def exact(self, count: int) -> bytes:
        data = self._stream.read(count)
        if data is None or len(data) != count:
            raise SourceError("CTranslate2 model.bin is truncated")
        return data

    def u8(self) -> int:
        return int(self.exact(1)[0])

    def u16(self) -> int:
        return int(struct.unpack("<H", self.exact(2))[0])

    def u32(self) -> int:
        return int(struct.unpack("<I", self.exact(4))[0])

    def string(self) -> str:
        return self.exact(self.u16()).decode("utf-8").rstrip("\x00")


def _decode_array(raw: bytes, dtype_code: int, shape: tuple[int, ...]) -> npt.NDArray[np.generic]:
    if dtype_code == _BFLOAT16:
        halves = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    if dtype_code not in _DTYPES:
        raise SourceError(f"unknown CTranslate2 dtype code {dtype_code}")
    return np.frombuffer(raw, dtype=_DTYPES[dtype_code]).reshape(shape)


def read_ct2_model(parts: Sequence[Path]) -> Ct2Model:
    """Parse ``model.bin`` given as one path or as its consecutive parts."""
    if not parts:
        raise SourceError("no model.bin given")
    with io.BufferedReader(_ConcatenatedReader(parts), buffer_size=1 << 20) as stream:
        parser = _Parser(stream)
        binary_version = parser.u32()
        if binary_version not in SUPPORTED_BINARY_VERSIONS:
            raise SourceError(
                f"unsupported CTranslate2 binary version {binary_version} "
                f"(supported: {SUPPORTED_BINARY_VERSIONS})"
            )
        name = parser.string()
        revision = parser.u32()
        variables: dict[str, npt.NDArray[np.generic]] = {}
        for _ in range(parser.u32()):
            variable_name = parser.string()
            shape = tuple(parser.u32() for _ in range(parser.u8()))
            dtype_code = parser.u8()
            raw = parser.exact(parser.u32())
            variables[variable_name] = _decode_array(raw, dtype_code, shape)
        for _ in range(parser.u32()):
            alias, target = parser.string(), parser.string()
            variables[alias] = variables[target]
        if stream.read(1):
            raise SourceError("CTranslate2 model.bin has trailing bytes after the aliases")
    return Ct2Model(name=name, binary_version=binary_version, revision=revision, variables=variables)
