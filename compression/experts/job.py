"""One ``hush compress experts`` run: data, encoder outputs, student, teacher, training, publishing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import WhisperForConditionalGeneration, WhisperTokenizer

from compression.data.corpus import Corpus, Utterance
from compression.experts.checkpoints import Checkpointing
from compression.experts.data import language_batches, make_example
from compression.experts.encoder_outputs import CachedEncoderOutputs, EncoderOutputs, LiveEncoderOutputs
from compression.experts.gates import mean_gate_opening
from compression.experts.publish import publish_experts, publish_plain
from compression.experts.students import Method, Student, build_student
from compression.experts.trainer import StepLog, Teacher, TrainingConfig, train
from compression.quantize.parent import Parent
from compression.training.checkpoint import check_plan, discard
from compression.training.selection import sample_digest, select_utterances
from model_store.backends.experts.attach import ExpertSpec
from model_store.manifest import Manifest
from model_store.store import ModelStore
from model_store.whisper_tokens import special_tokens

logger = logging.getLogger(__name__)


class MissingTrainDataError(ValueError):
    """A language to train has no usable utterances in the corpus's train split."""


@dataclass(frozen=True)
class ExpertsJob:
    """Everything one run needs to know."""

    base: str  # the student's variant (a float transformers checkpoint)
    languages: tuple[str, ...]  # the languages trained (each gets its own experts with ``clsr``)
    method: Method = "clsr"
    teacher: str | None = None  # KD teacher variant; None trains on the transcripts alone
    spec: ExpertSpec = field(default_factory=ExpertSpec)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    max_per_language: int | None = None  # a seeded sample of the train split per language (None: all)
    train_embeddings: bool = False  # finetune only: the token embedding trains too
    variant_id: str | None = None

    def default_id(self) -> str:
        if self.method == "clsr":
            kind = "full" if self.spec.kind == "full" else f"r{self.spec.rank}"
            where = "".join(stack[:3] for stack in self.spec.stacks)
            kd = "kd" if self.teacher else "ce"
            return f"{self.base}-clsr-{kind}-{where}-{kd}-{'-'.join(self.languages)}"
        return f"{self.base}-{self.method}-{'-'.join(self.languages)}"

    def plan(self, corpus_id: str, train_sample: str) -> dict[str, Any]:
        """What decides the trained weights (all but the id, with the digest of the train sample), for
        telling a run's checkpoints apart."""
        plan = asdict(self)
        del plan["variant_id"]
        return {**plan, "corpus": corpus_id, "train_sample": train_sample}


def encoder_outputs_for(
    model: WhisperForConditionalGeneration,
    live: bool,
    corpus: Corpus,
    utterances: Sequence[Utterance],
    cache_root: Path,
    progress: bool,
) -> EncoderOutputs:
    """The live encoder (when it trains) or the shared cache of the frozen one, filled for ``utterances``."""
    device, dtype = model.device, model.dtype
    if live:
        return LiveEncoderOutputs(model.model.encoder, int(model.config.num_mel_bins), device, dtype)
    from compression.training.encoder_cache import EncoderCache

    cache = EncoderCache(cache_root, model.model.encoder, device=device)
    cache.fill(corpus.id, utterances, progress=progress)
    return CachedEncoderOutputs(cache, corpus.id, device, dtype)


def run_experts_job(
    store: ModelStore,
    corpus: Corpus,
    job: ExpertsJob,
    *,
    cache_root: Path,
    run_dir: Path | None = None,
    restart: bool = False,
    checkpoint_every: int = 50,
    replace: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = logger.info,
) -> Manifest:
    """Train ``job`` on the corpus's train split and publish the result; returns its manifest.

    With ``run_dir`` the training keeps checkpoints there and resumes from one of the same plan
    (:class:`compression.training.checkpoint.PlanMismatchError` for another plan's; ``restart``
    discards it first).
    """
    started = time.perf_counter()
    # The same sampling rule as every other train command, so a teacher trained by `hush compress
    # distill` on --per-language N with this seed saw exactly these utterances.
    known = [language for language in job.languages if language in corpus.languages]
    train_set = select_utterances(corpus, "train", known, job.max_per_language, seed=job.training.seed)
    missing = sorted(set(job.languages) - {utterance.language for utterance in train_set})
    if missing:
        raise MissingTrainDataError(
            f"corpus {corpus.id} has no train utterances of {', '.join(missing)} (it has: "
            f"{', '.join(corpus.languages)})"
        )
    train_sample = sample_digest(train_set)
    plan = job.plan(corpus.id, train_sample)
    checkpointing: Checkpointing | None = None
    resumed_from = 0
    if run_dir is not None:
        if restart and discard(run_dir):
            log(f"discarded the checkpoint in {run_dir}")
        resumed_from = check_plan(run_dir, plan) or 0  # before any model is loaded
        if resumed_from:
            log(f"resuming {run_dir} at step {resumed_from} of {job.training.steps}")
        checkpointing = Checkpointing(run_dir, plan, every=checkpoint_every)
    parent = Parent.from_store(store, job.base)
    tokenizer = WhisperTokenizer.from_pretrained(parent.directory, local_files_only=True)
    tokens = special_tokens(tokenizer, multilingual=True)
    dev_set = corpus.utterances("dev", job.languages)
    examples = [make_example(utterance, tokenizer, tokens) for utterance in train_set]
    log(f"{len(examples)} train utterances of {', '.join(job.languages)}; method {job.method}")

    model = parent.load_float(torch.float32)
    live = job.method in ("clsr", "lora") and "encoder" in job.spec.stacks
    student_outputs = encoder_outputs_for(model, live, corpus, [*train_set, *dev_set], cache_root, progress)
    teacher: Teacher | None = None
    if job.teacher is not None:
        teacher_model = Parent.from_store(store, job.teacher).load_float(torch.float32)
        teacher_outputs = encoder_outputs_for(teacher_model, False, corpus, train_set, cache_root, progress)
        teacher = Teacher(teacher_model, teacher_outputs)
    torch.manual_seed(job.training.seed)  # the experts' initial weights
    student: Student = build_student(
        model,
        job.method,
        job.languages,
        job.spec,
        seed=job.training.seed,
        train_embeddings=job.train_embeddings,
    )
    log(f"trainable parameters: {student.trainable_parameters:,}")
    batches = language_batches(examples, job.training.batch_size, tokens.eot, seed=job.training.seed)
    history = train(
        model,
        student.trainable,
        batches,
        student_outputs,
        job.training,
        teacher=teacher,
        control=student.control,
        expert_key=student.expert_key,
        progress=progress,
        checkpointing=checkpointing,
    )
    args = {
        "languages_trained": list(job.languages),
        "teacher": job.teacher,
        "train_utterances": len(examples),
        "train_sample": train_sample,
        "training": asdict(job.training),
        "trainable_parameters": student.trainable_parameters,
        "loss": _loss_summary(history),
        "train_seconds": round(time.perf_counter() - started, 1),  # this process's
        "resumed_from_step": resumed_from,
        "encoder": "live (experts in the encoder)" if live else "frozen, cached outputs",
    }
    variant_id = job.variant_id or job.default_id()
    if job.method == "clsr":
        assert student.experts is not None
        dev_examples = [make_example(utterance, tokenizer, tokens) for utterance in dev_set]
        args["gate_opening_dev"] = mean_gate_opening(
            student.experts, dev_examples, student_outputs, tokens.eot
        )
        log(f"mean hard-gate opening on dev: {args['gate_opening_dev']}")
        return publish_experts(store, parent, student.experts, variant_id, args, replace=replace)
    if job.method == "lora":
        assert student.experts is not None
        args["lora"] = {"rank": student.experts.spec.rank, "stacks": list(job.spec.stacks), "merged": True}
        student.experts.merge_into_model(student.expert_key(job.languages[0]))
    return publish_plain(
        store, parent, model, job.method, variant_id, args, languages=("*",), replace=replace
    )


def _loss_summary(history: Sequence[StepLog], window: int = 20) -> dict[str, float | None]:
    """Mean loss terms of the first and the last ``window`` steps."""

    def mean(entries: Sequence[StepLog], pick: Callable[[StepLog], float | None]) -> float | None:
        values = [value for value in (pick(entry) for entry in entries) if value is not None]
        return round(sum(values) / len(values), 4) if values else None

    first, last = history[:window], history[-window:]
    return {
        "loss_first": mean(first, lambda entry: entry.loss),
        "loss_last": mean(last, lambda entry: entry.loss),
        "ce_first": mean(first, lambda entry: entry.ce),
        "ce_last": mean(last, lambda entry: entry.ce),
        "js_first": mean(first, lambda entry: entry.js),
        "js_last": mean(last, lambda entry: entry.js),
        "mean_gate_last": mean(last, lambda entry: entry.mean_gate),
    }
