"""The manifest of a variant: what it is, where it came from, how good and how fast it is.

This schema is the contract between ``compression`` (which writes it) and ``app`` (which routes by it).
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from model_store import __version__
from model_store.errors import InvalidVariantIdError

SCHEMA_VERSION = 1
MANIFEST_FILENAME = "manifest.json"
VARIANT_ID_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,127}$")
# Model names the server gives a meaning of its own (routing, OpenAI's default): no variant may take them.
RESERVED_MODEL_NAMES = frozenset({"auto", "whisper-1"})
ALL_LANGUAGES = "*"

Backend = Literal["transformers", "ctranslate2"]
Device = Literal["cpu", "cuda"]
SizeTier = Literal["tiny", "base", "small", "medium", "large"]
EncoderAttention = Literal["float32", "bfloat16"]

# Upper bounds (parameters) of each tier, between the sizes of the OpenAI checkpoints:
# tiny 39M, base 74M, small 244M, medium 769M, large 1550M.
_TIER_LIMITS: tuple[tuple[int, SizeTier], ...] = (
    (55_000_000, "tiny"),
    (150_000_000, "base"),
    (500_000_000, "small"),
    (1_000_000_000, "medium"),
)


def size_tier_for(parameters: int) -> SizeTier:
    """The size tier of a model with this many parameters."""
    for limit, tier in _TIER_LIMITS:
        if parameters < limit:
            return tier
    return "large"


def validate_variant_id(variant_id: str) -> str:
    if not VARIANT_ID_PATTERN.match(variant_id):
        raise InvalidVariantIdError(
            f"invalid variant id {variant_id!r}: use 1-128 lowercase letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return variant_id


def utc_now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Recipe(_Model):
    """How the variant was made: the method and its arguments."""

    method: str = Field(description="import, ptq-int8, bnb-int8, bnb-nf4, ct2-int8, distill, qad, ...")
    args: dict[str, Any] = Field(default_factory=dict)


class WeightFile(_Model):
    """One file of the variant's weights, with its size and SHA-256."""

    path: str
    bytes: int
    sha256: str


class LanguageScore(_Model):
    """Error rates on one language of an evaluation set, with the counts that let results be pooled."""

    utterances: int
    audio_seconds: float
    cer: float = Field(description="Character error rate on normalised text.")
    wer: float = Field(description="Word error rate on normalised text.")
    cer_raw: float = Field(description="Character error rate on the raw text.")
    wer_raw: float = Field(description="Word error rate on the raw text.")
    char_edits: int
    ref_chars: int
    word_edits: int
    ref_words: int
    cer_ci95: tuple[float, float] | None = Field(None, description="Bootstrap 95% interval of the CER.")


class EvalReport(_Model):
    """Per-language accuracy of the variant on one split of one evaluation corpus."""

    corpus_id: str
    corpus_sha256: str
    split: str
    created_at: datetime = Field(default_factory=utc_now)
    languages: dict[str, LanguageScore]
    numerics: str = Field(
        "",
        description="What beside the weights decided the transcripts (model_store.opener.numerics_label): "
        "'a8' for dynamic int8 run with 8-bit activations, 'att32' for bfloat16 encoder attention run in "
        "float32, joined with '-'; empty when nothing did.",
    )


class MachineInfo(_Model):
    """The machine a latency was measured on."""

    cpu: str
    cores: int
    threads: int
    gpu: str | None = None
    torch: str
    platform: str


class Latency(_Model):
    """Measured compute cost of the variant on one machine."""

    ms_per_audio_second: float = Field(description="Median milliseconds of compute per second of audio.")
    real_time_factor: float
    peak_memory_bytes: int
    load_seconds: float
    runs: int
    device: Device
    machine: MachineInfo
    measured_at: datetime = Field(default_factory=utc_now)
    clip_seconds: float | None = Field(
        None,
        description="Median duration of the timed clips (every variant is timed on clips of about the "
        "same length, so the figures compare; None: measured before hush did so).",
    )
    language_detection_ms: float | None = Field(
        None,
        description="Median milliseconds of detecting a timed clip's language: one encoder pass over its "
        "first window (trimmed where the variant trims its context) and one decoder step. The router "
        "splits the variant's cost into an encoder part per window and a decoder part per second with "
        "it; None: measured before hush did so (the cost is then taken as proportional to duration).",
    )


class Manifest(_Model):
    """Everything hush knows about a variant, stored as ``manifest.json`` beside its weights."""

    schema_version: int = SCHEMA_VERSION
    id: str
    family: Literal["whisper"] = "whisper"
    parent: str | None = Field(description="The variant or checkpoint this one was made from.")
    recipe: Recipe
    code_version: str = __version__
    created_at: datetime = Field(default_factory=utc_now)

    backend: Backend
    device: Device = Field(description="'cpu' runs anywhere; 'cuda' needs a GPU.")
    dtype: str = Field(description="Storage/compute dtype, e.g. float32, float16, int8, nf4.")
    parameters: int
    bytes_on_disk: int
    weights: tuple[WeightFile, ...]
    size_tier: SizeTier
    multilingual: bool
    languages: tuple[str, ...] = Field(description="Languages it is meant for; ('*',) for all it knows.")
    timestamps: bool = Field(
        True,
        description="Whether it was trained to predict timestamp tokens. A variant trained on text only "
        "(hush's students, experts and fine-tunes) is always decoded without them: one segment per window.",
    )

    audio_context_seconds: float | None = Field(
        None,
        ge=1,
        le=30,
        description="Trimmed audio context: the encoder sees a window's audio plus about a second of "
        "padding (at least this many seconds) instead of always 30 s; a speed/accuracy trade measured "
        "like any other variant. None: Whisper's full 30 s. CTranslate2 variants only.",
    )

    encoder_attention: EncoderAttention = Field(
        "float32",
        description="Precision of the encoder's self-attention on a CPU: 'bfloat16' runs it in bfloat16 "
        "blocks where the CPU multiplies bfloat16 natively (runtime.bf16_attention), about twice as "
        "fast, a numerics change measured like any other. transformers CPU variants only.",
    )

    eval: EvalReport | None = None
    latency: Latency | None = None

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        return validate_variant_id(value)

    def weights_sha256(self) -> str:
        """One SHA-256 over the weight files (their hashes, in path order): names these weights."""
        listing = "\n".join(f"{file.path} {file.sha256}" for file in sorted(self.weights, key=str))
        return hashlib.sha256(listing.encode()).hexdigest()

    def covers(self, language: str) -> bool:
        """Whether this variant is meant for ``language``."""
        if ALL_LANGUAGES in self.languages:
            return self.multilingual or language == "en"
        return language in self.languages

    def cer_for(self, language: str) -> float | None:
        """The evaluated CER for ``language``, if the variant was evaluated on it."""
        if self.eval is None or language not in self.eval.languages:
            return None
        return self.eval.languages[language].cer
