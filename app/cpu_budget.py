"""How many inference threads will share how many cores, said once at start-up."""

from __future__ import annotations

import logging
import os

logger = logging.getLogger(__name__)


def log_cpu_budget(threads: int, cores: int | None = None, load: float | None = None) -> None:
    """Say how many inference threads will share how many cores, and warn where the machine is already
    busy: torch's OpenMP threads spin-wait for each other, so more runnable threads than cores can make
    a transcription several times slower (see HUSH_RUNTIME__THREADS in the README)."""
    cores = cores if cores is not None else os.cpu_count() or 1
    if load is None:
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    in_use = threads or cores  # 0: torch's default, one per core
    logger.info("inference: %d torch threads on %d cores (load average %.1f)", in_use, cores, load)
    if in_use > 1 and load >= cores:
        logger.warning(
            "the machine is already busy (load %.1f on %d cores): %d spin-waiting torch threads may run "
            "several times slower than one; consider HUSH_RUNTIME__THREADS=1",
            load,
            cores,
            in_use,
        )
