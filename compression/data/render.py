"""Making one utterance's audio file: decode or synthesize, resample to 16 kHz, write FLAC.

Runs in worker processes: everything it takes and returns is picklable.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from compression.data.audio_io import to_pcm16, write_flac
from compression.data.items import AudioSpec, FileAudio
from compression.data.tts import synthesize
from model_store.audio import decode_audio
from model_store.errors import HushError


@dataclass(frozen=True)
class RenderJob:
    id: str
    audio: AudioSpec
    target: Path


@dataclass(frozen=True)
class RenderResult:
    id: str
    samples: int  # 0 when it failed
    error: str | None = None


def render(job: RenderJob) -> RenderResult:
    """Write ``job.target``; a failure is returned (with its reason), not raised."""
    try:
        if isinstance(job.audio, FileAudio):
            audio = decode_audio(job.audio.path, container_format=job.audio.container_format)
        else:
            audio = decode_audio(synthesize(job.audio.voice, job.audio.text), container_format="wav")
        samples = to_pcm16(audio)
        write_flac(job.target, samples)
    except (HushError, OSError) as error:
        return RenderResult(job.id, 0, f"{type(error).__name__}: {error}")
    return RenderResult(job.id, int(samples.size))
