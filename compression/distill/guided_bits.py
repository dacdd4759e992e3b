"""Guided mixed precision's choice: bits per decoder Linear from measured sensitivities, under a budget.

:func:`choose_bits` picks the widths with the least summed sensitivity whose total stays within the
budget (average bits per decoder Linear weight): a multiple-choice knapsack, solved exactly by dynamic
programming (until session 12 greedily: every Linear at the lowest width, then the upgrade with the
largest error reduction per extra byte, which can end worse by its own measure than uniform precision).
The sensitivities come from :mod:`compression.distill.guided`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from transformers import WhisperForConditionalGeneration

from compression.distill.fake_quant import decoder_linears

Sensitivity = dict[str, dict[int, float]]  # Linear name -> bits -> error (lower is better)


def uniform_width(average_bits: float, choices: Sequence[int]) -> int:
    """The widest of ``choices`` that every Linear can have within ``average_bits``."""
    within = [bits for bits in choices if bits <= average_bits]
    if not within:
        raise ValueError(f"a budget of {average_bits} bits is below the lowest choice, {min(choices)}")
    return max(within)


def choose_bits(
    sensitivities: Sensitivity, sizes: dict[str, int], average_bits: float, choices: Sequence[int] = (4, 8)
) -> dict[str, int]:
    """Bits per Linear minimising the summed sensitivity with ``sum(size * bits) <= average_bits *
    sum(size)``: the multiple-choice knapsack solved exactly (:func:`knapsack_bits`) where its table is
    small enough (always for Whisper, whose Linear sizes share a large divisor), else greedily
    (:func:`greedy_bits`). The exact choice is never worse by the measure than uniform precision at
    any width within the budget; the greedy one can be."""
    levels = sorted(choices)
    if levels[0] > average_bits:
        raise ValueError(f"a budget of {average_bits} bits is below the lowest choice, {levels[0]}")
    exact = knapsack_bits(sensitivities, sizes, average_bits, levels)
    return exact if exact is not None else greedy_bits(sensitivities, sizes, average_bits, levels)


def candidate_choices(
    sensitivities: Sensitivity,
    sizes: dict[str, int],
    average_bits: float,
    choices: Sequence[int],
    steps: int = 8,
) -> list[dict[str, int]]:
    """Choices from uniform precision (the budget's uniform width) to the exact optimum, each the exact
    optimum with a penalty on every Linear moved off the uniform width, halved from one candidate to
    the next: few moves, the surest gains, first. The figures are additive predictions; the
    candidates let a measurement of the whole model choose (:mod:`compression.distill.guided_verify`).
    Distinct choices only, uniform first, the unpenalised optimum last."""
    uniform = uniform_width(average_bits, choices)
    gains = [by_bits[uniform] - error for by_bits in sensitivities.values() for error in by_bits.values()]
    penalty = max([*gains, 0.0])
    found = [dict.fromkeys(sensitivities, uniform)]
    for step in range(steps + 1):
        weight = 0.0 if step == steps else penalty / 2**step
        penalised = {
            name: {bits: error + (weight if bits != uniform else 0.0) for bits, error in by_bits.items()}
            for name, by_bits in sensitivities.items()
        }
        choice = choose_bits(penalised, sizes, average_bits, choices)
        if choice not in found:
            found.append(choice)
    return found


KNAPSACK_CELLS = 50_000_000  # Linears x budget units the exact solver may tabulate


def knapsack_bits(
    sensitivities: Sensitivity, sizes: dict[str, int], average_bits: float, levels: Sequence[int]
) -> dict[str, int] | None:
    """The exact minimum of the summed sensitivity within the budget, by dynamic programming over the
    budget in units of the sizes' greatest common divisor (one bit of the smallest Linear, for
    Whisper); None when the table would exceed ``KNAPSACK_CELLS``. Ties go to the fewer bits."""
    names = list(sensitivities)
    unit = math.gcd(*(sizes[name] for name in names))
    capacity = math.floor(average_bits * sum(sizes.values()) / unit + 1e-9)
    if capacity * len(names) > KNAPSACK_CELLS:
        return None
    total = np.zeros(capacity + 1)  # the least summed error of the Linears so far within each budget
    picks = np.zeros((len(names), capacity + 1), dtype=np.int8)  # the level index each budget took
    for row, name in enumerate(names):
        best = np.full(capacity + 1, np.inf)
        for index, bits in enumerate(levels):
            cost = sizes[name] // unit * bits
            if cost > capacity:
                continue
            candidate = np.full(capacity + 1, np.inf)
            candidate[cost:] = total[: capacity + 1 - cost] + _error(sensitivities, name, bits)
            better = candidate < best
            best[better] = candidate[better]
            picks[row, better] = index
        total = best
    remaining = int(np.argmin(total))  # the first, the cheapest, among equal minima
    if not np.isfinite(total[remaining]):
        return None
    chosen: dict[str, int] = {}
    for row in range(len(names) - 1, -1, -1):
        bits = levels[picks[row, remaining]]
        chosen[names[row]] = bits
        remaining -= sizes[names[row]] // unit * bits
    return {name: chosen[name] for name in names}


def greedy_bits(
    sensitivities: Sensitivity, sizes: dict[str, int], average_bits: float, levels: Sequence[int]
) -> dict[str, int]:
    """Every Linear at the lowest width, then repeatedly the upgrade with the largest error reduction
    per extra bit-weight that still fits: fast, not optimal."""
    budget = average_bits * sum(sizes.values())
    chosen = dict.fromkeys(sensitivities, levels[0])
    used = sum(sizes[name] * levels[0] for name in chosen)
    while True:
        best: tuple[float, str, int] | None = None
        for name, bits in chosen.items():
            higher = [level for level in levels if level > bits]
            if not higher:
                continue
            step = higher[0]
            extra = sizes[name] * (step - bits)
            if used + extra > budget:
                continue
            gain = (_error(sensitivities, name, bits) - _error(sensitivities, name, step)) / extra
            if best is None or gain > best[0]:
                best = (gain, name, step)
        if best is None:
            return chosen
        _, name, step = best
        used += sizes[name] * (step - chosen[name])
        chosen[name] = step


def _error(sensitivities: Sensitivity, name: str, bits: int) -> float:
    return 0.0 if bits >= 16 else sensitivities[name][bits]


def linear_sizes(model: WhisperForConditionalGeneration) -> dict[str, int]:
    return {name: linear.weight.numel() for name, linear in decoder_linears(model)}
