"""decode_audio: every client format to 16 kHz mono float32, and a typed error for everything else."""

from __future__ import annotations

import io
import logging
import wave
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from model_store.audio import decode_audio
from model_store.errors import AudioDecodeError, AudioTooLongError, EmptyAudioError, InvalidSamplesError
from model_store.transcription import SAMPLE_RATE, Audio
from tests.app_support import float_wav

# Every input must end in samples or a typed error: a hang fails the test instead of the suite.
pytestmark = pytest.mark.timeout(10)

DATA = Path(__file__).parent / "data"
TONE_HZ = 440.0
TONE_SECONDS = 1.5
DURATION_TOLERANCE = 0.050  # seconds: AAC's encoder delay, and the ADTS stream has no edit list to trim it
FREQUENCY_TOLERANCE = 5.0  # Hz; the FFT of 1.5 s at 16 kHz resolves 0.67 Hz


def encode_tone(
    container_format: str,
    codec: str,
    *,
    rate: int = 44_100,
    layout: str = "stereo",
    seconds: float = TONE_SECONDS,
    amplitude: float = 0.5,
    codec_options: dict[str, str] | None = None,
) -> bytes:
    """A 440 Hz sine, the same in every channel, encoded with PyAV; skips if the wheel lacks the encoder."""
    try:
        av.Codec(codec, "w")
    except av.codec.codec.UnknownCodecError:
        pytest.skip(f"this PyAV wheel has no {codec!r} encoder")
    buffer = io.BytesIO()
    output = av.open(buffer, "w", format=container_format)
    stream = output.add_stream(codec, rate=rate, layout=layout, options=codec_options or {})
    assert isinstance(stream, av.AudioStream)
    channels = stream.codec_context.layout.nb_channels
    times = np.arange(round(rate * seconds)) / rate
    tone = (amplitude * np.sin(2 * np.pi * TONE_HZ * times)).astype(np.float32)
    for start in range(0, tone.size, 1024):
        interleaved = np.repeat(tone[start : start + 1024], channels).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(interleaved, format="flt", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        output.mux(stream.encode(frame))  # PyAV converts to the encoder's sample format and frame size
    output.mux(stream.encode(None))
    output.close()
    return buffer.getvalue()


def pcm_wav(samples: npt.NDArray[np.float64], *, rate: int = SAMPLE_RATE) -> bytes:
    """A 16-bit mono wav written by the standard library (PyAV writes nothing for zero samples)."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as file:
        file.setnchannels(1)
        file.setsampwidth(2)
        file.setframerate(rate)
        file.writeframes((samples * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def dominant_frequency(audio: Audio) -> float:
    spectrum = np.abs(np.fft.rfft(audio * np.hanning(audio.size)))
    return float(np.fft.rfftfreq(audio.size, d=1 / SAMPLE_RATE)[np.argmax(spectrum)])


def assert_tone(audio: Audio, *, seconds: float = TONE_SECONDS) -> None:
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert abs(audio.size / SAMPLE_RATE - seconds) <= DURATION_TOLERANCE
    assert abs(dominant_frequency(audio) - TONE_HZ) <= FREQUENCY_TOLERANCE
    assert np.all(np.abs(audio) <= 1.0)


@pytest.mark.parametrize(
    ("container_format", "codec", "rate", "codec_options"),
    [
        pytest.param("wav", "pcm_s16le", 44_100, None, id="wav"),
        pytest.param("flac", "flac", 44_100, None, id="flac"),
        pytest.param("mp3", "mp3", 44_100, None, id="mp3"),
        # FFmpeg's own Vorbis encoder is marked experimental; this wheel has no libvorbis
        pytest.param("ogg", "vorbis", 44_100, {"strict": "experimental"}, id="ogg-vorbis"),
        pytest.param("ogg", "libopus", 48_000, None, id="ogg-opus"),
        pytest.param("ipod", "aac", 44_100, None, id="m4a-aac"),  # "ipod" is FFmpeg's m4a muxer
        pytest.param("adts", "aac", 48_000, None, id="aac-adts"),
        pytest.param("webm", "libopus", 48_000, None, id="webm-opus"),
        pytest.param("matroska", "flac", 48_000, None, id="mkv-flac"),
    ],
)
def test_decodes_each_client_format_to_16khz_mono(
    container_format: str, codec: str, rate: int, codec_options: dict[str, str] | None
) -> None:
    data = encode_tone(container_format, codec, rate=rate, codec_options=codec_options)
    assert_tone(decode_audio(data))


def test_g722_decodes_when_its_raw_demuxer_is_named() -> None:
    data = encode_tone("g722", "g722", rate=16_000, layout="mono")
    assert_tone(decode_audio(data, container_format="g722"))
    with pytest.raises(AudioDecodeError):  # headerless: nothing to probe
        decode_audio(data)


def test_decodes_from_path_bytes_and_file_objects(tmp_path: Path) -> None:
    data = encode_tone("flac", "flac")
    path = tmp_path / "tone.flac"
    path.write_bytes(data)
    with path.open("rb") as file:
        from_file = decode_audio(file)
    results = [decode_audio(path), decode_audio(data), decode_audio(io.BytesIO(data)), from_file]
    for audio in results:
        assert_tone(audio)
        np.testing.assert_array_equal(audio, results[0])


def test_decodes_from_a_stream_that_cannot_seek() -> None:
    class Upload:  # what a request body being read looks like: read() and nothing else
        def __init__(self, data: bytes) -> None:
            self._buffer = io.BytesIO(data)

        def read(self, size: int = -1) -> bytes:
            return self._buffer.read(size)

    assert_tone(decode_audio(Upload(encode_tone("mp3", "mp3"))))  # type: ignore[arg-type]


def test_jfk_decodes_to_eleven_seconds() -> None:
    audio = decode_audio(DATA / "jfk.wav")
    assert audio.dtype == np.float32
    assert audio.ndim == 1
    assert audio.size / SAMPLE_RATE == pytest.approx(11.0, abs=0.05)
    assert 0.1 < np.abs(audio).max() <= 1.0  # speech, not silence


def test_stereo_downmix_averages_the_channels() -> None:
    # libswresample's float downmix alone would scale each channel by 0.707: 0.8 + 0.8 -> 1.13
    audio = decode_audio(encode_tone("wav", "pcm_s16le", amplitude=0.8))
    assert np.abs(audio).max() == pytest.approx(0.8, abs=0.01)


def test_samples_beyond_full_scale_are_clipped() -> None:
    audio = decode_audio(encode_tone("wav", "pcm_f32le", layout="mono", amplitude=1.5))
    assert np.abs(audio).max() == 1.0
    assert abs(dominant_frequency(audio) - TONE_HZ) <= FREQUENCY_TOLERANCE


def test_sample_rate_and_layout_changing_mid_stream() -> None:
    # Two ADTS streams back to back: 44.1 kHz mono, then 16 kHz stereo. PyAV's resampler refuses
    # a frame unlike its first one, so the decoder has to start a new one.
    first = encode_tone("adts", "aac", rate=44_100, layout="mono", seconds=1.0)
    second = encode_tone("adts", "aac", rate=16_000, layout="stereo", seconds=1.0)
    assert_tone(decode_audio(first + second), seconds=2.0 + 0.1)  # 2 s plus each stream's encoder delay


def test_corrupt_packets_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = bytearray(encode_tone("mp3", "mp3"))
    data[4000:6000] = np.random.default_rng(0).bytes(2000)
    with caplog.at_level(logging.WARNING, logger="model_store.audio"):
        audio = decode_audio(bytes(data))
    assert 1.0 < audio.size / SAMPLE_RATE < TONE_SECONDS
    assert "undecodable packets" in caplog.text


@pytest.mark.parametrize("source", [b"", io.BytesIO()], ids=["bytes", "file"])
def test_empty_input_is_empty_audio(source: bytes | io.BytesIO) -> None:
    with pytest.raises(EmptyAudioError, match="no bytes"):
        decode_audio(source)


def test_empty_file_is_empty_audio(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(EmptyAudioError):
        decode_audio(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_float_wav_with_non_finite_samples_is_refused(bad: float) -> None:
    samples = [0.25, -0.25] * 4000 + [bad]
    with pytest.raises(InvalidSamplesError, match="1 samples that are NaN or infinite"):
        decode_audio(float_wav(samples))


def test_float_wav_beyond_full_scale_is_clipped() -> None:
    audio = decode_audio(float_wav([3.0, -1e30, 0.5] * 4000))
    assert audio.dtype == np.float32 and audio.size == 12000
    assert audio.max() == 1.0 and audio.min() == -1.0 and np.isfinite(audio).all()


def test_zero_sample_wav_is_empty_audio() -> None:
    with pytest.raises(EmptyAudioError, match="0 samples"):
        decode_audio(pcm_wav(np.zeros(0)))


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes_are_not_audio(seed: int) -> None:
    with pytest.raises(AudioDecodeError, match="could not decode audio"):
        decode_audio(np.random.default_rng(seed).bytes(4096))


def test_truncated_wav_decodes_what_is_there() -> None:
    # The header promises 1.5 s; like ffmpeg, hush decodes the half that arrived.
    data = encode_tone("wav", "pcm_s16le")
    audio = decode_audio(data[: len(data) // 2])
    assert audio.size / SAMPLE_RATE == pytest.approx(TONE_SECONDS / 2, abs=0.02)
    assert abs(dominant_frequency(audio) - TONE_HZ) <= FREQUENCY_TOLERANCE


def test_truncated_m4a_is_not_audio() -> None:
    data = encode_tone("ipod", "aac")  # PyAV writes the index (moov) last: half a file has none
    with pytest.raises(AudioDecodeError, match="could not decode audio"):
        decode_audio(data[: len(data) // 2])


def test_png_renamed_wav_is_not_audio(tmp_path: Path) -> None:
    encoder = av.CodecContext.create("png", "w")
    encoder.width, encoder.height, encoder.pix_fmt = 8, 8, "rgb24"
    (packet,) = encoder.encode(av.VideoFrame.from_ndarray(np.zeros((8, 8, 3), np.uint8), format="rgb24"))
    path = tmp_path / "picture.wav"
    path.write_bytes(bytes(packet))
    with pytest.raises(AudioDecodeError, match="no audio stream"):
        decode_audio(path)


def test_text_renamed_wav_is_not_audio(tmp_path: Path) -> None:
    path = tmp_path / "notes.wav"
    path.write_text("these are meeting notes, not a recording\n" * 40)
    with pytest.raises(AudioDecodeError, match="supported: wav, flac, mp3"):
        decode_audio(path)


def test_too_long_audio_stops_early() -> None:
    class CountingReader(io.BytesIO):
        bytes_read = 0

        def read(self, size: int | None = -1) -> bytes:
            data = super().read(size)
            self.bytes_read += len(data)
            return data

    data = pcm_wav(np.zeros(120 * SAMPLE_RATE))  # two minutes: 3.8 MB
    reader = CountingReader(data)
    with pytest.raises(AudioTooLongError, match="longer than the limit of 1 s") as raised:
        decode_audio(reader, max_seconds=1.0)
    assert raised.value.max_seconds == 1.0
    assert reader.bytes_read < len(data) / 10  # probing and read-ahead take about 200 kB


def test_audio_at_the_limit_is_accepted() -> None:
    assert_tone(decode_audio(encode_tone("wav", "pcm_s16le"), max_seconds=TONE_SECONDS))


def test_max_seconds_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        decode_audio(encode_tone("wav", "pcm_s16le"), max_seconds=0)


def test_unknown_container_format_lists_the_supported_ones() -> None:
    with pytest.raises(AudioDecodeError, match=r"unknown container format 'nope'; supported: wav"):
        decode_audio(b"RIFF", container_format="nope")


def test_forced_format_on_the_wrong_bytes_is_not_audio() -> None:
    with pytest.raises(AudioDecodeError):
        decode_audio(encode_tone("wav", "pcm_s16le"), container_format="mp3")


@pytest.mark.parametrize("container_format", ["lavfi", "hls", "image2", "alsa"])
def test_formats_that_read_elsewhere_are_refused(container_format: str) -> None:
    with pytest.raises(AudioDecodeError, match="does not read from the input"):
        decode_audio(b"anything", container_format=container_format)


def test_playlists_cannot_read_other_files(tmp_path: Path) -> None:
    # An upload must not make the server open files or URLs it names (HLS segments, concat lists).
    secret = tmp_path / "secret.aac"
    secret.write_bytes(encode_tone("adts", "aac"))
    playlist = tmp_path / "upload.m3u8"
    playlist.write_text(f"#EXTM3U\n#EXT-X-TARGETDURATION:2\n#EXTINF:1.5,\n{secret}\n#EXT-X-ENDLIST\n")
    with pytest.raises(AudioDecodeError):
        decode_audio(playlist)
    concat_list = f"ffconcat version 1.0\nfile {secret.name}\n".encode()
    with pytest.raises(AudioDecodeError):
        decode_audio(concat_list, container_format="concat")


def test_pcm16_wav_at_16k_fast_path_matches_ffmpeg() -> None:
    """16 kHz 16-bit WAV skips FFmpeg; the samples are what FFmpeg would have produced."""
    import wave as wave_module

    from model_store.audio import pcm16_wav_at_16k

    rng = np.random.default_rng(1)
    left = (rng.standard_normal(16_000) * 3000).astype("<i2")
    right = (rng.standard_normal(16_000) * 3000).astype("<i2")
    buffer = io.BytesIO()
    with wave_module.open(buffer, "wb") as writer:
        writer.setnchannels(2)
        writer.setsampwidth(2)
        writer.setframerate(16_000)
        writer.writeframes(np.stack([left, right], axis=1).tobytes())
    data = buffer.getvalue()
    fast = pcm16_wav_at_16k(io.BytesIO(data), None)
    assert fast is not None
    expected = (left.astype(np.float32) + right.astype(np.float32)) / 2 / 32768.0
    np.testing.assert_allclose(fast, expected, atol=1e-6)
    np.testing.assert_allclose(decode_audio(data), expected, atol=1e-6)
    with pytest.raises(AudioTooLongError):
        decode_audio(data, max_seconds=0.5)
