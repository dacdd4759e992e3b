"""What this CPU's instruction set allows hush's CPU kernels: full-range int8 activations, bfloat16.

**int8.** PyTorch's dynamic int8 Linear (fbgemm) multiplies unsigned 8-bit activations by signed
8-bit weights. Without VNNI, x86 does that with ``vpmaddubsw``, which adds two products into a
saturating 16-bit lane: ``2 * 255 * 127`` overflows it, so PyTorch quantizes activations to 7 bits
(``reduce_range``), doubling their rounding error. VNNI's ``vpdpbusd`` (AVX512-VNNI, AVX-VNNI; AMX
likewise) sums into 32 bits and cannot saturate, so there the full 8-bit range is exact.

**bfloat16.** AVX512-BF16 and AMX multiply bfloat16 pairs into float32 sums; the encoder's
bfloat16 self-attention (:mod:`model_store.backends.bf16_attention`) pays off only there.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


def cpu_flags(cpuinfo: str) -> frozenset[str]:
    """The feature flags of a ``/proc/cpuinfo`` text (the union over its processors)."""
    flags: set[str] = set()
    for line in cpuinfo.splitlines():
        key, separator, value = line.partition(":")
        if separator and key.strip() == "flags":
            flags.update(value.split())
    return frozenset(flags)


def has_vnni(flags: frozenset[str]) -> bool:
    """Whether the flags name an int8 dot product that sums into 32 bits."""
    return bool(flags & VNNI_FLAGS)


def has_native_bf16(flags: frozenset[str]) -> bool:
    """Whether the flags name a bfloat16 dot product (``vdpbf16ps``, AMX): there oneDNN multiplies
    bfloat16 matrices at about twice the float32 rate; elsewhere it converts them and gains nothing."""
    return bool(flags & BF16_FLAGS)


def _this_cpu_flags(cpuinfo: Path) -> frozenset[str]:
    try:
        return cpu_flags(cpuinfo.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return frozenset()  # not Linux: claim no optional feature


@cache
def native_bf16(cpuinfo: Path = CPUINFO) -> bool:
    """Whether this CPU multiplies bfloat16 natively (``False`` where ``cpuinfo`` cannot be read)."""
    return has_native_bf16(_this_cpu_flags(cpuinfo))


@cache
def full_range_int8_is_exact(cpuinfo: Path = CPUINFO) -> bool:
    """Whether 8-bit activations are safe in fbgemm's int8 Linear on this machine. ``False`` where
    ``cpuinfo`` cannot be read (not Linux): the 7-bit range is correct everywhere."""
    return has_vnni(_this_cpu_flags(cpuinfo))
