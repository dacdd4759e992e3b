"""A markdown table of several variants' recorded evaluations side by side (``hush eval table``).

Reads only manifests: each variant's CER per language (from its last ``hush eval``), size on disk,
ms per audio-second and peak memory. A CER more than ``tolerance`` above the variant's parent on a
language is marked with ``!`` so that quantization or distillation that hurts one language shows.
"""

from __future__ import annotations

from collections.abc import Sequence

from model_store.manifest import Manifest

CER_POINT = 0.01  # one CER point, as the issues count them (0.5 points = 0.005)


def _cell(manifest: Manifest, language: str, parent: Manifest | None, tolerance: float) -> str:
    cer = manifest.cer_for(language)
    if cer is None:
        return "-"
    parent_cer = parent.cer_for(language) if parent is not None else None
    mark = "!" if parent_cer is not None and cer - parent_cer > tolerance else ""
    return f"{cer:.3f}{mark}"


def markdown_table(
    manifests: Sequence[Manifest], parents: dict[str, Manifest], tolerance: float = 0.5 * CER_POINT
) -> list[str]:
    """Rows: one per language any variant was evaluated on, then size, speed and memory."""
    languages = sorted({language for m in manifests if m.eval for language in m.eval.languages})
    lines = [
        "| lang | " + " | ".join(m.id for m in manifests) + " |",
        "|---|" + "---|" * len(manifests),
    ]
    for language in languages:
        cells = [_cell(m, language, parents.get(m.id), tolerance) for m in manifests]
        lines.append(f"| {language} | " + " | ".join(cells) + " |")
    lines.append("| MB on disk | " + " | ".join(f"{m.bytes_on_disk / 1e6:.1f}" for m in manifests) + " |")
    lines.append(
        "| ms per audio-s | "
        + " | ".join(f"{m.latency.ms_per_audio_second:.0f}" if m.latency else "-" for m in manifests)
        + " |"
    )
    lines.append(
        "| peak MiB | "
        + " | ".join(f"{m.latency.peak_memory_bytes / 2**20:.0f}" if m.latency else "-" for m in manifests)
        + " |"
    )
    return lines
