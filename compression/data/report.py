"""The per-language table that ``hush data build`` and ``hush data stats`` print."""

from __future__ import annotations

from typing import Any

from compression.data.splits import SPLITS

# Whisper-base's real-time factor on this project's CPU machines (DATA.md): to size the dev split
WHISPER_BASE_CPU_RTF = 0.08
_ORDER = ("train", "dev", "test")


def _triple(split_stats: dict[str, dict[str, Any]], key: str, fmt: str = "{}") -> str:
    return "/".join(fmt.format(split_stats[split][key]) for split in _ORDER)


def format_table(languages: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One row per language: utterances, minutes, speakers per split (train/dev/test), sources, licences."""
    header = (
        "lang",
        "utterances tr/dev/test",
        "minutes tr/dev/test",
        "speakers tr/dev/test",
        "sources",
        "licences",
    )
    rows: list[tuple[str, ...]] = [header]
    totals = {split: {"utterances": 0, "minutes": 0.0} for split in SPLITS}
    for language, stats in sorted(languages.items()):
        sources = sorted({source for split in SPLITS for source in stats[split]["sources"]})
        licences = sorted({licence for split in SPLITS for licence in stats[split]["licences"]})
        rows.append(
            (
                language,
                _triple(stats, "utterances"),
                _triple(stats, "minutes", "{:.1f}"),
                _triple(stats, "speakers"),
                ",".join(sources),
                " | ".join(licences),
            )
        )
        for split in SPLITS:
            totals[split]["utterances"] += stats[split]["utterances"]
            totals[split]["minutes"] += stats[split]["minutes"]
    rows.append(
        (
            "total",
            "/".join(str(totals[split]["utterances"]) for split in _ORDER),
            "/".join(f"{totals[split]['minutes']:.1f}" for split in _ORDER),
            "",
            "",
            "",
        )
    )
    widths = [max(len(row[column]) for row in rows) for column in range(len(header) - 1)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False)) + "  " + row[-1]
        for row in rows
    ]
    lines.insert(1, "-" * min(160, max(len(line) for line in lines)))
    return "\n".join(line.rstrip() for line in lines)


def dev_evaluation_minutes(languages: dict[str, dict[str, dict[str, Any]]]) -> float:
    """Estimated CPU minutes for Whisper-base to transcribe the whole dev split."""
    return sum(stats["dev"]["minutes"] for stats in languages.values()) * WHISPER_BASE_CPU_RTF


def format_summary(info: dict[str, Any], directory: str) -> str:
    languages = info["languages"]
    dev_minutes = sum(stats["dev"]["minutes"] for stats in languages.values())
    return "\n".join(
        (
            format_table(languages),
            "",
            f"corpus {info['id']} in {directory}",
            f"sha256 {info['sha256']}",
            f"dev: {dev_minutes:.1f} min of audio, about {dev_evaluation_minutes(languages):.1f} CPU minutes "
            f"for Whisper-base at a real-time factor of {WHISPER_BASE_CPU_RTF}",
        )
    )
