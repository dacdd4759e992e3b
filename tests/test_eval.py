"""``hush eval`` on a tiny random model and a small hand-made corpus: a valid manifest, resumable runs,
comparisons that pair utterances."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from compression.data.audio_io import to_pcm16, write_flac
from compression.data.corpus import Corpus, Record, write_index
from compression.evaluation.hypotheses import HypothesisLog, temperature_decoding
from compression.evaluation.latency import measure_latency
from compression.evaluation.latency_clips import GAP_SECONDS, latency_clips
from compression.evaluation.runner import EvalJob, compare_variants, evaluate_variant, records_over
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from tests.conftest import sine
from tests.factories import publish_tiny_variant

TEXTS = {"en": ["hello there", "good morning"], "fr": ["bonjour à tous", "merci beaucoup"]}


def make_corpus(directory: Path) -> Corpus:
    records = []
    for language, texts in TEXTS.items():
        for index, text in enumerate(texts):
            for split in ("train", "dev", "test"):
                identifier = f"{language}-{split}-{index}"
                path = f"audio/{language}/{identifier}.flac"
                (directory / path).parent.mkdir(parents=True, exist_ok=True)
                write_flac(directory / path, to_pcm16(sine(1.0 + index, 300.0 + 50 * index)))
                records.append(
                    Record(identifier, path, language, text, 1.0 + index, "test", "s1", split, True, "CC0")
                )
    write_index(directory, "test-corpus", records, {"made": "in a test"})
    return Corpus.open(directory)


@pytest.fixture()
def store_and_job(tmp_path: Path) -> tuple[ModelStore, EvalJob]:
    store = ModelStore(tmp_path / "store")
    publish_tiny_variant(store, "tiny-a", seed=0)
    publish_tiny_variant(store, "tiny-b", seed=1)
    job = EvalJob(
        make_corpus(tmp_path / "corpus"),
        "dev",
        None,
        tmp_path / "eval",
        bootstrap_resamples=200,
        temperatures=(0.0,),
    )
    return store, job


def test_eval_writes_a_valid_manifest(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    store, job = store_and_job
    report = evaluate_variant(store, "tiny-a", job, RuntimeSettings(device="cpu"), progress=False)
    manifest = store.verify("tiny-a")  # the manifest was rewritten, the weights still verify
    assert manifest.eval == report
    assert report.corpus_id == "test-corpus" and report.corpus_sha256 == job.corpus.sha256
    assert set(report.languages) == {"en", "fr"}
    english = report.languages["en"]
    assert english.utterances == 2
    assert english.ref_chars == len("hello there") + len("good morning")
    assert english.audio_seconds == 3.0
    assert english.cer == english.char_edits / english.ref_chars
    assert english.cer_ci95 is not None and english.cer_ci95[0] <= english.cer <= english.cer_ci95[1]
    assert manifest.cer_for("fr") == report.languages["fr"].cer


def test_eval_resumes_without_redoing_work(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    store, job = store_and_job
    evaluate_variant(store, "tiny-a", job, RuntimeSettings(device="cpu"), progress=False)
    log = HypothesisLog(
        job.hypotheses_root,
        store.get("tiny-a"),
        job.corpus.sha256,
        "dev",
        temperature_decoding(job.temperatures),
    )
    lines = log.path.read_text().splitlines()
    assert len(lines) == 4
    # Simulate a run killed after two utterances, with a half-written third line.
    log.path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:10])
    first = evaluate_variant(store, "tiny-a", job, RuntimeSettings(device="cpu"), progress=False)
    assert len(log.load()) == 4
    assert first.languages["en"].utterances == 2


def test_compare_pairs_the_same_utterances(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    store, job = store_and_job
    for variant in ("tiny-a", "tiny-b"):
        evaluate_variant(store, variant, job, RuntimeSettings(device="cpu"), progress=False)
    rows = compare_variants(store, "tiny-a", "tiny-a", job, RuntimeSettings(device="cpu"))
    assert [row.language for row in rows] == ["en", "fr"]
    assert all(row.difference.estimate == 0 and row.difference.verdict == "not significant" for row in rows)
    rows = compare_variants(store, "tiny-a", "tiny-b", job, RuntimeSettings(device="cpu"))
    for row in rows:
        assert row.utterances == 2
        assert row.difference.estimate == pytest.approx(row.cer_b - row.cer_a)


def test_8_bit_and_7_bit_int8_transcripts_are_kept_apart(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    """The same int8 bytes run with 8-bit or 7-bit activations transcribe differently: each numerics
    has its own log, and a comparison reads the one this machine's settings give."""
    from compression.quantize.methods import quantize_variant

    store, job = store_and_job
    int8 = quantize_variant(store, "tiny-a", "ptq-int8").id
    for full_range in (False, True):
        runtime = RuntimeSettings(device="cpu", int8_full_range=full_range)
        evaluate_variant(store, "tiny-a", job, runtime, progress=False)
        evaluate_variant(store, int8, job, runtime, progress=False)
    assert store.get(int8).eval.numerics == "a8" and store.get("tiny-a").eval.numerics == ""
    # one language again with 7-bit activations: not merged with the 8-bit figures of the other
    seven_bit = RuntimeSettings(device="cpu", int8_full_range=False)
    french = evaluate_variant(store, int8, replace(job, languages=["fr"]), seven_bit, progress=False)
    assert set(french.languages) == {"fr"} and french.numerics == ""
    names = sorted(path.name for path in (job.hypotheses_root / int8).glob("*.jsonl"))
    assert len(names) == 2 and sum("-t0-a8-" in name for name in names) == 1
    assert len(list((job.hypotheses_root / "tiny-a").glob("*.jsonl"))) == 1  # float: no numerics label
    (next(path for path in (job.hypotheses_root / int8).glob("*-t0-a8-*.jsonl"))).unlink()
    with pytest.raises(ValueError, match=f"hush eval {int8}"):
        compare_variants(store, "tiny-a", int8, job, RuntimeSettings(device="cpu", int8_full_range=True))
    assert compare_variants(store, "tiny-a", int8, job, RuntimeSettings(device="cpu", int8_full_range=False))


def test_compare_needs_transcripts(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    store, job = store_and_job
    with pytest.raises(ValueError, match="hush eval tiny-a"):
        compare_variants(store, "tiny-a", "tiny-b", job, RuntimeSettings(device="cpu"))


def test_latency_is_measured_in_a_fresh_process(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    store, job = store_and_job
    clips = latency_clips(job.corpus, store.get("tiny-a"), count=2, target_seconds=2.0)
    latency = measure_latency(
        store.root, "tiny-a", clips, runs=2, runtime=RuntimeSettings(device="cpu", threads=1)
    )
    assert latency.ms_per_audio_second > 0
    assert latency.real_time_factor == pytest.approx(latency.ms_per_audio_second / 1000, rel=1e-2)
    assert latency.machine.threads == 1
    assert latency.peak_memory_bytes > 50 * 2**20  # a process with torch loaded
    assert latency.device == "cpu" and latency.runs == 2
    assert latency.clip_seconds == pytest.approx(2.0 + GAP_SECONDS + 1.0)
    # detection is one encoder pass and one decoder step: part of a clip's whole transcription
    assert latency.language_detection_ms is not None
    assert 0 < latency.language_detection_ms < latency.ms_per_audio_second * latency.clip_seconds
    assert np.isfinite(latency.load_seconds)


def test_quick_slice_is_deterministic_and_labelled(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    import dataclasses

    store, job = store_and_job
    quick = dataclasses.replace(job, max_per_language=1)
    assert quick.split_label == "dev:first1"
    chosen = quick.select(job.corpus.utterances("dev"))
    assert [utterance.id for utterance in chosen] == ["en-dev-0", "fr-dev-0"]
    report = evaluate_variant(store, "tiny-a", quick, RuntimeSettings(device="cpu"), progress=False)
    assert report.split == "dev:first1"
    assert {score.utterances for score in report.languages.values()} == {1}


def test_evaluating_some_languages_again_keeps_the_others(store_and_job: tuple[ModelStore, EvalJob]) -> None:
    store, job = store_and_job
    runtime = RuntimeSettings(device="cpu")
    full = evaluate_variant(store, "tiny-a", job, runtime, progress=False)
    french_only = replace(job, languages=["fr"])
    again = evaluate_variant(store, "tiny-a", french_only, runtime, progress=False)
    assert set(again.languages) == {"en", "fr"}
    assert again.languages["en"] == full.languages["en"]
    assert store.get("tiny-a").eval == again
    sliced = evaluate_variant(store, "tiny-a", replace(job, max_per_language=1), runtime, progress=False)
    assert sliced.split != full.split  # a slice of every language is another measurement: it replaces
    assert all(score.utterances == 1 for score in sliced.languages.values())
    # the whole split on one language after a slice of all: the others keep their sliced figures
    mixed = evaluate_variant(store, "tiny-a", french_only, runtime, progress=False)
    assert set(mixed.languages) == {"en", "fr"} and mixed.split == "dev:mixed"
    assert mixed.languages["en"] == sliced.languages["en"] and mixed.languages["fr"] == full.languages["fr"]
    assert store.get("tiny-a").eval == mixed


def test_latency_clips_have_one_length_whatever_the_languages(
    store_and_job: tuple[ModelStore, EvalJob],
) -> None:
    """Each clip joins consecutive utterances of one language until it is long enough, so an
    English-only variant and a multilingual one are timed on clips of the same length."""
    store, job = store_and_job
    english_only = store.get("tiny-a").model_copy(update={"multilingual": False, "languages": ("en",)})
    clips = latency_clips(job.corpus, english_only, count=4, target_seconds=1.5)
    assert [clip.language for clip in clips] == ["en"]  # en-dev-0 (1 s) + en-dev-1 (2 s): one clip
    assert clips[0].seconds == pytest.approx(1.0 + GAP_SECONDS + 2.0)
    assert len(clips[0].load()) == int((3.0 + GAP_SECONDS) * 16_000)
    both = latency_clips(job.corpus, store.get("tiny-a"), count=4, target_seconds=0.5)
    assert [(clip.language, clip.seconds) for clip in both] == [
        ("en", 1.0),
        ("fr", 1.0),
        ("en", 2.0),
        ("fr", 2.0),
    ]


def test_language_id_counts_each_language_and_times_detection(
    store_and_job: tuple[ModelStore, EvalJob],
) -> None:
    from compression.evaluation.language_id import identify_languages, language_id_table

    store, job = store_and_job
    utterances = job.corpus.utterances("dev")
    result = identify_languages(store, "tiny-a", utterances, RuntimeSettings(device="cpu"), progress=False)
    assert result.utterances == {"en": 2, "fr": 2}
    assert all(0 <= result.correct[language] <= 2 for language in ("en", "fr"))
    assert result.accuracy == sum(result.correct.values()) / 4
    assert result.median_ms > 0
    table = list(language_id_table([result]))
    assert table[0] == "| detector | correct | en | fr | median ms |"
    assert table[2].startswith(f"| tiny-a | {result.accuracy:.1%} | {result.accuracy_for(['en']):.2f} |")
    store.update("tiny-b", multilingual=False, languages=("en",))
    with pytest.raises(ValueError, match="English-only"):
        identify_languages(store, "tiny-b", utterances, RuntimeSettings(device="cpu"), progress=False)


def test_a_test_split_report_never_replaces_the_routing_report(
    store_and_job: tuple[ModelStore, EvalJob],
) -> None:
    store, job = store_and_job
    runtime = RuntimeSettings(device="cpu")
    dev = evaluate_variant(store, "tiny-a", job, runtime, progress=False, routing_split="dev")
    test = evaluate_variant(
        store, "tiny-a", replace(job, split="test"), runtime, progress=False, routing_split="dev"
    )
    assert test.split == "test" and set(test.languages) == set(dev.languages)
    assert store.get("tiny-a").eval == dev  # the router still reads the dev figures
    # where the routing split is test (HUSH_EVAL__SPLIT=test), the test report is the one recorded
    again = evaluate_variant(
        store, "tiny-a", replace(job, split="test"), runtime, progress=False, routing_split="test"
    )
    assert store.get("tiny-a").eval == again and again.split == "test"
    assert records_over(None, test, "dev")  # nothing recorded yet: anything is better than nothing
