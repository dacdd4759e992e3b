"""All of hush's settings, read once from the environment (``HUSH_...``, nested with ``__``).

Only entry points build a :class:`HushSettings`; everything else receives the parts it needs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class StoreSettings(BaseModel):
    """Where variants live."""

    root: Path = Field(Path(".hush/store"), description="Directory holding one sub-directory per variant.")
    verify_on_open: bool = Field(
        True, description="Check every weight file against the SHA-256 in its manifest before loading."
    )


class BatchingSettings(BaseModel):
    """Dynamic batching: concurrent requests' windows on one opened variant share engine calls.

    Each request still runs on its own worker thread; its encoder and decoder calls meet those of the
    other requests in flight on the same variant, and compatible ones (the decoder: same prompt length,
    temperature, timestamps mode and token budget) run as one batched forward pass. See
    :mod:`model_store.batching`.
    """

    mode: Literal["auto", "on", "off"] = Field(
        "auto",
        description="'auto' batches on CUDA and not on the CPU (where a batch costs about as much as its "
        "calls one by one: the encoder is compute-bound); 'on' / 'off' force it.",
    )
    max_batch: int = Field(16, ge=1, description="Most calls merged into one engine call.")
    max_wait_ms: float = Field(
        5.0,
        ge=0,
        le=1000,
        description="Longest a call waits for company; it goes at once when every request in flight on "
        "the variant is already waiting, so a lone request never waits.",
    )
    timeout_seconds: float = Field(
        600.0, gt=0, description="Longest a caller waits for its batched call's result before giving up."
    )
    decoder: Literal["continuous", "static"] = Field(
        "continuous",
        description="How the decoder batches: 'continuous' keeps one running batch that windows join and "
        "leave between steps (backends that can step rows: transformers; CTranslate2 stays static); "
        "'static' merges compatible window decodes into one call that runs until its longest row ends.",
    )

    def active(self, device: str) -> bool:
        """Whether calls on ``device`` (``cpu`` or ``cuda``) are batched."""
        if self.max_batch < 2 or self.mode == "off":
            return False
        return self.mode == "on" or device == "cuda"


# where a model runs (runtime.device) or trains (distill.device): auto picks CUDA when a GPU is there
DeviceChoice = Literal["auto", "cpu", "cuda"]


class RuntimeSettings(BaseModel):
    """How models run on this machine."""

    device: DeviceChoice = Field("auto", description="'auto' picks CUDA when a GPU is present, else the CPU.")
    threads: int = Field(0, ge=0, description="Torch intra-op threads; 0 keeps torch's default.")
    cuda_dtype: Literal["float16", "bfloat16", "float32"] = Field(
        "float16", description="Compute dtype on CUDA for variants stored in float32."
    )
    batching: BatchingSettings = Field(default_factory=BatchingSettings)
    int8_full_range: bool | None = Field(
        None,
        description="Quantize activations to 8 bits rather than 7 in PyTorch dynamic int8 Linears (the "
        "ptq-int8 variants): half the rounding error, same speed. Unset: on where the CPU has VNNI "
        "(AVX512-VNNI, AVX-VNNI, AMX), off elsewhere, where 8-bit products can saturate.",
    )

    bf16_attention: bool | None = Field(
        None,
        description="Run the encoder's self-attention in bfloat16 for variants published with "
        "encoder_attention 'bfloat16' (hush compress quantize ... --encoder-attention bfloat16). Unset: "
        "on where the CPU multiplies bfloat16 natively (AVX512-BF16, AMX), off elsewhere, where it would "
        "be slower than float32 (the variant then computes float32 attention).",
    )

    def resolved_bf16_attention(self) -> bool:
        if self.bf16_attention is not None:
            return self.bf16_attention
        from model_store.backends.cpu_features import native_bf16

        return native_bf16()

    def resolved_int8_full_range(self) -> bool:
        if self.int8_full_range is not None:
            return self.int8_full_range
        from model_store.backends.cpu_features import full_range_int8_is_exact

        return full_range_int8_is_exact()

    def resolved_device(self) -> Literal["cpu", "cuda"]:
        if self.device != "auto":
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"


class EvalSettings(BaseModel):
    """How variants are measured (``hush eval``)."""

    corpus: Path | None = Field(
        None, description="Corpus directory (with corpus.json); default: the one built under <home>/corpus."
    )
    split: Literal["train", "dev", "test"] = Field("dev", description="Split evaluated by default.")
    bootstrap_resamples: int = Field(1000, ge=100, description="Resamples for confidence intervals.")
    latency_clips: int = Field(8, ge=1, description="Clips timed for the latency figure.")
    latency_clip_seconds: float = Field(
        10.0,
        gt=0,
        le=29,
        description="Length of each timed clip: dev utterances of one language joined, the same for every "
        "variant so that their ms per audio-second compare.",
    )
    latency_runs: int = Field(3, ge=1, description="Timed runs after one warm-up; the median is kept.")
    bootstrap_per_language: int | None = Field(
        8,
        ge=1,
        description="`hush store bootstrap` evaluates the first N dev utterances per language (None: all), "
        "so a first start takes minutes, not an hour; `hush eval` replaces it with the full split.",
    )


class DistillSettings(BaseModel):
    """Distillation data choices (``hush compress distill``)."""

    default_wer_threshold: float = Field(
        0.1,
        ge=0,
        description="Drop a teacher pseudo-label whose normalised WER against the gold text is above this.",
    )
    wer_thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="Per-language thresholds overriding the default, e.g. HUSH_DISTILL__WER_THRESHOLDS='{\"cs\": 0.3}'.",
    )
    device: DeviceChoice = Field(
        "auto",
        description="Where distillation trains: auto (this process's GPU when CUDA is there, else the CPU), cpu, or cuda.",
    )


class HushSettings(BaseSettings):
    """hush's settings. Each field can be set as ``HUSH_<SECTION>__<FIELD>``, e.g. ``HUSH_STORE__ROOT``."""

    model_config = SettingsConfigDict(
        env_prefix="HUSH_",
        env_nested_delimiter="__",
        env_file=".env",
        extra="ignore",
        env_ignore_empty=True,  # HUSH_X= (an empty line in an env file) means: the default
    )

    home: Path = Field(Path(".hush"), description="Working directory for caches, corpora and runs.")
    store: StoreSettings = Field(default_factory=StoreSettings)
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    eval: EvalSettings = Field(default_factory=EvalSettings)
    distill: DistillSettings = Field(default_factory=DistillSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("home")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @property
    def cache_dir(self) -> Path:
        """Downloads and intermediate files that can be rebuilt."""
        return self.home / "cache"

    @property
    def corpus_root(self) -> Path:
        """Where ``hush data build`` writes corpora."""
        return self.home / "corpus"

    @property
    def runs_dir(self) -> Path:
        """Training runs (checkpoints, logs, reports), one directory per variant id."""
        return self.home / "runs"

    @property
    def eval_dir(self) -> Path:
        """Transcripts of evaluations, kept so that they resume and can be compared."""
        return self.home / "eval"


def describe_validation_error(
    error: ValidationError, name_of: Callable[[tuple[int | str, ...]], str], separator: str = "="
) -> str:
    """A validation error as one line, each problem named by ``name_of(location)`` and followed by the
    value given (``NAME=VALUE: message; ...``)."""
    return "; ".join(
        f"{name_of(tuple(problem['loc']))}{separator}{problem.get('input')!r}: {problem['msg']}"
        for problem in error.errors()
    )


def describe_invalid_settings(error: ValidationError, prefix: str = "HUSH_") -> str:
    """A settings object's validation error as one line, each problem named by the environment
    variable that sets it (``HUSH_RUNTIME__THREADS='abc': Input should be a valid integer...``)."""
    return describe_validation_error(error, lambda loc: prefix + "__".join(map(str, loc)).upper())
