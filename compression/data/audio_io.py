"""The corpus's audio files: 16 kHz mono 16-bit FLAC, written byte-for-byte reproducibly.

FFmpeg's FLAC muxer normally writes its version in a comment and pads the header with 8 KiB: with
``bitexact`` the comment holds only "ffmpeg", and the padding is turned off. The samples are 16-bit
(what every source holds), so decoding and re-encoding loses nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from model_store.transcription import SAMPLE_RATE, Audio

_MUXER_OPTIONS = {"fflags": "+bitexact", "metadata_header_padding": "0"}
_ENCODER_OPTIONS = {"flags": "+bitexact", "compression_level": "8"}

Pcm16 = npt.NDArray[np.int16]


def to_pcm16(audio: Audio) -> Pcm16:
    """Float samples in [-1, 1] to 16-bit integers (the exact inverse of ``x / 32768``)."""
    return np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)


def write_flac(path: Path, samples: Pcm16) -> None:
    """Write 16 kHz mono FLAC atomically: to a temporary file beside ``path``, then renamed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        with av.open(temporary, mode="w", format="flac", options=_MUXER_OPTIONS) as container:
            stream = container.add_stream("flac", rate=SAMPLE_RATE, layout="mono")
            stream.format = "s16"
            stream.codec_context.options = _ENCODER_OPTIONS
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = 0
            for packet in stream.encode(frame):
                container.mux(packet)
            for packet in stream.encode(None):
                container.mux(packet)
        Path(temporary).replace(path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def flac_samples(path: Path) -> int:
    """The number of samples a FLAC file holds, from its header (nothing is decoded)."""
    with av.open(str(path), mode="r", format="flac") as container:
        stream = container.streams.audio[0]
        if stream.duration is None or stream.rate != SAMPLE_RATE:
            raise ValueError(f"{path} is not a 16 kHz FLAC file with a known length")
        return int(stream.duration)


def read_flac(path: Path) -> Audio:
    """The samples of a corpus FLAC file as float32 in [-1, 1)."""
    with av.open(str(path), mode="r", format="flac") as container:
        chunks = [frame.to_ndarray().reshape(-1) for frame in container.decode(audio=0)]
    pcm = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int16)
    return (pcm.astype(np.float32) / 32768.0).astype(np.float32)
