"""Rendering a transcript in OpenAI's response formats: json, text, srt, vtt and verbose_json."""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any, Literal

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.language import language_name
from model_store.transcription import Segment, Task, Transcription

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]
Granularity = Literal["segment", "word"]


def timestamp(seconds: float, *, decimal_marker: str) -> str:
    """``HH:MM:SS,mmm`` (SRT) or ``HH:MM:SS.mmm`` (WebVTT)."""
    milliseconds = max(0, round(seconds * 1000))
    hours, milliseconds = divmod(milliseconds, 3_600_000)
    minutes, milliseconds = divmod(milliseconds, 60_000)
    whole_seconds, milliseconds = divmod(milliseconds, 1000)
    return f"{hours:02d}:{minutes:02d}:{whole_seconds:02d}{decimal_marker}{milliseconds:03d}"


def _cue_text(segment: Segment) -> str:
    # "-->" would end a cue's timing line early in a player
    return segment.text.strip().replace("-->", "->")


def to_srt(transcription: Transcription) -> str:
    cues = (
        f"{index}\n{timestamp(segment.start, decimal_marker=',')} --> "
        f"{timestamp(segment.end, decimal_marker=',')}\n{_cue_text(segment)}\n"
        for index, segment in enumerate(transcription.segments, start=1)
    )
    return "\n".join(cues)


def to_vtt(transcription: Transcription) -> str:
    cues = (
        f"{timestamp(segment.start, decimal_marker='.')} --> {timestamp(segment.end, decimal_marker='.')}\n"
        f"{_cue_text(segment)}\n"
        for segment in transcription.segments
    )
    return "WEBVTT\n\n" + "\n".join(cues)


def _usage(transcription: Transcription) -> dict[str, Any]:
    return {"type": "duration", "seconds": math.ceil(transcription.duration)}


def _segment(segment: Segment) -> dict[str, Any]:
    return {
        "id": segment.id,
        "seek": segment.seek,  # mel frame where the segment's decoding window starts
        "start": segment.start,
        "end": segment.end,
        "text": segment.text,
        "tokens": list(segment.tokens),
        "temperature": segment.temperature,
        "avg_logprob": segment.avg_logprob,
        "compression_ratio": segment.compression_ratio,
        "no_speech_prob": segment.no_speech_prob,
    }


def to_verbose_json(
    transcription: Transcription, task: Task, granularities: Collection[Granularity]
) -> dict[str, Any]:
    """OpenAI's verbose_json: segments unless only words were asked for, words when asked for.

    Words come back only from variants whose transcriber times them; otherwise ``words`` is empty.
    ``language`` is the output's: the spoken language's name, or ``english`` for a translation.
    """
    body: dict[str, Any] = {
        "task": task,
        "language": "english" if task == "translate" else language_name(transcription.language),
        "duration": transcription.duration,
        "text": transcription.text,
    }
    if "segment" in granularities or not granularities:
        body["segments"] = [_segment(segment) for segment in transcription.segments]
    if "word" in granularities:
        body["words"] = [
            # OpenAI's words carry no surrounding space (Whisper's tokens begin with one)
            {"word": word.word.strip(), "start": word.start, "end": word.end, "probability": word.probability}
            for segment in transcription.segments
            for word in segment.words or ()
        ]
    body["usage"] = _usage(transcription)
    return body


def render(
    transcription: Transcription,
    response_format: ResponseFormat,
    *,
    task: Task = "transcribe",
    granularities: Collection[Granularity] = (),
) -> Response:
    """The HTTP response for ``transcription`` in ``response_format``."""
    if response_format == "json":
        return JSONResponse({"text": transcription.text, "usage": _usage(transcription)})
    if response_format == "verbose_json":
        return JSONResponse(to_verbose_json(transcription, task, granularities))
    if response_format == "text":
        return PlainTextResponse(transcription.text + "\n")
    if response_format == "srt":
        return PlainTextResponse(to_srt(transcription), media_type="application/x-subrip; charset=utf-8")
    return PlainTextResponse(to_vtt(transcription), media_type="text/vtt")
