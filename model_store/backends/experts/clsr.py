"""Conditional language-specific routing (CLSR) of a Whisper feed-forward block.

Each replaced FFN keeps the pretrained block as the frozen *shared* branch and gains, per language, an
*expert* branch and a per-token *gate* ``G(x) = w2 . ReLU(W1 x + b)`` (d -> 64 -> 1, ``w2`` zero at
init). Training mixes the branches with a noisy soft gate, ``g = sigmoid(G(x) + a * eps)``, and skips
the expert of a layer with some probability; inference takes the hard gate ``G(x) >= 0`` and computes
only the branch each token chose. Every expert starts equal to the shared branch (a copy, or a
low-rank correction that starts at zero), so a fresh model gives the original's outputs exactly.
"""

from __future__ import annotations

import copy
import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

ExpertKind = Literal["full", "lowrank"]
EXPERT_KINDS: tuple[ExpertKind, ...] = ("full", "lowrank")
GATE_HIDDEN = 64  # the gate's hidden width (DistilWhisper)


class FeedForward(nn.Module):
    """Whisper's FFN block: ``fc2(activation(fc1(x)))`` (the layer norm and residual stay in the layer)."""

    def __init__(self, fc1: nn.Linear, fc2: nn.Linear, activation: nn.Module) -> None:
        super().__init__()
        self.fc1 = fc1
        self.fc2 = fc2
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation(self.fc1(x)))


class Gate(nn.Module):
    """Per-token gate logit ``w2 . ReLU(W1 x + b1) + b2``; zero everywhere at initialisation."""

    def __init__(self, d_model: int, hidden: int = GATE_HIDDEN) -> None:
        super().__init__()
        self.hidden = nn.Linear(d_model, hidden)
        self.out = nn.Linear(hidden, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.hidden(x))).squeeze(-1)


class FullExpert(nn.Module):
    """The paper's expert: a trainable copy of the shared FFN's two linear layers."""

    def __init__(self, shared: FeedForward) -> None:
        super().__init__()
        self.fc1 = copy.deepcopy(shared.fc1).requires_grad_(True)
        self.fc2 = copy.deepcopy(shared.fc2).requires_grad_(True)

    def forward(self, x: torch.Tensor, shared: FeedForward) -> torch.Tensor:
        return self.fc2(shared.activation(self.fc1(x)))


class LowRankExpert(nn.Module):
    """The shared FFN with a rank-``r`` correction on fc1 and fc2 (LoRA-style; ``up`` starts at zero).

    It adds ``r * (d + ffn)`` parameters per linear layer instead of a full copy's ``d * ffn``.
    """

    def __init__(self, shared: FeedForward, rank: int) -> None:
        super().__init__()
        d_model, ffn = shared.fc1.in_features, shared.fc1.out_features
        self.down1 = nn.Linear(d_model, rank, bias=False)
        self.up1 = nn.Linear(rank, ffn, bias=False)
        self.down2 = nn.Linear(ffn, rank, bias=False)
        self.up2 = nn.Linear(rank, d_model, bias=False)
        for down in (self.down1, self.down2):
            nn.init.kaiming_uniform_(down.weight, a=5**0.5)
        nn.init.zeros_(self.up1.weight)
        nn.init.zeros_(self.up2.weight)

    def forward(self, x: torch.Tensor, shared: FeedForward) -> torch.Tensor:
        hidden = shared.activation(shared.fc1(x) + self.up1(self.down1(x)))
        return shared.fc2(hidden) + self.up2(self.down2(hidden))

    def merged(self, shared: FeedForward) -> tuple[torch.Tensor, torch.Tensor]:
        """fc1's and fc2's weights with the correction folded in (the biases are unchanged)."""
        fc1 = shared.fc1.weight + self.up1.weight @ self.down1.weight
        fc2 = shared.fc2.weight + self.up2.weight @ self.down2.weight
        return fc1.detach(), fc2.detach()


Expert = FullExpert | LowRankExpert


class ExpertControl:
    """What every CLSR layer of one model shares: the active language and the training knobs.

    The language is per thread, so server threads sharing one model each run their own request's expert.
    """

    def __init__(self, *, skip_probability: float = 0.2, seed: int = 0) -> None:
        self._local = threading.local()
        self.noise_scale = 0.0  # ``a`` of the training gate; annealed by the trainer
        self.skip_probability = skip_probability  # chance that a layer skips its expert (training)
        self.force_open = False  # gate fixed at 1: the expert alone (a plain adapter, LoRA baseline)
        self.random = random.Random(seed)
        self.recorded_gates: list[torch.Tensor] = []  # soft gates of the current training step
        self.tokens_open = 0  # hard-gate statistics at inference
        self.tokens_seen = 0

    @property
    def language(self) -> str | None:
        return getattr(self._local, "language", None)

    @contextmanager
    def use(self, language: str | None) -> Iterator[None]:
        """Run the experts of ``language`` (None: the shared branch only) inside the block."""
        previous = self.language
        self._local.language = language
        try:
            yield
        finally:
            self._local.language = previous

    def mean_gate_opening(self) -> float | None:
        return self.tokens_open / self.tokens_seen if self.tokens_seen else None

    def reset_statistics(self) -> None:
        self.tokens_open = 0
        self.tokens_seen = 0


class CLSRFeedForward(nn.Module):
    """A frozen shared FFN plus per-language experts and gates, routed by :class:`ExpertControl`."""

    def __init__(self, shared: FeedForward, control: ExpertControl, kind: ExpertKind, rank: int) -> None:
        super().__init__()
        if kind not in EXPERT_KINDS:
            raise ValueError(f"unknown expert kind {kind!r}; choose one of: {', '.join(EXPERT_KINDS)}")
        self.shared = shared.requires_grad_(False)
        self.kind = kind
        self.rank = rank
        self.experts = nn.ModuleDict()
        self.gates = nn.ModuleDict()
        self._control = [control]  # in a list so that nn.Module does not register it

    @property
    def control(self) -> ExpertControl:
        return self._control[0]

    def add_language(self, language: str) -> None:
        """A fresh expert (equal to the shared branch) and a closed-at-zero gate for ``language``."""
        expert: Expert = (
            FullExpert(self.shared) if self.kind == "full" else LowRankExpert(self.shared, self.rank)
        )
        reference = self.shared.fc1.weight
        gate = Gate(self.shared.fc1.in_features)
        self.experts[language] = expert.to(reference.device, reference.dtype).train(self.training)
        self.gates[language] = gate.to(reference.device, reference.dtype).train(self.training)

    def expert(self, language: str) -> Expert:
        module = self.experts[language]
        assert isinstance(module, FullExpert | LowRankExpert)
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        language = self.control.language
        if language is None or language not in self.experts:
            return self.shared(x)
        expert = self.expert(language)
        if self.control.force_open:
            return expert(x, self.shared)
        if self.training:
            return self._soft(x, language, expert)
        return self._hard(x, language, expert)

    def _soft(self, x: torch.Tensor, language: str, expert: Expert) -> torch.Tensor:
        if self.control.random.random() < self.control.skip_probability:
            return self.shared(x)
        logits = self.gates[language](x)
        noise = self.control.noise_scale * torch.randn_like(logits)
        gate = torch.sigmoid(logits + noise).unsqueeze(-1)
        self.control.recorded_gates.append(gate)
        return (1 - gate) * self.shared(x) + gate * expert(x, self.shared)

    def _hard(self, x: torch.Tensor, language: str, expert: Expert) -> torch.Tensor:
        opened = self.gates[language](x) >= 0
        chosen = int(opened.sum())
        self.control.tokens_open += chosen
        self.control.tokens_seen += opened.numel()
        if chosen == opened.numel():
            return expert(x, self.shared)
        if chosen == 0:
            return self.shared(x)
        output = torch.empty_like(x)
        output[opened] = expert(x[opened], self.shared)
        output[~opened] = self.shared(x[~opened])
        return output
