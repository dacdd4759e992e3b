"""SmoothQuant activation smoothing: exact in float, kinder to dynamic int8, published with its record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import typer
from transformers import WhisperForConditionalGeneration
from typer.testing import CliRunner

from compression.data.corpus import Corpus
from compression.quantize.calibration import calibration_utterances
from compression.quantize.cli import quantize_command
from compression.quantize.methods import SmoothingError, quantize_variant, variant_id_for
from compression.quantize.smoothed_parent import SmoothingPlan
from compression.quantize.smoothing import (
    consumers_of,
    recording_input_ranges,
    smooth,
    smoothing_scales,
    whisper_smoothing_groups,
)
from model_store.backends.int8_dynamic import load_int8, save_int8
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import TranscribeOptions
from tests.conftest import sine
from tests.factories import publish_tiny_variant, tiny_corpus, tiny_random_whisper

OUTLIER_CHANNELS = (3, 17)


def _model_with_outlier_channels() -> WhisperForConditionalGeneration:
    """A tiny random Whisper whose LayerNorms make a few input channels 30x larger than the rest, as
    trained Whispers' do."""
    model = tiny_random_whisper(seed=1).model
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.LayerNorm) and "layers" in name:
                module.weight[list(OUTLIER_CHANNELS)] *= 30.0
    return model


def _inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(1, 80, 3000, generator=generator)
    decoder_input_ids = torch.randint(0, 50000, (1, 12), generator=generator)
    return features, decoder_input_ids


@torch.no_grad()
def _logits(model: WhisperForConditionalGeneration, seed: int) -> torch.Tensor:
    features, decoder_input_ids = _inputs(seed)
    return model(input_features=features, decoder_input_ids=decoder_input_ids).logits


def _smoothed(model: WhisperForConditionalGeneration, alpha: float) -> dict[str, float | int]:
    groups = whisper_smoothing_groups(model)
    with recording_input_ranges(model, consumers_of(groups)) as ranges:
        for seed in range(3):
            _logits(model, seed)
    return smooth(model, groups, ranges, alpha).as_dict()


def _int8_roundtrip(
    model: WhisperForConditionalGeneration, directory: Path
) -> WhisperForConditionalGeneration:
    save_int8(model, directory)
    return load_int8(directory)


def test_groups_cover_every_linear_with_a_linear_producer_of_its_input() -> None:
    model = tiny_random_whisper().model
    groups = whisper_smoothing_groups(model)
    consumers = [name for group in groups for name in group.consumers]
    linears = {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}
    assert len(consumers) == len(set(consumers))  # each Linear is smoothed at most once
    # all but the inputs no linear map produces: after the GELU (fc2) and the tied output projection
    assert linears - set(consumers) == {"proj_out"} | {name for name in linears if name.endswith(".fc2")}
    cross = next(group for group in groups if group.producer == "model.encoder.layer_norm")
    assert set(cross.consumers) == {
        f"model.decoder.layers.{index}.encoder_attn.{projection}"
        for index in range(2)
        for projection in ("k_proj", "v_proj")
    }


def test_scales_follow_the_smoothquant_formula() -> None:
    activation = torch.tensor([4.0, 1.0, 0.25])
    weights = [torch.tensor([[1.0, -2.0, 0.5]]), torch.tensor([[-4.0, 1.0, 0.25]])]
    expected = activation.sqrt() / torch.tensor([4.0, 2.0, 0.5]).sqrt()
    assert torch.allclose(smoothing_scales(activation, weights, 0.5), expected)
    assert torch.allclose(smoothing_scales(activation, weights, 1.0), activation)


def test_smoothing_keeps_the_float_model_and_helps_dynamic_int8(tmp_path: Path) -> None:
    original = _model_with_outlier_channels()
    smoothed = _model_with_outlier_channels()
    report = _smoothed(smoothed, alpha=0.5)
    assert report["worst_input_spread_after"] < report["worst_input_spread_before"] / 3

    held_out = 7  # not one of the calibration inputs
    reference = _logits(original, held_out)
    assert torch.allclose(_logits(smoothed, held_out), reference, atol=1e-4, rtol=1e-4)

    plain_error = (_logits(_int8_roundtrip(original, tmp_path / "plain"), held_out) - reference).abs().mean()
    smoothed_error = (
        (_logits(_int8_roundtrip(smoothed, tmp_path / "smooth"), held_out) - reference).abs().mean()
    )
    assert smoothed_error < 0.7 * plain_error


def test_smoothing_refuses_a_missing_range_or_a_bad_alpha() -> None:
    model = tiny_random_whisper().model
    groups = whisper_smoothing_groups(model)
    with pytest.raises(ValueError, match="no calibration range"):
        smooth(model, groups, {}, 0.5)
    with pytest.raises(ValueError, match="between 0 and 1"):
        smooth(model, groups, {}, 1.5)


def test_a_smoothed_variant_is_calibrated_on_train_audio_and_published(tmp_path: Path) -> None:
    corpus = Corpus.open(tiny_corpus(tmp_path / "corpus"))
    store = ModelStore(tmp_path / "store")
    parent = publish_tiny_variant(store, "tiny-random")
    utterances = calibration_utterances(corpus, parent, per_language=2)
    assert {u.split for u in utterances} == {"train"} and len(utterances) == 4  # en and cs, 2 each
    plan = SmoothingPlan(0.5, utterances)

    manifest = quantize_variant(store, "tiny-random", "ptq-int8", smoothing=plan, progress=False)
    assert (
        manifest.id
        == variant_id_for("tiny-random", "ptq-int8", smoothing_alpha=0.5)
        == "tiny-random-ptq-int8-sq50"
    )
    record = manifest.recipe.args["smoothing"]
    assert record["alpha"] == 0.5 and record["calibration_utterances"] == 4
    assert record["calibration_languages"] == ["cs", "en"]
    assert (
        sorted(path.name for path in store.root.iterdir() if path.name.startswith(".")) == []
    )  # scratch gone
    transcriber = open_variant(store, manifest.id, RuntimeSettings(device="cpu"))
    transcription = transcriber.transcribe(
        sine(1.0), TranscribeOptions(temperatures=(0.0,), max_new_tokens=4)
    )
    assert transcription.variant_id == manifest.id and transcription.duration == pytest.approx(1.0)

    with pytest.raises(SmoothingError, match="ptq-int8, ptq-int8-keep-fc2, ptq-int8-per-token, ct2-int8"):
        quantize_variant(store, "tiny-random", "bnb-nf4", smoothing=plan, progress=False)
    with pytest.raises(ValueError, match="between 0 and 1"):
        SmoothingPlan(1.2, utterances)


def test_quantize_command_smooths_a_ct2_variant(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    corpus = tiny_corpus(tmp_path / "corpus")
    store = ModelStore(tmp_path / "store")
    publish_tiny_variant(store, "tiny-random")
    monkeypatch.setenv("HUSH_HOME", str(tmp_path))
    monkeypatch.setenv("HUSH_STORE__ROOT", str(store.root))
    app = typer.Typer()
    app.command("quantize")(quantize_command)
    app.command("noop")(lambda: None)  # a second command keeps `quantize` a subcommand
    base = ["quantize", "tiny-random", "--smooth", "0.8", "--calibration-per-language", "1"]
    made = CliRunner().invoke(app, [*base, "--method", "ct2-int8", "--corpus", str(corpus)])
    assert made.exit_code == 0, made.output
    manifest = store.verify("tiny-random-ct2-int8-sq80")
    assert manifest.backend == "ctranslate2"
    assert manifest.recipe.args["smoothing"]["calibration_utterances"] == 2
    too_strong = CliRunner().invoke(app, [*base[:3], "1.5", "--method", "ct2-int8", "--corpus", str(corpus)])
    assert too_strong.exit_code == 2 and "less than or equal to 1" in too_strong.output
