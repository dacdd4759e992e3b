"""Checkpoints of an experts training run, in a run directory laid out as the distillation loop's.

A checkpoint (``<run_dir>/checkpoint.pt``, replaced atomically) holds the plan it trains, the step, the
trainable weights (by their names in the model), the AdamW state, the torch RNG, the Python RNGs the run
draws from (the experts' skip draws) and every step's log entry. Batches are a function of (seed, step)
and the gate noise a function of the step, so resuming from it continues the run exactly.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from compression.training.checkpoint import (
    CHECKPOINT,
    capture_rng,
    check_plan,
    load_checkpoint,
    normalised_plan,
    restore_rng,
    save_atomic,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Checkpointing:
    """Where a run keeps its state, how often, and the plan it trains (another plan's is refused)."""

    run_dir: Path
    plan: Mapping[str, Any]  # JSON-able: everything that decides the trained weights
    every: int = 50  # steps between checkpoints (and always at the last step of a call)
    log_every: int = 10  # steps between lines in log.jsonl (and the last step)

    def __post_init__(self) -> None:
        if self.every < 1 or self.log_every < 1:
            raise ValueError("checkpoint and log intervals must be at least one step")


def parameter_names(model: nn.Module, trainable: Sequence[nn.Parameter]) -> list[str]:
    """Checkpoint keys of ``trainable``: their names in ``model`` (their position for any outside it)."""
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    return [names.get(id(parameter), f"#{index}") for index, parameter in enumerate(trainable)]


class RunState:
    """What a checkpoint holds, saved to and restored from one run directory."""

    def __init__(
        self,
        checkpointing: Checkpointing,
        model: nn.Module,
        trainable: Sequence[nn.Parameter],
        optimizer: torch.optim.Optimizer,
        generators: Sequence[random.Random],
    ) -> None:
        self.checkpointing = checkpointing
        self.names = parameter_names(model, trainable)
        self.trainable = trainable
        self.optimizer = optimizer
        self.generators = generators

    @property
    def path(self) -> Path:
        return self.checkpointing.run_dir / CHECKPOINT

    def resume(self) -> tuple[int, list[dict[str, Any]]]:
        """Load the checkpoint if there is one: the step to go on from and the log of the steps done."""
        run_dir = self.checkpointing.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        check_plan(run_dir, self.checkpointing.plan)
        state = load_checkpoint(run_dir)
        if state is None:
            return 0, []
        saved = state["parameters"]
        if sorted(saved) != sorted(self.names):
            raise ValueError(f"{self.path} holds other trainable parameters than this run")
        with torch.no_grad():
            for name, parameter in zip(self.names, self.trainable, strict=True):
                parameter.copy_(saved[name])
        self.optimizer.load_state_dict(state["optimizer"])
        restore_rng(state["rng"], self.generators)
        step = int(state["step"])
        logger.info("resuming %s at step %d", run_dir, step)
        return step, [dict(entry) for entry in state["history"]]

    def save(self, step: int, history: Sequence[Mapping[str, Any]]) -> None:
        save_atomic(
            self.path,
            {
                "step": step,
                "plan": normalised_plan(self.checkpointing.plan),
                "parameters": {
                    name: parameter.detach().clone()
                    for name, parameter in zip(self.names, self.trainable, strict=True)
                },
                "optimizer": self.optimizer.state_dict(),
                "rng": capture_rng(self.generators),
                "history": [dict(entry) for entry in history],
            },
        )
