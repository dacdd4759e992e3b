"""The training loop shared by CLSR experts and the fine-tuning baselines.

Loss (DistilWhisper): ``ce_weight * (CE_label-smoothed + L_gate) + kd_weight * JS(teacher, student)``;
without a teacher the JS term is dropped. Only the parameters handed in train.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from tqdm import tqdm
from transformers import WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from compression.experts.data import Batch
from compression.experts.encoder_outputs import EncoderOutputs
from compression.experts.losses import gate_budget, js_divergence, label_smoothed_ce
from compression.experts.schedule import MAX_GATE_NOISE, GateNoiseSchedule
from model_store.backends.experts.clsr import ExpertControl

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingConfig:
    """Optimisation settings; the defaults are DistilWhisper's where it states them."""

    steps: int = 200  # optimiser steps (each one batch of one language)
    batch_size: int = 8
    learning_rate: float = 1e-4  # AdamW
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    label_smoothing: float = 0.1
    ce_weight: float = 0.25  # on (CE + gate budget)
    kd_weight: float = 0.5  # on JS divergence; ignored without a teacher
    gate_budget: float = 0.5  # target mean gate opening
    max_gate_noise: float = MAX_GATE_NOISE  # ``a`` grows linearly from 0 to this over the run
    skip_probability: float = 0.2  # chance that a layer skips its expert in a step
    seed: int = 0


@dataclass(frozen=True)
class StepLog:
    """The loss terms of one step."""

    step: int
    language: str
    loss: float
    ce: float
    js: float | None
    gate: float
    mean_gate: float | None  # mean soft gate of the step (None when no layer was gated)


@dataclass(frozen=True)
class Teacher:
    """The model whose token distributions the student matches, and its encoder outputs."""

    model: WhisperForConditionalGeneration
    encoder_outputs: EncoderOutputs


def decoder_logits(
    model: WhisperForConditionalGeneration, hidden: torch.Tensor, batch: Batch
) -> torch.Tensor:
    output = model(
        encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
        decoder_input_ids=batch.input_ids.to(hidden.device),
        use_cache=False,
    )
    return output.logits


def train(
    model: WhisperForConditionalGeneration,
    trainable: list[nn.Parameter],
    batches: Iterator[Batch],
    encoder_outputs: EncoderOutputs,
    config: TrainingConfig,
    *,
    teacher: Teacher | None = None,
    control: ExpertControl | None = None,
    expert_key: Callable[[str], str] = lambda language: language,
    progress: bool = True,
    on_step: Callable[[StepLog], None] | None = None,
) -> list[StepLog]:
    """Run ``config.steps`` optimiser steps; returns every step's losses."""
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = GateNoiseSchedule(config.steps, config.max_gate_noise)
    if control is not None:
        control.skip_probability = config.skip_probability
    model.train()
    if teacher is not None:
        teacher.model.eval()
    history: list[StepLog] = []
    started = time.perf_counter()
    bar = tqdm(range(config.steps), desc="experts", unit="step", disable=not progress)
    for step in bar:
        batch = next(batches)
        labels = batch.labels
        route = contextlib.nullcontext() if control is None else control.use(expert_key(batch.language))
        if control is not None:
            control.noise_scale = schedule.scale(step)
            control.recorded_gates.clear()
        with route:
            hidden = encoder_outputs(batch.examples)
            logits = decoder_logits(model, hidden, batch)
        labels = labels.to(logits.device)
        ce = label_smoothed_ce(logits, labels, config.label_smoothing)
        gates = control.recorded_gates if control is not None else []
        budget = gate_budget(gates, config.gate_budget).to(logits.device)
        loss = config.ce_weight * (ce + budget)
        js: torch.Tensor | None = None
        if teacher is not None:
            with torch.no_grad():
                teacher_logits = decoder_logits(teacher.model, teacher.encoder_outputs(batch.examples), batch)
            js = js_divergence(logits, teacher_logits, labels)
            loss = loss + config.kd_weight * js
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        mean_gate = float(torch.cat([g.detach().flatten() for g in gates]).mean()) if gates else None
        entry = StepLog(
            step,
            batch.language,
            float(loss.detach()),
            float(ce.detach()),
            None if js is None else float(js.detach()),
            float(budget.detach()),
            mean_gate,
        )
        history.append(entry)
        bar.set_postfix(loss=f"{entry.loss:.3f}", ce=f"{entry.ce:.3f}", lang=batch.language)
        if on_step is not None:
            on_step(entry)
    if control is not None:
        control.recorded_gates.clear()
    model.eval()
    logger.info("trained %d steps in %.0f s", config.steps, time.perf_counter() - started)
    return history
