"""``GET /v1/models`` and ``/v1/models/{id}``: OpenAI's listing, extended with each variant's manifest."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.deps import LatencyDep, PoolDep, ServiceDep
from app.pool import VariantPool
from app.security import require_api_key
from app.service import TranscriptionService
from model_store.manifest import EncoderAttention, Manifest, SizeTier
from model_store.opener import numerics_label, runnable_here

router = APIRouter(prefix="/v1/models", tags=["models"], dependencies=[Depends(require_api_key)])


class ModelPublic(BaseModel):
    """A variant as OpenAI's model object, with hush's figures."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the variant was published.")
    owned_by: str = "hush"
    parent: str | None
    recipe: str
    backend: str
    device: str
    dtype: str
    parameters: int
    bytes: int = Field(description="Bytes on disk.")
    tier: SizeTier
    multilingual: bool
    languages: list[str] = Field(description="Languages it is meant for; ['*'] for all it knows.")
    audio_context_seconds: float | None = Field(description="Trimmed audio context; null: Whisper's 30 s.")
    encoder_attention: EncoderAttention = Field(description="Precision of the encoder's self-attention.")
    numerics: str = Field(
        description="What beside the weights decides its transcripts on this server, as hush eval labels "
        "it: 'a8' (8-bit int8 activations), 'f32' (int8 weights run in float: no int8 kernel in this "
        "PyTorch), 'att32' (bfloat16 attention run in float32), '' (nothing)."
    )
    cer: dict[str, float] = Field(description="Evaluated character error rate per language.")
    ms_per_audio_second: float | None = Field(description="Measured compute per audio second (manifest).")
    observed_ms_per_audio_second: float | None = Field(
        description="The server's moving estimate, queueing included."
    )
    loaded: bool
    runnable: bool = Field(description="Whether it can run on this server (a CUDA variant needs a GPU).")


class ModelAliasPublic(BaseModel):
    """A model name that is not a variant: `auto` (the router chooses) and `whisper-1` (the default)."""

    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "hush"
    alias_of: str = Field(description="'auto' (routed per request) or the variant it pins.")


class ModelListPublic(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelPublic | ModelAliasPublic] = Field(description="The variants, then the aliases.")


def model_aliases(service: TranscriptionService) -> dict[str, ModelAliasPublic]:
    """The names a request's `model` accepts beside variant ids, as the service reads them."""
    return {name: ModelAliasPublic(id=name, alias_of=meaning) for name, meaning in service.aliases().items()}


def model_public(manifest: Manifest, pool: VariantPool, observed: dict[str, float]) -> ModelPublic:
    scores = manifest.eval.languages if manifest.eval is not None else {}
    return ModelPublic(
        id=manifest.id,
        created=int(manifest.created_at.timestamp()),
        parent=manifest.parent,
        recipe=manifest.recipe.method,
        backend=manifest.backend,
        device=manifest.device,
        dtype=manifest.dtype,
        parameters=manifest.parameters,
        bytes=manifest.bytes_on_disk,
        tier=manifest.size_tier,
        multilingual=manifest.multilingual,
        languages=list(manifest.languages),
        audio_context_seconds=manifest.audio_context_seconds,
        encoder_attention=manifest.encoder_attention,
        numerics=numerics_label(manifest, pool.runtime),
        cer={language: score.cer for language, score in scores.items()},
        ms_per_audio_second=manifest.latency.ms_per_audio_second if manifest.latency else None,
        observed_ms_per_audio_second=observed.get(manifest.id),
        loaded=pool.is_loaded(manifest.id),
        runnable=runnable_here(manifest, pool.runtime),
    )


@router.get("", summary="List the variants and the aliases")
def list_models(pool: PoolDep, latency: LatencyDep, service: ServiceDep) -> ModelListPublic:
    observed = latency.estimates()
    manifests = sorted(pool.manifests(), key=lambda manifest: manifest.id)
    variants: list[ModelPublic | ModelAliasPublic] = [
        model_public(manifest, pool, observed) for manifest in manifests
    ]
    return ModelListPublic(data=[*variants, *model_aliases(service).values()])


@router.get("/{model_id}", summary="One variant, or what an alias stands for")
def retrieve_model(
    model_id: str, pool: PoolDep, latency: LatencyDep, service: ServiceDep
) -> ModelPublic | ModelAliasPublic:
    alias = model_aliases(service).get(model_id)
    if alias is not None:
        return alias
    return model_public(pool.manifest(model_id), pool, latency.estimates())
