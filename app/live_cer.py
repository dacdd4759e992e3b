"""Live CER: score a served transcript against a reference and count it where it belongs.

The reference is the client's true transcript (source ``feedback``) or the reference variant's output
(source ``shadow``). Both texts are normalised for the language as the offline evaluation does
(:mod:`model_store.scoring`), so live CER and the manifest's baseline are comparable. Counts go to
``hush_cer_*_total{variant,language,source}`` and, for requests of an experiment, to the arm's series
and the results tracker.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from app.experiments.results import CerSource, ExperimentTracker
from app.metrics import HushMetrics
from model_store.scoring import ErrorCounts, score_utterance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArmRef:
    """The experiment arm a transcript belongs to."""

    experiment: str
    arm: str


class LiveCer:
    """Scores transcripts and records the counts in metrics and experiment results."""

    def __init__(self, metrics: HushMetrics, tracker: ExperimentTracker) -> None:
        self.metrics = metrics
        self.tracker = tracker

    def record(
        self,
        *,
        variant: str,
        language: str,
        source: CerSource,
        reference: str,
        hypothesis: str,
        arm: ArmRef | None = None,
    ) -> ErrorCounts | None:
        """Score and count; None (nothing counted) when the normalised reference is empty."""
        score = score_utterance("live", language, reference, hypothesis)
        if score is None:
            return None
        counts = score.chars
        labels = {"variant": variant, "language": language, "source": source}
        self.metrics.cer_edits.labels(**labels).inc(counts.edits)
        self.metrics.cer_reference_chars.labels(**labels).inc(counts.reference_length)
        self.metrics.cer_scored.labels(**labels).inc()
        if arm is not None:
            arm_labels = {"experiment": arm.experiment, "arm": arm.arm, "source": source}
            self.metrics.ab_cer_edits.labels(**arm_labels).inc(counts.edits)
            self.metrics.ab_cer_reference_chars.labels(**arm_labels).inc(counts.reference_length)
            self.tracker.scored(arm.experiment, arm.arm, source, counts.edits, counts.reference_length)
        logger.debug("%s CER %s/%s: %d/%d", source, variant, language, counts.edits, counts.reference_length)
        return counts
