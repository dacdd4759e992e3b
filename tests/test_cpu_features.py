"""Reading whether the CPU has VNNI, which decides the int8 activation range."""

from __future__ import annotations

from pathlib import Path

from model_store.backends.cpu_features import cpu_flags, full_range_int8_is_exact, has_vnni

AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
flags\t\t: fpu sse sse2 avx avx2 fma
bugs\t\t: sysret_ss_attrs

processor\t: 1
flags\t\t: fpu sse sse2 avx avx2 fma
"""
AVX512_VNNI = AVX2_ONLY.replace("avx2 fma\n", "avx2 fma avx512f avx512bw avx512_vnni\n", 1)


def test_flags_are_read_from_every_processor_and_vnni_is_recognised() -> None:
    assert cpu_flags(AVX2_ONLY) == frozenset({"fpu", "sse", "sse2", "avx", "avx2", "fma"})
    assert not has_vnni(cpu_flags(AVX2_ONLY))
    assert "avx512_vnni" in cpu_flags(AVX512_VNNI) and has_vnni(cpu_flags(AVX512_VNNI))
    assert has_vnni(frozenset({"avx_vnni"})) and has_vnni(frozenset({"amx_int8"}))
    assert not has_vnni(frozenset({"avx512f", "avx512bw"}))  # AVX-512 alone still saturates


def test_an_unreadable_cpuinfo_keeps_the_safe_7_bit_range(tmp_path: Path) -> None:
    assert full_range_int8_is_exact(tmp_path / "no-cpuinfo") is False
    written = tmp_path / "cpuinfo"
    written.write_text(AVX512_VNNI)
    assert full_range_int8_is_exact(written) is True
