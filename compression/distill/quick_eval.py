"""Quick dev-split CER/WER of a model from cached encoder outputs (one window per utterance).

For students sharing a frozen encoder this skips the encoder, the expensive part on a CPU, and is
otherwise the greedy, language-given decoding of ``hush eval`` without timestamps; scored with the
same normaliser. ``hush eval VARIANT`` remains the reference measurement (it also times latency).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tqdm import tqdm

from compression.data.corpus import Utterance
from compression.distill.cached_decoding import CachedGreedyDecoder
from compression.training.encoder_cache import EncoderCache
from model_store.scoring import UtteranceScore, score_utterance, summarize


@dataclass(frozen=True)
class QuickScore:
    utterances: int
    cer: float
    wer: float


def quick_eval(
    decoder: CachedGreedyDecoder,
    cache: EncoderCache,
    corpus_id: str,
    utterances: Sequence[Utterance],
    *,
    progress: bool = True,
) -> dict[str, QuickScore]:
    """Per-language CER and WER (normalised text) of ``decoder`` on ``utterances``."""
    scores: list[UtteranceScore] = []
    for utterance in tqdm(utterances, desc="quick eval", unit="utt", disable=not progress):
        text = decoder.text(cache.load(corpus_id, utterance.id).float(), utterance.language)
        score = score_utterance(utterance.id, utterance.language, utterance.text, text)
        if score is not None:
            scores.append(score)
    return {
        language: QuickScore(summary.utterances, round(summary.cer, 4), round(summary.wer, 4))
        for language, summary in summarize(scores).items()
    }
