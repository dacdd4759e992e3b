"""What an experiment is: which requests it takes, its weighted arms and an optional mirror arm.

An experiment file (``HUSH_EXPERIMENTS__FILE``, JSON or YAML) holds ``{"experiments": [...]}`` of::

    {"name": "base-int8-vs-ct2",
     "match": {"languages": ["en", "fr"], "tiers": ["base"], "models": ["auto"]},
     "arms": [{"name": "control", "variant": "whisper-base-ptq-int8", "weight": 1},
              {"name": "ct2", "variant": "whisper-base-ct2-int8", "weight": 1}],
     "mirror": {"name": "candidate", "variant": "whisper-small-distilled"}}

The first arm is the control the others are judged against.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from model_store.manifest import VARIANT_ID_PATTERN, SizeTier

ModelMatch = Literal["auto"]  # only routed requests join experiments: a pinned model is the client's choice
NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"  # URL- and label-safe


class MatchRule(BaseModel):
    """Which requests an experiment takes; an empty list matches everything."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    languages: tuple[str, ...] = Field((), description="ISO 639-1 codes of the (given or detected) language.")
    tiers: tuple[SizeTier, ...] = Field((), description="Requests asking for one of these tiers.")
    models: tuple[ModelMatch, ...] = Field(("auto",), description="Requested models: `auto` (routed).")

    def matches(self, *, language: str, tier: SizeTier | None, routed: bool) -> bool:
        if not routed:
            return False
        if self.languages and language not in self.languages:
            return False
        return not self.tiers or tier in self.tiers


class Arm(BaseModel):
    """One branch of an experiment: the variant its share of traffic goes to."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    variant: str
    weight: float = Field(1.0, ge=0, description="Relative share of the matching traffic.")

    @field_validator("variant")
    @classmethod
    def _check_variant(cls, value: str) -> str:
        if not VARIANT_ID_PATTERN.match(value):
            raise ValueError(f"not a variant id: {value!r}")
        return value


class Experiment(BaseModel):
    """An A/B(/n) experiment; the name is its identity in URLs, headers and metric labels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    enabled: bool = True
    match: MatchRule = Field(default_factory=MatchRule)
    arms: tuple[Arm, ...] = Field(min_length=1, description="The first arm is the control.")
    mirror: Arm | None = Field(
        None, description="Transcribes matching requests in the background; its output is never returned."
    )

    @model_validator(mode="after")
    def _check_arms(self) -> Experiment:
        names = [arm.name for arm in self.all_arms]
        if len(set(names)) != len(names):
            raise ValueError(f"arm names must be distinct, got {names}")
        if sum(arm.weight for arm in self.arms) <= 0:
            raise ValueError("at least one arm needs a positive weight")
        return self

    @property
    def all_arms(self) -> tuple[Arm, ...]:
        """The served arms, then the mirror arm."""
        return (*self.arms, self.mirror) if self.mirror is not None else self.arms

    @property
    def control(self) -> Arm:
        return self.arms[0]


class ExperimentBody(BaseModel):
    """An experiment as sent to ``PUT /v1/experiments/{name}`` (the name comes from the URL)."""

    model_config = ConfigDict(extra="forbid")

    description: str = ""
    enabled: bool = True
    match: MatchRule = Field(default_factory=MatchRule)
    arms: tuple[Arm, ...] = Field(min_length=1)
    mirror: Arm | None = None

    def named(self, name: str) -> Experiment:
        return Experiment(name=name, **self.model_dump())


class ExperimentFile(BaseModel):
    """The experiment file's shape."""

    model_config = ConfigDict(extra="forbid")

    experiments: list[Experiment] = Field(default_factory=list)
