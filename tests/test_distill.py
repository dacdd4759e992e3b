"""Distillation on tiny random Whispers: students, matching, fake quantization, export, training."""

from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import WhisperForConditionalGeneration

from compression.distill.export import quantized_tensors
from compression.distill.fake_quant import (
    QuantSpec,
    apply_fake_quant,
    decoder_linears,
    fake_quantize,
    quantize,
    remove_fake_quant,
)
from compression.distill.guided import (
    batch_prompts,
    cross_attention_states,
    decision_costs,
    measure_sensitivity,
    output_sensitivity,
    target_logits,
)
from compression.distill.guided_bits import candidate_choices, choose_bits, greedy_bits
from compression.distill.guided_matching import choose_matching
from compression.distill.guided_verify import verified_choice
from compression.distill.losses import (
    FeatureAdapter,
    dynamic_matching,
    layer_distances,
    matched_distance,
    most_distant_layers,
)
from compression.distill.objective import DistillObjective, ffn_features, logits_of, loss_config
from compression.distill.pipeline import quantize_frozen_parts
from compression.distill.plan import DistillPlan
from compression.distill.students import (
    IncompatibleStudentError,
    maximally_spaced,
    pretrained_student,
    shrink_student,
)
from compression.distill.teacher_memo import TeacherMemo
from compression.training.checkpoint import PlanMismatchError
from compression.training.dataset import IGNORE, Batch, CachedBatches, Example
from compression.training.encoder_cache import EncoderCache
from compression.training.freezing import train_decoder_only
from compression.training.loop import TrainingOptions, train
from model_store.backends import lowbit
from model_store.backends.lowbit import (
    LOWBIT_WEIGHTS_FILENAME,
    load_lowbit,
    pack_bits,
    pack_int4,
    save_lowbit,
    unpack_bits,
    unpack_int4,
)
from model_store.safetensors_file import save_safetensors
from model_store.transcription import Audio
from model_store.whisper_tokens import special_tokens
from tests.conftest import sine
from tests.factories import tiny_random_whisper


@pytest.fixture(scope="module")
def teacher() -> WhisperForConditionalGeneration:
    return tiny_random_whisper(seed=1, layers=4).model


def features(batch: int = 2, frames: int = 1500, width: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, frames, width, generator=torch.Generator().manual_seed(seed))


def test_maximally_spaced_layers() -> None:
    assert maximally_spaced(6, 2) == (0, 5)
    assert maximally_spaced(12, 4) == (0, 4, 7, 11)
    assert maximally_spaced(32, 2) == (0, 31)
    assert maximally_spaced(4, 4) == (0, 1, 2, 3)
    with pytest.raises(ValueError, match="cannot keep 5 of 4"):
        maximally_spaced(4, 5)


def test_shrunk_student_equals_teacher_on_copied_layers(teacher: WhisperForConditionalGeneration) -> None:
    student = shrink_student(teacher, 2)
    assert student.decoder_layers_from == (0, 3) and student.shares_encoder
    assert student.model.config.decoder_layers == 2 and len(student.model.model.decoder.layers) == 2
    for position, source in enumerate(student.decoder_layers_from):
        mine = student.model.model.decoder.layers[position].state_dict()
        theirs = teacher.model.decoder.layers[source].state_dict()
        assert mine.keys() == theirs.keys()
        assert all(torch.equal(mine[key], theirs[key]) for key in mine)
    assert torch.equal(
        student.model.model.decoder.embed_tokens.weight, teacher.model.decoder.embed_tokens.weight
    )
    assert (
        student.model.proj_out.weight.data_ptr() == student.model.model.decoder.embed_tokens.weight.data_ptr()
    )
    hidden = features()
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440]] * 2)
    with torch.no_grad():  # the first copied layer computes exactly what the teacher's layer 0 computes
        torch.testing.assert_close(
            student.model.model.decoder.layers[0](
                teacher.model.decoder.embed_tokens(ids), encoder_hidden_states=hidden
            ),
            teacher.model.decoder.layers[0](
                teacher.model.decoder.embed_tokens(ids), encoder_hidden_states=hidden
            ),
        )
        logits_of(student.model, hidden, ids)  # runs end to end with the renumbered cache indices


def test_pretrained_student_must_share_the_tokenizer(teacher: WhisperForConditionalGeneration) -> None:
    smaller = tiny_random_whisper(seed=2, d_model=32, layers=1).model
    student = pretrained_student(teacher, smaller)
    assert not student.shares_encoder and student.decoder_layers_from is None
    smaller.config.vocab_size = 1000
    with pytest.raises(IncompatibleStudentError, match="vocab_size"):
        pretrained_student(teacher, smaller)


def test_dynamic_matching_is_the_monotone_greedy_argmin() -> None:
    distances = torch.tensor(
        [
            [0.9, 0.2, 0.5, 0.8, 0.7, 0.6],  # argmin 1
            [0.1, 0.9, 0.9, 0.3, 0.9, 0.9],  # global argmin 0 is before 1: monotone choice is 3
            [0.9, 0.9, 0.9, 0.9, 0.9, 0.4],  # 5
        ]
    )
    assert dynamic_matching(distances) == [1, 3, 5]
    same = torch.tensor([[0.5, 0.1, 0.9], [0.9, 0.2, 0.3]])
    assert dynamic_matching(same) == [1, 1]  # "at or after" the previous match


def test_guided_matching_keeps_the_layers_furthest_from_their_match() -> None:
    distances = torch.tensor(
        [
            [0.1, 0.5, 0.9],  # matched to 0 at 0.1
            [0.9, 0.8, 0.6],  # matched to 2 at 0.6
            [0.9, 0.9, 0.3],  # matched to 2 at 0.3
        ]
    )
    matching = dynamic_matching(distances)
    assert matching == [0, 2, 2]
    assert most_distant_layers(distances, matching, 1) == [1]
    assert most_distant_layers(distances, matching, 2) == [1, 2]  # in layer order
    assert most_distant_layers(distances, matching, 3) == [0, 1, 2]
    assert matched_distance(distances, matching, [1, 2]).item() == pytest.approx(0.9)
    for bad in (0, 4):
        with pytest.raises(ValueError, match="can match 1 to 3"):
            most_distant_layers(distances, matching, bad)


def test_guided_objective_distils_only_the_chosen_layers(teacher: WhisperForConditionalGeneration) -> None:
    student = shrink_student(teacher, 2).model
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 1029, 50257]] * 2)
    labels = ids.roll(-1, dims=1)
    labels[:, :3] = IGNORE
    batch = Batch(("a", "b"), features(), ids, labels)
    adapter = FeatureAdapter(256, 256)
    chosen = choose_matching(student, teacher, adapter, [batch], 1)
    assert len(chosen.matching) == 2 and len(chosen.layers) == 1 and len(chosen.distances) == 2
    (layer,) = chosen.layers
    per_layer = [chosen.distances[i][chosen.matching[i]] for i in range(2)]
    assert per_layer[layer] == max(per_layer)  # the student layer furthest from its teacher layer
    config = loss_config("dq-whisper", matching="guided")
    objective = DistillObjective(student, config, teacher, adapter, chosen.matching, None, chosen.layers)
    with torch.no_grad():
        hidden = objective(batch).parts["hidden"]
    assert hidden == pytest.approx(per_layer[layer], rel=1e-4)  # one layer matched: M = 1
    with pytest.raises(ValueError, match="guided matching needs the student layers"):
        DistillObjective(student, config, teacher, adapter, chosen.matching, None, None)


def test_guided_matching_needs_a_hidden_state_preset() -> None:
    with pytest.raises(ValueError, match="needs a preset with hidden-state distillation"):
        DistillPlan(
            teacher="t", variant_id="s", languages=("en",), guided_match_layers=1, preset="distil-whisper"
        )
    with pytest.raises(ValueError, match="chooses the matching"):
        DistillPlan(
            teacher="t",
            variant_id="s",
            languages=("en",),
            guided_match_layers=1,
            preset="dq-whisper",
            matching="static",
        )


def test_layer_distances_find_the_copied_layer(teacher: WhisperForConditionalGeneration) -> None:
    student = shrink_student(teacher, 2)
    hidden = features()
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 1029, 2]] * 2)
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad(), ffn_features(student.model) as mine, ffn_features(teacher) as theirs:
        logits_of(student.model, hidden, ids)
        logits_of(teacher, hidden, ids)
        distances = layer_distances(mine, theirs, FeatureAdapter(256, 256), mask)
    assert distances.shape == (2, 4)
    assert distances[0, 0].item() == pytest.approx(0.0, abs=1e-6)  # layer 0 copied: identical features
    assert dynamic_matching(distances)[0] == 0


def test_fake_quant_round_trip_and_straight_through_gradient() -> None:
    weight = torch.randn(16, 32, generator=torch.Generator().manual_seed(0))
    weight[3] = 0.0  # an all-zero row: the clamped scale keeps it finite
    shapes = {"per-channel": (16, 1), "per-tensor": (1, 1), "per-group": (16, 4)}
    for bits in (8, 4):
        for granularity, shape in shapes.items():
            spec = QuantSpec(bits, granularity, group_size=8)  # type: ignore[arg-type]
            codes, scale = quantize(weight, spec)
            assert codes.abs().max().item() <= spec.qmax and torch.isfinite(scale).all()
            assert scale.shape == shape
            error = (fake_quantize(weight, spec) - weight).abs()
            step = scale.repeat_interleave(8, dim=1) if granularity == "per-group" else scale
            assert (error <= step / 2 + 1e-7).all()  # round to nearest: at most half a step
            torch.testing.assert_close(
                fake_quantize(fake_quantize(weight, spec), spec), fake_quantize(weight, spec)
            )
    grouped = QuantSpec(4, "per-group", group_size=8)
    channel = QuantSpec(4, "per-channel")
    weight[0, :8] *= 50  # an outlier group: per-group scales confine its damage to that group
    assert (fake_quantize(weight, grouped) - weight)[0, 8:].abs().max() < (
        (fake_quantize(weight, channel) - weight)[0, 8:].abs().max()
    )
    with pytest.raises(ValueError, match="groups of 5"):
        quantize(weight, QuantSpec(4, "per-group", group_size=5))
    for bits, granularity in [(8, "per-channel"), (4, "per-tensor")]:
        spec = QuantSpec(bits, granularity)  # type: ignore[arg-type]
        torch.testing.assert_close(
            fake_quantize(fake_quantize(weight, spec), spec), fake_quantize(weight, spec)
        )
    # abs-max, not max: a matrix whose largest magnitude is negative keeps it exactly
    negative = torch.tensor([[-4.0, 1.0, 2.0]])
    torch.testing.assert_close(fake_quantize(negative, QuantSpec(8)), negative, atol=4 / 127, rtol=0)
    assert fake_quantize(negative, QuantSpec(8))[0, 0].item() == pytest.approx(-4.0)
    leaf = weight.clone().requires_grad_(True)
    upstream = torch.randn_like(leaf)
    (fake_quantize(leaf, QuantSpec(4)) * upstream).sum().backward()
    assert leaf.grad is not None and torch.equal(leaf.grad, upstream)  # straight through


def test_int4_packing_round_trip() -> None:
    codes = torch.randint(-7, 8, (5, 9), generator=torch.Generator().manual_seed(0), dtype=torch.int8)
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8 and packed.shape == (5, 5)
    assert torch.equal(unpack_int4(packed, 9), codes)


@pytest.mark.parametrize("bits", [2, 3, 5, 6, 7])
def test_bitstream_packing_round_trip_across_chunks(monkeypatch: pytest.MonkeyPatch, bits: int) -> None:
    monkeypatch.setattr(
        lowbit, "_BITSTREAM_CHUNK", 16
    )  # 7 x 9 = 63 codes: three whole chunks and a ragged one
    qmax = 2 ** (bits - 1) - 1
    codes = torch.randint(
        -qmax, qmax + 1, (7, 9), generator=torch.Generator().manual_seed(bits), dtype=torch.int8
    )
    codes[0, :2] = torch.tensor([-qmax, qmax])  # both ends of the range
    packed = pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.shape == (-(-63 * bits // 8),)
    assert torch.equal(unpack_bits(packed, bits, (7, 9)), codes)


def test_version_1_files_with_a_byte_a_code_still_load(
    tmp_path: Path, teacher: WhisperForConditionalGeneration
) -> None:
    model = shrink_student(teacher, 2).model.half().float()
    specs = {name: QuantSpec(6, "per-channel") for name, _ in decoder_linears(model)}
    save_lowbit(model, tmp_path, quantized_tensors(model, specs))
    expected = load_lowbit(tmp_path).state_dict()
    path = tmp_path / LOWBIT_WEIGHTS_FILENAME
    tensors = load_file(str(path))
    for name, _ in decoder_linears(model):  # as version 1 wrote 6-bit codes: int8, no packing entry
        tensors[f"{name}.codes"] = quantized_tensors(model, {name: specs[name]})[name][0]
    layers = json.dumps({name: [6, "per-channel"] for name in specs})
    save_safetensors(tensors, path, metadata={"format": "hush-lowbit", "version": "1", "layers": layers})
    reloaded = load_lowbit(tmp_path).state_dict()
    assert all(torch.equal(reloaded[key], value) for key, value in expected.items())


@pytest.mark.parametrize(
    ("bits", "granularity"),
    [
        (8, "per-channel"),
        (6, "per-channel"),
        (5, "per-group"),
        (3, "per-group"),
        (2, "per-channel"),
        (4, "per-tensor"),
        (4, "per-channel"),
        (4, "per-group"),
    ],
)
def test_exported_low_bit_weights_reload_to_the_fake_quant_outputs(
    tmp_path: Path, teacher: WhisperForConditionalGeneration, bits: int, granularity: str
) -> None:
    model = shrink_student(teacher, 2).model.half().float()  # float16-exact, as stored
    specs = {name: QuantSpec(bits, granularity, 16) for name, _ in decoder_linears(model)}  # type: ignore[arg-type]
    apply_fake_quant(model, specs)
    hidden = features().half().float()
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 1029]] * 2)
    with torch.no_grad():
        expected = logits_of(model, hidden, ids)
    remove_fake_quant(model)
    with torch.no_grad():
        assert not torch.allclose(logits_of(model, hidden, ids), expected)  # quantization changed something
    save_lowbit(model, tmp_path, quantized_tensors(model, specs))
    reloaded = load_lowbit(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(reloaded, hidden, ids), expected, atol=1e-5, rtol=1e-5)
    stored = load_file(str(tmp_path / LOWBIT_WEIGHTS_FILENAME))
    for name, linear in decoder_linears(model):  # real low-bit bytes, not floats: b/8 bytes a weight
        codes = stored[f"{name}.codes"]
        assert codes.numel() * codes.element_size() == -(-linear.weight.numel() * bits // 8)
    assert not any(
        name.endswith(".weight") and ".decoder.layers." in name and "norm" not in name for name in stored
    )


def test_whole_model_quantization_stores_encoder_and_tied_projection_as_codes(
    tmp_path: Path, teacher: WhisperForConditionalGeneration
) -> None:
    student = shrink_student(teacher, 2)
    plan = DistillPlan(
        teacher="t",
        variant_id="s",
        languages=("en",),
        qad_bits=4,
        granularity="per-group",
        group_size=16,
        quantize_scope="model",
    )
    student.model.half().float()  # float16-exact, as stored (in place)
    student, frozen = quantize_frozen_parts(plan, student)
    model = student.model
    assert not student.shares_encoder  # its encoder outputs need a cache of their own
    assert "proj_out" in frozen and any(".encoder.layers." in name for name in frozen)
    assert not any(".decoder.layers." in name for name in frozen)
    embedding = model.model.decoder.embed_tokens.weight
    assert embedding.data_ptr() == model.proj_out.weight.data_ptr()  # still tied, now quantized rows
    assert not torch.equal(embedding, teacher.model.decoder.embed_tokens.weight.half().float())
    decoder_specs = {name: QuantSpec(4, "per-group", 16) for name, _ in decoder_linears(model)}
    specs = {**frozen, **decoder_specs}
    hidden = features().half().float()
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 1029]] * 2)
    apply_fake_quant(model, decoder_specs)
    with torch.no_grad():
        expected = logits_of(model, hidden, ids)
        expected_encoding = model.model.encoder(
            torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(3))
        )
    remove_fake_quant(model)
    save_lowbit(model, tmp_path, quantized_tensors(model, specs))
    reloaded = load_lowbit(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(logits_of(reloaded, hidden, ids), expected, atol=1e-5, rtol=1e-5)
        encoding = reloaded.model.encoder(
            torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(3))
        )
    torch.testing.assert_close(
        encoding.last_hidden_state, expected_encoding.last_hidden_state, atol=1e-4, rtol=1e-4
    )
    assert reloaded.model.decoder.embed_tokens.weight.data_ptr() == reloaded.proj_out.weight.data_ptr()
    stored = load_file(str(tmp_path / LOWBIT_WEIGHTS_FILENAME))
    assert "proj_out.codes" in stored and "model.decoder.embed_tokens.weight" not in stored
    assert not any(
        name.endswith(".weight") and ".encoder.layers." in name and "norm" not in name for name in stored
    )
    assert stored["proj_out.scale"].shape == (model.config.vocab_size, model.config.d_model // 16)


def test_whole_model_scope_needs_bits_and_a_frozen_embedding() -> None:
    with pytest.raises(ValueError, match="needs --qad-bits or --ptq-bits"):
        DistillPlan(teacher="t", variant_id="s", languages=("en",), quantize_scope="model")
    with pytest.raises(ValueError, match="do not train it"):
        DistillPlan(
            teacher="t",
            variant_id="s",
            languages=("en",),
            ptq_bits=4,
            quantize_scope="model",
            train_embeddings=True,
        )


def test_guided_choice_upgrades_the_most_sensitive_layers_within_budget() -> None:
    sens = {"a": {4: 0.5, 8: 0.01}, "b": {4: 0.01, 8: 0.001}, "c": {4: 0.2, 8: 0.002}}
    sizes = {"a": 100, "b": 100, "c": 100}
    assert choose_bits(sens, sizes, 4.0) == {"a": 4, "b": 4, "c": 4}
    assert choose_bits(sens, sizes, 6.0) == {"a": 8, "b": 4, "c": 4}
    assert choose_bits(sens, sizes, 7.0) == {"a": 8, "b": 4, "c": 8}
    with pytest.raises(ValueError, match="below the lowest"):
        choose_bits(sens, sizes, 3.0)


def noise_like(scale: float) -> dict[int, float]:
    """A Linear whose error falls like quantization noise, 4x for each extra bit."""
    return {bits: scale * 4.0 ** (4 - bits) for bits in range(4, 9)}


def test_guided_choice_among_finer_widths_is_uniform_for_equal_layers_and_not_for_unequal_ones() -> None:
    sizes = {"a": 100, "b": 100, "c": 100, "d": 100}
    equal = {name: noise_like(1.0) for name in sizes}
    assert choose_bits(equal, sizes, 6.0, (4, 6, 8)) == dict.fromkeys(sizes, 6)
    assert choose_bits(equal, sizes, 5.0, range(4, 9)) == dict.fromkeys(sizes, 5)
    # one Linear 50x as sensitive as the others is worth 8 bits; the others pay for it as evenly as they can
    unequal = {**equal, "a": noise_like(50.0)}
    assert choose_bits(unequal, sizes, 6.0, range(4, 9)) == {"a": 8, "b": 6, "c": 5, "d": 5}


def summed_error(sens: dict[str, dict[int, float]], bits: dict[str, int]) -> float:
    return sum(sens[name][width] for name, width in bits.items())


def test_guided_choice_is_the_exact_optimum_where_greedy_upgrades_end_worse_than_uniform() -> None:
    # the small Linears' cheap upgrades use the budget the large one needed for its one valuable step
    sens = {
        "large": {2: 3.6, 3: 0.0, 4: 0.0},
        "b": {2: 1.95, 3: 0.95, 4: 0.0},
        "c": {2: 1.95, 3: 0.95, 4: 0.0},
    }
    sizes = {"large": 400, "b": 100, "c": 100}
    uniform = dict.fromkeys(sizes, 3)
    greedy = greedy_bits(sens, sizes, 3.0, (2, 3, 4))
    assert greedy == {"large": 2, "b": 4, "c": 4}
    assert summed_error(sens, greedy) > summed_error(sens, uniform)
    assert choose_bits(sens, sizes, 3.0, (2, 3, 4)) == uniform


def test_exact_guided_choice_matches_brute_force_and_keeps_the_budget() -> None:
    levels = (2, 3, 4, 8)
    generator = random.Random(7)
    for _ in range(30):
        sizes = {f"l{i}": generator.choice((100, 200, 400)) for i in range(5)}
        sens = {}
        for name in sizes:
            falls = sorted((generator.random() for _ in levels), reverse=True)
            sens[name] = dict(zip(levels, falls, strict=True))
        budget = generator.choice((2.5, 3.0, 3.5, 5.0))
        chosen = choose_bits(sens, sizes, budget, levels)
        assert sum(sizes[n] * b for n, b in chosen.items()) <= budget * sum(sizes.values())
        feasible = [
            dict(zip(sizes, widths, strict=True))
            for widths in itertools.product(levels, repeat=len(sizes))
            if sum(s * w for s, w in zip(sizes.values(), widths, strict=True)) <= budget * sum(sizes.values())
        ]
        best = min(summed_error(sens, bits) for bits in feasible)
        assert summed_error(sens, chosen) == pytest.approx(best)
        for width in levels:
            if width <= budget:  # never worse by the measure than a uniform width within the budget
                assert summed_error(sens, chosen) <= summed_error(sens, dict.fromkeys(sizes, width)) + 1e-12


def test_guided_choices_must_be_supported_widths() -> None:
    plan = DistillPlan(
        teacher="t", variant_id="s", languages=("en",), guided_average_bits=6, guided_choices=(8, 4, 6, 4)
    )
    assert plan.guided_choices == (4, 6, 8)
    for bad in ((), (1, 8), (4, 16)):
        with pytest.raises(ValueError, match="guided choices"):
            DistillPlan(
                teacher="t", variant_id="s", languages=("en",), guided_average_bits=6, guided_choices=bad
            )


def calibration_batch() -> Batch:
    """Two teacher-forced rows, the second shorter."""
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 1029, 50257]] * 2)
    labels = ids.roll(-1, dims=1)
    labels[:, :3] = IGNORE  # the forced prompt predicts nothing
    labels[1, 5:] = IGNORE  # a shorter second row
    return Batch(("a", "b"), features(), ids, labels)


def test_model_output_sensitivity_is_one_kl_scale_and_leaves_the_weights_alone(
    teacher: WhisperForConditionalGeneration,
) -> None:
    model = shrink_student(teacher, 2).model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    batch = calibration_batch()
    measured = output_sensitivity(model, [batch], (4, 8))
    assert set(measured) == {name for name, _ in decoder_linears(model)}
    for name, by_bits in measured.items():
        assert 0 <= by_bits[8] < by_bits[4], name  # 4 bits move the output distribution more than 8
    after = model.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before)  # every weight restored
    assert measured["model.decoder.layers.0.encoder_attn.k_proj"][4] > 0  # not read from a stale cache


def test_sensitivity_at_budget_judges_each_linear_with_the_others_at_the_uniform_width(
    teacher: WhisperForConditionalGeneration,
) -> None:
    model = shrink_student(teacher, 2).model
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    batch = calibration_batch()
    at_budget = measure_sensitivity(
        "model-output-at-budget", model, [batch], (2, 4, 8), "per-channel", 64, average_bits=4.5
    )
    alone = output_sensitivity(model, [batch], (2, 4, 8))
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
    # at the uniform width (4, the widest choice within 4.5 bits) every Linear reads the uniform model's KL
    with torch.no_grad():
        reference = torch.log_softmax(target_logits(model, batch).double(), -1)
        for _name, linear in decoder_linears(model):
            linear.weight.data = fake_quantize(linear.weight.data, QuantSpec(4, "per-channel", 64))
        uniform = torch.log_softmax(target_logits(model, batch).double(), -1)
    model.load_state_dict(before)
    expected = float((reference.exp() * (reference - uniform)).sum(-1).mean())
    assert [by_bits[4] for by_bits in at_budget.values()] == [pytest.approx(expected, rel=1e-6)] * len(
        at_budget
    )
    for name, by_bits in at_budget.items():
        assert by_bits[4] > alone[name][4], name  # the others' errors are counted too
    # one Linear's width moves the whole model's KL (by little for some Linears of a random model)
    assert sum(by_bits[8] for by_bits in at_budget.values()) < expected * len(at_budget)
    assert sum(by_bits[2] for by_bits in at_budget.values()) > expected * len(at_budget)
    with pytest.raises(ValueError, match="below the lowest"):
        measure_sensitivity(
            "model-output-at-budget", model, [batch], (4, 8), "per-channel", 64, average_bits=3
        )


def test_a_changed_greedy_decision_costs_what_a_greedy_decoder_would_lose() -> None:
    end = 50257
    labels = torch.tensor([[IGNORE, 10, 11, 12, 13, end], [IGNORE, 20, 21, end, IGNORE, IGNORE]])
    batch = Batch(("a", "b"), torch.zeros(2, 4, 8), torch.zeros_like(labels), labels)
    reference = labels[batch.mask]  # the float model's next tokens, in target order: 5 then 3
    assert decision_costs(batch, reference, reference.clone(), end) == 0
    substituted = reference.clone()
    substituted[2] = 99  # one other token
    assert decision_costs(batch, reference, substituted, end) == 1
    stops = reference.clone()
    stops[1] = end  # row a stops at its second target: it and the three after it are lost
    assert decision_costs(batch, reference, stops, end) == 4
    runs_on = reference.clone()
    runs_on[7] = 5  # row b does not stop where the float model does: costed as its whole length
    assert decision_costs(batch, reference, runs_on, end) == 3


def test_decisions_at_budget_adds_the_changed_decisions_to_the_kl(
    teacher: WhisperForConditionalGeneration,
) -> None:
    model = shrink_student(teacher, 2).model
    batch = calibration_batch()
    args = ([batch], (2, 4, 8), "per-channel", 64)
    kl = measure_sensitivity("model-output-at-budget", model, *args, average_bits=4)
    with_decisions = measure_sensitivity("decisions-at-budget", model, *args, average_bits=4)
    assert with_decisions.keys() == kl.keys()
    for name, by_bits in with_decisions.items():
        assert all(by_bits[b] >= kl[name][b] for b in (2, 4, 8)), name
    assert any(by_bits[2] > kl[name][2] for name, by_bits in with_decisions.items())  # 2 bits flip some


def test_batch_prompts_end_at_the_token_that_predicts_the_first_target() -> None:
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 1029], [50258, 50260, 50359, 50363, 7, 0]])
    labels = ids.roll(-1, dims=1)
    labels[:, :3] = IGNORE
    labels[1, 5:] = IGNORE
    batch = Batch(("a", "b"), torch.zeros(2, 4, 8), ids, labels)
    assert batch_prompts(batch) == [[50258, 50259, 50359, 50363], [50258, 50260, 50359, 50363]]


def test_target_logits_with_reused_cross_attention_states_equal_a_full_pass(
    teacher: WhisperForConditionalGeneration,
) -> None:
    model = shrink_student(teacher, 2).model
    ids = torch.tensor([[50258, 50259, 50359, 50363, 440, 1029, 50257]] * 2)
    labels = ids.roll(-1, dims=1)
    labels[1, 4:] = IGNORE
    batch = Batch(("a", "b"), features(), ids, labels)
    with torch.no_grad():
        full = logits_of(model, batch.encoder_hidden, ids)[batch.mask]
        reused = target_logits(model, batch, cross_attention_states(model, batch.encoder_hidden))
        torch.testing.assert_close(reused, full, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(target_logits(model, batch), full, atol=1e-5, rtol=1e-5)
    assert reused.shape == (int(batch.mask.sum()), model.config.vocab_size)


@dataclass(frozen=True)
class Tone:
    id: str
    language: str
    frequency: float

    def load_audio(self) -> Audio:
        return sine(1.0, self.frequency)


def training_setup(
    tmp_path: Path, teacher: WhisperForConditionalGeneration, preset: str, **overrides: object
) -> tuple[DistillObjective, CachedBatches, dict[str, torch.nn.Module]]:
    imported = tiny_random_whisper(seed=1, layers=4)
    tokens = special_tokens(imported.tokenizer, multilingual=True)
    utterances = [Tone(f"u{index}", "en" if index % 2 else "cs", 200.0 + 90 * index) for index in range(8)]
    cache = EncoderCache(tmp_path / "cache", teacher.model.encoder)
    cache.fill("c", utterances, progress=False)
    examples = [
        Example(
            u.id, u.language, tuple(imported.tokenizer.encode(f" tone {index}", add_special_tokens=False))
        )
        for index, u in enumerate(utterances)
    ]
    torch.manual_seed(0)
    student = shrink_student(teacher, 2)
    train_decoder_only(student.model, train_embeddings=True)
    config = loss_config(preset, **overrides)
    adapter = FeatureAdapter(256, 256) if config.hidden else None
    objective = DistillObjective(student.model, config, teacher, adapter, student.decoder_layers_from)
    trainable: dict[str, torch.nn.Module] = {"student": student.model}
    if adapter is not None:
        trainable["adapter"] = adapter
    return objective, CachedBatches(examples, cache, "c", tokens, 4, seed=0), trainable


@pytest.mark.parametrize(
    ("preset", "overrides"),
    [("distil-whisper", {}), ("dq-whisper", {}), ("dq-whisper", {"matching": "static"})],
)
def test_ten_steps_lower_the_loss(
    tmp_path: Path, teacher: WhisperForConditionalGeneration, preset: str, overrides: dict[str, object]
) -> None:
    objective, batches, trainable = training_setup(tmp_path, teacher, preset, **overrides)
    with torch.no_grad():
        before = sum(float(objective(batches.batch(step)).loss) for step in range(2))
    options = TrainingOptions(steps=10, learning_rate=1e-2, warmup_steps=1, checkpoint_every=5)
    result = train(objective, batches, trainable, options, tmp_path / "run", progress=False)
    with torch.no_grad():
        after = sum(float(objective(batches.batch(step)).loss) for step in range(2))
    assert result.steps == 10 and after < 0.9 * before
    if preset == "dq-whisper":
        assert set(result.history[-1]) >= {"ce", "kl", "hidden"}
        assert sum(objective.matches.values()) == 10


def test_qad_training_runs_through_the_quantizer(
    tmp_path: Path, teacher: WhisperForConditionalGeneration
) -> None:
    objective, batches, trainable = training_setup(tmp_path, teacher, "distil-whisper")
    model = objective.student
    apply_fake_quant(model, {name: QuantSpec(4, "per-channel") for name, _ in decoder_linears(model)})
    with torch.no_grad():
        before = float(objective(batches.batch(0)).loss)
    train(
        objective,
        batches,
        trainable,
        TrainingOptions(steps=10, learning_rate=3e-3, warmup_steps=1),
        tmp_path / "r",
        progress=False,
    )
    with torch.no_grad():
        assert float(objective(batches.batch(0)).loss) < before


def test_interrupted_training_resumes_to_the_same_weights(
    tmp_path: Path, teacher: WhisperForConditionalGeneration
) -> None:
    options = TrainingOptions(steps=6, learning_rate=1e-3, warmup_steps=2, checkpoint_every=2)
    objective, batches, trainable = training_setup(tmp_path / "a", teacher, "distil-whisper")
    straight = train(objective, batches, trainable, options, tmp_path / "a" / "run", progress=False)
    expected = {k: v.clone() for k, v in trainable["student"].state_dict().items()}

    objective, batches, trainable = training_setup(tmp_path / "b", teacher, "distil-whisper")
    first = train(
        objective, batches, trainable, options, tmp_path / "b" / "run", progress=False, stop_after=3
    )
    assert first.steps == 3
    objective, batches, trainable = training_setup(tmp_path / "b", teacher, "distil-whisper")  # a new process
    resumed = train(objective, batches, trainable, options, tmp_path / "b" / "run", progress=False)
    assert resumed.resumed_from == 3 and resumed.steps == 6
    assert [r["loss"] for r in resumed.history] == pytest.approx(
        [r["loss"] for r in straight.history], rel=1e-5
    )
    for key, value in trainable["student"].state_dict().items():
        torch.testing.assert_close(value, expected[key])


def test_a_checkpoint_of_another_plan_is_refused(
    tmp_path: Path, teacher: WhisperForConditionalGeneration
) -> None:
    options = TrainingOptions(steps=4, learning_rate=1e-3, warmup_steps=1, checkpoint_every=1)
    objective, batches, trainable = training_setup(tmp_path, teacher, "distil-whisper")
    run = tmp_path / "run"
    plan = {"preset": "distil-whisper", "steps": 4, "languages": ("en",)}
    train(objective, batches, trainable, options, run, progress=False, stop_after=2, plan=plan)
    other = {**plan, "preset": "dq-whisper"}
    with pytest.raises(PlanMismatchError, match="differs in: preset"):
        train(objective, batches, trainable, options, run, progress=False, plan=other)
    resumed = train(objective, batches, trainable, options, run, progress=False, plan=plan)
    assert resumed.resumed_from == 2 and resumed.steps == 4  # the same plan (tuples or lists) resumes


def test_teacher_memo_gives_the_teachers_own_outputs(
    tmp_path: Path, teacher: WhisperForConditionalGeneration
) -> None:
    objective, batches, _ = training_setup(tmp_path, teacher, "dq-whisper")
    batch = batches.batch(0)
    with torch.no_grad():
        direct = objective(batch)
        objective.memo = TeacherMemo(tmp_path / "memo", "t")
        computed = objective(batch)  # fills the memo
        assert len(list((tmp_path / "memo" / "t").glob("*.safetensors"))) == len(batch.utterance_ids)
        objective.teacher = None  # a memo hit must not need the teacher
        reused = objective(batch)
    for terms in (computed, reused):
        assert float(terms.loss) == pytest.approx(float(direct.loss), rel=1e-3)
        assert terms.parts["kl"] == pytest.approx(direct.parts["kl"], rel=2e-2, abs=1e-4)


def test_guided_candidates_run_from_uniform_to_the_exact_optimum_within_budget() -> None:
    sizes = {"a": 100, "b": 100, "c": 100, "d": 100}
    sens = {**{name: noise_like(1.0) for name in sizes}, "a": noise_like(50.0)}
    candidates = candidate_choices(sens, sizes, 6.0, range(4, 9))
    assert candidates[0] == dict.fromkeys(sizes, 6)
    assert candidates[-1] == choose_bits(sens, sizes, 6.0, range(4, 9))
    assert len(candidates) >= 2 and all(candidates.count(choice) == 1 for choice in candidates)
    for choice in candidates:
        assert sum(sizes[name] * bits for name, bits in choice.items()) <= 6.0 * sum(sizes.values())


def test_verified_choice_keeps_the_candidate_whose_decoding_changes_least(
    teacher: WhisperForConditionalGeneration,
) -> None:
    model = shrink_student(teacher, 2).model
    batch = calibration_batch()
    names = [name for name, _ in decoder_linears(model)]
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}

    def decisions(batch: Batch) -> list[list[int]]:  # the model's teacher-forced greedy choices
        with torch.no_grad():
            return [target_logits(model, batch).argmax(-1).tolist()]

    fine, coarse = dict.fromkeys(names, 8), dict.fromkeys(names, 2)
    zero = {name: {2: 0.0, 8: 0.0} for name in names}

    def spec(bits: int) -> QuantSpec:
        return QuantSpec(bits, "per-channel", 64)

    chosen, records = verified_choice(model, [batch], [fine, coarse], zero, spec, decisions)
    assert chosen == 0 and records[0].edits < records[1].edits  # 2 bits flip decisions, 8 hardly
    assert records[1].moved == len(names) and records[0].moved == 0
    assert verified_choice(model, [batch], [coarse, fine], zero, spec, decisions)[0] == 1
    assert all(torch.equal(before[name], tensor) for name, tensor in model.state_dict().items())
