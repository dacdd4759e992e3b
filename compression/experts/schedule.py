"""The gate noise of CLSR training: ``a`` grows linearly from 0 to its maximum (DistilWhisper: 5)."""

from __future__ import annotations

from dataclasses import dataclass

MAX_GATE_NOISE = 5.0  # DistilWhisper's final noise scale


@dataclass(frozen=True)
class GateNoiseSchedule:
    """Noise scale at each optimiser step: ``maximum * step / total_steps``, then held at ``maximum``."""

    total_steps: int
    maximum: float = MAX_GATE_NOISE

    def __post_init__(self) -> None:
        if self.total_steps < 1:
            raise ValueError("the noise schedule needs at least one step")
        if self.maximum < 0:
            raise ValueError("the noise scale cannot be negative")

    def scale(self, step: int) -> float:
        return self.maximum * min(max(step, 0) / self.total_steps, 1.0)
