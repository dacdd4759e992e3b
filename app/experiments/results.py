"""Per-arm figures of an experiment, and the verdict of each arm against the control.

What a replica saw is kept in memory (the latest ``window`` requests per arm); Prometheus holds the
same figures pooled over replicas (``hush_ab_*``). CER pools edits over reference characters, with a
percentile bootstrap interval over requests, and an arm is judged against the control by a bootstrap
of the difference in CER (the two arms served different requests, so each is resampled on its own):
``better`` when the whole interval is below zero, ``worse`` when above, else ``not yet significant``.
Feedback (true transcripts) is the evidence that counts first; shadow CER (against the reference
variant's output) decides only when feedback does not.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from pydantic import BaseModel

from app.experiments.definitions import Experiment
from model_store.scoring import pooled_rate_ci, unpaired_difference_ci

CerSource = Literal["feedback", "shadow"]
CER_SOURCES: tuple[CerSource, ...] = ("feedback", "shadow")
ArmVerdict = Literal["control", "better", "worse", "not yet significant"]


@dataclass
class _ArmRecord:
    window: int
    requests: int = 0
    latencies: deque[float] = field(init=False)
    scores: dict[str, deque[tuple[int, int]]] = field(init=False)  # source -> (edits, reference chars)

    def __post_init__(self) -> None:
        self.latencies = deque(maxlen=self.window)
        self.scores = {source: deque(maxlen=self.window) for source in CER_SOURCES}


class Difference(BaseModel):
    """This arm's CER minus the control's, with its interval and what it says."""

    estimate: float
    ci_low: float
    ci_high: float
    verdict: Literal["better", "worse", "not yet significant"]


class CerFigures(BaseModel):
    """CER of one arm from one source."""

    requests: int
    edits: int
    reference_chars: int
    cer: float | None
    ci_low: float | None
    ci_high: float | None
    vs_control: Difference | None


class LatencyFigures(BaseModel):
    p50_seconds: float
    p95_seconds: float


class ArmResults(BaseModel):
    name: str
    variant: str
    weight: float | None  # None: the mirror arm (no share of the served traffic)
    mirror: bool
    requests: int
    latency: LatencyFigures | None
    cer: dict[str, CerFigures]
    verdict: ArmVerdict


class ExperimentResults(BaseModel):
    experiment: str
    control: str
    confidence: float
    min_scored_requests: int
    arms: list[ArmResults]


class ExperimentTracker:
    """What each arm of each experiment served and how it scored, within a bounded window."""

    def __init__(self, window: int) -> None:
        self.window = window
        self._lock = threading.Lock()
        self._arms: dict[tuple[str, str], _ArmRecord] = {}

    def served(self, experiment: str, arm: str, seconds: float) -> None:
        with self._lock:
            record = self._record(experiment, arm)
            record.requests += 1
            record.latencies.append(seconds)

    def scored(self, experiment: str, arm: str, source: CerSource, edits: int, reference_chars: int) -> None:
        with self._lock:
            self._record(experiment, arm).scores[source].append((edits, reference_chars))

    def forget(self, experiment: str) -> None:
        """Drop an experiment's figures (deleted or redefined)."""
        with self._lock:
            for key in [key for key in self._arms if key[0] == experiment]:
                del self._arms[key]

    def results(
        self,
        experiment: Experiment,
        *,
        resamples: int = 1000,
        min_scored: int = 20,
        confidence: float = 0.95,
    ) -> ExperimentResults:
        with self._lock:
            snapshot = {
                arm.name: (
                    self._record(experiment.name, arm.name).requests,
                    np.array(self._record(experiment.name, arm.name).latencies, dtype=np.float64),
                    {
                        source: np.array(scores, dtype=np.int64).reshape(-1, 2)
                        for source, scores in self._record(experiment.name, arm.name).scores.items()
                    },
                )
                for arm in experiment.all_arms
            }
        control = snapshot[experiment.control.name][2]
        arms = []
        for arm in experiment.all_arms:
            requests, latencies, scores = snapshot[arm.name]
            is_control = arm.name == experiment.control.name
            figures: dict[str, CerFigures] = {
                source: _cer_figures(
                    scores[source],
                    None if is_control else control[source],
                    resamples=resamples,
                    min_scored=min_scored,
                    confidence=confidence,
                )
                for source in CER_SOURCES
            }
            is_mirror = experiment.mirror is not None and arm.name == experiment.mirror.name
            arms.append(
                ArmResults(
                    name=arm.name,
                    variant=arm.variant,
                    weight=None if is_mirror else arm.weight,
                    mirror=is_mirror,
                    requests=requests,
                    latency=_latency(latencies),
                    cer=figures,
                    verdict="control" if is_control else _overall(figures),
                )
            )
        return ExperimentResults(
            experiment=experiment.name,
            control=experiment.control.name,
            confidence=confidence,
            min_scored_requests=min_scored,
            arms=arms,
        )

    def _record(self, experiment: str, arm: str) -> _ArmRecord:
        key = (experiment, arm)
        if key not in self._arms:
            self._arms[key] = _ArmRecord(self.window)
        return self._arms[key]


def _latency(latencies: np.ndarray) -> LatencyFigures | None:
    if latencies.size == 0:
        return None
    p50, p95 = np.quantile(latencies, [0.5, 0.95])
    return LatencyFigures(p50_seconds=float(p50), p95_seconds=float(p95))


def _cer_figures(
    scores: np.ndarray,
    control: np.ndarray | None,
    *,
    resamples: int,
    min_scored: int,
    confidence: float,
) -> CerFigures:
    edits, lengths = scores[:, 0], scores[:, 1]
    total_edits, total_chars = int(edits.sum()), int(lengths.sum())
    cer = total_edits / total_chars if total_chars else None
    low = high = None
    if len(scores) >= 2 and total_chars:
        low, high = pooled_rate_ci(edits, lengths, resamples=resamples, confidence=confidence)
    versus = None
    if control is not None and len(scores) >= min_scored and len(control) >= min_scored and total_chars:
        difference = unpaired_difference_ci(
            (control[:, 0], control[:, 1]), (edits, lengths), resamples=resamples, confidence=confidence
        )
        verdict = difference.verdict
        versus = Difference(
            estimate=difference.estimate,
            ci_low=difference.low,
            ci_high=difference.high,
            verdict="not yet significant" if verdict == "not significant" else verdict,
        )
    return CerFigures(
        requests=len(scores),
        edits=total_edits,
        reference_chars=total_chars,
        cer=cer,
        ci_low=low,
        ci_high=high,
        vs_control=versus,
    )


def _overall(figures: dict[str, CerFigures]) -> ArmVerdict:
    """Feedback first (true transcripts), then shadow; not yet significant when neither decides."""
    for source in CER_SOURCES:
        versus = figures[source].vs_control
        if versus is not None and versus.verdict != "not yet significant":
            return versus.verdict
    return "not yet significant"
