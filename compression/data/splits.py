"""Fixed train / dev / test splits: deterministic (hash-ordered, no random state), capped per language.

Per language:

* The evaluation pool is the language's recorded speech when it has any, else its synthetic speech;
  synthetic speech of a recorded language only ever goes to train.
* Each candidate belongs to a *unit* that the split keeps together where it can: a recording session
  (a fillets level), a speaker, a TTS voice, or, where nothing better is known, the sentence itself.
* Test is filled first, then dev, each up to its cap: units in hash order, and within a unit its
  candidates in hash order. When at least two units are left to choose from, a unit that gives
  utterances to test (or dev) is held out whole: the rest of it goes nowhere, so that no session or
  voice of test is heard in train; and the last unit is left to the splits after. With a single unit
  left (one voice), the split is by sentence.
* A language with fewer distinct sentences than the two caps ask for shares them in proportion to
  the caps, so that dev is not starved.
* Everything else goes to train, except candidates whose sentence (see :func:`sentence_key`) is
  already in another split: the same sentence is never in two splits.

A candidate's split depends only on the candidates of its own language, so a build of a few languages
splits them exactly as the full build does.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence

from compression.data.items import Candidate
from compression.data.text import sentence_key

SPLITS = ("train", "dev", "test")
_SALT = "hush-corpus-splits-v1"


def _rank(*parts: str) -> bytes:
    return hashlib.sha256("\x1f".join((_SALT, *parts)).encode()).digest()


def assign_splits(candidates: Sequence[Candidate], *, max_dev: int, max_test: int) -> dict[str, str]:
    """``id -> split`` for the candidates that are kept (the others are left out)."""
    if max_dev < 0 or max_test < 0:
        raise ValueError(f"split caps must not be negative, got dev {max_dev} and test {max_test}")
    by_language: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        by_language[candidate.language].append(candidate)
    assigned: dict[str, str] = {}
    for language, items in sorted(by_language.items()):
        assigned.update(_assign_language(language, items, {"test": max_test, "dev": max_dev}))
    return assigned


def _assign_language(language: str, items: Sequence[Candidate], caps: dict[str, int]) -> dict[str, str]:
    recorded = [item for item in items if not item.synthetic]
    pool = recorded or list(items)
    members: dict[str, list[Candidate]] = defaultdict(list)
    for item in pool:
        members[item.unit].append(item)
    for unit_items in members.values():
        unit_items.sort(key=lambda item: _rank(language, "item", sentence_key(item.text), item.id))
    units = sorted(members, key=lambda unit: _rank(language, "unit", unit))

    caps = _shared_caps(len({sentence_key(item.text) for item in pool}), caps)
    assigned: dict[str, str] = {}
    owner: dict[str, str] = {}  # sentence key -> the split that has it
    held_out: set[str] = set()
    for split in ("test", "dev"):
        free = [unit for unit in units if unit not in held_out]
        hold = len(free) >= 2
        count = 0
        for position, unit in enumerate(free):
            if count >= caps[split] or (hold and count and position == len(free) - 1):
                break  # full, or holding out units and this is the last one: leave it to the others
            took = False
            for item in members[unit]:
                if count >= caps[split]:
                    break
                key = sentence_key(item.text)
                if item.id in assigned or owner.get(key, split) != split:
                    continue
                assigned[item.id] = owner[key] = split
                count += 1
                took = True
            if took and hold:
                held_out.add(unit)

    for item in sorted(items, key=lambda item: item.id):
        key = sentence_key(item.text)
        if item.id in assigned or item.unit in held_out or owner.get(key, "train") != "train":
            continue
        assigned[item.id] = owner[key] = "train"
    return assigned


def _shared_caps(sentences: int, caps: dict[str, int]) -> dict[str, int]:
    """The caps, shrunk in proportion when the pool has fewer sentences than test and dev ask for.

    A language with 77 sentences and caps of 60 (test) and 25 (dev) gets 54 and 22, not 60 and 17.
    """
    wanted = sum(caps.values())
    if sentences >= wanted or wanted == 0:
        return caps
    return {split: sentences * cap // wanted for split, cap in caps.items()}


def limit_per_language(candidates: Sequence[Candidate], splits: dict[str, str], limit: int) -> dict[str, str]:
    """At most ``limit`` kept candidates per language, taken in turn from dev, test and train.

    The slice keeps the full build's split of every candidate it keeps; within a split it takes
    candidates in hash order.
    """
    if limit < 0:
        raise ValueError(f"the limit must not be negative, got {limit}")
    queues: dict[tuple[str, str], list[str]] = defaultdict(list)
    for candidate in candidates:
        split = splits.get(candidate.id)
        if split is not None:
            queues[candidate.language, split].append(candidate.id)
    kept: dict[str, str] = {}
    for language in sorted({language for language, _ in queues}):
        ordered = {
            split: sorted(queues[language, split], key=lambda id_: _rank(language, "limit", id_))
            for split in ("dev", "test", "train")
        }
        taken = 0
        position = 0
        while taken < limit and any(position < len(ids) for ids in ordered.values()):
            for split, ids in ordered.items():
                if taken < limit and position < len(ids):
                    kept[ids[position]] = split
                    taken += 1
            position += 1
    return kept
