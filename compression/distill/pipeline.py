"""``hush compress distill``: data, student, training, quantization, export and publishing, in order.

1. the teacher (a float transformers variant) and the corpus's train utterances of the languages;
2. encoder outputs cached once (the teacher's; the student's too when its encoder differs);
3. labels: gold, or the teacher's greedy pseudo-labels filtered by WER (threshold per language);
4. the student: shrunk teacher (maximally spaced decoder layers) or a smaller pretrained Whisper;
5. guided precision (if asked): per-Linear sensitivity at each allowed width, bits chosen under the budget;
6. training (decoder only, encoder frozen) with the loss preset, fake quantization for QAD/guided;
7. export (float16 or low-bit codes) and publishing with the full recipe; a quick dev CER.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import GenerationConfig, WhisperForConditionalGeneration, WhisperTokenizer

from compression.data.corpus import Corpus, Utterance
from compression.distill.cached_decoding import CachedGreedyDecoder
from compression.distill.calibration import calibration_batches, held_out_calibration_set
from compression.distill.export import dq_rule_bytes, parameter_count, weight_bytes, write_student
from compression.distill.fake_quant import (
    QuantSpec,
    apply_fake_quant,
    decoder_linears,
    frozen_linears,
    quantize_in_place,
)
from compression.distill.guided import Transcriber, batch_prompts, measure_sensitivity
from compression.distill.guided_bits import candidate_choices, choose_bits, linear_sizes
from compression.distill.guided_matching import choose_matching
from compression.distill.guided_verify import verified_choice
from compression.distill.losses import FeatureAdapter
from compression.distill.objective import DistillObjective, loss_config
from compression.distill.plan import DistillPlan
from compression.distill.pseudo_labels import filter_labels, label_file, pseudo_label
from compression.distill.quick_eval import quick_scores, summarize_quick
from compression.distill.students import IncompatibleStudentError, Student, pretrained_student, shrink_student
from compression.distill.teacher_memo import TeacherMemo
from compression.evaluation.hypotheses import QUICK_DECODING, HypothesisLog
from compression.quantize.parent import Parent
from compression.training.dataset import Batch, CachedBatches, Example
from compression.training.distributed import SINGLE_PROCESS, Ranks
from compression.training.encoder_cache import EncoderCache, encoder_fingerprint
from compression.training.freezing import train_decoder_only
from compression.training.loop import TrainingOptions, train
from compression.training.placement import training_device
from compression.training.selection import sample_digest, select_utterances
from model_store.backends.experts import METHOD as EXPERTS_METHOD
from model_store.backends.experts.storage import load_experts
from model_store.backends.quantized_loading import load_model, weights_format
from model_store.manifest import Manifest, Recipe, size_tier_for
from model_store.scoring import UtteranceScore
from model_store.settings import HushSettings
from model_store.store import ModelStore
from model_store.whisper_tokens import special_tokens

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistillOutcome:
    manifest: Manifest
    report: dict[str, Any]


def _load_teacher(
    parent: Parent,
) -> tuple[WhisperForConditionalGeneration, WhisperTokenizer, GenerationConfig]:
    model = parent.load_float(torch.float32)
    tokenizer = WhisperTokenizer.from_pretrained(parent.directory, local_files_only=True)
    generation = GenerationConfig.from_pretrained(parent.directory, local_files_only=True)
    return model, tokenizer, generation


def build_student(plan: DistillPlan, teacher: WhisperForConditionalGeneration, store: ModelStore) -> Student:
    if plan.student_path is not None:
        return pretrained_student(teacher, trainable_model(store, plan.student_path))
    layers = plan.decoder_layers or teacher.config.decoder_layers
    return shrink_student(teacher, layers, plan.encoder_layers)


def trainable_model(store: ModelStore, name: str) -> WhisperForConditionalGeneration:
    """A float32 model to train from ``name``: a variant of the store stored as a transformers
    checkpoint or as low-bit codes (dequantized: another QAD run can continue from a QAD student), or a
    transformers directory."""
    if not store.exists(name):
        return WhisperForConditionalGeneration.from_pretrained(
            Path(name), torch_dtype=torch.float32, local_files_only=True
        )
    manifest = store.get(name)
    storage = weights_format(manifest)
    if storage not in ("transformers", "hush-lowbit"):
        raise IncompatibleStudentError(
            f"variant {name!r} stores {storage} weights, which cannot be trained further"
        )
    return load_model(manifest, store.path(name), torch.device("cpu"), torch.float32)


def quant_spec(plan: DistillPlan, bits: int) -> QuantSpec:
    return QuantSpec(bits, plan.granularity, plan.group_size)


def quantize_frozen_parts(plan: DistillPlan, student: Student) -> tuple[Student, dict[str, QuantSpec]]:
    """With ``quantize_scope`` model: post-training quantize the encoder's Linears and the output
    projection (tied to the token embedding) before any encoder output is cached, so the decoder
    trains on what the quantized encoder produces. Returns the student (its encoder no longer the
    teacher's) and the specs of what was quantized."""
    if plan.quantize_scope != "model":
        return student, {}
    bits = plan.qad_bits or plan.ptq_bits
    assert bits is not None, "DistillPlan checks that model scope has bits"
    specs = {name: quant_spec(plan, bits) for name, _ in frozen_linears(student.model)}
    quantize_in_place(student.model, specs)
    return dataclasses.replace(student, shares_encoder=False), specs


def _static_matching(student: Student, teacher_layers: int) -> list[int]:
    if student.decoder_layers_from is not None:
        return list(student.decoder_layers_from)
    count = student.model.config.decoder_layers  # DQ-Whisper's static rule i -> 2i+1, capped
    return [min(2 * index + 1, teacher_layers - 1) for index in range(count)]


def _guided_precision(
    plan: DistillPlan,
    model: WhisperForConditionalGeneration,
    calibration: list[Batch],
    progress: bool,
    transcribe: Transcriber | None,
) -> tuple[dict[str, QuantSpec], dict[str, Any]]:
    """Bits per decoder Linear from their measured sensitivities under the plan's budget, and the
    record of the choice for the manifest."""
    assert plan.guided_average_bits is not None
    sens = measure_sensitivity(
        plan.guided_measure,
        model,
        calibration,
        plan.guided_choices,
        plan.granularity,
        plan.group_size,
        progress,
        plan.guided_average_bits,
        transcribe,
    )
    sizes = linear_sizes(model)
    bits = choose_bits(sens, sizes, plan.guided_average_bits, plan.guided_choices)
    record: dict[str, Any] = {}
    if plan.guided_verify:
        assert transcribe is not None, "the pipeline makes a transcriber for --guided-verify"
        candidates = candidate_choices(sens, sizes, plan.guided_average_bits, plan.guided_choices)
        chosen, measured = verified_choice(
            model, calibration, candidates, sens, lambda width: quant_spec(plan, width), transcribe, progress
        )
        bits = candidates[chosen]
        record["verified"] = {"chosen": chosen, "candidates": [asdict(entry) for entry in measured]}
    achieved = sum(sizes[name] * bits[name] for name in bits) / sum(sizes.values())
    record |= {
        "sensitivity": sens,
        "bits": bits,
        "budget_average_bits": plan.guided_average_bits,
        "measure": plan.guided_measure,
        "average_bits": round(achieved, 4),
    }
    return {name: quant_spec(plan, bits[name]) for name in bits}, record


def run_distillation(
    settings: HushSettings,
    store: ModelStore,
    plan: DistillPlan,
    *,
    progress: bool = True,
    ranks: Ranks = SINGLE_PROCESS,
    device: str | None = None,
) -> DistillOutcome | None:
    """Run ``plan`` end to end and publish its student; returns the manifest and the run report.

    With several training processes (``ranks``, see :mod:`compression.training.distributed`) the main
    process fills the caches and labels first, every process trains on its share of each batch, and
    the main one publishes; the others return None once training is done. ``device`` (auto, cpu or
    cuda; ``settings.distill.device`` when None) is where the models compute, see
    :mod:`compression.training.placement`."""
    torch.manual_seed(plan.seed)
    place = training_device(settings.distill.device if device is None else device, ranks)
    corpus = Corpus.open(settings.eval.corpus) if settings.eval.corpus else _newest_corpus(settings)
    parent = Parent.from_store(store, plan.teacher)
    teacher, tokenizer, generation = _load_teacher(parent)
    tokens = special_tokens(tokenizer, multilingual=parent.manifest.multilingual)
    teacher_fingerprint = encoder_fingerprint(teacher)  # the whole model's weights
    teacher.to(place)  # type: ignore[arg-type]  # transformers hides .to's signature
    run_dir = settings.runs_dir / "distill" / plan.variant_id
    run_dir.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"plan": asdict(plan), "corpus": corpus.id, "corpus_sha256": corpus.sha256}
    report["device"] = str(place)

    progress = progress and ranks.main
    with ranks.main_first():  # the others find the caches and labels the main process made
        # 1-2: data and encoder caches
        train_set = select_utterances(corpus, "train", plan.languages, plan.per_language, seed=plan.seed)
        dev_set = select_utterances(corpus, "dev", plan.languages, None, seed=plan.seed)
        held_out = held_out_calibration_set(corpus, plan) if plan.calibration == "held-out" else []
        encoded = [*train_set, *dev_set, *held_out]
        teacher_cache = EncoderCache(settings.cache_dir / "encoder", teacher.model.encoder, device=place)
        teacher_cache.fill(corpus.id, encoded, progress=progress)
        student, frozen_specs = quantize_frozen_parts(plan, build_student(plan, teacher, store))
        student.model.to(place)  # type: ignore[arg-type]  # a pretrained student loads on the CPU
        _check_guided_match(plan, student)
        student_cache = teacher_cache
        if not student.shares_encoder:
            student_cache = EncoderCache(
                settings.cache_dir / "encoder", student.model.model.encoder, device=place
            )
            student_cache.fill(corpus.id, encoded, progress=progress)

        # 3: labels
        decoder = CachedGreedyDecoder(teacher, tokenizer, tokens, generation, device=place)
        texts = _training_texts(
            settings,
            plan,
            decoder,
            teacher_cache,
            corpus.id,
            train_set,
            teacher_fingerprint,
            report,
            progress,
        )
    examples = _examples(decoder, train_set, texts)
    report["train_utterances"] = len(examples)
    report["train_sample"] = sample_digest(train_set)

    # 4-5: student and precision
    model = student.model
    batches = CachedBatches(
        examples,
        student_cache,
        corpus.id,
        tokens,
        plan.batch_size,
        plan.seed,
        teacher_cache=None if student.shares_encoder else teacher_cache,
        ranks=ranks,
        device=place,
    )
    calibration = _calibration(plan, batches, decoder, held_out, report)
    transcribe = None
    if plan.guided_measure == "transcripts-at-budget" or plan.guided_verify:
        transcribe = _greedy_transcriber(
            CachedGreedyDecoder(model, tokenizer, tokens, generation, device=place)
        )
    specs = _training_precision(plan, model, calibration, report, progress, transcribe)
    if specs:
        apply_fake_quant(model, specs)  # QAD: train through the quantizer (guided is QAD at mixed bits)

    # 6: training
    memo_dir = settings.cache_dir / "teacher"
    objective, adapter = _objective(
        plan, student, teacher, teacher_fingerprint, memo_dir, calibration, report
    )
    if plan.steps > 0:
        _train(plan, objective, batches, adapter, run_dir, report, progress, ranks)
    if not ranks.main:
        return None  # the main process holds the same weights and publishes them
    model.to("cpu").eval()  # type: ignore[arg-type]  # export and publishing read CPU weights
    if plan.ptq_bits is not None:
        specs = {name: quant_spec(plan, plan.ptq_bits) for name, _ in decoder_linears(model)}

    # 7: export and publish
    manifest = _publish(store, plan, parent, model, {**frozen_specs, **specs}, report)
    if plan.eval_dev:
        published = load_model(manifest, store.path(manifest.id), torch.device("cpu"), torch.float32)
        scores = quick_scores(
            CachedGreedyDecoder(published, tokenizer, tokens, generation),
            student_cache,
            corpus.id,
            dev_set,
            HypothesisLog(settings.eval_dir, manifest, corpus.sha256, "dev", QUICK_DECODING),
            progress=progress,
        )
        report["quick_dev"] = {language: asdict(score) for language, score in summarize_quick(scores).items()}
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    return DistillOutcome(manifest, report)


def _calibration(
    plan: DistillPlan,
    batches: CachedBatches,
    decoder: CachedGreedyDecoder,
    held_out: list[Utterance],
    report: dict[str, Any],
) -> list[Batch]:
    """The whole batches guided choices are measured on (every process must choose the same): the
    first training batches, or the held-out utterances with their gold transcripts; none when nothing
    is guided. Which utterances they were goes in the report."""
    if not plan.calibrates:
        return []
    source = batches
    if plan.calibration == "held-out":
        gold = {utterance.id: utterance.text for utterance in held_out}
        source = batches.with_examples(_examples(decoder, held_out, gold))
    calibration = calibration_batches(source)
    report["calibration"] = {
        "source": plan.calibration,
        "utterances": sorted(uid for batch in calibration for uid in batch.utterance_ids),
    }
    return calibration


def _examples(
    decoder: CachedGreedyDecoder, utterances: list[Utterance], texts: dict[str, str]
) -> list[Example]:
    """Each utterance of ``texts`` (id -> text to learn) as decoder tokens, in id order."""
    by_id = {utterance.id: utterance for utterance in utterances}
    return [
        Example(uid, by_id[uid].language, tuple(decoder.text_tokens(" " + text.strip())))
        for uid, text in sorted(texts.items())
    ]


def _greedy_transcriber(decoder: CachedGreedyDecoder) -> Transcriber:
    """The greedy token ids of each row of a batch, by ``decoder``'s model as its weights are then."""

    def transcribe(batch: Batch) -> list[list[int]]:
        return decoder.token_ids_batch(batch.encoder_hidden, batch_prompts(batch))

    return transcribe


def _check_guided_match(plan: DistillPlan, student: Student) -> None:
    """Refuse ``--guided-match K`` beyond the student's layers before minutes of encoder caching."""
    layers = student.model.config.decoder_layers
    if plan.guided_match_layers is not None and plan.guided_match_layers > layers:
        raise IncompatibleStudentError(
            f"--guided-match {plan.guided_match_layers}: the student has only {layers} decoder layers"
        )


def _training_texts(
    settings: HushSettings,
    plan: DistillPlan,
    decoder: CachedGreedyDecoder,
    teacher_cache: EncoderCache,
    corpus_id: str,
    train_set: list[Utterance],
    teacher_fingerprint: str,
    report: dict[str, Any],
    progress: bool,
) -> dict[str, str]:
    """The text each train utterance is learned with: its gold transcript, or the teacher's greedy
    pseudo-label where that is within the language's WER threshold of gold (the kept share goes in
    the report)."""
    if plan.labels != "pseudo":
        return {utterance.id: utterance.text for utterance in train_set}
    labels = pseudo_label(
        decoder,
        teacher_cache,
        corpus_id,
        train_set,
        label_file(settings.cache_dir / "pseudo", teacher_fingerprint, corpus_id),
        progress=progress,
    )
    kept, label_report = filter_labels(
        labels, settings.distill.wer_thresholds, settings.distill.default_wer_threshold
    )
    report["pseudo_labels"] = label_report.as_dict()
    return {label.id: label.text for label in kept}


def _training_precision(
    plan: DistillPlan,
    model: WhisperForConditionalGeneration,
    calibration: list[Batch],
    report: dict[str, Any],
    progress: bool,
    transcribe: Transcriber | None = None,
) -> dict[str, QuantSpec]:
    """The decoder Linears' quantization during training: guided mixed bits, uniform QAD bits, or
    none (float training; PTQ, if asked, comes after)."""
    if plan.guided_average_bits is not None:
        specs, report["guided"] = _guided_precision(plan, model, calibration, progress, transcribe)
        return specs
    if plan.qad_bits is not None:
        return {name: quant_spec(plan, plan.qad_bits) for name, _ in decoder_linears(model)}
    return {}


def _objective(
    plan: DistillPlan,
    student: Student,
    teacher: WhisperForConditionalGeneration,
    teacher_fingerprint: str,
    memo_dir: Path,
    calibration: list[Batch],
    report: dict[str, Any],
) -> tuple[DistillObjective, FeatureAdapter | None]:
    """The plan's loss on the student, with the feature adapter it trains (hidden-state presets) and
    the layer matching (static, dynamic, or chosen once by guided matching)."""
    model = student.model
    matching_mode = "guided" if plan.guided_match_layers is not None else plan.matching
    config = loss_config(plan.preset, matching=matching_mode, temperature=plan.temperature)
    adapter = None
    if config.hidden > 0:
        adapter = FeatureAdapter(teacher.config.decoder_ffn_dim, model.config.decoder_ffn_dim).to(
            model.device
        )
    memo = TeacherMemo(memo_dir, teacher_fingerprint) if config.needs_teacher else None
    matching = _static_matching(student, teacher.config.decoder_layers)
    matched_layers = None
    if plan.guided_match_layers is not None:
        assert adapter is not None, "DistillPlan checks that the preset distils hidden states"
        chosen = choose_matching(
            model, teacher, adapter, calibration, plan.guided_match_layers, config.feature_norm
        )
        matching, matched_layers = chosen.matching, chosen.layers
        report["guided_matching"] = asdict(chosen)
    objective = DistillObjective(model, config, teacher, adapter, matching, memo, matched_layers)
    return objective, adapter


def _train(
    plan: DistillPlan,
    objective: DistillObjective,
    batches: CachedBatches,
    adapter: FeatureAdapter | None,
    run_dir: Path,
    report: dict[str, Any],
    progress: bool,
    ranks: Ranks,
) -> None:
    """Train the student (and adapter) in place: checkpoints and logs in ``run_dir``, resumed when a
    checkpoint of the same plan is there; the summary goes in the report."""
    model = objective.student
    train_decoder_only(model, plan.train_embeddings)
    trainable: dict[str, torch.nn.Module] = {"student": model}
    if adapter is not None:
        trainable["adapter"] = adapter
    options = TrainingOptions(
        steps=plan.steps, batch_size=plan.batch_size, learning_rate=plan.learning_rate, seed=plan.seed
    )
    result = train(
        objective,
        batches,
        trainable,
        options,
        run_dir,
        progress=progress,
        plan=plan.training_plan(),
        ranks=ranks,
    )
    report["training"] = {
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "first_loss": result.first_loss,
        "last_loss": result.last_loss,
        "seconds": round(result.seconds, 1),
        "loss_config": asdict(objective.config),
        "matchings": {",".join(map(str, k)): v for k, v in objective.matches.items()},
    }
    if adapter is not None and ranks.main:
        torch.save(adapter.state_dict(), run_dir / "adapter.pt")  # DQ-Whisper's code dropped these


def _publish(
    store: ModelStore,
    plan: DistillPlan,
    parent: Parent,
    model: WhisperForConditionalGeneration,
    specs: dict[str, QuantSpec],
    report: dict[str, Any],
) -> Manifest:
    parameters = parameter_count(model)
    teacher_parameters = parent.manifest.parameters
    with store.publish(plan.variant_id, replace=plan.replace) as staging:
        args = write_student(model, staging.directory, specs)
        parent.copy_assets(staging.directory)
        sizes = {
            "bytes_real": weight_bytes(staging.directory),
            "bytes_dq_rule": dq_rule_bytes(model, specs),
            "teacher_bytes_dq_rule": teacher_parameters * 2,
            "teacher_bytes_real": parent.manifest.bytes_on_disk,
        }
        report["sizes"] = sizes
        recipe_args: dict[str, Any] = {
            **args,
            "plan": plan.training_plan(),
            "teacher_weights_sha256": parent.weights_digest(),
            "sizes": sizes,
            **{
                k: report[k]
                for k in ("corpus", "corpus_sha256", "train_utterances", "train_sample")
                if k in report
            },
        }
        for key in ("pseudo_labels", "training", "calibration", "guided", "guided_matching"):
            if key in report:
                recipe_args[key] = report[key]
        dtype = (
            "float16"
            if args["weights_format"] == "transformers"
            else "int" + "/".join(map(str, args["bits"]))
        )
        return staging.commit(
            parent=plan.teacher,
            recipe=Recipe(method=plan.method, args=recipe_args),
            backend="transformers",
            device="cpu",
            dtype=dtype,
            parameters=parameters,
            size_tier=size_tier_for(parameters),
            multilingual=parent.manifest.multilingual,
            languages=tuple(sorted(plan.languages)),
            timestamps=False,  # trained on <|notimestamps|> sequences
        )


def _newest_corpus(settings: HushSettings) -> Corpus:
    from compression.data.corpus import newest_corpus

    found = newest_corpus(settings.corpus_root)
    if found is None:
        raise FileNotFoundError(f"no built corpus under {settings.corpus_root}; run `hush data build` first")
    return Corpus.open(found)


def variant_quick_scores(
    settings: HushSettings,
    store: ModelStore,
    variant_id: str,
    languages: tuple[str, ...],
    *,
    split: str = "dev",
    fresh: bool = False,
    progress: bool = True,
) -> list[UtteranceScore]:
    """Each utterance's score on a split (dev by default; test only to report final figures, never
    to choose) by any transformers variant of the store, experts variants included, greedy from cached
    encoder outputs; :func:`~compression.distill.quick_eval.summarize_quick` gives CER per language.
    Transcripts of the same weights on the same corpus and split are read back, not decoded again,
    unless ``fresh``."""
    corpus = Corpus.open(settings.eval.corpus) if settings.eval.corpus else _newest_corpus(settings)
    manifest = store.verify(variant_id)
    directory = store.path(variant_id)
    model = load_model(manifest, directory, torch.device("cpu"), torch.float32)
    tokenizer = WhisperTokenizer.from_pretrained(directory, local_files_only=True)
    generation = GenerationConfig.from_pretrained(directory, local_files_only=True)
    tokens = special_tokens(tokenizer, multilingual=manifest.multilingual)
    experts = load_experts(model, directory) if manifest.recipe.method == EXPERTS_METHOD else None
    decoder = CachedGreedyDecoder(model, tokenizer, tokens, generation, experts=experts)
    utterances = select_utterances(corpus, split, languages, None)
    cache = EncoderCache(settings.cache_dir / "encoder", model.model.encoder)
    cache.fill(corpus.id, utterances, progress=progress)
    log = HypothesisLog(settings.eval_dir, manifest, corpus.sha256, split, QUICK_DECODING)
    if fresh:
        log.clear()
    return quick_scores(decoder, cache, corpus.id, utterances, log, progress=progress)
