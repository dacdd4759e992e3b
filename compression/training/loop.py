"""A small training loop: AdamW with warm-up, progress (loss, tokens/s, ETA), checkpoints and resume.

The loop knows nothing about distillation: it calls ``objective(batch) -> LossTerms`` on batches from
``batches.batch(step)`` and optimises ``trainable`` (name -> module; only parameters that require a
gradient are optimised and checkpointed). Seeded and deterministic on the CPU: batch order is a
function of (seed, step), and a checkpoint holds the step, the trainable weights, the optimizer and
scheduler state and the RNG states, so a resumed run continues exactly where the interrupted one was.

Checkpoints are ``<run_dir>/checkpoint.pt`` (the latest, written atomically every
``checkpoint_every`` steps and at the end) and ``<run_dir>/log.jsonl`` (one line per logged step).

Under ``torchrun`` (:mod:`compression.training.distributed`) each process learns from its share of
every batch, the gradients are averaged over processes (weighted by target tokens) before clipping,
every process takes the same step, and only the main process writes checkpoints, logs and progress;
the logged loss is the whole batch's.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm import tqdm

from compression.training.checkpoint import (
    CHECKPOINT,
    Throughput,
    append_log,
    capture_rng,
    check_plan,
    load_checkpoint,
    normalised_plan,
    restore_rng,
    save_atomic,
)
from compression.training.distributed import SINGLE_PROCESS, Ranks

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingOptions:
    """How long and how fast to train."""

    steps: int = 200  # optimizer steps
    batch_size: int = 8  # utterances per step
    learning_rate: float = 1e-4  # AdamW peak, reached after the warm-up, then linear decay to 10%
    warmup_steps: int = 10
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    seed: int = 0
    checkpoint_every: int = 50  # steps between checkpoints (and always at the end)
    log_every: int = 10  # steps between lines in log.jsonl


@dataclass(frozen=True)
class LossTerms:
    """The loss to minimise and its named parts (floats, for the log)."""

    loss: torch.Tensor
    parts: Mapping[str, float] = field(default_factory=dict)
    tokens: int = 0  # target tokens in the batch, for tokens/s


class BatchSource(Protocol):
    def batch(self, step: int) -> Any: ...


@dataclass(frozen=True)
class TrainingResult:
    steps: int
    resumed_from: int
    first_loss: float
    last_loss: float
    seconds: float
    history: list[dict[str, float]]


def _trainable(modules: Mapping[str, nn.Module]) -> dict[str, nn.Parameter]:
    return {
        f"{prefix}.{name}": parameter
        for prefix, module in modules.items()
        for name, parameter in module.named_parameters()
        if parameter.requires_grad
    }


def _schedule(options: TrainingOptions) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < options.warmup_steps:
            return (step + 1) / options.warmup_steps
        span = max(1, options.steps - options.warmup_steps)
        return max(0.1, 1.0 - 0.9 * (step - options.warmup_steps) / span)

    return factor


def train(
    objective: Callable[[Any], LossTerms],
    batches: BatchSource,
    trainable: Mapping[str, nn.Module],
    options: TrainingOptions,
    run_dir: Path,
    *,
    progress: bool = True,
    stop_after: int | None = None,
    plan: Mapping[str, Any] | None = None,
    ranks: Ranks = SINGLE_PROCESS,
) -> TrainingResult:
    """Train until ``options.steps`` (resuming from ``run_dir`` if it holds a checkpoint).

    ``plan`` (what the run trains, as plain data) is saved in each checkpoint, and a checkpoint of
    another plan is refused (:class:`~compression.training.checkpoint.PlanMismatchError`) instead of
    being resumed. ``stop_after`` ends the call after that many steps of this call (for tests of
    resumption). ``ranks``: this process's place when several train together (``batches`` then
    gives each its share of a step's batch).
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    if plan is not None:
        check_plan(run_dir, plan)
    torch.manual_seed(options.seed)
    parameters = _trainable(trainable)
    if not parameters:
        raise ValueError("nothing to train: no parameter requires a gradient")
    optimizer = torch.optim.AdamW(
        list(parameters.values()), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(options))
    start = 0
    history: list[dict[str, float]] = []
    checkpoint_path = run_dir / CHECKPOINT
    state = load_checkpoint(run_dir)
    if state is not None:
        with torch.no_grad():
            for name, parameter in parameters.items():
                parameter.copy_(state["parameters"][name])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"])
        start = int(state["step"])
        history = list(state["history"])
        logger.info("resuming %s at step %d of %d", run_dir, start, options.steps)
    for module in trainable.values():
        module.train()
    started = time.perf_counter()
    throughput = Throughput(start, options.steps)
    end = options.steps if stop_after is None else min(options.steps, start + stop_after)
    bar = tqdm(
        total=options.steps,
        initial=start,
        desc="training",
        unit="step",
        disable=not (progress and ranks.main),
    )
    step = start
    try:
        for step in range(start, end):
            terms = objective(batches.batch(step))
            optimizer.zero_grad(set_to_none=True)
            terms.loss.backward()
            weight = float(terms.tokens) if terms.tokens > 0 else 1.0
            total = ranks.average_gradients(parameters.values(), weight)
            torch.nn.utils.clip_grad_norm_(list(parameters.values()), options.max_grad_norm)
            optimizer.step()
            scheduler.step()
            throughput.add(int(total) if terms.tokens > 0 else 0)
            names = list(terms.parts)
            loss, *parts = ranks.weighted_mean(
                [float(terms.loss.item()), *(terms.parts[name] for name in names)], weight, total
            )
            record = {"step": step + 1, "loss": loss, **dict(zip(names, parts, strict=True))}
            record["lr"] = float(scheduler.get_last_lr()[0])
            record["tokens_per_second"] = throughput.tokens_per_second()
            history.append(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", tok_s=f"{record['tokens_per_second']:.0f}")
            bar.update(1)
            if not ranks.main:
                continue
            if (step + 1) % options.log_every == 0 or step + 1 == options.steps:
                append_log(run_dir, record)
                logger.info(
                    "step %d/%d loss %.4f %.0f tokens/s ETA %.0f s",
                    step + 1,
                    options.steps,
                    record["loss"],
                    record["tokens_per_second"],
                    throughput.eta_seconds(step + 1),
                )
            if (step + 1) % options.checkpoint_every == 0 or step + 1 == end:
                save_atomic(
                    checkpoint_path,
                    {
                        "step": step + 1,
                        "parameters": {
                            name: p.detach().to("cpu", copy=True) for name, p in parameters.items()
                        },
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "rng": capture_rng(),
                        "history": history,
                        "options": asdict(options),
                        "plan": None if plan is None else normalised_plan(plan),
                    },
                )
    finally:
        bar.close()
    losses = [record["loss"] for record in history]
    return TrainingResult(
        steps=end,
        resumed_from=start,
        first_loss=losses[0] if losses else math.nan,
        last_loss=losses[-1] if losses else math.nan,
        seconds=time.perf_counter() - started,
        history=history,
    )
