"""The training loop shared by CLSR experts and the fine-tuning baselines.

Loss (DistilWhisper): ``ce_weight * (CE_label-smoothed + L_gate) + kd_weight * JS(teacher, student)``;
without a teacher the JS term is dropped. Only the parameters handed in train.

With :class:`Checkpointing` a run keeps ``checkpoint.pt`` and ``log.jsonl`` in its run directory (see
:mod:`compression.experts.checkpoints`) and a later call of the same plan resumes it exactly.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from tqdm import tqdm
from transformers import WhisperForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from compression.experts.checkpoints import Checkpointing, RunState
from compression.experts.data import Batch
from compression.experts.encoder_outputs import EncoderOutputs
from compression.experts.losses import IGNORE_INDEX, gate_budget, js_divergence, label_smoothed_ce
from compression.experts.schedule import MAX_GATE_NOISE, GateNoiseSchedule
from compression.training.checkpoint import Throughput, append_log
from compression.training.loop import BatchSource
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


def _step(
    model: WhisperForConditionalGeneration,
    batch: Batch,
    step: int,
    encoder_outputs: EncoderOutputs,
    config: TrainingConfig,
    schedule: GateNoiseSchedule,
    teacher: Teacher | None,
    control: ExpertControl | None,
    expert_key: Callable[[str], str],
) -> tuple[torch.Tensor, StepLog]:
    """The loss of one batch (to back-propagate) and its log entry."""
    route = contextlib.nullcontext() if control is None else control.use(expert_key(batch.language))
    if control is not None:
        control.noise_scale = schedule.scale(step)
        control.recorded_gates.clear()
    with route:
        hidden = encoder_outputs(batch.examples)
        logits = decoder_logits(model, hidden, batch)
    labels = batch.labels.to(logits.device)
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
    return loss, entry


def train(
    model: WhisperForConditionalGeneration,
    trainable: list[nn.Parameter],
    batches: BatchSource,
    encoder_outputs: EncoderOutputs,
    config: TrainingConfig,
    *,
    teacher: Teacher | None = None,
    control: ExpertControl | None = None,
    expert_key: Callable[[str], str] = lambda language: language,
    progress: bool = True,
    on_step: Callable[[StepLog], None] | None = None,
    checkpointing: Checkpointing | None = None,
    stop_after: int | None = None,
) -> list[StepLog]:
    """Train up to ``config.steps`` optimiser steps on ``batches.batch(step)``; returns every step's losses.

    With ``checkpointing`` the run resumes from its run directory's checkpoint (of the same plan only)
    and keeps its own there; ``stop_after`` ends this call after that many steps (to resume later).
    """
    torch.manual_seed(config.seed)
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
    schedule = GateNoiseSchedule(config.steps, config.max_gate_noise)
    if control is not None:
        control.skip_probability = config.skip_probability
    state: RunState | None = None
    start, history = 0, []
    if checkpointing is not None:
        generators = [control.random] if control is not None else []
        state = RunState(checkpointing, model, trainable, optimizer, generators)
        start, done = state.resume()
        history = [StepLog(**entry) for entry in done]
    end = config.steps if stop_after is None else min(config.steps, start + stop_after)
    model.train()
    if teacher is not None:
        teacher.model.eval()
    throughput = Throughput(start, config.steps)
    bar = tqdm(total=config.steps, initial=start, desc="experts", unit="step", disable=not progress)
    try:
        for step in range(start, end):
            batch = batches.batch(step)
            loss, entry = _step(
                model, batch, step, encoder_outputs, config, schedule, teacher, control, expert_key
            )
            optimizer.zero_grad(set_to_none=True)
            if loss.requires_grad:  # not when every expert layer skipped its expert this step
                loss.backward()
                torch.nn.utils.clip_grad_norm_(trainable, config.max_grad_norm)
                optimizer.step()
            history.append(entry)
            throughput.add(int((batch.labels != IGNORE_INDEX).sum()))
            bar.set_postfix(
                loss=f"{entry.loss:.3f}",
                ce=f"{entry.ce:.3f}",
                tok_s=f"{throughput.tokens_per_second():.0f}",
                lang=batch.language,
            )
            bar.update(1)
            if state is not None:
                _log_and_save(state, step + 1, end, config.steps, history, throughput)
            if on_step is not None:
                on_step(entry)
    finally:
        bar.close()
        if control is not None:
            control.recorded_gates.clear()
        model.eval()
    logger.info("trained steps %d to %d of %d in %.0f s", start, end, config.steps, throughput.elapsed)
    return history


def _log_and_save(
    state: RunState, done: int, end: int, total: int, history: list[StepLog], throughput: Throughput
) -> None:
    """After step ``done``: a log line and a checkpoint when their interval (or this call's end) comes."""
    checkpointing = state.checkpointing
    if done % checkpointing.log_every == 0 or done in (end, total):
        eta = throughput.eta_seconds(done)
        record = {**asdict(history[-1]), "step": done, "tokens_per_second": throughput.tokens_per_second()}
        append_log(checkpointing.run_dir, record)
        logger.info(
            "step %d/%d loss %.4f %.0f tokens/s ETA %s",
            done,
            total,
            history[-1].loss,
            record["tokens_per_second"],
            "?" if math.isnan(eta) else f"{eta:.0f} s",
        )
    if done % checkpointing.every == 0 or done == end:
        state.save(done, [asdict(entry) for entry in history])
