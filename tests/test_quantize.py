"""Quantized variants: each method publishes real low-precision bytes that the store verifies and a
backend opens and runs; int8 stays close to its float parent. Tiny random models for the plumbing,
the real whisper-base for accuracy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ctranslate2
import numpy as np
import pytest
import torch
from ctranslate2.converters import TransformersConverter
from safetensors import safe_open
from torch import nn

from compression.importers.ct2_format import read_ct2_model
from compression.quantize.ct2_export import export_ctranslate2
from compression.quantize.methods import (
    METHODS,
    AudioContextError,
    UnknownMethodError,
    quantize_variant,
    variant_id_for,
)
from compression.quantize.parent import Parent, UnsupportedParentError
from model_store.backends import legacy_int8
from model_store.backends.cpu_features import full_range_int8_is_exact
from model_store.backends.ctranslate2_backend import CTranslate2Transcriber, max_length_for
from model_store.backends.int8_dynamic import (
    INT8_WEIGHTS_FILENAME,
    _quantized_linear,
    asymmetric_linears,
    load_int8,
    per_channel_int8,
    per_token_linears,
    save_int8,
)
from model_store.backends.per_token_int8 import PerTokenInt8Linear
from model_store.backends.transformers_backend import TransformersTranscriber
from model_store.errors import BackendUnavailableError
from model_store.features import log_mel_spectrogram, window
from model_store.manifest import Manifest, Recipe, size_tier_for
from model_store.normalizer import normalize
from model_store.opener import numerics_label, open_variant
from model_store.safetensors_file import save_safetensors
from model_store.scoring import char_errors
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import SAMPLE_RATE, Audio, TranscribeOptions, Transcription
from model_store.window_decoding import WindowDecoding
from tests.conftest import JFK_TEXT
from tests.factories import publish_tiny_variant, recorded_encoder_inputs, tiny_random_whisper

PARENT = "tiny-random"
CPU_METHODS = [name for name, method in METHODS.items() if method.device == "cpu"]
GPU_METHODS = [name for name, method in METHODS.items() if method.device == "cuda"]
INT8_METHODS = ["ptq-int8", "ct2-int8", "bnb-int8"]
CPU = RuntimeSettings(device="cpu")
QUICK = TranscribeOptions(temperatures=(0.0,), max_new_tokens=16)  # random weights: bound the decoding
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none here)")
requires_legacy_int8 = pytest.mark.skipif(
    not legacy_int8.available(), reason="this PyTorch has no legacy dynamic int8 Linear"
)


def per_matrix_kind(*, full_range: bool = False) -> type[nn.Module]:
    """The module a per-matrix int8 Linear loads as: PyTorch's dynamic one, or the float fallback."""
    return legacy_int8.dynamic_linear_kind(full_range=full_range) if legacy_int8.available() else nn.Linear


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("quantize-store"))
    publish_tiny_variant(store, PARENT)
    return store


@pytest.fixture(scope="module")
def variant(store: ModelStore) -> Callable[[str], Manifest]:
    """The ``method`` variant of the tiny parent, made on first use and shared by the module's tests."""

    def make(method: str) -> Manifest:
        variant_id = variant_id_for(PARENT, method)
        if store.exists(variant_id):
            return store.get(variant_id)
        return quantize_variant(store, PARENT, method)

    return make


@pytest.fixture(scope="module")
def two_seconds(jfk_audio: Audio) -> Audio:
    return jfk_audio[: 2 * SAMPLE_RATE]


# ---- every CPU method: publish, verify, open, transcribe ---------------------------------------


@pytest.mark.parametrize("method", CPU_METHODS)
def test_cpu_method_publishes_a_variant_that_transcribes(
    method: str, store: ModelStore, variant: Callable[[str], Manifest], two_seconds: Audio
) -> None:
    manifest = variant(method)
    parent = store.get(PARENT)
    assert store.verify(manifest.id) == manifest
    assert manifest.id == f"{PARENT}-{method}"
    assert manifest.parent == PARENT
    assert manifest.recipe.method == method
    assert (
        manifest.recipe.args["parent_weights_sha256"] == Parent(parent, store.path(PARENT)).weights_digest()
    )
    assert (manifest.backend, manifest.device, manifest.dtype) == (
        METHODS[method].backend,
        "cpu",
        METHODS[method].dtype,
    )
    assert manifest.parameters == parent.parameters
    assert manifest.size_tier == size_tier_for(parent.parameters)
    assert (manifest.multilingual, manifest.languages) == (parent.multilingual, parent.languages)

    transcriber = open_variant(store, manifest.id, CPU)
    try:
        result = transcriber.transcribe(two_seconds, QUICK)
        detected = transcriber.detect_language(two_seconds)
    finally:
        transcriber.close()
    assert isinstance(result, Transcription)
    assert result.variant_id == manifest.id
    assert result.duration == pytest.approx(2.0)
    assert result.language in detected and abs(sum(detected.values()) - 1.0) < 1e-3


def test_default_ids_and_unknown_methods(store: ModelStore) -> None:
    assert variant_id_for("whisper-base", "ct2-int8") == "whisper-base-ct2-int8"
    with pytest.raises(
        UnknownMethodError, match="choose one of: ptq-int8, ptq-int8-keep-fc2, ptq-int8-per-token, ct2-int8"
    ):
        quantize_variant(store, PARENT, "int3")


def test_a_trimmed_audio_context_encodes_only_the_audio_and_a_second(
    store: ModelStore, two_seconds: Audio
) -> None:
    manifest = quantize_variant(store, PARENT, "ct2-int8", audio_context_seconds=1.0)
    assert manifest.id == f"{PARENT}-ct2-int8-ctx1"
    assert manifest.audio_context_seconds == 1.0
    assert manifest.recipe.args["audio_context_seconds"] == 1.0
    transcriber = open_variant(store, manifest.id, CPU)
    encoded_frames = recorded_encoder_inputs(transcriber)
    try:
        detected = transcriber.detect_language(two_seconds)
        result = transcriber.transcribe(two_seconds, QUICK)
    finally:
        transcriber.close()
    assert encoded_frames and set(encoded_frames) == {400}  # 2 s of audio + 1 s, in 2 s steps
    assert abs(sum(detected.values()) - 1.0) < 1e-3
    assert result.duration == pytest.approx(2.0)
    assert result.language == next(iter(detected))  # detected on the same trimmed window


def test_bootstrap_derives_a_trimmed_context_variant_once(store: ModelStore) -> None:
    from compression.bootstrap import BootstrapPlan, DerivedVariant, bootstrap
    from model_store.settings import HushSettings

    made: list[str] = []
    plan = BootstrapPlan(
        teachers=(),
        derived=(DerivedVariant(PARENT, "ct2-int8", audio_context_seconds=4.0),),
        evaluate=False,
        log=made.append,
    )
    settings = HushSettings(store={"root": store.root})
    bootstrap(settings, plan)
    trimmed = store.get(f"{PARENT}-ct2-int8-ctx4")
    assert trimmed.audio_context_seconds == 4.0 and trimmed.parent == PARENT
    bootstrap(settings, plan)  # idempotent: what is there is kept
    assert made == [f"making {PARENT}-ct2-int8-ctx4 (ct2-int8 of {PARENT})"]


def test_bootstrap_derives_a_bf16_attention_variant_only_where_the_runtime_allows(store: ModelStore) -> None:
    from compression.bootstrap import BootstrapPlan, DerivedVariant, bootstrap
    from model_store.settings import HushSettings

    made: list[str] = []
    plan = BootstrapPlan(
        teachers=(),
        derived=(DerivedVariant(PARENT, "ptq-int8", encoder_attention="bfloat16"),),
        evaluate=False,
        log=made.append,
    )
    target = f"{PARENT}-ptq-int8-bf16att"
    bootstrap(HushSettings(store={"root": store.root}, runtime={"bf16_attention": False}), plan)
    assert not store.exists(target)
    assert made == [f"not making {target}: this CPU does not multiply bfloat16 natively"]
    bootstrap(HushSettings(store={"root": store.root}, runtime={"bf16_attention": True}), plan)
    assert store.get(target).encoder_attention == "bfloat16"
    store.remove(target)


def test_a_trimmed_audio_context_needs_ctranslate2(store: ModelStore) -> None:
    with pytest.raises(AudioContextError, match="needs a CTranslate2 method"):
        quantize_variant(store, PARENT, "ptq-int8", audio_context_seconds=10.0)
    store.update(PARENT, audio_context_seconds=10.0)  # as a hand-edited manifest would say
    try:
        with pytest.raises(ValueError, match="trims the audio context"):
            open_variant(store, PARENT, CPU)
    finally:
        store.update(PARENT, audio_context_seconds=None)


def test_a_quantized_variant_is_not_a_parent(store: ModelStore, variant: Callable[[str], Manifest]) -> None:
    int8 = variant("ptq-int8")
    with pytest.raises(UnsupportedParentError, match="not a float transformers checkpoint"):
        quantize_variant(store, int8.id, "ct2-int8")


# ---- real low-precision bytes -----------------------------------------------------------------


def _linear_weights_fp32_bytes(store: ModelStore, names: set[str]) -> int:
    """Bytes the parent's Linear weights named ``names`` would take in float32."""
    model = Parent(store.get(PARENT), store.path(PARENT)).load_float()
    return sum(4 * module.weight.numel() for name, module in model.named_modules() if name in names)


def _parent_linear_names(store: ModelStore) -> set[str]:
    model = Parent(store.get(PARENT), store.path(PARENT)).load_float()
    return {name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def _stored_linear_bytes(store: ModelStore, manifest: Manifest) -> tuple[int, int]:
    """(bytes the variant stores for its quantized Linear weights and their scales, the same weights'
    float32 bytes), read from the files on disk."""
    directory = store.path(manifest.id)
    linear_names = _parent_linear_names(store)
    if manifest.recipe.method == "ct2-int8":
        variables = read_ct2_model([directory / "model.bin"]).variables
        weights = {name: array for name, array in variables.items() if name.endswith("/weight")}
        linear = {name: array for name, array in weights.items() if "linear_" in name}
        assert linear and all(array.dtype == np.int8 for array in linear.values())
        scales = [variables[name + "_scale"] for name in linear]
        stored = sum(array.nbytes for array in linear.values()) + sum(scale.nbytes for scale in scales)
        return stored, sum(4 * array.size for array in linear.values())
    path = directory / (
        INT8_WEIGHTS_FILENAME if manifest.recipe.method == "ptq-int8" else "model.safetensors"
    )
    with safe_open(str(path), framework="pt") as tensors:
        names = list(tensors.keys())
        quantized = {
            key.removesuffix(".weight")
            for key in names
            if key.endswith(".weight") and tensors.get_slice(key).get_dtype() in ("I8", "U8")
        } & linear_names
        assert quantized, f"no int8 Linear weights in {path.name}"
        stored = 0
        for key in names:  # the weights and everything that dequantizes them (scales, absmax, state)
            owner = next((module for module in quantized if key.startswith(module + ".")), None)
            if owner is not None and key != f"{owner}.bias":
                tensor = tensors.get_tensor(key)
                stored += tensor.numel() * tensor.element_size()
    return stored, _linear_weights_fp32_bytes(store, quantized)


@pytest.mark.parametrize("method", [*INT8_METHODS, "bnb-nf4"])
def test_linear_weights_are_stored_in_low_precision(
    method: str, store: ModelStore, variant: Callable[[str], Manifest]
) -> None:
    stored, fp32 = _stored_linear_bytes(store, variant(method))
    limit = 0.5 if method != "bnb-nf4" else 0.25
    assert 0 < stored < limit * fp32, f"{method}: {stored:,} bytes for {fp32:,} bytes of float32 weights"


@pytest.mark.parametrize("method", ["ptq-int8", "ct2-int8"])
def test_int8_variants_are_smaller_than_their_float16_parent(
    method: str, store: ModelStore, variant: Callable[[str], Manifest]
) -> None:
    """The tied vocabulary matrix, most of a tiny model, is int8 too in these two formats."""
    weights = {file.path: file.bytes for file in variant(method).weights}
    parent = {file.path: file.bytes for file in store.get(PARENT).weights}
    model_file = "model.bin" if method == "ct2-int8" else INT8_WEIGHTS_FILENAME
    assert weights[model_file] < 0.6 * parent["model.safetensors"]


def test_keep_fc2_stores_and_runs_the_ffn_output_layers_in_float(
    store: ModelStore, variant: Callable[[str], Manifest]
) -> None:
    manifest = variant("ptq-int8-keep-fc2")
    directory = store.path(manifest.id)
    with safe_open(str(directory / INT8_WEIGHTS_FILENAME), framework="pt") as tensors:
        dtypes = {key: tensors.get_slice(key).get_dtype() for key in tensors.keys()}  # noqa: SIM118
    fc2 = [key for key in dtypes if key.endswith(".fc2.weight")]
    assert len(fc2) == 4 and all(dtypes[key] == "F16" for key in fc2)  # 2 encoder + 2 decoder layers
    assert not any(key.endswith(".fc2.weight_scale") for key in dtypes)
    assert dtypes["model.encoder.layers.0.fc1.weight"] == "I8"
    assert sorted(manifest.recipe.args["float_linears"]) == sorted(key.removesuffix(".weight") for key in fc2)
    model = load_int8(directory)
    assert type(model.get_submodule("model.decoder.layers.1.fc2")) is torch.nn.Linear
    assert isinstance(model.get_submodule("model.decoder.layers.1.fc1"), per_matrix_kind())


def test_per_token_variant_quantizes_encoder_fc2_and_cross_attention_inputs_per_token(
    store: ModelStore, variant: Callable[[str], Manifest]
) -> None:
    directory = store.path(variant("ptq-int8-per-token").id)
    listed = per_token_linears(directory / INT8_WEIGHTS_FILENAME)
    model = load_int8(directory)
    linears = {
        name
        for name, module in model.named_modules()
        if isinstance(module, (PerTokenInt8Linear, per_matrix_kind()))
    }
    cross = ("encoder_attn.k_proj", "encoder_attn.v_proj")
    expected = {
        name
        for name in linears
        if name.startswith("model.encoder.") or name.endswith(".fc2") or name.endswith(cross)
    }
    # 6 Linears a layer in the encoder, + 2 fc2 and 2 x 2 cross-attention inputs in the decoder
    assert listed == expected and len(expected) == 2 * 6 + 2 + 4
    assert all(isinstance(model.get_submodule(name), PerTokenInt8Linear) for name in expected)
    assert isinstance(model.get_submodule("model.decoder.layers.0.fc1"), per_matrix_kind())
    assert per_token_linears(store.path(variant("ptq-int8").id) / INT8_WEIGHTS_FILENAME) == frozenset()
    fc2 = {name for name in expected if name.endswith(".fc2")}
    assert asymmetric_linears(directory / INT8_WEIGHTS_FILENAME) == fc2 and len(fc2) == 4
    assert all(model.get_submodule(name).scheme == "asymmetric" for name in fc2)  # post-GELU inputs
    assert {model.get_submodule(name).scheme for name in expected - fc2} == {"symmetric"}


def test_int8_files_without_asymmetric_linears_load_symmetric_rows(
    store: ModelStore, variant: Callable[[str], Manifest], tmp_path: Path
) -> None:
    """Files written before the scheme existed keep the symmetric rows they were evaluated with."""
    source = store.path(variant("ptq-int8-per-token").id)
    with safe_open(str(source / INT8_WEIGHTS_FILENAME), framework="pt") as tensors:
        metadata = dict(tensors.metadata())
        state = {key: tensors.get_tensor(key) for key in tensors.keys()}  # noqa: SIM118
    del metadata["per_token_asymmetric"]
    shutil.copy(source / "config.json", tmp_path / "config.json")
    save_safetensors(state, tmp_path / INT8_WEIGHTS_FILENAME, metadata=metadata)
    assert asymmetric_linears(tmp_path / INT8_WEIGHTS_FILENAME) == frozenset()
    layer = load_int8(tmp_path).get_submodule("model.encoder.layers.0.fc2")
    assert isinstance(layer, PerTokenInt8Linear) and layer.scheme == "symmetric"


# ---- int8 stays close to the float parent ---------------------------------------------------


def _relative_error(reference: np.ndarray, other: np.ndarray) -> float:
    return float(np.linalg.norm(reference - other) / np.linalg.norm(reference))


@pytest.fixture(scope="module")
def reference_logits(store: ModelStore, two_seconds: Audio) -> tuple[torch.Tensor, list[int], np.ndarray]:
    """Features, a text prompt, and the float parent's logits for the prompt's next token."""
    features = window(log_mel_spectrogram(two_seconds, 80), 0)
    transcriber = open_variant(store, PARENT, CPU)
    assert isinstance(transcriber, TransformersTranscriber)
    tokens = transcriber._decoder.tokens
    prompt = [tokens.sot, tokens.languages["en"], tokens.transcribe, tokens.no_timestamps]
    with torch.inference_mode():
        logits = transcriber.model(input_features=features[None], decoder_input_ids=torch.tensor([prompt]))
    transcriber.close()
    return features, prompt, logits.logits[0, -1].numpy()


# Relative L2 error of the next-token logits, ||parent - variant|| / ||parent||, measured on the tiny random
# model: ptq-int8 0.019, ptq-int8-keep-fc2 0.018, ptq-int8-per-token 0.019, bnb-int8 0.010, bnb-nf4 0.115,
# ct2-int8 0.130 (unrelated logits give about 1.4).
@pytest.mark.parametrize(
    ("method", "tolerance"),
    [
        ("ptq-int8", 0.05),
        ("ptq-int8-keep-fc2", 0.05),
        ("ptq-int8-per-token", 0.05),
        ("bnb-int8", 0.05),
        ("bnb-nf4", 0.3),
    ],
)
def test_transformers_quantized_logits_are_close_to_the_parent(
    method: str,
    tolerance: float,
    store: ModelStore,
    variant: Callable[[str], Manifest],
    reference_logits: tuple[torch.Tensor, list[int], np.ndarray],
) -> None:
    features, prompt, expected = reference_logits
    transcriber = open_variant(store, variant(method).id, CPU)
    assert isinstance(transcriber, TransformersTranscriber)
    with torch.inference_mode():
        logits = transcriber.model(input_features=features[None], decoder_input_ids=torch.tensor([prompt]))
    transcriber.close()
    error = _relative_error(expected, logits.logits[0, -1].float().numpy())
    print(f"{method}: relative logit error {error:.4f}")
    assert 0 < error < tolerance


@requires_legacy_int8
def test_per_channel_codes_are_the_legacy_apis_bytes() -> None:
    """The written-out arithmetic gives what PyTorch's observer and quantize_per_channel gave (and wrote
    into every int8 variant so far): scales and codes, ties, an all-zero row and one-signed rows."""
    torch.manual_seed(0)
    weight = torch.randn(48, 96) * 0.05
    weight[0] = 0.0
    weight[1] = weight[1].abs()
    weight[2] = -weight[2].abs()
    weight[3, :8] = torch.tensor([0.5, -0.25, 0.125, 1.0, -1.0, 0.75, 0.0, 0.375]) * 127.5 / 100
    for values in (weight, weight.half().float()):  # float32, and float16 as the imported checkpoints are
        observer = torch.ao.quantization.per_channel_dynamic_qconfig.weight()
        observer(values)
        scales, zero_points = observer.calculate_qparams()
        codes = torch.quantize_per_channel(values, scales, zero_points, 0, torch.qint8).int_repr()
        our_codes, our_scales = per_channel_int8(values)
        assert our_codes.dtype == torch.int8 and our_scales.dtype == torch.float32
        assert torch.equal(our_scales, scales.float()) and torch.equal(our_codes, codes)


def test_without_the_legacy_kernels_int8_variants_load_as_float_linears(
    store: ModelStore,
    variant: Callable[[str], Manifest],
    reference_logits: tuple[torch.Tensor, list[int], np.ndarray],
    two_seconds: Audio,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A PyTorch release without torch.ao's dynamic int8 Linear still opens every int8 variant: the
    per-matrix Linears become float Linears of the same int8 weights (per-token ones keep torch._int_mm)."""
    features, prompt, expected = reference_logits
    directory = store.path(variant("ptq-int8-per-token").id)
    monkeypatch.setattr(legacy_int8, "available", lambda: False)
    with caplog.at_level("WARNING", logger="model_store.backends.int8_dynamic"):
        model = load_int8(directory)
    assert "run as float32 Linears of their dequantized weights" in caplog.text
    fc1 = model.get_submodule("model.decoder.layers.0.fc1")
    assert type(fc1) is nn.Linear and fc1.weight.dtype == torch.float32
    assert isinstance(model.get_submodule("model.encoder.layers.0.fc1"), PerTokenInt8Linear)
    with safe_open(str(directory / INT8_WEIGHTS_FILENAME), framework="pt") as tensors:
        codes = tensors.get_tensor("model.decoder.layers.0.fc1.weight")
        scales = tensors.get_tensor("model.decoder.layers.0.fc1.weight_scale")
    assert torch.equal(fc1.weight, codes.float() * scales[:, None])  # the stored weights, exactly
    embedding = model.get_input_embeddings().weight
    assert embedding.data_ptr() == model.proj_out.weight.data_ptr()  # tied: one float copy, not two
    with torch.inference_mode():
        logits = model(input_features=features[None], decoder_input_ids=torch.tensor([prompt])).logits
    assert 0 < _relative_error(expected, logits[0, -1].numpy()) < 0.05
    assert numerics_label(variant("ptq-int8"), CPU) == "f32"  # eval records say what ran
    transcriber = open_variant(store, variant("ptq-int8").id, CPU)
    assert isinstance(transcriber, TransformersTranscriber)
    try:
        assert not any(
            type(module).__module__.startswith("torch.ao") for module in transcriber.model.modules()
        )
        assert transcriber.transcribe(two_seconds, QUICK).duration == pytest.approx(2.0)
    finally:
        transcriber.close()


def test_ct2_int8_logits_are_close_to_the_parent(
    store: ModelStore,
    variant: Callable[[str], Manifest],
    reference_logits: tuple[torch.Tensor, list[int], np.ndarray],
) -> None:
    features, prompt, expected = reference_logits
    model = ctranslate2.models.Whisper(str(store.path(variant("ct2-int8").id)), compute_type="int8")
    storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()[None]))
    result = model.generate(
        storage,
        [prompt],
        beam_size=1,
        max_length=max_length_for(len(prompt), 1),
        return_logits_vocab=True,
        suppress_tokens=[],
        suppress_blank=False,
    )[0]
    logits = np.array(result.logits[0])[0]
    error = _relative_error(expected, logits)
    print(f"ct2-int8: relative logit error {error:.4f}")
    assert 0 < error < 0.25


# ---- the CTranslate2 backend decodes as the transformers backend does -------------------------


def test_max_length_yields_the_requested_number_of_new_tokens() -> None:
    for prompt_length in (1, 3, 4, 40, 227):
        for wanted in (1, 16, 224, 448 - prompt_length):
            total = max_length_for(prompt_length, wanted)
            start_step = prompt_length - 1
            assert min(total // 2, total - start_step) == wanted  # CTranslate2's own rule


@pytest.fixture(scope="module")
def float_ct2(store: ModelStore) -> CTranslate2Transcriber:
    """The tiny parent exported to CTranslate2 in float32: same numbers as the parent, other engine."""
    parent = Parent(store.get(PARENT), store.path(PARENT))
    with store.publish("tiny-random-ct2-float32") as staging:
        args = export_ctranslate2(parent, staging.directory, "float32")
        manifest = staging.commit(
            **{
                **store.get(PARENT).model_dump(
                    include={"parameters", "size_tier", "multilingual", "languages"}
                ),
                "parent": PARENT,
                "recipe": Recipe(method="ct2-float32", args=args),
                "backend": "ctranslate2",
                "device": "cpu",
                "dtype": "float32",
            }
        )
    transcriber = open_variant(store, manifest.id, CPU)
    assert isinstance(transcriber, CTranslate2Transcriber)
    return transcriber


@pytest.mark.parametrize("with_timestamps", [True, False])
def test_ctranslate2_float32_decodes_the_same_tokens_as_transformers(
    with_timestamps: bool,
    store: ModelStore,
    float_ct2: CTranslate2Transcriber,
    reference_logits: tuple[torch.Tensor, list[int], np.ndarray],
) -> None:
    features, prompt, _ = reference_logits
    prompt = prompt if not with_timestamps else prompt[:-1]
    previous = [float_ct2._decoder.tokens.start_of_prev, *float_ct2._decoder.text_tokens(" Hello there.")]
    reference = open_variant(store, PARENT, CPU)
    assert isinstance(reference, TransformersTranscriber)
    for full_prompt in (prompt, [*previous, *prompt]):
        expected = reference._decoder.decode(
            reference._decoder.encode(features),
            full_prompt,
            WindowDecoding(temperature=0.0, max_new_tokens=12, with_timestamps=with_timestamps),
        )
        tokens, sum_logprob, no_speech = float_ct2._decoder.decode(
            float_ct2._decoder.encode(features),
            full_prompt,
            WindowDecoding(temperature=0.0, max_new_tokens=12, with_timestamps=with_timestamps),
        )
        assert tokens == expected[0]
        assert len(tokens) == 12
        assert sum_logprob == pytest.approx(expected[1], abs=1e-2)
        assert no_speech == pytest.approx(expected[2], abs=1e-4)
    reference.close()


def test_ctranslate2_words_and_sampling(float_ct2: CTranslate2Transcriber, two_seconds: Audio) -> None:
    options = TranscribeOptions(language="en", temperatures=(0.5,), max_new_tokens=12, word_timestamps=True)
    result = float_ct2.transcribe(two_seconds, options)
    words = [word for segment in result.segments for word in segment.words or ()]
    assert all(segment.temperature == 0.5 for segment in result.segments)
    assert all(0.0 <= word.start <= word.end <= 2.0 for word in words)
    assert all(0.0 <= word.probability <= 1.0 for word in words)


# ---- GPU-only methods -------------------------------------------------------------------------


@pytest.mark.parametrize("method", GPU_METHODS)
def test_gpu_method_publishes_a_cuda_variant(
    method: str, store: ModelStore, variant: Callable[[str], Manifest]
) -> None:
    manifest = variant(method)
    assert store.verify(manifest.id) == manifest
    assert (manifest.device, manifest.dtype) == ("cuda", METHODS[method].dtype)
    assert manifest.parameters == store.get(PARENT).parameters
    with pytest.raises(BackendUnavailableError, match="needs a CUDA GPU"):
        open_variant(store, manifest.id, CPU)


@pytest.mark.gpu
@requires_cuda
@pytest.mark.parametrize("method", [*GPU_METHODS, "bnb-int8", "bnb-nf4", "ct2-int8"])
def test_variant_transcribes_on_the_gpu(
    method: str, store: ModelStore, variant: Callable[[str], Manifest], two_seconds: Audio
) -> None:
    transcriber = open_variant(store, variant(method).id, RuntimeSettings(device="cuda"))
    try:
        result = transcriber.transcribe(two_seconds, QUICK)
    finally:
        transcriber.close()
    assert isinstance(result, Transcription)


# ---- the command line ----------------------------------------------------------------------


def test_compress_quantize_command(store: ModelStore, tmp_path: Path) -> None:
    environment = {**os.environ, "HUSH_STORE__ROOT": str(store.root), "HUSH_HOME": str(tmp_path / "home")}

    def hush(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "model_store.cli", "compress", "quantize", *args],
            capture_output=True,
            text=True,
            env=environment,
            timeout=300,
        )

    made = hush(PARENT, "--method", "ptq-int8", "--id", "cli-int8")
    assert made.returncode == 0, made.stderr
    assert "published cli-int8: ptq-int8 of tiny-random" in made.stderr
    assert store.verify("cli-int8").recipe.method == "ptq-int8"
    unknown = hush(PARENT, "--method", "int3")
    assert unknown.returncode == 2
    assert "unknown quantization method 'int3'" in unknown.stderr and "bnb-nf4" in unknown.stderr


# ---- the real whisper-base --------------------------------------------------------------------


@pytest.mark.real_model
@pytest.mark.slow
@pytest.mark.parametrize(
    ("parent", "method"),
    [
        ("whisper-base", "ptq-int8"),
        ("whisper-base", "ptq-int8-per-token"),
        ("whisper-base", "ct2-int8"),
        ("whisper-tiny.en", "ptq-int8"),  # English-only: no language tokens, as bootstrap makes it
        ("whisper-tiny.en", "ct2-int8"),
    ],
)
def test_quantized_real_whisper_transcribes_jfk(
    parent: str, method: str, real_store: ModelStore, jfk_audio: Audio
) -> None:
    variant_id = variant_id_for(parent, method)
    if not real_store.exists(variant_id):
        quantize_variant(real_store, parent, method)
    manifest = real_store.get(variant_id)
    parent_manifest = real_store.get(parent)
    parent_weights = next(file for file in parent_manifest.weights if file.path == "model.safetensors")
    assert max(file.bytes for file in manifest.weights) < 0.55 * parent_weights.bytes  # int8 vs float16
    assert (manifest.multilingual, manifest.languages) == (
        parent_manifest.multilingual,
        parent_manifest.languages,
    )
    transcriber = open_variant(real_store, variant_id, CPU)
    try:
        result = transcriber.transcribe(jfk_audio, TranscribeOptions())
    finally:
        transcriber.close()
    errors = char_errors(normalize(JFK_TEXT, "en"), normalize(result.text, "en"))
    print(f"{variant_id}: {result.text!r} CER {errors.rate:.4f}")
    assert errors.rate <= 0.02
    assert result.language == "en"
    segment = result.segments[-1]
    assert 10.0 <= segment.end <= 11.1
    assert -1.0 < segment.avg_logprob < 0.0  # the CTranslate2 score is a sum again, as in the other backend


# ---- 8-bit activations where the CPU has VNNI ---------------------------------------------------


def test_full_range_is_a_run_time_choice_over_the_same_bytes(
    store: ModelStore, variant: Callable[[str], Manifest]
) -> None:
    directory = store.path(variant("ptq-int8-per-token").id)
    for full_range, expected in ((False, per_matrix_kind()), (True, per_matrix_kind(full_range=True))):
        model = load_int8(directory, full_range=full_range)
        assert type(model.get_submodule("model.decoder.layers.0.fc1")) is expected
        assert isinstance(model.get_submodule("model.encoder.layers.0.fc1"), PerTokenInt8Linear)
    manifest = variant("ptq-int8")
    assert numerics_label(manifest, RuntimeSettings(device="cpu", int8_full_range=True)) == "a8"
    assert numerics_label(manifest, RuntimeSettings(device="cpu", int8_full_range=False)) == ""
    assert numerics_label(store.get(PARENT), RuntimeSettings(device="cpu", int8_full_range=True)) == ""


@pytest.mark.skipif(not full_range_int8_is_exact(), reason="8-bit int8 activations need a CPU with VNNI")
def test_full_range_activations_bring_ptq_int8_closer_to_the_parent(
    store: ModelStore,
    variant: Callable[[str], Manifest],
    reference_logits: tuple[torch.Tensor, list[int], np.ndarray],
) -> None:
    features, prompt, expected = reference_logits
    errors = {}
    for full_range in (False, True):
        model = load_int8(store.path(variant("ptq-int8").id), full_range=full_range)
        with torch.inference_mode():
            logits = model(input_features=features[None], decoder_input_ids=torch.tensor([prompt])).logits
        errors[full_range] = _relative_error(expected, logits[0, -1].numpy())
    print(f"ptq-int8 relative logit error: 7-bit {errors[False]:.4f}, 8-bit {errors[True]:.4f}")
    assert 0 < errors[True] < 0.9 * errors[False]  # 0.74x measured (AVX-512 VNNI)


@pytest.mark.skipif(not full_range_int8_is_exact(), reason="8-bit int8 activations need a CPU with VNNI")
def test_full_range_products_do_not_saturate_on_this_cpu() -> None:
    """The case 7 bits exist for: every activation at the top of its range times weights of 127, whose
    pairwise sums overflow a 16-bit lane without VNNI."""
    weight = torch.full((16, 64), 127, dtype=torch.int8)
    scales = torch.full((16,), 0.01)
    layer = _quantized_linear(weight, scales, None, full_range=True)
    inputs = torch.full((4, 64), 3.0)
    expected = inputs @ (weight.float() * scales[:, None]).T
    assert torch.allclose(layer(inputs), expected, rtol=0.01)


def test_asymmetric_rows_are_refused_outside_the_per_token_linears(tmp_path: Path) -> None:
    model = tiny_random_whisper().model
    fc2 = "model.encoder.layers.0.fc2"
    with pytest.raises(ValueError, match=f"not per token: \\['{fc2}'\\]"):
        save_int8(model, tmp_path, per_token_linears=["model.encoder.layers.0.fc1"], asymmetric_linears=[fc2])
    save_int8(model, tmp_path, per_token_linears=[fc2], asymmetric_linears=[fc2])
    assert asymmetric_linears(tmp_path / INT8_WEIGHTS_FILENAME) == {fc2}


def test_the_ct2_conversion_scratch_lives_inside_the_staging_directory(
    store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run killed mid-conversion then leaves nothing the store's sweep of stale staging misses."""
    outputs: list[Path] = []
    convert = TransformersConverter.convert

    def recording_convert(self: TransformersConverter, output_dir: str, *args: Any, **kwargs: Any) -> str:
        outputs.append(Path(output_dir))
        return convert(self, output_dir, *args, **kwargs)

    monkeypatch.setattr(TransformersConverter, "convert", recording_convert)
    manifest = quantize_variant(store, PARENT, "ct2-int8", variant_id="tiny-ct2-scratch")
    staging = outputs[0].parent.parent
    assert staging.parent == store.root and staging.name.startswith(".staging-tiny-ct2-scratch-")
    assert not [path.name for path in store.path(manifest.id).iterdir() if path.name.startswith(".")]
    assert not [path.name for path in store.root.iterdir() if path.name.startswith(".")]
