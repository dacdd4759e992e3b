"""Acceptance of the importer on the real bundled weights: the converted model computes what
CTranslate2 (faster-whisper's engine, float32) computes on the same input features."""

from __future__ import annotations

from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch

from compression.importers.bundles import locate_bundle
from model_store.backends.transformers_backend import TransformersTranscriber
from model_store.features import log_mel_spectrogram, window
from model_store.normalizer import normalize
from model_store.opener import open_variant
from model_store.scoring import char_errors
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import Audio, TranscribeOptions
from model_store.window_decoding import WindowDecoding
from tests.conftest import JFK_TEXT

pytestmark = [pytest.mark.real_model, pytest.mark.slow]

BUNDLE_VARIANTS = {"whisper-base": "whisper-base", "whisper-tiny.en": "whisper-tiny.en"}


def _ct2_directory(bundle_name: str, root: Path) -> Path:
    """The bundle as CTranslate2 itself loads it (model.bin parts joined)."""
    files = locate_bundle(bundle_name)
    directory = root / bundle_name
    directory.mkdir()
    with (directory / "model.bin").open("wb") as joined:
        for part in files.model_parts:
            joined.write(part.read_bytes())
    for name in ("config.json", "tokenizer.json"):
        (directory / name).write_bytes((files.config.parent / name).read_bytes())
    vocabulary = files.config.parent / "vocabulary.json"
    if not vocabulary.exists():
        vocabulary = files.config.parent / "vocabulary.txt"
    (directory / vocabulary.name).write_bytes(vocabulary.read_bytes())
    return directory


@pytest.fixture(scope="module")
def ct2_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ct2")
    return {name: _ct2_directory(name, root) for name in BUNDLE_VARIANTS}


@pytest.mark.parametrize("bundle_name", list(BUNDLE_VARIANTS))
def test_logits_and_greedy_tokens_match_ctranslate2(
    bundle_name: str, real_store: ModelStore, ct2_dirs: dict[str, Path], jfk_audio: Audio
) -> None:
    transcriber = open_variant(real_store, BUNDLE_VARIANTS[bundle_name], RuntimeSettings(device="cpu"))
    assert isinstance(transcriber, TransformersTranscriber)
    decoder = transcriber._decoder
    tokens = decoder.tokens
    features = window(log_mel_spectrogram(jfk_audio, transcriber.n_mels), 0)
    prompt = [tokens.sot, tokens.languages["en"], tokens.transcribe] if tokens.languages else [tokens.sot]
    reference = ctranslate2.models.Whisper(str(ct2_dirs[bundle_name]), device="cpu", compute_type="float32")
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()[None]))

    # First-step logits, with nothing suppressed on either side (no timestamp rules either).
    text_prompt = [*prompt, tokens.no_timestamps]
    raw = reference.generate(
        storage,
        [text_prompt],
        beam_size=1,
        return_logits_vocab=True,
        suppress_tokens=[],
        suppress_blank=False,
    )
    ct2_logits = np.array(raw[0].logits[0])[0]
    with torch.inference_mode():
        ours = (
            transcriber.model(input_features=features[None], decoder_input_ids=torch.tensor([text_prompt]))
            .logits[0, -1]
            .numpy()
        )
    difference = float(np.abs(ct2_logits - ours).max())
    print(f"{bundle_name}: max |first-step logit difference| = {difference:.2e}")
    assert difference < 1e-3

    # Greedy decoding, with and without timestamps, token for token.
    encoded = decoder.encode(features)
    for with_timestamps in (True, False):
        full_prompt = prompt if with_timestamps else [*prompt, tokens.no_timestamps]
        expected = reference.generate(storage, [full_prompt], beam_size=1)[0].sequences_ids[0]
        greedy = WindowDecoding(temperature=0.0, max_new_tokens=224, with_timestamps=with_timestamps)
        sampled, _, _ = decoder.decode(encoded, full_prompt, greedy)
        assert sampled == [token for token in expected if token != tokens.eot]


@pytest.mark.parametrize("variant_id", list(BUNDLE_VARIANTS.values()))
def test_jfk_transcript(variant_id: str, real_store: ModelStore, jfk_audio: Audio) -> None:
    transcriber = open_variant(real_store, variant_id, RuntimeSettings(device="cpu"))
    result = transcriber.transcribe(jfk_audio, TranscribeOptions())
    errors = char_errors(normalize(JFK_TEXT, "en"), normalize(result.text, "en"))
    print(f"{variant_id}: {result.text!r} CER {errors.rate:.4f}")
    assert errors.rate <= 0.02
    assert result.language == "en"
    if transcriber.manifest.multilingual:
        assert result.language_probability is not None and result.language_probability > 0.5
    segment = result.segments[-1]
    assert 10.0 <= segment.end <= 11.1
    assert -1.0 < segment.avg_logprob < 0.0
    assert 0.0 <= segment.no_speech_prob < 0.5
    assert 1.0 < segment.compression_ratio < 2.4
