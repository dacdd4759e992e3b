"""Guided mixed precision: per decoder Linear, measure quantization sensitivity, choose bits under a budget.

Two measures of a Linear's sensitivity at ``b`` bits, on calibration batches (teacher-forced, cached
encoder outputs):

* ``linear-output`` (:func:`sensitivity`): its own relative output error,
  ``||X Q_b(W)^T - X W^T||^2 / ||X W^T||^2``, with ``X`` its real inputs. Cheap, but each Linear is
  measured in its own units, so an attention projection and an FFN are not compared on what matters.
* ``model-output`` (:func:`output_sensitivity`): the KL divergence of the model's next-token
  distribution, float against that Linear alone quantized, per target token. One unit for all. One
  decoder pass per batch, Linear and width: the cross-attention keys and values of the encoder output
  (most of a pass's work, over 1,500 frames) are computed once per batch and reused, except when the
  Linear quantized is one that makes them, and the output projection runs on target positions only.
* ``model-output-at-budget``: the same KL, but with every other decoder Linear already quantized at
  the budget's uniform width (:func:`uniform_width`), so each Linear is judged where the choice is
  made, its interactions with the others' errors included. Measured alone, a dozen Linears were each
  harmless at 2 bits and together made the decoder stop early (README, session 10).
* ``decisions-at-budget``: the last, plus per target token the greedy decisions the quantization
  changes, an early end-of-text costing the rest of the transcript (:func:`decision_costs`): what a
  greedy decoder loses, which the mean KL per token weighs as one position in thirty.
* ``transcripts-at-budget``: the at-budget KL plus, per target token, the token edits between each
  calibration utterance's greedy transcript (free-running, batched) and the float model's: what
  teacher forcing cannot see, an early stop after the decoder's own mistakes. A batched greedy decode
  of every calibration batch per Linear and width: the slowest measure by far.

The bits are then chosen from these figures under a budget by :mod:`compression.distill.guided_bits`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from rapidfuzz.distance import Levenshtein
from torch import nn
from tqdm import tqdm
from transformers import DynamicCache, EncoderDecoderCache, WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from compression.distill.fake_quant import (
    DEFAULT_GROUP_SIZE,
    Granularity,
    QuantSpec,
    decoder_linears,
    fake_quantize,
)
from compression.distill.guided_bits import Sensitivity, uniform_width
from compression.distill.objective import logits_of
from compression.training.dataset import Batch
from model_store.backends.cache_keyword import cache_keyword

SensitivityMeasure = Literal[
    "linear-output", "model-output", "model-output-at-budget", "decisions-at-budget", "transcripts-at-budget"
]
SENSITIVITY_MEASURES: tuple[SensitivityMeasure, ...] = (
    "linear-output",
    "model-output",
    "model-output-at-budget",
    "decisions-at-budget",
    "transcripts-at-budget",
)
Transcriber = Callable[[Batch], list[list[int]]]  # greedy token ids of each row of a batch, after its prompt


@torch.no_grad()
def sensitivity(
    model: WhisperForConditionalGeneration,
    batches: Iterable[Batch],
    bits: Sequence[int] = (4, 8),
    granularity: Granularity = "per-channel",
    group_size: int = DEFAULT_GROUP_SIZE,
) -> Sensitivity:
    """Relative output error of each decoder Linear at each of ``bits`` on ``batches``."""
    linears = dict(decoder_linears(model))
    inputs: dict[str, list[torch.Tensor]] = {name: [] for name in linears}

    def capture(name: str) -> object:
        def hook(_module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            inputs[name].append(args[0].detach().flatten(0, -2))

        return hook

    handles = [linear.register_forward_pre_hook(capture(name)) for name, linear in linears.items()]  # type: ignore[arg-type]
    try:
        for batch in batches:
            logits_of(model, batch.encoder_hidden, batch.decoder_input_ids)
    finally:
        for handle in handles:
            handle.remove()
    result: Sensitivity = {}
    for name, linear in linears.items():
        x = torch.cat(inputs[name])
        reference = x @ linear.weight.T
        energy = float((reference**2).sum().item()) or 1.0
        result[name] = {
            b: float(
                ((x @ fake_quantize(linear.weight, QuantSpec(b, granularity, group_size)).T - reference) ** 2)
                .sum()
                .item()
            )
            / energy
            for b in bits
        }
    return result


@dataclass(frozen=True)
class OutputTerms:
    """What a model-output sensitivity counts, per target token, besides the KL of the next-token
    distribution."""

    context_bits: int | None = None  # every other decoder Linear at this width meanwhile (None: float)
    decisions: bool = False  # + the teacher-forced greedy decisions that change (decision_costs)
    transcribe: Transcriber | None = None  # + the token edits of each utterance's free-running transcript


KL_ALONE = OutputTerms()  # model-output: the KL with the Linear quantized alone


@torch.no_grad()
def output_sensitivity(
    model: WhisperForConditionalGeneration,
    batches: Sequence[Batch],
    bits: Sequence[int] = (4, 8),
    granularity: Granularity = "per-channel",
    group_size: int = DEFAULT_GROUP_SIZE,
    progress: bool = False,
    terms: OutputTerms = KL_ALONE,
) -> Sensitivity:
    """Mean KL divergence per target token of the model's next-token distribution, float against each
    decoder Linear quantized at each of ``bits``, plus what ``terms`` adds (the other Linears' width
    meanwhile, changed decisions, transcript edits). The weights are restored at the end."""
    context_bits, decisions, transcribe = terms.context_bits, terms.decisions, terms.transcribe
    linears = list(decoder_linears(model))
    originals = {name: linear.weight.data for name, linear in linears}

    def quantized(name: str, width: int) -> torch.Tensor:
        return fake_quantize(originals[name], QuantSpec(width, granularity, group_size))

    # held for every batch: 2 x decoder layers x the encoder output's size (about 300 MB a batch of 8 at
    # base size), the price of not projecting 1,500 frames again in every pass
    cross = [cross_attention_states(model, batch.encoder_hidden) for batch in batches]

    def target_log_probs(index: int, reuse_cross: bool = True) -> torch.Tensor:  # (target tokens, vocab)
        batch = batches[index]
        logits = target_logits(model, batch, cross[index] if reuse_cross else None)
        return torch.log_softmax(logits.double(), dim=-1)

    references = [(log_probs, log_probs.exp()) for log_probs in map(target_log_probs, range(len(batches)))]
    choices = [log_probs.argmax(-1) for log_probs, _ in references]
    end_of_text = model.config.eos_token_id
    if not isinstance(end_of_text, int):
        raise ValueError(f"the model's config names no single end-of-text token: {end_of_text!r}")
    tokens = sum(batch.target_tokens for batch in batches) or 1
    transcripts = [transcribe(batch) for batch in batches] if transcribe is not None else []

    def divergence(reuse_cross: bool = True) -> float:
        total = 0.0
        for index, (reference, probabilities) in enumerate(references):
            log_probs = target_log_probs(index, reuse_cross)
            per_token = (probabilities * (reference - log_probs)).sum(-1)
            total += float(per_token.sum().item())
            if decisions:
                total += decision_costs(batches[index], choices[index], log_probs.argmax(-1), end_of_text)
            if transcribe is not None:
                edits = map(Levenshtein.distance, transcripts[index], transcribe(batches[index]))
                total += float(sum(edits))
        return total / tokens

    context = dict(originals)
    result: Sensitivity = {}
    try:
        baseline = None
        if context_bits is not None:
            context = {name: quantized(name, context_bits) for name in originals}
            for name, linear in linears:
                linear.weight.data = context[name]
            cross = [cross_attention_states(model, batch.encoder_hidden) for batch in batches]
            baseline = divergence()
        for name, linear in tqdm(linears, desc="sensitivity", unit="Linear", disable=not progress):
            reuse_cross = not name.endswith(CROSS_ATTENTION_INPUTS)
            result[name] = {}
            for b in bits:
                if baseline is not None and b == context_bits:
                    result[name][b] = baseline  # every Linear at the context width: the uniform model
                    continue
                linear.weight.data = quantized(name, b)
                result[name][b] = divergence(reuse_cross)
            linear.weight.data = context[name]
    finally:
        for name, linear in linears:
            linear.weight.data = originals[name]
    return result


def decision_costs(batch: Batch, reference: torch.Tensor, choice: torch.Tensor, end_of_text: int) -> float:
    """Tokens a greedy decoder would get wrong where the quantized model's next token (``choice``, one
    per target position, teacher-forced) differs from the float model's (``reference``): one for another
    token; the rest of the transcript for an end-of-text before the float model's (a decoder that stops
    there loses them); the whole transcript for no end-of-text where the float model ends (a decoder
    that runs on repeats itself). The mean KL per token weighs an early stop as one position in thirty."""
    mask = batch.mask
    remaining = mask.flip(-1).cumsum(-1).flip(-1)[mask]  # target positions from here to the row's end
    length = mask.sum(-1, keepdim=True).expand_as(mask)[mask]
    changed = choice != reference
    stops_early = changed & (choice == end_of_text)
    runs_on = changed & (reference == end_of_text)
    cost = torch.where(stops_early, remaining, torch.where(runs_on, length, changed.long()))
    return float(cost.sum().item())


def batch_prompts(batch: Batch) -> list[list[int]]:
    """Each row's decoder prompt: its input tokens up to the one that predicts its first target."""
    first_targets = batch.mask.int().argmax(-1)
    return [
        row[: int(first) + 1].tolist()
        for row, first in zip(batch.decoder_input_ids, first_targets, strict=True)
    ]


CROSS_ATTENTION_INPUTS = ("encoder_attn.k_proj", "encoder_attn.v_proj")


def cross_attention_states(
    model: WhisperForConditionalGeneration, hidden: torch.Tensor
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each decoder layer's cross-attention keys and values of ``hidden``, shaped as transformers'
    cache holds them: ``(batch, heads, frames, head_dim)``."""
    states = []
    for layer in model.model.decoder.layers:
        attention = layer.encoder_attn
        shape = (hidden.shape[0], -1, attention.num_heads, attention.head_dim)
        keys = attention.k_proj(hidden).view(shape).transpose(1, 2).contiguous()
        values = attention.v_proj(hidden).view(shape).transpose(1, 2).contiguous()
        states.append((keys, values))
    return states


def target_logits(
    model: WhisperForConditionalGeneration,
    batch: Batch,
    cross: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Logits at the batch's target positions ``(target tokens, vocab)``, teacher-forced; with ``cross``
    (:func:`cross_attention_states`) the decoder reuses those keys and values instead of projecting
    the encoder output again."""
    cache = None if cross is None else EncoderDecoderCache(DynamicCache(), DynamicCache(cross))
    output = model.model(
        encoder_outputs=BaseModelOutput(last_hidden_state=batch.encoder_hidden),
        decoder_input_ids=batch.decoder_input_ids,
        use_cache=cache is not None,
        **{cache_keyword(model.model): cache},
    )
    return model.proj_out(output.last_hidden_state[batch.mask])


def measure_sensitivity(
    measure: SensitivityMeasure,
    model: WhisperForConditionalGeneration,
    batches: Sequence[Batch],
    bits: Sequence[int],
    granularity: Granularity,
    group_size: int,
    progress: bool = False,
    average_bits: float | None = None,
    transcribe: Transcriber | None = None,
) -> Sensitivity:
    """``average_bits`` (the budget) is needed by the ``-at-budget`` measures, ``transcribe`` (the
    model's greedy decoder, :func:`batch_prompts`) by ``transcripts-at-budget``."""
    if measure in ("model-output-at-budget", "decisions-at-budget", "transcripts-at-budget"):
        if average_bits is None:
            raise ValueError(f"the {measure} measure needs the budget's average bits")
        if measure == "transcripts-at-budget" and transcribe is None:
            raise ValueError("the transcripts-at-budget measure needs a greedy decoder of the model")
        terms = OutputTerms(
            context_bits=uniform_width(average_bits, bits),
            decisions=measure == "decisions-at-budget",
            transcribe=transcribe if measure == "transcripts-at-budget" else None,
        )
        return output_sensitivity(model, batches, bits, granularity, group_size, progress, terms)
    if measure == "model-output":  # one pass of every batch per Linear and width: minutes at base size
        return output_sensitivity(model, batches, bits, granularity, group_size, progress)
    return sensitivity(model, batches, bits, granularity, group_size)
