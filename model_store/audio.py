"""Decoding of what clients send (any format ffmpeg knows) to Whisper's 16 kHz mono float32 audio."""

from __future__ import annotations

import io
import logging
import math
import os
import wave
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

import av
import numpy as np
import numpy.typing as npt

from model_store.errors import AudioDecodeError, AudioTooLongError, EmptyAudioError, InvalidSamplesError
from model_store.transcription import SAMPLE_RATE, Audio

logger = logging.getLogger(__name__)

SUPPORTED_FORMATS = (
    "wav, flac, mp3, ogg (vorbis, opus), m4a/mp4 (aac), webm/mkv (opus), and the rest ffmpeg knows"
)

# Nested opens (an HLS playlist's segments, a concat list's files, an SDP's RTP sockets) would let
# an upload read the server's files or network: "none" names no protocol, so every one is refused.
# The input itself is always handed to ffmpeg as a file object, which needs no protocol.
_CONTAINER_OPTIONS = {"protocol_whitelist": "none"}

# For float output, libswresample's downmix does not normalise: a stereo sine at full scale in both
# channels would come out at 1.41 (each channel times 0.707). Capping the matrix at 1 averages the
# channels, as Whisper's own loaders (ffmpeg, or PyAV to s16) do.
_RESAMPLER_OPTIONS = {"rematrix_maxval": "1.0"}


def decode_audio(
    source: bytes | Path | BinaryIO,
    *,
    container_format: str | None = None,
    max_seconds: float | None = None,
) -> Audio:
    """Decode the main audio stream of ``source`` to 16 kHz mono float32 samples in [-1, 1].

    ``container_format`` forces a demuxer (e.g. ``"g722"`` for headerless G.722) instead of probing.
    Decoding stops with ``AudioTooLongError`` as soon as more than ``max_seconds`` is decoded.
    Raises ``EmptyAudioError`` for input without samples, ``AudioDecodeError`` for anything else
    that is not audio, and ``OSError`` when a path cannot be read.
    """
    if max_seconds is not None and max_seconds <= 0:
        raise ValueError(f"max_seconds must be positive, got {max_seconds}")
    demuxer = _input_format(container_format)
    with _open_source(source) as file:
        if _is_empty(file):
            raise EmptyAudioError("the audio is empty: the input holds no bytes")
        if demuxer is None and (samples := pcm16_wav_at_16k(file, max_seconds)) is not None:
            return samples
        try:
            with av.open(
                file,
                mode="r",
                format=demuxer,
                container_options=_CONTAINER_OPTIONS,
                metadata_errors="replace",
            ) as container:
                return _decode(container, math.inf if max_seconds is None else max_seconds)
        except AudioDecodeError:
            raise
        except (av.FFmpegError, ValueError, IndexError, RuntimeError, EOFError) as error:
            # PyAV raises its own errors and, for some malformed input, plain Python ones
            reason = error.strerror if isinstance(error, av.FFmpegError) and error.strerror else str(error)
            raise AudioDecodeError(
                f"could not decode audio: {reason}; supported: {SUPPORTED_FORMATS}"
            ) from error


def pcm16_wav_at_16k(file: BinaryIO, max_seconds: float | None) -> Audio | None:
    """Fast path for the commonest upload, 16-bit PCM WAV already at 16 kHz: no resampling needed.

    Returns None (and rewinds) for anything else, which then goes through FFmpeg.
    """
    if not (hasattr(file, "seekable") and file.seekable()):
        return None
    start = file.tell()
    try:
        with wave.open(file, "rb") as reader:
            if (
                reader.getframerate() != SAMPLE_RATE
                or reader.getsampwidth() != 2
                or reader.getcomptype() != "NONE"
            ):
                return None
            frames, channels = reader.getnframes(), reader.getnchannels()
            if max_seconds is not None and frames > max_seconds * SAMPLE_RATE:
                raise AudioTooLongError(max_seconds)
            raw = reader.readframes(frames)
    except (wave.Error, EOFError, ValueError):
        return None
    finally:
        file.seek(start)
    usable = len(raw) - len(raw) % (2 * channels)
    if usable == 0:
        return None  # let FFmpeg name the problem
    samples = np.frombuffer(raw[:usable], dtype="<i2").astype(np.float32)
    samples *= 1 / 32768
    if channels == 1:
        return samples  # the commonest case: no downmix (a mean over one channel costs 30x the rest)
    return samples.reshape(-1, channels).mean(axis=1, dtype=np.float32)


def _decode(container: av.container.InputContainer, max_seconds: float) -> Audio:
    """Demux and decode the best audio stream, resampling as the stream's parameters change."""
    stream = container.streams.best("audio")  # skips audio streams without a rate or channel count
    if not isinstance(stream, av.AudioStream) and container.streams.audio:
        codec = container.streams.audio[0].codec_context.name
        raise AudioDecodeError(
            f"could not decode audio: the {container.format.name} input's {codec} stream has no "
            f"sample rate or channel count; supported: {SUPPORTED_FORMATS}"
        )
    if not isinstance(stream, av.AudioStream):
        kinds = ", ".join(f"{s.type}/{s.codec_context.name}" for s in container.streams) or "none"
        raise EmptyAudioError(f"no audio stream in the {container.format.name} input (streams: {kinds})")
    max_samples = max_seconds * SAMPLE_RATE
    chunks: list[npt.NDArray[np.float32]] = []
    total = 0
    bad_packets = 0
    resampler: av.AudioResampler | None = None
    params: tuple[str, str, int] | None = None
    for packet in container.demux(stream):
        try:
            frames = stream.decode(packet)
        except av.InvalidDataError:  # a corrupt packet: skip it, as ffmpeg does
            bad_packets += 1
            continue
        for frame in frames:
            if resampler is None or params != (frame.format.name, frame.layout.name, frame.sample_rate):
                # PyAV's resampler refuses a frame unlike its first one: flush it and start anew.
                if resampler is not None:
                    total += _collect(resampler.resample(None), chunks)
                resampler = av.AudioResampler(
                    format="flt", layout="mono", rate=SAMPLE_RATE, options=_RESAMPLER_OPTIONS
                )
                params = (frame.format.name, frame.layout.name, frame.sample_rate)
            total += _collect(resampler.resample(frame), chunks)
            if total > max_samples:
                raise AudioTooLongError(max_seconds)
    if resampler is not None:
        total += _collect(resampler.resample(None), chunks)
    if bad_packets:
        logger.warning("skipped %d undecodable packets of %s audio", bad_packets, stream.codec_context.name)
    if total == 0:
        if bad_packets:
            raise AudioDecodeError(
                f"could not decode audio: none of the {bad_packets} {stream.codec_context.name} packets "
                f"could be decoded; supported: {SUPPORTED_FORMATS}"
            )
        raise EmptyAudioError(f"the audio is empty: the {container.format.name} input decodes to 0 samples")
    if total > max_samples:  # the resampler's flush passed the limit
        raise AudioTooLongError(max_seconds)
    logger.debug(
        "decoded %.2f s of %s/%s audio to %d Hz mono",
        total / SAMPLE_RATE,
        container.format.name,
        stream.codec_context.name,
        SAMPLE_RATE,
    )
    audio = np.concatenate(chunks)
    # one float64 sum cannot overflow on finite float32 samples (at most 3.4e38 each, 1e8 of them)
    if not math.isfinite(float(audio.sum(dtype=np.float64))):
        bad = int(np.count_nonzero(~np.isfinite(audio)))
        raise InvalidSamplesError(
            f"the audio holds {bad} samples that are NaN or infinite (of {audio.size}); "
            "a float recording must hold finite numbers"
        )
    # Float sources, and the resampler's ripple on full-scale input, can pass 1: Whisper's loaders
    # (16-bit PCM) never do, and neither does hush.
    return np.clip(audio, -1.0, 1.0, out=audio)


def _collect(frames: Sequence[av.AudioFrame], chunks: list[npt.NDArray[np.float32]]) -> int:
    """Append the resampler's output to ``chunks``; return how many samples it held."""
    count = 0
    for frame in frames:
        samples = frame.to_ndarray().reshape(-1).astype(np.float32, copy=False)
        chunks.append(samples)
        count += samples.size
    return count


def _input_format(name: str | None) -> str | None:
    """Check a forced container format: it must be a demuxer that reads the input it is given."""
    if name is None:
        return None
    try:
        container_format = av.ContainerFormat(name)
    except ValueError:
        raise AudioDecodeError(f"unknown container format {name!r}; supported: {SUPPORTED_FORMATS}") from None
    if not container_format.is_input:
        raise AudioDecodeError(f"container format {name!r} can only be written, not read")
    # Devices, network, HLS and image sequences read from elsewhere (PyAV's flag joins the muxer's)
    if container_format.no_file:
        raise AudioDecodeError(f"container format {name!r} does not read from the input it is given")
    return name


@contextmanager
def _open_source(source: bytes | Path | BinaryIO) -> Iterator[BinaryIO]:
    """The source as a binary file object (a path is opened here and closed after)."""
    if isinstance(source, bytes | bytearray | memoryview):
        yield io.BytesIO(source)
    elif isinstance(source, os.PathLike):
        with Path(source).open("rb") as file:
            yield file
    else:
        yield source


def _is_empty(file: BinaryIO) -> bool:
    """Whether a seekable file has no bytes left (unseekable ones are left to the demuxer)."""
    try:
        if not file.seekable():
            return False
        position = file.tell()
        end = file.seek(0, io.SEEK_END)
        file.seek(position)
    except (AttributeError, OSError):
        return False
    return end <= position
