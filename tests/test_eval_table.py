"""``hush eval table``: recorded figures side by side, a drop against the parent marked."""

from __future__ import annotations

from pathlib import Path

from compression.evaluation.table import markdown_table
from model_store.manifest import EvalReport, LanguageScore
from tests.factories import store_with_tiny_variants


def _report(**cers: float) -> EvalReport:
    return EvalReport(
        corpus_id="c",
        corpus_sha256="0" * 64,
        split="dev",
        languages={
            language: LanguageScore(
                utterances=10,
                audio_seconds=30.0,
                cer=cer,
                wer=cer,
                cer_raw=cer,
                wer_raw=cer,
                char_edits=int(cer * 1000),
                ref_chars=1000,
                word_edits=0,
                ref_words=100,
            )
            for language, cer in cers.items()
        },
    )


def test_a_language_hurt_by_more_than_half_a_point_is_marked(tmp_path: Path) -> None:
    store = store_with_tiny_variants(tmp_path, "teacher", "student")
    teacher = store.update("teacher", eval=_report(en=0.100, cs=0.200))
    student = store.update("student", parent="teacher", eval=_report(en=0.104, cs=0.206, nl=0.3))
    lines = markdown_table([teacher, student], {"student": teacher})
    assert lines[0] == "| lang | teacher | student |"
    assert "| cs | 0.200 | 0.206! |" in lines  # 0.6 points worse
    assert "| en | 0.100 | 0.104 |" in lines  # within 0.5 points
    assert "| nl | - | 0.300 |" in lines  # no parent figure to compare with
    assert lines[-3].startswith("| MB on disk | ")
    assert lines[-2] == "| ms per audio-s | - | - |"  # no latency measured
