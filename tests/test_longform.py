"""Long audio: window arithmetic, segment cutting at timestamps, fallback, and real chunked decoding."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from model_store.features import log_mel_spectrogram, window
from model_store.longform import WindowOutput, _segments_of_window, compression_ratio, transcribe_mel
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import CHUNK_FRAMES, Audio, TranscribeOptions
from model_store.window_decoding import WindowDecoding
from tests.factories import multilingual_special_tokens

TOKENS = multilingual_special_tokens({"en": 50259})


def ts(seconds: float) -> int:
    return TOKENS.timestamp_begin + round(seconds / 0.02)


def output(tokens: list[int], *, temperature: float = 0.0) -> WindowOutput:
    return WindowOutput(tokens, sum_logprob=-1.0, no_speech_prob=0.01, temperature=temperature, text="x")


def test_segments_cut_at_timestamp_pairs_and_seek_to_last_complete_one() -> None:
    tokens = [ts(0.0), 1, 2, ts(4.0), ts(4.0), 3, ts(9.5), ts(9.5), 4]  # the last segment is unfinished
    pieces, advance = _segments_of_window(output(tokens), TOKENS, time_offset=30.0, window_frames=3000)
    assert [(start, end) for start, end, _ in pieces] == [(30.0, 34.0), (34.0, 39.5)]
    assert advance == round(9.5 * 100)  # frames: the next window starts where the last segment ended


def test_single_timestamp_ending_consumes_the_window() -> None:
    tokens = [ts(0.0), 1, ts(3.0), ts(3.0), 2, ts(7.0)]
    pieces, advance = _segments_of_window(output(tokens), TOKENS, time_offset=0.0, window_frames=2500)
    assert [(start, end) for start, end, _ in pieces] == [(0.0, 3.0), (3.0, 7.0)]
    assert advance == 2500


def test_no_timestamp_pair_gives_one_segment_to_the_last_timestamp() -> None:
    pieces, advance = _segments_of_window(output([ts(0.0), 1, 2, ts(6.0)]), TOKENS, 60.0, 3000)
    assert [(start, end) for start, end, _ in pieces] == [(60.0, 66.0)]
    assert advance == 3000
    pieces, _ = _segments_of_window(output([1, 2]), TOKENS, 0.0, 1200)  # no timestamps at all
    assert pieces[0][:2] == (0.0, 12.0)


def test_compression_ratio_flags_repetition() -> None:
    assert compression_ratio("") == 0.0
    assert compression_ratio("the cat sat on the mat") < 1.5
    assert compression_ratio("la " * 200) > 10


class ScriptedDecoder:
    """Plays back token scripts per window, to check the driver's bookkeeping across windows.

    The model is the expensive part and is exercised by the real-model tests; the seek and fallback
    arithmetic is pure logic, which this makes observable.
    """

    tokens = TOKENS

    def __init__(self, scripts: list[list[tuple[list[int], float]]]) -> None:
        self.scripts = scripts  # per window, per temperature: (tokens, sum_logprob)
        self.windows = 0
        self.calls: list[tuple[int, float, list[int]]] = []

    def encode(self, features: torch.Tensor) -> Any:
        assert features.shape[-1] == CHUNK_FRAMES
        self.windows += 1
        return self.windows - 1

    def decode(
        self, encoded: Any, prompt: list[int], decoding: WindowDecoding
    ) -> tuple[list[int], float, float]:
        attempts = self.scripts[encoded]
        attempt = min(len(self.calls_for(encoded)), len(attempts) - 1)
        self.calls.append((encoded, decoding.temperature, prompt))
        tokens, logprob = attempts[attempt]
        return tokens, logprob, 0.01

    def calls_for(self, window_index: int) -> list[tuple[int, float, list[int]]]:
        return [call for call in self.calls if call[0] == window_index]

    def text(self, tokens: list[int]) -> str:
        return "".join(f" w{token}" for token in tokens if token < TOKENS.eot)

    def text_tokens(self, text: str) -> list[int]:
        return [7, 8]


def test_driver_keeps_timestamps_right_across_windows() -> None:
    audio_frames = 5000  # 50 s of audio
    mel = torch.zeros(80, audio_frames + CHUNK_FRAMES)
    decoder = ScriptedDecoder(
        [
            [([ts(0.0), 11, ts(10.0), ts(10.0), 12, ts(24.0), ts(24.0), 13], -0.5)],  # window at 0 s
            [([ts(0.0), 21, ts(8.0), ts(8.0), 22, ts(26.0)], -0.5)],  # window at 24 s, ends at 50 s
        ]
    )
    segments = transcribe_mel(
        decoder, mel, audio_frames, TOKENS.languages["en"], TranscribeOptions(initial_prompt="hello")
    )
    assert [(s.start, s.end) for s in segments] == [(0.0, 10.0), (10.0, 24.0), (24.0, 32.0), (32.0, 50.0)]
    assert [s.text for s in segments] == [" w11", " w12", " w21", " w22"]
    assert [s.seek for s in segments] == [0, 0, 2400, 2400]  # each segment's window, in 10 ms frames
    # The first window is prompted by the initial prompt, the second by the first window's text.
    first_prompt, second_prompt = decoder.calls[0][2], decoder.calls[1][2]
    assert first_prompt[:3] == [TOKENS.start_of_prev, 7, 8]
    assert 11 in second_prompt and 12 in second_prompt
    assert second_prompt[-3:] == [TOKENS.sot, TOKENS.languages["en"], TOKENS.transcribe]


def test_segments_end_where_the_audio_does() -> None:
    audio_frames = 50  # 0.5 s; the model closes its segment at 2 s, inside the window's padding
    mel = torch.zeros(80, audio_frames + CHUNK_FRAMES)
    decoder = ScriptedDecoder([[([ts(0.0), 11, ts(2.0)], -0.5)]])
    segments = transcribe_mel(decoder, mel, audio_frames, TOKENS.languages["en"], TranscribeOptions())
    assert [(s.start, s.end, s.text) for s in segments] == [(0.0, 0.5, " w11")]


def test_fallback_retries_hotter_and_resets_prompt() -> None:
    repetitive = [ts(0.0), *([5] * 120), ts(20.0)]
    decoder = ScriptedDecoder([[(repetitive, -0.2), ([ts(0.0), 6, ts(20.0)], -0.2)]])
    decoder.text = lambda tokens: " la" * len(tokens)  # type: ignore[method-assign]
    segments = transcribe_mel(decoder, torch.zeros(80, 2000 + CHUNK_FRAMES), 2000, 50259, TranscribeOptions())
    temperatures = [call[1] for call in decoder.calls]
    assert temperatures[:2] == [0.0, 0.2]
    assert segments and segments[0].temperature == 0.2
    assert segments[0].compression_ratio < 2.4


def test_window_padding() -> None:
    mel = torch.ones(80, 100)
    padded = window(mel, 0)
    assert padded.shape == (80, CHUNK_FRAMES)
    assert padded[:, 100:].abs().sum() == 0


def test_real_chunked_decoding_on_tiny_model(tiny_store: ModelStore) -> None:
    """75 s of noise on a random model: three windows, segments ordered and inside the audio."""
    transcriber = open_variant(tiny_store, "tiny-random", RuntimeSettings(device="cpu"))
    rng = np.random.default_rng(0)
    audio: Audio = (0.05 * rng.standard_normal(16_000 * 75)).astype(np.float32)
    result = transcriber.transcribe(
        audio, TranscribeOptions(language="en", temperatures=(0.0,), max_new_tokens=12)
    )
    assert result.duration == 75.0
    assert result.language == "en"
    starts = [segment.start for segment in result.segments]
    assert starts == sorted(starts)
    assert all(0.0 <= s.start <= s.end <= 75.0 + 30.0 for s in result.segments)
    assert log_mel_spectrogram(audio).shape[-1] == 7500 + CHUNK_FRAMES


def test_loop_detection_only_fires_on_repetition() -> None:
    from model_store.longform import is_looping

    def text(tokens: list[int]) -> str:
        return "".join(f" {token % 7}" if token < 1000 else " la" for token in tokens)

    assert is_looping([1000] * 48, text, 2.4)
    assert not is_looping([1000] * 47, text, 2.4)  # too early to judge
    varied = list(range(1, 49))
    assert not is_looping([token * 7919 % 997 for token in varied], lambda t: " ".join(map(str, t)), 2.4)


def test_loop_cut_matches_where_a_step_by_step_decoder_stops() -> None:
    from model_store.longform import is_looping, loop_cut

    def text(tokens: list[int]) -> str:
        return " ".join(str(token) for token in tokens)

    looping = [token * 7919 % 997 for token in range(1, 60)] + [5, 6] * 100
    stopped_at = next(n for n in range(1, len(looping) + 1) if is_looping(looping[:n], text, 2.4))
    assert loop_cut(looping, text, 2.4) == stopped_at
    assert 60 < stopped_at < len(looping)
    assert loop_cut([token * 7919 % 997 for token in range(1, 200)], text, 2.4) is None


def test_a_variant_trained_on_text_only_is_decoded_without_timestamps(tiny_store: ModelStore) -> None:
    """hush's students and experts learn ``<|notimestamps|>`` sequences only; their manifest says so
    and every request then decodes them that way, whatever the options ask."""
    audio = (0.1 * np.sin(np.linspace(0, 2000, 16_000 * 3))).astype(np.float32)
    runtime = RuntimeSettings(device="cpu")
    asked = open_variant(tiny_store, "tiny-random", runtime).transcribe(
        audio, TranscribeOptions(language="en", temperatures=(0.0,), without_timestamps=True)
    )
    tiny_store.update("tiny-random", timestamps=False)
    text_only = open_variant(tiny_store, "tiny-random", runtime)
    forced = text_only.transcribe(audio, TranscribeOptions(language="en", temperatures=(0.0,)))
    assert forced.segments == asked.segments
    assert len(forced.segments) == 1  # one segment per window
    assert all(token < TOKENS.timestamp_begin for token in forced.segments[0].tokens)
    # words come from the cross-attention on the text, so a text-only variant times them too
    worded = text_only.transcribe(
        audio, TranscribeOptions(language="en", temperatures=(0.0,), word_timestamps=True)
    )
    assert [segment.text for segment in worded.segments] == [segment.text for segment in forced.segments]
    words = worded.segments[0].words
    assert words and "".join(word.word for word in words) == worded.segments[0].text
    assert all(0.0 <= word.start <= word.end <= worded.duration for word in words)
