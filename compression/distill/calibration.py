"""The batches guided precision and guided matching measure on, before training.

``train`` (the default, and all that runs before session 12 used): the run's first training batches.
``held-out``: train-split utterances of the same languages that the run's ``--per-language`` sample
leaves out (the next ones of the same seeded shuffle), with their gold transcripts. A student fitted to
its training utterances keeps their transcripts under perturbations that derail it on unseen speech, so
sensitivities measured on them can call Linears cheap that are not.
"""

from __future__ import annotations

import math

from compression.data.corpus import Corpus, Utterance
from compression.distill.plan import DistillPlan
from compression.training.dataset import Batch, CachedBatches
from compression.training.selection import held_out_utterances

CALIBRATION_BATCHES = 4  # whole batches of the run's batch size


def held_out_calibration_set(corpus: Corpus, plan: DistillPlan) -> list[Utterance]:
    """Enough left-out train utterances for ``CALIBRATION_BATCHES`` batches, evenly per language;
    refused when every language's train split is used up by the run's sample."""
    assert plan.per_language is not None, "DistillPlan checks that held-out calibration has a sample size"
    per_language = math.ceil(CALIBRATION_BATCHES * plan.batch_size / len(plan.languages))
    chosen = held_out_utterances(
        corpus, "train", plan.languages, plan.per_language, per_language, seed=plan.seed
    )
    if not chosen:
        raise ValueError(
            f"--calibration held-out: --per-language {plan.per_language} uses every train utterance of "
            f"{', '.join(plan.languages)}; lower it or calibrate on train"
        )
    return chosen


def calibration_batches(batches: CachedBatches) -> list[Batch]:
    """The first ``CALIBRATION_BATCHES`` whole batches (fewer when there are not that many)."""
    count = min(CALIBRATION_BATCHES, batches.batches_per_epoch)
    return [batches.whole_batch(step) for step in range(count)]
