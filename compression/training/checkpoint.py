"""What the training loops share about a run directory: atomic checkpoints, RNG state, the log, progress.

A run directory holds ``checkpoint.pt`` (the latest state, replaced atomically) and ``log.jsonl`` (one
JSON line per logged step). A checkpoint may record the *plan* it trains (a JSON-able mapping): a run
directory whose checkpoint belongs to another plan is refused rather than silently resumed.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

CHECKPOINT = "checkpoint.pt"
LOG = "log.jsonl"


class PlanMismatchError(ValueError):
    """A run directory holds a checkpoint of another plan."""


def save_atomic(path: Path, payload: Mapping[str, Any]) -> None:
    """``torch.save`` to a temporary file, then rename it over ``path`` (never a half-written file)."""
    temporary = path.with_suffix(".tmp")
    torch.save(dict(payload), temporary)
    temporary.replace(path)


def load_checkpoint(run_dir: Path, *, mmap: bool = False) -> dict[str, Any] | None:
    """The run's checkpoint, or None when there is none (``mmap``: leave the tensors on disk)."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    state: dict[str, Any] = torch.load(path, weights_only=True, mmap=mmap, map_location="cpu")
    return state


def capture_rng(generators: Sequence[random.Random] = ()) -> dict[str, Any]:
    """The torch CPU RNG state and the states of ``generators`` (Python RNGs the run draws from)."""
    return {"torch": torch.get_rng_state(), "python": [generator.getstate() for generator in generators]}


def restore_rng(state: Mapping[str, Any] | torch.Tensor, generators: Sequence[random.Random] = ()) -> None:
    """Put back what :func:`capture_rng` took (a bare tensor: a torch state from older checkpoints)."""
    if isinstance(state, torch.Tensor):
        state = {"torch": state, "python": []}
    torch.set_rng_state(state["torch"])
    saved = list(state["python"])
    if len(saved) != len(generators):
        raise ValueError(
            f"the checkpoint holds {len(saved)} Python RNG states, the run has {len(generators)}"
        )
    for generator, generator_state in zip(generators, saved, strict=True):
        version, internal, gauss = generator_state
        generator.setstate((version, tuple(internal), gauss))


def normalised_plan(plan: Mapping[str, Any]) -> dict[str, Any]:
    """``plan`` as JSON reads it back (tuples become lists), so saved and current plans compare equal."""
    normalised: dict[str, Any] = json.loads(json.dumps(plan, sort_keys=True, default=str))
    return normalised


def _flat(plan: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as dotted keys (``training.steps``), for naming what differs."""
    flat: dict[str, Any] = {}
    for key, value in plan.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_plan(run_dir: Path, plan: Mapping[str, Any]) -> int | None:
    """The step of the checkpoint in ``run_dir`` (None: none); raises if it belongs to another plan."""
    state = load_checkpoint(run_dir, mmap=True)
    if state is None:
        return None
    saved, current = state.get("plan"), normalised_plan(plan)
    if saved != current:
        flat_saved, flat_current = _flat(saved if isinstance(saved, dict) else {}), _flat(current)
        differing = sorted(
            key for key in {*flat_saved, *flat_current} if flat_saved.get(key) != flat_current.get(key)
        )
        raise PlanMismatchError(
            f"{run_dir / CHECKPOINT} is a checkpoint of another plan (it differs in: "
            f"{', '.join(differing) or 'everything'}) and is not resumed"
        )
    return int(state["step"])


def discard(run_dir: Path) -> bool:
    """Remove the run's checkpoint and log (a fresh start); True when there was a checkpoint."""
    had = (run_dir / CHECKPOINT).is_file()
    for name in (CHECKPOINT, LOG, Path(CHECKPOINT).with_suffix(".tmp").name):
        (run_dir / name).unlink(missing_ok=True)
    return had


def append_log(run_dir: Path, record: Mapping[str, Any]) -> None:
    with (run_dir / LOG).open("a", encoding="utf-8") as log:
        log.write(json.dumps(record) + "\n")


class Throughput:
    """Tokens per second and the time left, counted from the first step of this process."""

    def __init__(self, start: int, total: int) -> None:
        self.start = start
        self.total = total
        self.tokens = 0
        self.started = time.perf_counter()

    def add(self, tokens: int) -> None:
        self.tokens += tokens

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def tokens_per_second(self) -> float:
        elapsed = self.elapsed
        return self.tokens / elapsed if elapsed else 0.0

    def eta_seconds(self, done: int) -> float:
        """Seconds left after ``done`` of ``total`` steps at this process's pace so far."""
        ran = done - self.start
        return (self.total - done) * self.elapsed / ran if ran > 0 else float("nan")
