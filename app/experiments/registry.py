"""The experiments a server runs: loaded from the experiment file, changed through the API.

Replicas read the same file, so they run the same experiments; a change made through the API applies
to the replica that received it (and, with ``persist``, to the file, which the others read at their
next start). Experiments are matched in the order they were defined: the first that takes a request
assigns it.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from pathlib import Path

import yaml

from app.experiments.assignment import assign
from app.experiments.definitions import Arm, Experiment, ExperimentFile
from model_store.manifest import SizeTier

logger = logging.getLogger(__name__)


class ExperimentNotFoundError(LookupError):
    """No experiment has that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"no experiment named {name!r}; known: {', '.join(known) or 'none'}")
        self.name = name


def read_experiment_file(path: Path) -> list[Experiment]:
    """Parse a JSON or YAML experiment file (an absent file holds no experiments)."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    data = yaml.safe_load(text) if path.suffix in (".yaml", ".yml") else json.loads(text)
    return ExperimentFile.model_validate(data or {}).experiments


def write_experiment_file(path: Path, experiments: list[Experiment]) -> None:
    """Replace the file atomically (write a sibling, then rename)."""
    body = ExperimentFile(experiments=experiments).model_dump(mode="json", exclude_defaults=True)
    text = (
        yaml.safe_dump(body, sort_keys=False)
        if path.suffix in (".yaml", ".yml")
        else json.dumps(body, indent=2)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(handle, "w", encoding="utf-8") as output:
        output.write(text + "\n")
    Path(temporary).replace(path)


class ExperimentRegistry:
    """Experiments by name, in definition order; safe to use from several threads."""

    def __init__(self, experiments: list[Experiment] | None = None, *, file: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._experiments: dict[str, Experiment] = {}
        self._file = file
        for experiment in experiments or []:
            if experiment.name in self._experiments:
                raise ValueError(f"experiment {experiment.name!r} is defined twice")
            self._experiments[experiment.name] = experiment

    @classmethod
    def from_file(cls, path: Path | None, *, persist: bool = False) -> ExperimentRegistry:
        experiments = read_experiment_file(path) if path is not None else []
        if experiments:
            logger.info("experiments from %s: %s", path, ", ".join(e.name for e in experiments))
        return cls(experiments, file=path if persist else None)

    def all(self) -> list[Experiment]:
        with self._lock:
            return list(self._experiments.values())

    def find(self, name: str) -> Experiment | None:
        with self._lock:
            return self._experiments.get(name)

    def get(self, name: str) -> Experiment:
        with self._lock:
            experiment = self._experiments.get(name)
            if experiment is None:
                raise ExperimentNotFoundError(name, list(self._experiments))
            return experiment

    def put(self, experiment: Experiment) -> bool:
        """Create or replace; True when it is new."""
        with self._lock:
            created = experiment.name not in self._experiments
            self._experiments[experiment.name] = experiment
            self._save()
        return created

    def delete(self, name: str) -> Experiment:
        with self._lock:
            experiment = self._experiments.pop(name, None)
            if experiment is None:
                raise ExperimentNotFoundError(name, list(self._experiments))
            self._save()
            return experiment

    def assign(
        self, key: str, *, language: str, tier: SizeTier | None, routed: bool
    ) -> tuple[Experiment, Arm] | None:
        """The first enabled experiment that takes the request, and the key's arm in it."""
        for experiment in self.all():
            if experiment.enabled and experiment.match.matches(language=language, tier=tier, routed=routed):
                return experiment, assign(experiment, key)
        return None

    def _save(self) -> None:
        if self._file is not None:
            write_experiment_file(self._file, list(self._experiments.values()))
