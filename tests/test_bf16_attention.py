"""bfloat16 encoder self-attention: close to float32 but really bfloat16, only the encoder's, published
as a manifest field, applied where the runtime allows it, and labelled where it does not."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient
from torch.nn.functional import scaled_dot_product_attention
from transformers.modeling_outputs import BaseModelOutput

from app.main import create_app
from compression.quantize.methods import EncoderAttentionError, quantize_variant, variant_id_for
from model_store.backends.bf16_attention import (
    IMPLEMENTATION_NAME,
    QUERY_BLOCK,
    blocked_bf16_attention,
    use_bf16_encoder_attention,
)
from model_store.backends.cpu_features import has_native_bf16, native_bf16
from model_store.backends.transformers_backend import TransformersTranscriber
from model_store.opener import numerics_label, open_variant, uses_bf16_attention
from model_store.settings import HushSettings, RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import TranscribeOptions
from tests.app_support import server_settings
from tests.bench.noise_floor import publish_rounded_twin
from tests.conftest import sine
from tests.factories import publish_tiny_variant, tiny_random_whisper

PARENT = "tiny-random"
BF16_ON = RuntimeSettings(device="cpu", bf16_attention=True)
BF16_OFF = RuntimeSettings(device="cpu", bf16_attention=False)


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm())


def test_blocked_attention_is_bf16_close_to_float32_across_block_edges() -> None:
    torch.manual_seed(0)
    positions = 2 * QUERY_BLOCK + 22  # a last block that is not full
    query, key, value = (torch.randn(2, 3, positions, 16) for _ in range(3))
    reference = scaled_dot_product_attention(query * 2, key, value, scale=0.25).transpose(1, 2)
    result = blocked_bf16_attention(query * 2, key, value, scaling=0.25)
    assert result.shape == (2, positions, 3, 16) and result.dtype == torch.float32
    error = _relative_error(result, reference)
    assert 1e-4 < error < 3e-2  # bfloat16's rounding (8 bits of mantissa), not float32's
    # each block row is the same computation whatever the block: the last block agrees with a lone run
    tail = blocked_bf16_attention(query[:, :, -22:] * 2, key, value, scaling=0.25)
    assert torch.allclose(result[:, -22:], tail, atol=1e-6)


@torch.inference_mode()
def test_only_the_encoder_changes() -> None:
    reference = tiny_random_whisper(seed=3).model
    changed = tiny_random_whisper(seed=3).model
    use_bf16_encoder_attention(changed)
    assert changed.config._attn_implementation == IMPLEMENTATION_NAME
    features = torch.randn(1, 80, 3000)
    encoded = reference.model.encoder(features).last_hidden_state
    encoded_bf16 = changed.model.encoder(features).last_hidden_state
    assert 1e-5 < _relative_error(encoded_bf16, encoded) < 3e-2
    # the decoder (causal self-attention, cross-attention) keeps float32 SDPA: identical logits
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 50257]])
    logits = reference(
        encoder_outputs=BaseModelOutput(last_hidden_state=encoded), decoder_input_ids=ids
    ).logits
    logits_bf16 = changed(
        encoder_outputs=BaseModelOutput(last_hidden_state=encoded), decoder_input_ids=ids
    ).logits
    assert torch.equal(logits, logits_bf16)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    store = ModelStore(tmp_path_factory.mktemp("bf16-store"))
    publish_tiny_variant(store, PARENT)
    return store


def test_a_variant_published_with_bf16_attention_runs_it_where_the_runtime_allows(store: ModelStore) -> None:
    manifest = quantize_variant(store, PARENT, "ptq-int8", encoder_attention="bfloat16", progress=False)
    assert (
        manifest.id
        == variant_id_for(PARENT, "ptq-int8", encoder_attention="bfloat16")
        == "tiny-random-ptq-int8-bf16att"
    )
    assert (
        manifest.encoder_attention == "bfloat16" and manifest.recipe.args["encoder_attention"] == "bfloat16"
    )
    assert store.get(PARENT).encoder_attention == "float32"  # the default, also of older manifests
    options = TranscribeOptions(language="en", temperatures=(0.0,), max_new_tokens=8, without_timestamps=True)
    for runtime, implementation in ((BF16_ON, IMPLEMENTATION_NAME), (BF16_OFF, "sdpa")):
        transcriber = open_variant(store, manifest.id, runtime)
        assert isinstance(transcriber, TransformersTranscriber)
        assert transcriber.model.config._attn_implementation == implementation
        assert isinstance(transcriber.transcribe(sine(1.0), options).text, str)
        transcriber.close()
    assert uses_bf16_attention(manifest, BF16_ON) and not uses_bf16_attention(manifest, BF16_OFF)
    # dynamic int8 runs on the CPU even where a GPU is asked for, and so does its bfloat16 attention;
    # a variant that would run on the GPU does not use it
    cuda = RuntimeSettings(device="cuda", bf16_attention=True)
    assert uses_bf16_attention(manifest, cuda)
    float_parent = store.get(PARENT).model_copy(update={"encoder_attention": "bfloat16"})
    assert uses_bf16_attention(float_parent, BF16_ON) and not uses_bf16_attention(float_parent, cuda)
    # results made with float32 attention are kept apart from the published numerics
    assert numerics_label(manifest, BF16_OFF.model_copy(update={"int8_full_range": True})) == "a8-att32"
    assert numerics_label(manifest, BF16_ON.model_copy(update={"int8_full_range": False})) == ""
    assert numerics_label(store.get(PARENT), BF16_OFF) == ""  # a float32-attention variant: nothing to say


def test_the_model_card_says_what_this_server_computes(store: ModelStore) -> None:
    variant_id = variant_id_for(PARENT, "ptq-int8", encoder_attention="bfloat16")
    if not store.exists(variant_id):
        quantize_variant(store, PARENT, "ptq-int8", encoder_attention="bfloat16", progress=False)
    for bf16, numerics in ((True, ""), (False, "att32")):
        settings = server_settings(store.root).model_copy(
            update={
                "runtime": RuntimeSettings(
                    device="cpu", threads=1, bf16_attention=bf16, int8_full_range=False
                )
            }
        )
        with TestClient(create_app(settings, store)) as client:
            card = client.get(f"/v1/models/{variant_id}").json()
        assert card["encoder_attention"] == "bfloat16" and card["numerics"] == numerics


@pytest.mark.parametrize("method", ["ct2-int8", "fp16"])
def test_bf16_attention_is_refused_outside_the_transformers_cpu_path(store: ModelStore, method: str) -> None:
    with pytest.raises(EncoderAttentionError, match=method):
        quantize_variant(store, PARENT, method, encoder_attention="bfloat16", progress=False)
    assert not store.exists(variant_id_for(PARENT, method, encoder_attention="bfloat16"))


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    assert has_native_bf16(frozenset({"avx512f", "avx512_bf16"})) and has_native_bf16(frozenset({"amx_bf16"}))
    assert not has_native_bf16(frozenset({"avx512f", "avx512_vnni", "avx2"}))
    assert native_bf16(tmp_path / "no-cpuinfo") is False


def test_the_setting_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUSH_RUNTIME__BF16_ATTENTION", "false")
    assert HushSettings().runtime.resolved_bf16_attention() is False
    monkeypatch.setenv("HUSH_RUNTIME__BF16_ATTENTION", "true")
    assert HushSettings().runtime.resolved_bf16_attention() is True
    monkeypatch.delenv("HUSH_RUNTIME__BF16_ATTENTION")
    assert HushSettings().runtime.resolved_bf16_attention() is native_bf16()


def test_the_noise_floor_twin_shares_its_parents_weights_and_rounds_its_attention(store: ModelStore) -> None:
    twin_id = publish_rounded_twin(store, PARENT)
    twin, parent = store.get(twin_id), store.get(PARENT)
    assert twin_id == PARENT + "-floatbf16att" and twin.parent == PARENT
    assert twin.encoder_attention == "bfloat16" and twin.weights_sha256() == parent.weights_sha256()
    assert twin.eval is None and twin.latency is None  # measured afresh by hush eval
    weights = store.path(twin_id) / "model.safetensors"
    assert weights.stat().st_ino == (store.path(PARENT) / "model.safetensors").stat().st_ino  # no copy
    transcriber = open_variant(store, twin_id, BF16_ON)
    assert isinstance(transcriber, TransformersTranscriber)
    assert transcriber.model.config._attn_implementation == IMPLEMENTATION_NAME
    transcriber.close()
