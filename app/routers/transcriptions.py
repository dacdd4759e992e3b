"""``POST /v1/audio/transcriptions`` and ``/v1/audio/translations``: OpenAI's multipart contract."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Depends, File, Form, UploadFile
from fastapi.responses import Response

from app.deps import ServiceDep, SettingsDep, StickyKeyDep, TraceDep
from app.errors import ApiError
from app.formats import Granularity, ResponseFormat, render
from app.language import normalise_language
from app.security import require_api_key
from app.service import RequestTrace, TranscriptionRequest, TranscriptionService
from app.upload_limit import check_file_size
from model_store.manifest import SizeTier
from model_store.transcription import Task

router = APIRouter(prefix="/v1/audio", tags=["audio"], dependencies=[Depends(require_api_key)])


@dataclass(frozen=True)
class AudioForm:
    """The form fields of a transcription or translation request."""

    file: UploadFile
    model: str | None
    language: str | None
    prompt: str | None
    response_format: ResponseFormat
    temperature: float
    granularities: tuple[Granularity, ...]
    granularities_field: str  # the name the client sent them under, with or without []
    tier: SizeTier | None


async def audio_form(
    file: Annotated[UploadFile, File(description="The audio: wav, flac, mp3, ogg, m4a, webm, ...")],
    model: Annotated[
        str | None, Form(description="`auto` (routed), `whisper-1` (the server's default) or a variant id.")
    ] = None,
    language: Annotated[
        str | None, Form(description="ISO 639-1 code of the audio; detected if absent.")
    ] = None,
    prompt: Annotated[str | None, Form(description="Text that conditions the first window.")] = None,
    response_format: Annotated[ResponseFormat, Form()] = "json",
    temperature: Annotated[
        float,
        Form(
            ge=0,
            le=1,
            allow_inf_nan=False,
            description="0: Whisper's fallback schedule; above 0: the schedule from there.",
        ),
    ] = 0.0,
    granularities_listed: Annotated[
        list[Granularity] | None,
        Form(alias="timestamp_granularities[]", description="segment and/or word (verbose_json only)."),
    ] = None,
    granularities: Annotated[
        list[Granularity] | None, Form(alias="timestamp_granularities", description="Same, without brackets.")
    ] = None,
    tier: Annotated[
        SizeTier | None, Form(description="Only variants of this size tier (hush extension).")
    ] = None,
) -> AudioForm:
    asked = tuple(dict.fromkeys([*(granularities_listed or ()), *(granularities or ())]))
    return AudioForm(
        file=file,
        model=model or None,
        language=language or None,
        prompt=prompt or None,
        response_format=response_format,
        temperature=temperature,
        granularities=asked,
        granularities_field="timestamp_granularities[]"
        if granularities_listed
        else "timestamp_granularities",
        tier=tier,
    )


AudioFormDep = Annotated[AudioForm, Depends(audio_form)]


async def _serve(
    form: AudioForm,
    task: Task,
    service: TranscriptionService,
    trace: RequestTrace,
    sticky_key: str | None,
    max_upload_bytes: int,
) -> Response:
    check_file_size(form.file.size, max_upload_bytes)
    if form.granularities and form.response_format != "verbose_json":
        raise ApiError(
            400,
            f"timestamp_granularities needs response_format=verbose_json, not {form.response_format}",
            code="invalid_parameter",
            param=form.granularities_field,
        )
    request = TranscriptionRequest(
        audio=await form.file.read(),
        model=form.model,
        language=normalise_language(form.language) if form.language else None,
        task=task,
        tier=form.tier,
        prompt=form.prompt,
        temperature=form.temperature,
        word_timestamps="word" in form.granularities,
        sticky_key=sticky_key,
    )
    served = await service.transcribe(request, trace)
    return render(served.transcription, form.response_format, task=task, granularities=form.granularities)


@router.post("/transcriptions", summary="Transcribe audio in its language")
async def create_transcription(
    form: AudioFormDep, service: ServiceDep, trace: TraceDep, sticky_key: StickyKeyDep, settings: SettingsDep
) -> Response:
    return await _serve(form, "transcribe", service, trace, sticky_key, settings.server.max_upload_bytes)


@router.post("/translations", summary="Translate audio into English text")
async def create_translation(
    form: AudioFormDep, service: ServiceDep, trace: TraceDep, sticky_key: StickyKeyDep, settings: SettingsDep
) -> Response:
    return await _serve(form, "translate", service, trace, sticky_key, settings.server.max_upload_bytes)
