"""The default store a fresh machine serves from: bundled teachers imported, their int8 variants made,
all of them evaluated on the corpus's dev split so the router has real figures.

Every step is idempotent: what is already there (variants, corpus, evaluations for this corpus) is kept,
so ``make serve`` is quick the second time.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from compression.data.build import BuildOptions, build
from compression.data.corpus import Corpus, newest_corpus
from compression.evaluation.latency import measure_latency
from compression.evaluation.latency_clips import latency_clips
from compression.evaluation.runner import EvalJob, base_split, evaluate_variant
from compression.importers.publish import import_to_store
from model_store.manifest import EncoderAttention
from model_store.opener import runnable_here
from model_store.settings import HushSettings, RuntimeSettings
from model_store.store import ModelStore

logger = logging.getLogger(__name__)

DEFAULT_TEACHERS = ("whisper-base", "whisper-tiny.en")


@dataclass(frozen=True)
class DerivedVariant:
    """A variant made from a teacher by a compression method, if that method is available."""

    parent: str
    method: str
    audio_context_seconds: float | None = None  # a trimmed audio context (CTranslate2 methods only)
    # bfloat16 encoder attention: made only where the CPU multiplies bfloat16 natively
    # (runtime.bf16_attention); elsewhere it would compute what its float32 twin does
    encoder_attention: EncoderAttention = "float32"


DEFAULT_DERIVED = (
    DerivedVariant("whisper-base", "ptq-int8"),
    # per-token activations: the int8 variant closest to its parent (README, session 13), 6% slower than ptq-int8
    DerivedVariant("whisper-base", "ptq-int8-per-token"),
    # the same bytes with bfloat16 encoder attention: 1.4x faster-whisper int8 (README, session 14)
    DerivedVariant("whisper-base", "ptq-int8-per-token", encoder_attention="bfloat16"),
    DerivedVariant("whisper-base", "ct2-int8"),
    # the fastest CPU variant on short clips; the router weighs its per-language CER like any other's
    DerivedVariant("whisper-base", "ct2-int8", audio_context_seconds=10),
    DerivedVariant("whisper-tiny.en", "ptq-int8"),
)


@dataclass
class BootstrapPlan:
    teachers: tuple[str, ...] = DEFAULT_TEACHERS
    derived: tuple[DerivedVariant, ...] = DEFAULT_DERIVED
    evaluate: bool = True
    corpus_options: BuildOptions | None = None
    log: Callable[[str], None] = field(default=logger.info)


def find_or_build_corpus(
    settings: HushSettings, options: BuildOptions | None, log: Callable[[str], None]
) -> Corpus:
    if settings.eval.corpus is not None:
        return Corpus.open(settings.eval.corpus)
    newest = newest_corpus(settings.corpus_root)
    if newest is not None:
        return Corpus.open(newest)
    log("building the evaluation corpus (first run only; cached and resumable)")
    result = build(options or BuildOptions(out=settings.corpus_root, cache=settings.cache_dir))
    return Corpus.open(result.directory)


def _derive(
    store: ModelStore, derived: DerivedVariant, runtime: RuntimeSettings, log: Callable[[str], None]
) -> None:
    try:
        from compression.quantize.methods import quantize_variant, variant_id_for
    except ImportError:  # the quantization package is optional at this stage
        return
    target = variant_id_for(
        derived.parent,
        derived.method,
        derived.audio_context_seconds,
        encoder_attention=derived.encoder_attention,
    )
    if store.exists(target) or not store.exists(derived.parent):
        return
    if derived.encoder_attention == "bfloat16" and not runtime.resolved_bf16_attention():
        log(f"not making {target}: this CPU does not multiply bfloat16 natively")
        return
    log(f"making {target} ({derived.method} of {derived.parent})")
    quantize_variant(
        store,
        derived.parent,
        derived.method,
        target,
        audio_context_seconds=derived.audio_context_seconds,
        encoder_attention=derived.encoder_attention,
    )


def bootstrap(settings: HushSettings, plan: BootstrapPlan | None = None) -> ModelStore:
    plan = plan or BootstrapPlan()
    store = ModelStore(settings.store.root)
    for teacher in plan.teachers:
        if not store.exists(teacher):
            plan.log(f"importing {teacher} from its bundled weights")
            import_to_store(store, teacher)
    for derived in plan.derived:
        _derive(store, derived, settings.runtime, plan.log)
    if not plan.evaluate:
        return store
    corpus = find_or_build_corpus(settings, plan.corpus_options, plan.log)
    job = EvalJob(
        corpus=corpus,
        split=settings.eval.split,
        languages=None,
        hypotheses_root=settings.eval_dir,
        bootstrap_resamples=settings.eval.bootstrap_resamples,
        max_per_language=settings.eval.bootstrap_per_language,
    )
    for manifest in store.list():
        if not runnable_here(manifest, settings.runtime):
            continue
        if (
            manifest.eval is None
            or manifest.eval.corpus_sha256 != corpus.sha256
            or base_split(manifest.eval.split) != job.split  # a slice or a mix of slices of it will do
        ):
            plan.log(f"evaluating {manifest.id} on {corpus.id} ({job.split})")
            evaluate_variant(store, manifest.id, job, settings.runtime, routing_split=settings.eval.split)
        if store.get(manifest.id).latency is None:
            plan.log(f"measuring the latency of {manifest.id}")
            clips = latency_clips(
                corpus, manifest, settings.eval.latency_clips, settings.eval.latency_clip_seconds
            )
            store.update(
                manifest.id,
                latency=measure_latency(
                    store.root, manifest.id, clips, settings.eval.latency_runs, settings.runtime
                ),
            )
    return store
