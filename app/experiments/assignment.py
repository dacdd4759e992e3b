"""Sticky, stateless assignment: the same key always lands on the same arm, on every replica.

``unit(experiment, key)`` maps SHA-256(experiment name, NUL, key) to a number uniform in [0, 1); the
arms split [0, 1) into intervals as wide as their share of the total weight, in their listed order.
No state is shared: two processes with the same definition agree on every key, and a key's arm
changes only when the experiment's arms or weights change.
"""

from __future__ import annotations

import hashlib

from app.experiments.definitions import Arm, Experiment

_UNIT_BITS = 64  # the first 8 bytes of the digest: 2**-64 resolution


def unit(experiment_name: str, key: str) -> float:
    """A number in [0, 1), a deterministic function of the experiment's name and the key."""
    digest = hashlib.sha256(f"{experiment_name}\0{key}".encode()).digest()
    return int.from_bytes(digest[: _UNIT_BITS // 8], "big") / 2**_UNIT_BITS


def assign(experiment: Experiment, key: str) -> Arm:
    """The arm ``key`` belongs to (arms of weight 0 receive nobody)."""
    total = sum(arm.weight for arm in experiment.arms)
    point = unit(experiment.name, key) * total
    edge = 0.0
    for arm in experiment.arms:
        edge += arm.weight
        if point < edge and arm.weight > 0:
            return arm
    return next(arm for arm in reversed(experiment.arms) if arm.weight > 0)  # rounding at the top edge
