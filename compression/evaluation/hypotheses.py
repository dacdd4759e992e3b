"""The transcripts an evaluation produced, appended line by line so a killed run resumes.

One JSONL file per (variant weights, corpus, split, decoding): a variant re-published with other weights,
a rebuilt corpus or another decoding starts afresh instead of mixing results.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm import tqdm

from compression.data.corpus import Utterance
from model_store.manifest import Manifest
from model_store.scoring import UtteranceScore, score_utterance

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Hypothesis:
    id: str
    language: str
    reference: str
    hypothesis: str
    audio_seconds: float
    compute_seconds: float

    @classmethod
    def of(cls, utterance: Utterance, text: str, compute_seconds: float) -> Hypothesis:
        """``text`` as the transcript of ``utterance``, made in ``compute_seconds``."""
        return cls(
            id=utterance.id,
            language=utterance.language,
            reference=utterance.text,
            hypothesis=text,
            audio_seconds=utterance.duration,
            compute_seconds=round(compute_seconds, 4),
        )


def temperature_decoding(temperatures: tuple[float, ...]) -> str:
    """The decoding label of ``hush eval``'s transcripts: its temperatures, e.g. ``t0`` or ``t0_0.2``."""
    return "t" + "_".join(f"{temperature:g}" for temperature in temperatures)


QUICK_DECODING = "quick"  # ``hush compress quick-eval``: greedy from cached encoder outputs, no timestamps


class HypothesisLog:
    """Append-only record of one evaluation's transcripts."""

    def __init__(self, root: Path, manifest: Manifest, corpus_sha256: str, split: str, decoding: str) -> None:
        self.path = (
            root
            / manifest.id
            / f"{corpus_sha256[:16]}-{split}-{decoding}-{manifest.weights_sha256()[:16]}.jsonl"
        )

    def load(self) -> dict[str, Hypothesis]:
        if not self.path.is_file():
            return {}
        done: dict[str, Hypothesis] = {}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                record = Hypothesis(**json.loads(line))
            except (ValueError, TypeError):
                continue  # a line cut short by a kill: that utterance is simply redone
            done[record.id] = record
        return done

    def append(self, hypothesis: Hypothesis) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a+b") as stream:
            stream.seek(0, 2)
            if stream.tell() and (stream.seek(-1, 2), stream.read(1))[1] != b"\n":
                stream.write(b"\n")  # close a line a killed run left half-written
            stream.write((json.dumps(asdict(hypothesis), ensure_ascii=False) + "\n").encode("utf-8"))
            stream.flush()

    def complete(
        self,
        utterances: Sequence[Utterance],
        transcribe: Callable[[Utterance], Hypothesis],
        *,
        desc: str,
        progress: bool = True,
    ) -> dict[str, Hypothesis]:
        """Every utterance's hypothesis: the ones this log holds read back, the others made by
        ``transcribe`` and appended as they come (a killed run resumes where it stopped)."""
        done = self.load()
        todo = [utterance for utterance in utterances if utterance.id not in done]
        if len(todo) < len(utterances):
            logger.info(
                "%s: %d of %d transcripts read from %s",
                desc,
                len(utterances) - len(todo),
                len(utterances),
                self.path,
            )
        for utterance in tqdm(todo, desc=desc, unit="utt", disable=not progress):
            record = transcribe(utterance)
            self.append(record)
            done[utterance.id] = record
        return {utterance.id: done[utterance.id] for utterance in utterances}

    def clear(self) -> None:
        """Forget every transcript (decode afresh, say after a change to the decoding code)."""
        self.path.unlink(missing_ok=True)


def score_hypotheses(hypotheses: Iterable[Hypothesis]) -> list[UtteranceScore]:
    """The scorable hypotheses' edits against their references (normalised text and raw)."""
    scores = []
    for record in hypotheses:
        score = score_utterance(record.id, record.language, record.reference, record.hypothesis)
        if score is not None:
            scores.append(score)
    return scores
