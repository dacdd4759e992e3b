"""`hush compress distill` end to end on a tiny random teacher and a tiny corpus: publish, reopen, run."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
import torch
import typer
from typer.testing import CliRunner

from compression.data.corpus import Corpus
from compression.distill.cli import distill_command, quick_eval_command
from compression.distill.pipeline import run_distillation, variant_quick_scores
from compression.distill.plan import DistillPlan
from compression.distill.quick_eval import POOLED_ROW, compare_quick, summarize_quick
from compression.distill.students import IncompatibleStudentError
from compression.quantize.methods import quantize_variant
from compression.training.placement import NoTrainingDeviceError
from compression.training.selection import sample_digest, select_utterances
from model_store.backends.quantized_loading import load_model, weights_format
from model_store.opener import open_variant
from model_store.scoring import score_utterance
from model_store.settings import HushSettings, RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import TranscribeOptions
from tests.conftest import sine
from tests.factories import publish_tiny_variant, tiny_corpus


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[HushSettings, ModelStore]:
    home = tmp_path_factory.mktemp("home")
    corpus = tiny_corpus(home / "corpus" / "tiny-corpus")
    store = ModelStore(home / "store")
    publish_tiny_variant(store, "teacher")
    settings = HushSettings(home=home, store={"root": home / "store"}, eval={"corpus": corpus})  # type: ignore[arg-type]
    return settings, store


def test_qad_student_is_published_with_its_recipe_and_runs(setup: tuple[HushSettings, ModelStore]) -> None:
    settings, store = setup
    plan = DistillPlan(
        teacher="teacher",
        variant_id="student-qad4",
        languages=("en", "cs"),
        decoder_layers=1,
        preset="dq-whisper",
        labels="gold",
        qad_bits=4,
        steps=2,
        batch_size=2,
    )
    outcome = run_distillation(settings, store, plan, progress=False)
    assert outcome is not None  # a single process is the main one
    manifest = store.verify("student-qad4")
    assert manifest.parent == "teacher" and manifest.recipe.method == "qad"
    assert weights_format(manifest) == "hush-lowbit" and manifest.dtype == "int4"
    assert manifest.languages == ("cs", "en")
    assert manifest.timestamps is False  # trained on <|notimestamps|> sequences, served without them
    args = manifest.recipe.args
    assert args["plan"]["preset"] == "dq-whisper" and args["training"]["steps"] == 2
    assert args["sizes"]["bytes_dq_rule"] < args["sizes"]["teacher_bytes_dq_rule"]
    assert set(outcome.report["quick_dev"]) == {"cs", "en"}
    assert (settings.runs_dir / "distill" / "student-qad4" / "adapter.pt").is_file()
    transcriber = open_variant(store, "student-qad4", RuntimeSettings(device="cpu"))
    result = transcriber.transcribe(sine(1.0), TranscribeOptions(language="en", temperatures=(0.0,)))
    assert isinstance(result.text, str)


def _cli_on(
    settings: HushSettings, monkeypatch: pytest.MonkeyPatch, name: str, command: Callable[..., None]
) -> typer.Typer:
    """A CLI app with ``command`` under ``name``, reading ``settings``' home, store and corpus."""
    monkeypatch.setenv("HUSH_HOME", str(settings.home))
    monkeypatch.setenv("HUSH_STORE__ROOT", str(settings.store.root))
    monkeypatch.setenv("HUSH_EVAL__CORPUS", str(settings.eval.corpus))
    app = typer.Typer()
    app.command(name)(command)
    app.command("noop")(lambda: None)  # a second command keeps NAME a subcommand
    return app


def _kd_qad_plan(variant_id: str, steps: int = 2) -> DistillPlan:
    """A plan through every device-sensitive part: teacher memo, feature adapter, fake quantization."""
    return DistillPlan(
        teacher="teacher",
        variant_id=variant_id,
        languages=("en", "cs"),
        decoder_layers=1,
        preset="dq-whisper",
        labels="gold",
        qad_bits=4,
        steps=steps,
        batch_size=2,
        eval_dev=False,
    )


def test_distillation_asked_to_train_on_a_missing_gpu_says_so(
    setup: tuple[HushSettings, ModelStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    settings, store = setup
    with pytest.raises(NoTrainingDeviceError, match="no CUDA GPU is visible"):
        run_distillation(settings, store, _kd_qad_plan("student-nowhere"), progress=False, device="cuda")
    assert not store.exists("student-nowhere")
    app = _cli_on(settings, monkeypatch, "distill", distill_command)
    base = ["distill", "teacher", "--id", "student-nowhere", "--languages", "en,cs", "--decoder-layers", "1"]
    result = CliRunner().invoke(app, [*base, "--device", "cuda"])
    assert result.exit_code == 2 and "no CUDA GPU is visible" in result.output
    bad = CliRunner().invoke(app, [*base, "--device", "tpu"])
    assert bad.exit_code == 2 and "--device must be one of auto, cpu, cuda" in bad.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_student_trained_on_the_gpu_matches_the_cpu_one_and_resumes_on_the_cpu(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")  # empty caches and memo: the GPU run computes them
    publish_tiny_variant(store, "teacher")
    corpus = tiny_corpus(tmp_path / "corpus" / "tiny-corpus")
    settings = HushSettings(home=tmp_path, store={"root": tmp_path / "store"}, eval={"corpus": corpus})  # type: ignore[arg-type]
    on_gpu = run_distillation(settings, store, _kd_qad_plan("student-gpu"), progress=False, device="cuda")
    on_cpu = run_distillation(settings, store, _kd_qad_plan("student-cpu"), progress=False, device="cpu")
    assert on_cpu is not None and on_gpu is not None and on_gpu.report["device"] == "cuda:0"

    def weights(variant: str) -> dict[str, torch.Tensor]:
        model = load_model(store.get(variant), store.path(variant), torch.device("cpu"), torch.float32)
        return dict(model.state_dict())

    gpu_weights, cpu_weights = weights("student-gpu"), weights("student-cpu")
    for name, tensor in cpu_weights.items():  # float rounding may move a few 4-bit codes by one step
        difference = torch.linalg.vector_norm(gpu_weights[name] - tensor)
        assert difference <= 0.01 * torch.linalg.vector_norm(tensor) + 1e-6, name
    # the GPU run's checkpoint holds CPU tensors: the same plan run again on the CPU resumes it (at its end)
    again = dataclasses.replace(_kd_qad_plan("student-gpu"), replace=True)
    resumed = run_distillation(settings, store, again, progress=False, device="cpu")
    assert resumed is not None and resumed.report["training"]["resumed_from"] == 2
    assert all(torch.equal(gpu_weights[name], t) for name, t in weights("student-gpu").items())


def test_whole_model_4_bit_student_is_smaller_than_decoder_only_and_serves(
    setup: tuple[HushSettings, ModelStore],
) -> None:
    settings, store = setup
    common = {"teacher": "teacher", "languages": ("en", "cs"), "decoder_layers": None, "labels": "gold"}
    for variant_id, scope in (("scope-decoder", "decoder"), ("scope-model", "model")):
        plan = DistillPlan(
            variant_id=variant_id,
            preset="ce",
            qad_bits=4,
            granularity="per-group",
            group_size=32,
            quantize_scope=scope,  # type: ignore[arg-type]
            steps=2,
            batch_size=2,
            **common,  # type: ignore[arg-type]
        )
        run_distillation(settings, store, plan, progress=False)
    decoder_only, whole = store.verify("scope-decoder"), store.verify("scope-model")
    assert whole.bytes_on_disk < decoder_only.bytes_on_disk < store.verify("teacher").bytes_on_disk
    layer_bits = whole.recipe.args["layer_bits"]
    assert "proj_out" in layer_bits and any(".encoder.layers." in name for name in layer_bits)
    assert whole.recipe.args["group_size"] == [32] and whole.recipe.args["plan"]["quantize_scope"] == "model"
    # its own encoder outputs (the quantized encoder's) were cached beside the teacher's
    caches = {path.name for path in (settings.cache_dir / "encoder").iterdir()}
    assert len(caches) >= 2
    transcriber = open_variant(store, "scope-model", RuntimeSettings(device="cpu"))
    result = transcriber.transcribe(sine(1.0), TranscribeOptions(language="en", temperatures=(0.0,)))
    assert isinstance(result.text, str)


def test_pseudo_labels_and_guided_precision(setup: tuple[HushSettings, ModelStore]) -> None:
    settings, store = setup
    settings = settings.model_copy(
        update={"distill": settings.distill.model_copy(update={"default_wer_threshold": 100.0})}
    )
    plan = DistillPlan(
        teacher="teacher",
        variant_id="student-guided",
        languages=("en", "cs"),
        decoder_layers=1,
        preset="distil-whisper",
        labels="pseudo",
        guided_average_bits=6.0,
        guided_choices=(4, 6, 8),
        steps=1,
        batch_size=2,
        eval_dev=False,
    )
    outcome = run_distillation(settings, store, plan, progress=False)
    assert outcome is not None  # a single process is the main one
    manifest = store.get("student-guided")
    report = outcome.report
    assert report["pseudo_labels"]["total"] == {"cs": 4, "en": 4}
    bits = manifest.recipe.args["guided"]["bits"]
    assert set(bits.values()) <= {4, 6, 8} and manifest.recipe.method == "guided"
    assert set(manifest.recipe.args["guided"]["sensitivity"]["model.decoder.layers.0.fc1"]) == {"4", "6", "8"}
    assert 4.0 < manifest.recipe.args["guided"]["average_bits"] <= 6.0
    assert set(manifest.recipe.args["guided"]["sensitivity"]) == set(bits)


def guided_plan(variant_id: str, **changes: Any) -> DistillPlan:
    """A 1-layer CE student of the tiny teacher on gold labels, guided to 4 bits average from 2, 4 and
    8, calibrated on the 2 train utterances a language that its sample of 2 leaves out, untrained, no
    dev check: each test names what it changes."""
    plan: dict[str, Any] = {
        "teacher": "teacher",
        "languages": ("en", "cs"),
        "per_language": 2,
        "decoder_layers": 1,
        "preset": "ce",
        "labels": "gold",
        "guided_average_bits": 4.0,
        "guided_choices": (2, 4, 8),
        "calibration": "held-out",
        "steps": 0,
        "batch_size": 2,
        "eval_dev": False,
    }
    return DistillPlan(variant_id=variant_id, **{**plan, **changes})


def test_guided_precision_on_greedy_transcripts_measures_every_linear_and_keeps_the_budget(
    setup: tuple[HushSettings, ModelStore],
) -> None:
    settings, store = setup
    plan = guided_plan(
        "student-guided-transcripts",
        per_language=100,
        calibration="train",
        guided_measure="transcripts-at-budget",
    )
    assert run_distillation(settings, store, plan, progress=False) is not None
    guided = store.get("student-guided-transcripts").recipe.args["guided"]
    assert guided["measure"] == "transcripts-at-budget" and guided["average_bits"] <= 4.0
    sensitivity = guided["sensitivity"]
    assert set(sensitivity) == set(guided["bits"])
    # at the budget's width every Linear reads the uniform model's figure; 2 bits change more than 8
    assert len({by_bits["4"] for by_bits in sensitivity.values()}) == 1
    assert sum(by_bits["2"] for by_bits in sensitivity.values()) > sum(
        by_bits["8"] for by_bits in sensitivity.values()
    )


def test_guided_matching_is_chosen_before_training_and_recorded(
    setup: tuple[HushSettings, ModelStore],
) -> None:
    settings, store = setup
    plan = DistillPlan(
        teacher="teacher",
        variant_id="student-guided-match",
        languages=("en", "cs"),
        decoder_layers=2,
        preset="dq-whisper",
        labels="gold",
        guided_match_layers=1,
        steps=2,
        batch_size=2,
        eval_dev=False,
    )
    outcome = run_distillation(settings, store, plan, progress=False)
    assert outcome is not None
    recorded = store.get("student-guided-match").recipe.args["guided_matching"]
    assert len(recorded["layers"]) == 1 and len(recorded["matching"]) == 2
    matched = {",".join(map(str, recorded["matching"])): 2}
    assert outcome.report["training"]["matchings"] == matched  # fixed through training
    too_many = dataclasses.replace(plan, variant_id="too-many", guided_match_layers=3)
    with pytest.raises(IncompatibleStudentError, match="only 2 decoder layers"):
        run_distillation(settings, store, too_many, progress=False)


def test_quick_eval_reads_the_split_it_is_given(setup: tuple[HushSettings, ModelStore]) -> None:
    settings, store = setup
    dev = summarize_quick(variant_quick_scores(settings, store, "teacher", ("en", "cs"), progress=False))
    test = summarize_quick(
        variant_quick_scores(settings, store, "teacher", ("en", "cs"), split="test", progress=False)
    )
    assert {language: score.utterances for language, score in dev.items()} == {"en": 1, "cs": 1}
    assert {language: score.utterances for language, score in test.items()} == {"en": 2, "cs": 2}


def test_quick_eval_keeps_each_variants_transcripts_and_decodes_afresh_when_asked(
    setup: tuple[HushSettings, ModelStore],
) -> None:
    settings, store = setup
    first = variant_quick_scores(settings, store, "teacher", ("en",), progress=False)
    logs = list((settings.eval_dir / "teacher").glob("*-dev-quick-*.jsonl"))
    assert len(logs) == 1
    records = [json.loads(line) for line in logs[0].read_text(encoding="utf-8").splitlines()]
    assert {score.utterance_id for score in first} <= {record["id"] for record in records}
    assert first[0].chars.edits > 0  # a random teacher gets the words wrong
    # what the log holds is what the next run scores: here, a transcript edited to the reference
    for record in records:
        record["hypothesis"] = record["reference"]
    logs[0].write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    assert variant_quick_scores(settings, store, "teacher", ("en",), progress=False)[0].chars.edits == 0
    fresh = variant_quick_scores(settings, store, "teacher", ("en",), fresh=True, progress=False)
    assert fresh == first  # decoded again, deterministically


def test_distill_command_names_a_bad_option_or_a_missing_corpus_without_a_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HUSH_HOME", str(tmp_path))
    monkeypatch.setenv("HUSH_STORE__ROOT", str(tmp_path / "store"))
    app = typer.Typer()
    app.command("distill")(distill_command)
    app.command("noop")(lambda: None)  # a second command keeps `distill` a subcommand
    base = ["distill", "teacher", "--id", "s", "--languages", "en"]
    runner = CliRunner()
    bad_scope = runner.invoke(app, [*base, "--quantize-scope", "everything"])
    assert bad_scope.exit_code == 2 and "quantize scope must be decoder or model" in bad_scope.output
    no_bits = runner.invoke(app, [*base, "--quantize-scope", "model"])
    assert no_bits.exit_code == 2 and "needs --qad-bits or --ptq-bits" in no_bits.output
    bad_granularity = runner.invoke(app, [*base, "--granularity", "per-row", "--qad-bits", "4"])
    assert bad_granularity.exit_code == 2 and "per-row" in bad_granularity.output
    no_corpus = runner.invoke(app, base)
    assert no_corpus.exit_code == 2 and "run `hush data build` first" in no_corpus.output
    assert not isinstance(no_corpus.exception, FileNotFoundError)  # reported, not raised


def test_quick_comparison_pairs_utterances_per_language_and_pooled() -> None:
    truth = {
        "en-1": ("en", "one two three four"),
        "en-2": ("en", "five six seven"),
        "cs-1": ("cs", "dobry den"),
    }
    reference = [
        score_utterance(key, language, text, "wrong words here") for key, (language, text) in truth.items()
    ]
    variant = [score_utterance(key, language, text, text) for key, (language, text) in truth.items()]
    variant.append(score_utterance("cs-9", "cs", "ahoj", "ahoj"))  # not in the reference: left out
    compared = compare_quick([s for s in reference if s], [s for s in variant if s], resamples=200)
    assert set(compared) == {"cs", "en", POOLED_ROW}
    assert (compared["en"].utterances, compared["cs"].utterances, compared[POOLED_ROW].utterances) == (
        2,
        1,
        3,
    )
    pooled = compared[POOLED_ROW]
    assert pooled.variant_cer == 0.0 and pooled.reference_cer > 0.5
    assert pooled.difference == -pooled.reference_cer and pooled.high < 0 and pooled.verdict == "better"
    same = compare_quick([s for s in reference if s], [s for s in reference if s], resamples=200)
    assert all(row.difference == 0 and row.verdict == "not significant" for row in same.values())


QuickEval = Callable[..., dict[str, Any]]


@pytest.fixture
def quick_eval(setup: tuple[HushSettings, ModelStore], monkeypatch: pytest.MonkeyPatch) -> QuickEval:
    """``hush compress quick-eval ARGS --languages en,cs --split test`` on the setup's store: its JSON."""
    app = _cli_on(setup[0], monkeypatch, "quick-eval", quick_eval_command)

    def run(*args: str) -> dict[str, Any]:
        result = CliRunner().invoke(app, ["quick-eval", *args, "--languages", "en,cs", "--split", "test"])
        assert result.exit_code == 0, result.output
        return cast(dict[str, Any], json.loads(result.stdout))

    return run


def test_quick_eval_command_compares_against_a_reference(quick_eval: QuickEval) -> None:
    report = quick_eval("teacher", "--against", "teacher")
    assert report["against"] == "teacher" and set(report["teacher"]) == {"cs", "en"}
    pooled = report["difference"][POOLED_ROW]
    assert pooled["utterances"] == 4 and pooled["difference"] == 0 and pooled["verdict"] == "not significant"


def test_quick_eval_command_sums_the_runs_of_several_seeds(
    setup: tuple[HushSettings, ModelStore], quick_eval: QuickEval
) -> None:
    settings, store = setup
    common = {"teacher": "teacher", "languages": ("en", "cs"), "labels": "gold", "batch_size": 2}
    plan = DistillPlan(variant_id="student", decoder_layers=1, preset="ce", steps=0, **common)  # type: ignore[arg-type]
    run_distillation(settings, store, plan, progress=False)
    alone = {name: quick_eval(name) for name in ("teacher", "student")}
    summed = quick_eval("teacher,student", "--against", "teacher,teacher")
    assert summed["teacher,student"]["summed over"] == ["teacher", "student"]
    for language in ("en", "cs"):
        mean = (alone["teacher"][language]["cer"] + alone["student"][language]["cer"]) / 2
        assert summed["teacher,student"][language]["cer"] == pytest.approx(mean, abs=1e-4)
    assert alone["teacher"] != alone["student"]  # the mean is of two different runs
    pooled = summed["difference"][POOLED_ROW]
    unsummed = quick_eval("student", "--against", "teacher")["difference"][POOLED_ROW]
    assert pooled["utterances"] == unsummed["utterances"] == 4
    assert pooled["reference_cer"] == unsummed["reference_cer"]  # a run summed with itself: same rate
    assert pooled["difference"] == pytest.approx(unsummed["difference"] / 2, abs=1e-4)


def test_a_qad_student_trains_on_from_its_low_bit_codes(setup: tuple[HushSettings, ModelStore]) -> None:
    settings, store = setup
    common = {"teacher": "teacher", "languages": ("en", "cs"), "labels": "gold", "batch_size": 2}
    first = DistillPlan(variant_id="stage-one", decoder_layers=1, preset="ce", qad_bits=6, steps=2, **common)  # type: ignore[arg-type]
    run_distillation(settings, store, first, progress=False)
    codes = load_model(store.get("stage-one"), store.path("stage-one"), torch.device("cpu"), torch.float32)
    second = DistillPlan(
        variant_id="stage-two", student_path="stage-one", preset="ce", qad_bits=6, steps=0, **common
    )  # type: ignore[arg-type]
    run_distillation(settings, store, second, progress=False)
    reloaded = load_model(store.get("stage-two"), store.path("stage-two"), torch.device("cpu"), torch.float32)
    # no step taken: the first stage's dequantized codes, quantized again at the same bits, give themselves
    for name, tensor in codes.state_dict().items():
        torch.testing.assert_close(reloaded.state_dict()[name], tensor, rtol=0, atol=1e-6, msg=name)
    quantize_variant(store, "teacher", "ptq-int8")
    refused = DistillPlan(
        variant_id="stage-x", student_path="teacher-ptq-int8", preset="ce", steps=0, **common
    )  # type: ignore[arg-type]
    with pytest.raises(IncompatibleStudentError, match="torch-dynamic-int8 weights, which cannot be trained"):
        run_distillation(settings, store, refused, progress=False)


def test_guided_precision_calibrates_on_held_out_train_utterances_when_asked(
    setup: tuple[HushSettings, ModelStore],
) -> None:
    settings, store = setup
    plan = guided_plan("student-guided-held-out", steps=1)
    outcome = run_distillation(settings, store, plan, progress=False)
    assert outcome is not None
    recorded = store.get("student-guided-held-out").recipe.args["calibration"]
    corpus = Corpus.open(settings.eval.corpus)
    trained = {u.id for u in select_utterances(corpus, "train", ("en", "cs"), 2)}
    train_split = {u.id for u in corpus.utterances("train", ["en", "cs"])}
    assert recorded["source"] == "held-out"
    assert len(recorded["utterances"]) == 4  # the two of each language the sample leaves out
    assert set(recorded["utterances"]) == train_split - trained
    assert store.get("student-guided-held-out").recipe.args["train_sample"] == sample_digest(
        select_utterances(corpus, "train", ("en", "cs"), 2)
    )
    on_train = dataclasses.replace(plan, variant_id="student-guided-train", calibration="train")
    outcome = run_distillation(settings, store, on_train, progress=False)
    assert outcome is not None and set(outcome.report["calibration"]["utterances"]) <= trained


def test_held_out_calibration_is_refused_where_it_means_nothing() -> None:
    with pytest.raises(ValueError, match="for --guided-bits or --guided-match"):
        DistillPlan(teacher="t", variant_id="v", languages=("en",), calibration="held-out")
    with pytest.raises(ValueError, match="whole train split leaves none out"):
        DistillPlan(
            teacher="t",
            variant_id="v",
            languages=("en",),
            per_language=None,
            guided_average_bits=4.0,
            calibration="held-out",
        )
    with pytest.raises(ValueError, match="calibration must be train or held-out"):
        DistillPlan(teacher="t", variant_id="v", languages=("en",), calibration="dev")  # type: ignore[arg-type]


def test_held_out_calibration_with_nothing_left_out_says_so(setup: tuple[HushSettings, ModelStore]) -> None:
    settings, store = setup
    plan = guided_plan("student-nothing-held-out", languages=("en",), per_language=4)
    with pytest.raises(ValueError, match="uses every train utterance of en"):
        run_distillation(settings, store, plan, progress=False)


def test_verified_guided_choice_is_measured_on_the_whole_model_and_recorded(
    setup: tuple[HushSettings, ModelStore],
) -> None:
    settings, store = setup
    plan = guided_plan("student-guided-verified", guided_measure="model-output-at-budget", guided_verify=True)
    assert run_distillation(settings, store, plan, progress=False) is not None
    guided = store.get("student-guided-verified").recipe.args["guided"]
    candidates = guided["verified"]["candidates"]
    assert candidates[0]["moved"] == 0  # uniform 4 bits is always a candidate
    chosen = candidates[guided["verified"]["chosen"]]
    assert chosen["edits"] == min(candidate["edits"] for candidate in candidates)
    assert chosen["moved"] == sum(bits != 4 for bits in guided["bits"].values())
    assert guided["average_bits"] <= 4.0
    with pytest.raises(ValueError, match="--guided-verify checks the choice of --guided-bits"):
        DistillPlan(teacher="t", variant_id="v", languages=("en",), guided_verify=True)
