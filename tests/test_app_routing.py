"""The routing policy on constructed manifests: best accuracy per millisecond within the constraints."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from app.latency import LatencyTracker
from app.routing import (
    NoRouteError,
    NoVariantsError,
    RouteReason,
    RouteRequest,
    RoutingPolicy,
    pooled_cer,
)
from model_store.manifest import Manifest, Recipe, WeightFile
from tests.app_support import eval_report, latency

CPU = RoutingPolicy(quality_floor_cer=0.3, device="cpu")
GPU = RoutingPolicy(quality_floor_cer=0.3, device="cuda")
ENGLISH_10S = RouteRequest(language="en", audio_seconds=10.0)


def manifest(
    variant_id: str,
    *,
    cer: dict[str, float] | None = None,
    ms: float | None = None,
    parameters: int = 74_000_000,
    **fields: Any,
) -> Manifest:
    values: dict[str, Any] = {
        "id": variant_id,
        "parent": None,
        "recipe": Recipe(method="import"),
        "backend": "transformers",
        "device": "cpu",
        "dtype": "float16",
        "parameters": parameters,
        "bytes_on_disk": 1,
        "weights": (WeightFile(path="model.safetensors", bytes=1, sha256="0" * 64),),
        "size_tier": "base",
        "multilingual": True,
        "languages": ("*",),
        "eval": eval_report(**cer) if cer else None,
        "latency": latency(ms) if ms else None,
    }
    values.update(fields)
    return Manifest.model_validate(values)


def test_best_accuracy_per_millisecond_wins_not_best_accuracy() -> None:
    accurate_slow = manifest("accurate", cer={"en": 0.05}, ms=100.0)  # 0.95 / 1000 ms
    fast_decent = manifest("fast", cer={"en": 0.10}, ms=40.0)  # 0.90 / 400 ms: 2.4x better per ms
    decision = CPU.choose([accurate_slow, fast_decent], ENGLISH_10S, {})
    assert decision.variant_id == "fast"
    assert decision.reason is RouteReason.BEST_ACCURACY_PER_MS
    assert [c.variant_id for c in decision.ranked] == ["fast", "accurate"]
    assert decision.chosen.expected_ms == pytest.approx(400.0)
    assert decision.chosen.score == pytest.approx(0.90 / 400.0)
    assert "fast" in decision.explanation and "eval en" in decision.explanation


def test_per_language_cer_decides_per_language() -> None:
    english_expert = manifest("en-expert", cer={"en": 0.05, "de": 0.40}, ms=50.0)
    generalist = manifest("generalist", cer={"en": 0.15, "de": 0.12}, ms=50.0)
    assert CPU.choose([english_expert, generalist], ENGLISH_10S, {}).variant_id == "en-expert"
    german = RouteRequest(language="de", audio_seconds=10.0)
    decision = CPU.choose([english_expert, generalist], german, {})
    assert decision.variant_id == "generalist"
    assert decision.reason is RouteReason.ONLY_CANDIDATE  # en-expert's German CER is above the floor
    assert any(item.variant_id == "en-expert" and "floor" in item.why for item in decision.excluded)


def test_quality_floor_keeps_a_fast_useless_variant_out() -> None:
    useless = manifest("useless", cer={"en": 0.45}, ms=1.0)
    good = manifest("good", cer={"en": 0.08}, ms=80.0)
    decision = CPU.choose([useless, good], ENGLISH_10S, {})
    assert decision.variant_id == "good"
    assert "useless" in decision.explanation
    with pytest.raises(NoRouteError, match="quality floor"):
        CPU.choose([useless], ENGLISH_10S, {})


def test_tier_constraint() -> None:
    tiny = manifest("tiny", cer={"en": 0.15}, ms=10.0, size_tier="tiny", parameters=39_000_000)
    base = manifest("base", cer={"en": 0.10}, ms=30.0, size_tier="base")
    assert CPU.choose([tiny, base], ENGLISH_10S, {}).variant_id == "tiny"
    in_base = RouteRequest(language="en", audio_seconds=10.0, tier="base")
    assert CPU.choose([tiny, base], in_base, {}).variant_id == "base"
    with pytest.raises(NoRouteError, match="tier 'large'"):
        CPU.choose([tiny, base], RouteRequest(language="en", audio_seconds=10.0, tier="large"), {})


def test_language_coverage() -> None:
    english_only = manifest("tiny-en", cer={"en": 0.05}, ms=10.0, multilingual=False, languages=("*",))
    german_expert = manifest("de-expert", cer={"de": 0.06}, ms=20.0, languages=("de",))
    multilingual = manifest("multi", cer={"en": 0.10, "de": 0.10, "fr": 0.12}, ms=50.0)
    variants = [english_only, german_expert, multilingual]
    assert CPU.choose(variants, ENGLISH_10S, {}).variant_id == "tiny-en"
    assert CPU.choose(variants, RouteRequest(language="de", audio_seconds=5.0), {}).variant_id == "de-expert"
    french = CPU.choose(variants, RouteRequest(language="fr", audio_seconds=5.0), {})
    assert french.variant_id == "multi"
    assert {item.variant_id for item in french.excluded} == {"tiny-en", "de-expert"}


def test_translation_needs_a_multilingual_variant() -> None:
    english_only = manifest("tiny-en", cer={"en": 0.05}, ms=10.0, multilingual=False)
    multilingual = manifest("multi", cer={"en": 0.10}, ms=50.0)
    request = RouteRequest(language="en", audio_seconds=5.0, task="translate")
    assert CPU.choose([english_only, multilingual], request, {}).variant_id == "multi"


def test_pinned_model_is_served_even_below_the_floor() -> None:
    weak = manifest("weak", cer={"en": 0.5}, ms=10.0)
    good = manifest("good", cer={"en": 0.05}, ms=10.0)
    pinned = RouteRequest(language="en", audio_seconds=5.0, pinned="weak")
    decision = CPU.choose([weak, good], pinned, {})
    assert (decision.variant_id, decision.reason) == ("weak", RouteReason.PINNED)
    assert decision.explanation.startswith("pinned by request")
    english_only = manifest("tiny-en", multilingual=False)
    with pytest.raises(NoRouteError, match="does not cover language 'de'"):
        CPU.choose([english_only], RouteRequest(language="de", audio_seconds=1.0, pinned="tiny-en"), {})


def test_gpu_only_variants_are_excluded_on_cpu() -> None:
    gpu_fast = manifest("gpu-fast", cer={"en": 0.05}, ms=2.0, device="cuda")
    cpu_slow = manifest("cpu-slow", cer={"en": 0.08}, ms=60.0)
    decision = CPU.choose([gpu_fast, cpu_slow], ENGLISH_10S, {})
    assert decision.variant_id == "cpu-slow"
    assert any(item.variant_id == "gpu-fast" and "CUDA" in item.why for item in decision.excluded)
    assert GPU.choose([gpu_fast, cpu_slow], ENGLISH_10S, {}).variant_id == "gpu-fast"
    with pytest.raises(NoVariantsError):
        CPU.choose([gpu_fast], ENGLISH_10S, {})


def test_observed_slowdown_scales_the_manifests_cost() -> None:
    a = manifest("a", cer={"en": 0.10}, ms=20.0)
    b = manifest("b", cer={"en": 0.10}, ms=30.0)
    first = CPU.choose([a, b], ENGLISH_10S, {})
    assert first.variant_id == "a" and first.chosen.expected_ms == pytest.approx(200.0)
    tracker = LatencyTracker(alpha=0.5)
    for _ in range(4):  # a is slow here (queueing): 2000 ms observed where 200 were modelled
        tracker.observe("a", 2000.0, modelled_ms=200.0, audio_seconds=10.0, measured=True)
    assert tracker.slowdowns()["a"] == pytest.approx(1 + 9 * (1 - 0.5**4))  # from 1 towards 10
    assert tracker.estimates()["a"] == pytest.approx(200.0)  # observed ms per audio second, reported
    decision = CPU.choose([a, b], ENGLISH_10S, tracker.slowdowns())
    assert decision.variant_id == "b"
    slowed = next(c for c in decision.ranked if c.variant_id == "a")
    assert slowed.expected_ms == pytest.approx(200.0 * tracker.slowdowns()["a"])
    assert "observed x" in decision.explanation
    # a cost known only by a guess is replaced by the first observation, not averaged with it
    guessed = LatencyTracker(alpha=0.5)
    assert guessed.observe("c", 300.0, modelled_ms=100.0, audio_seconds=1.0, measured=False) == 3.0


def split_latency(ms_per_audio_second: float, detection_ms: float) -> Any:
    return latency(ms_per_audio_second).model_copy(
        update={"clip_seconds": 10.0, "language_detection_ms": detection_ms}
    )


def test_the_encoder_is_paid_per_window_so_clip_length_can_change_the_choice() -> None:
    # Full context: 300 ms for a 10-s clip, of which the 30 s encoder pass is 200; the decoder 10 ms/s.
    full = manifest("full", cer={"en": 0.10}, latency=split_latency(30.0, 200.0))
    # Trimmed to the audio (>= 10 s): 400 ms for 10 s, an encoder pass over 12 s of 150 ms, 25 ms/s after.
    trimmed = manifest(
        "trimmed", cer={"en": 0.10}, latency=split_latency(40.0, 150.0), audio_context_seconds=10.0
    )
    short, long = RouteRequest("en", 2.0), RouteRequest("en", 28.0)
    costs_short = {c.variant_id: c.expected_ms for c in CPU.choose([full, trimmed], short, {}).ranked}
    assert costs_short == pytest.approx({"full": 200.0 + 20.0, "trimmed": 150.0 / 12 * 10 + 50.0})
    assert CPU.choose([full, trimmed], short, {}).variant_id == "trimmed"
    costs_long = {c.variant_id: c.expected_ms for c in CPU.choose([full, trimmed], long, {}).ranked}
    assert costs_long == pytest.approx({"full": 200.0 + 280.0, "trimmed": 150.0 / 12 * 30 + 700.0})
    assert CPU.choose([full, trimmed], long, {}).variant_id == "full"
    # past 30 s the full-context variant pays a second window
    assert CPU.choose([full], RouteRequest("en", 31.0), {}).chosen.expected_ms == pytest.approx(400.0 + 310.0)
    # the timed clips' own length costs what was measured, whichever the model
    assert CPU.choose([full], ENGLISH_10S, {}).chosen.expected_ms == pytest.approx(300.0)
    # the variant that detected the language has encoded the first window: a clip of one window pays
    # only its decoder there (the transcription takes the encoding back), a longer one pays again
    detected = replace(short, detected_by="full")
    costs_detected = {c.variant_id: c.expected_ms for c in CPU.choose([full, trimmed], detected, {}).ranked}
    assert costs_detected == pytest.approx({"full": 20.0, "trimmed": 150.0 / 12 * 10 + 50.0})
    assert CPU.choose([full, trimmed], detected, {}).variant_id == "full"
    past_one_window = RouteRequest("en", 31.0, detected_by="full")
    assert CPU.choose([full], past_one_window, {}).chosen.expected_ms == pytest.approx(400.0 + 310.0)
    # without a detection figure (measured before hush timed it) the cost is proportional to duration
    proportional = manifest("old", cer={"en": 0.10}, ms=30.0)
    assert CPU.choose([proportional], short, {}).chosen.expected_ms == pytest.approx(60.0)


def test_fallbacks_for_variants_without_eval_for_the_language() -> None:
    pooled = manifest("pooled", cer={"en": 0.10, "de": 0.30}, ms=40.0)  # no French: pooled CER 0.20
    assert pooled_cer(pooled) == pytest.approx(0.20)
    unevaluated_fast = manifest("unevaluated", ms=5.0)
    french = RouteRequest(language="fr", audio_seconds=5.0)
    decision = CPU.choose([pooled, unevaluated_fast], french, {})
    assert decision.variant_id == "pooled"  # an evaluated variant beats an unevaluated faster one
    assert decision.chosen.cer_source == "pooled eval"
    only_unevaluated = CPU.choose([unevaluated_fast, manifest("slower", ms=50.0)], french, {})
    assert (only_unevaluated.variant_id, only_unevaluated.reason) == (
        "unevaluated",
        RouteReason.UNEVALUATED_FASTEST,
    )
    no_latency = [manifest("small", parameters=39_000_000), manifest("big", parameters=244_000_000)]
    prior = CPU.choose(no_latency, french, {})
    assert prior.variant_id == "small" and prior.chosen.latency_source == "prior"


def test_ties_break_deterministically_and_the_explanation_is_one_ascii_line() -> None:
    twins = [manifest(name, cer={"en": 0.1}, ms=30.0) for name in ("twin-b", "twin-a")]
    decision = CPU.choose(twins, ENGLISH_10S, {})
    assert decision.variant_id == "twin-a"
    assert decision.explanation.isascii() and "\n" not in decision.explanation


def test_an_unmeasured_variant_costs_its_measured_ancestor_not_a_guess() -> None:
    measured_parent = manifest("base", cer={"en": 0.05}, ms=500.0)
    finetuned = manifest("base-ft", cer={"en": 0.04}, parent="base")  # slightly better, never timed
    grandchild = manifest("base-ft-lora", cer={"en": 0.039}, parent="base-ft")
    decision = CPU.choose([measured_parent, finetuned, grandchild], ENGLISH_10S, {})
    costs = {c.variant_id: (c.expected_ms, c.latency_source) for c in decision.ranked}
    assert costs["base-ft"] == (5000.0, "prior: base")
    assert costs["base-ft-lora"] == (5000.0, "prior: base")  # found two generations up
    assert decision.variant_id == "base-ft-lora"  # same cost, so the accuracy decides
    # With no measured ancestor, the per-parameter prior is calibrated on what was measured here:
    orphan = manifest("orphan", cer={"en": 0.04}, parameters=37_000_000)
    calibrated = CPU.choose([measured_parent, orphan], ENGLISH_10S, {})
    orphan_cost = next(c for c in calibrated.ranked if c.variant_id == "orphan")
    assert orphan_cost.latency_source == "prior"
    assert orphan_cost.expected_ms == pytest.approx(500.0 / 74 * 37 * 10)  # half base's size, half its cost


def test_language_detection_uses_a_variant_meant_for_every_language() -> None:
    from app.language import detection_variant
    from model_store.settings import RuntimeSettings

    cpu = RuntimeSettings(device="cpu")
    general = manifest("base", parameters=74_000_000)
    student = manifest("student", parameters=30_000_000, languages=("cs", "nl"))  # smaller, but narrow
    english = manifest("tiny.en", parameters=39_000_000, multilingual=False, languages=("en",))

    def detected(*manifests: Manifest, preferred: str | None = None) -> str | None:
        chosen = detection_variant(manifests, cpu, preferred)
        return chosen.id if chosen is not None else None

    assert detected(student, general, english) == "base"
    assert detected(student, english) == "student"  # no general one: the smallest multilingual
    assert detected(student, general, preferred="student") == "student"
    assert detection_variant([english], cpu) is None
    # of the same size, the quickest measured detector; one never measured comes last
    quick = manifest("base-int8-trimmed", parameters=74_000_000, latency=split_latency(8.0, 130.0))
    slow = manifest("base-int8", parameters=74_000_000, latency=split_latency(13.0, 490.0))
    assert detected(general, slow, quick) == "base-int8-trimmed"
    assert detected(general, slow) == "base-int8"
