"""The server's settings: hush's settings plus a ``server`` section (``HUSH_SERVER__...``).

One object, read once by the entry point (``hush serve`` or a test) and handed to :func:`create_app`.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field, SecretStr, field_validator

from model_store.manifest import VARIANT_ID_PATTERN
from model_store.settings import HushSettings
from model_store.transcription import DEFAULT_TEMPERATURES

MIB = 1024 * 1024
GIB = 1024 * MIB
AUTO_MODEL = "auto"  # the model name that asks the router to choose
WHISPER_1 = "whisper-1"  # OpenAI's model name: an alias of the server's default model


class ServerOptions(BaseModel):
    """How the HTTP server listens, what it accepts, and how it schedules inference."""

    host: str = Field(
        "127.0.0.1", min_length=1, description="Interface to listen on; 0.0.0.0 listens on every one."
    )
    port: int = Field(8000, ge=1, le=65535, description="TCP port to listen on.")
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Bearer keys accepted on /v1 (a JSON list); empty leaves the API open.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (a JSON list); empty disables CORS."
    )
    max_upload_bytes: int = Field(
        25 * MIB, gt=0, description="Largest audio file accepted on /v1/audio (413 above it)."
    )
    max_audio_seconds: float = Field(
        3600.0, gt=0, description="Longest audio accepted; decoding stops and the request gets a 400 past it."
    )
    workers: int = Field(
        1,
        ge=1,
        description="Inference threads per device: requests transcribed at the same time. With batching "
        "active (`runtime.batching`), at least `runtime.batching.max_batch` run, so a full batch can meet.",
    )
    background_workers: int = Field(
        1,
        ge=0,
        description="Inference threads for background work (shadow scoring, mirror arms), beside `workers`; "
        "background jobs start only when one is idle and no client waits, else they are shed. 0: none.",
    )
    queue_size: int = Field(
        16, ge=0, description="Requests allowed to wait per device beyond those running; more get a 429."
    )
    request_timeout_seconds: float = Field(
        600.0, gt=0, description="Longest a request waits for its transcription (queue included); 504 after."
    )
    memory_budget_bytes: int = Field(
        4 * GIB,
        gt=0,
        description="Estimated memory for loaded variants; past it, the least recently used idle ones go.",
    )
    default_model: str = Field(
        AUTO_MODEL,
        description="What `whisper-1` (or no `model`) means: `auto` routes, a variant id pins that variant.",
    )
    default_variants: list[str] = Field(
        default_factory=list,
        description="Variants loaded at start; /readyz is 503 until they are. Empty: the variant the router "
        "picks for English.",
    )
    language_detection_variant: str | None = Field(
        None,
        description="Variant that detects the language when none is given; unset: the smallest multilingual.",
    )
    quality_floor_cer: float = Field(
        0.5, ge=0, le=1, description="Highest CER (for the request's language) a routed variant may have."
    )
    latency_ewma_alpha: float = Field(
        0.2,
        gt=0,
        le=1,
        description="Weight of each new observation in a variant's moving latency (queueing included).",
    )
    temperatures: tuple[float, ...] = Field(
        DEFAULT_TEMPERATURES,
        min_length=1,
        description="Whisper's fallback schedule; a request's `temperature` > 0 starts it there.",
    )
    store_poll_seconds: float = Field(
        2.0, ge=0, description="How often the store is checked for published or removed variants; 0 disables."
    )

    @field_validator("default_model")
    @classmethod
    def _check_default_model(cls, value: str) -> str:
        if value != AUTO_MODEL and (value == WHISPER_1 or not VARIANT_ID_PATTERN.match(value)):
            raise ValueError(f"default_model must be {AUTO_MODEL!r} or a variant id, got {value!r}")
        return value

    @field_validator("temperatures")
    @classmethod
    def _check_temperatures(cls, value: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 <= t <= 1 for t in value) or list(value) != sorted(value):
            raise ValueError(f"temperatures must rise from 0 to at most 1, got {value}")
        return value


class ExperimentOptions(BaseModel):
    """A/B experiments: where they are defined and how a client is recognised (``HUSH_EXPERIMENTS__...``)."""

    file: Path | None = Field(
        None,
        description="JSON or YAML file of experiment definitions read at start; unset: none until PUT.",
    )
    persist: bool = Field(
        False, description="Write PUT/DELETE changes back to `file` (leave off on a read-only volume)."
    )
    client_id_header: str = Field(
        "X-Hush-Client-Id",
        description="Header naming the client for sticky assignment; without it the API key is the key, "
        "and without both the request id (not sticky).",
    )
    latency_window: int = Field(
        10_000, ge=10, description="Latest requests per arm kept for latency percentiles and CER intervals."
    )
    bootstrap_resamples: int = Field(1000, ge=100, description="Resamples of the results' intervals.")
    min_scored_requests: int = Field(
        20, ge=1, description="Scored requests an arm needs (per source) before a verdict is given."
    )


class FeedbackOptions(BaseModel):
    """What the server remembers of served requests so that `POST /v1/feedback` can score them."""

    ttl_seconds: float = Field(
        3600.0, gt=0, description="How long a request can receive feedback; later it gets a 410."
    )
    max_requests: int = Field(
        10_000, ge=1, description="Most requests remembered; the oldest are forgotten first (then 410)."
    )


class ShadowOptions(BaseModel):
    """Background re-transcription by the most accurate variant, to estimate live CER (shadow scoring)."""

    sample_rate: float = Field(
        0.0, ge=0, le=1, description="Fraction of served requests re-transcribed by the reference variant."
    )
    reference_variant: str | None = Field(
        None, description="Reference for every language; unset: the lowest-CER variant for the language."
    )
    min_eval_utterances: int = Field(
        10,
        ge=1,
        description="Utterances a variant's evaluation needs for the language to be chosen as reference "
        "(a thinner one only when no variant has more).",
    )
    seed: int | None = Field(None, description="Seed of the sampling (tests); unset: random.")


class ServerSettings(HushSettings):
    """hush's settings with the server's section (``HUSH_SERVER__PORT=8123``, ...)."""

    server: ServerOptions = Field(default_factory=ServerOptions)
    experiments: ExperimentOptions = Field(default_factory=ExperimentOptions)
    feedback: FeedbackOptions = Field(default_factory=FeedbackOptions)
    shadow: ShadowOptions = Field(default_factory=ShadowOptions)

    def inference_workers(self, device: str) -> int:
        """Inference threads on ``device``: ``server.workers``, raised to ``max_batch`` when batching is
        active there (each request runs on its own thread, so fewer threads could never fill a batch)."""
        batching = self.runtime.batching
        if batching.active(device):
            return max(self.server.workers, batching.max_batch)
        return self.server.workers
