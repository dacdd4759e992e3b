"""Teacher pseudo-labels for the train split, filtered by their normalised WER against the gold text.

Distil-Whisper's data step: the teacher transcribes every training utterance greedily; a label whose
WER against the gold transcript (on normalised text) exceeds the language's threshold is dropped
(hallucinations and misrecognitions would teach the student the teacher's errors). Labels are kept in
``<cache>/pseudo/<teacher-fingerprint>/<corpus-id>.jsonl``, one line per utterance appended as it is
decoded, so an interrupted run resumes; the filter is applied on reading, so thresholds can change
without decoding again.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from compression.data.corpus import Utterance
from compression.distill.cached_decoding import CachedGreedyDecoder
from compression.training.encoder_cache import EncoderCache
from model_store.scoring import score_utterance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PseudoLabel:
    """The teacher's transcript of one utterance and its normalised WER against the gold text."""

    id: str
    language: str
    text: str
    gold: str
    wer: float


@dataclass(frozen=True)
class LabelReport:
    """How many pseudo-labels each language kept under its threshold."""

    kept: dict[str, int]
    total: dict[str, int]
    thresholds: dict[str, float]

    def share(self, language: str) -> float:
        return self.kept[language] / self.total[language] if self.total.get(language) else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            "thresholds": self.thresholds,
            "kept": self.kept,
            "total": self.total,
            "kept_share": {language: round(self.share(language), 4) for language in sorted(self.total)},
        }


def label_file(root: Path, teacher_fingerprint: str, corpus_id: str) -> Path:
    return root / teacher_fingerprint / f"{corpus_id}.jsonl"


def _read(path: Path) -> dict[str, PseudoLabel]:
    if not path.is_file():
        return {}
    labels = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            label = PseudoLabel(**json.loads(line))
        except (ValueError, TypeError):
            continue  # a line cut by an interruption: decoded again
        labels[label.id] = label
    return labels


def pseudo_label(
    decoder: CachedGreedyDecoder,
    cache: EncoderCache,
    corpus_id: str,
    utterances: Sequence[Utterance],
    path: Path,
    *,
    progress: bool = True,
) -> dict[str, PseudoLabel]:
    """Labels of ``utterances`` (decoding only those ``path`` does not hold yet)."""
    done = _read(path)
    todo = [utterance for utterance in utterances if utterance.id not in done]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a", encoding="utf-8") as log:
        for utterance in tqdm(todo, desc="pseudo-labels", unit="utt", disable=not progress):
            text = decoder.text(cache.load(corpus_id, utterance.id).float(), utterance.language)
            score = score_utterance(utterance.id, utterance.language, utterance.text, text)
            wer = score.words.rate if score is not None else 1.0
            label = PseudoLabel(utterance.id, utterance.language, text, utterance.text, round(wer, 4))
            log.write(json.dumps(asdict(label), ensure_ascii=False) + "\n")
            log.flush()
            done[label.id] = label
    return {utterance.id: done[utterance.id] for utterance in utterances}


def filter_labels(
    labels: Mapping[str, PseudoLabel], thresholds: Mapping[str, float], default: float
) -> tuple[list[PseudoLabel], LabelReport]:
    """Labels whose WER is at most their language's threshold (``default`` if it has none)."""
    kept: list[PseudoLabel] = []
    counts: dict[str, int] = {}
    totals: dict[str, int] = {}
    used: dict[str, float] = {}
    for label in labels.values():
        limit = thresholds.get(label.language, default)
        used[label.language] = limit
        totals[label.language] = totals.get(label.language, 0) + 1
        counts.setdefault(label.language, 0)
        if label.wer <= limit and label.text:
            kept.append(label)
            counts[label.language] += 1
    report = LabelReport(counts, totals, used)
    for language in sorted(totals):
        logger.info(
            "pseudo-labels %s: kept %d of %d (%.0f%%) at WER <= %.2f",
            language,
            counts[language],
            totals[language],
            100 * report.share(language),
            used[language],
        )
    return kept, report
