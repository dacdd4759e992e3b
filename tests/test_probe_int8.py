"""The decoding-faithful int8 probe (``tests/bench/probe_int8_decoding``) on a tiny random Whisper."""

from __future__ import annotations

import torch
from torch import nn

from compression.quantize.calibration import CalibrationExample
from model_store.backends.int8_dynamic import per_channel_int8
from tests.bench.probe_int8_decoding import fidelity, rows, stepwise_log_probs, weights_only
from tests.factories import tiny_random_whisper

PROMPT = 2


def _examples(vocabulary: int) -> list[CalibrationExample]:
    generator = torch.Generator().manual_seed(3)
    return [
        CalibrationExample(
            f"u{index}",
            "en",
            torch.randn(1, 80, 3000, generator=generator),
            torch.randint(0, vocabulary, (1, 6 + index), generator=generator),
        )
        for index in range(2)
    ]


def test_step_by_step_decoding_gives_the_teacher_forced_distributions_in_float() -> None:
    """Through the cache, one token a step, a float model predicts what it predicts on the whole
    sequence at once: the probe changes only how int8 activations are grouped, nothing else."""
    model = tiny_random_whisper().model
    examples = _examples(model.config.vocab_size)
    stepwise = stepwise_log_probs(model, examples, PROMPT)
    with torch.inference_mode():
        for example, steps in zip(examples, stepwise, strict=True):
            logits = model(
                input_features=example.features, decoder_input_ids=example.decoder_input_ids
            ).logits
            whole = torch.log_softmax(logits[0, PROMPT - 1 : -1], dim=-1)
            assert steps.shape == whole.shape
            assert torch.allclose(steps, whole, atol=1e-4)
    kl, median, agree = fidelity(stepwise, stepwise)
    assert abs(kl) < 1e-6 and abs(median) < 1e-6 and agree == 1.0


def test_weights_only_rounds_every_linear_and_leaves_the_original_alone() -> None:
    model = tiny_random_whisper().model
    original = model.model.decoder.layers[0].fc1.weight.detach().clone()
    rounded = weights_only(model)
    weight, scales = per_channel_int8(original)
    assert torch.equal(rounded.model.decoder.layers[0].fc1.weight, weight.float() * scales[:, None])
    assert torch.equal(model.model.decoder.layers[0].fc1.weight, original)
    assert all(type(module) is nn.Linear for module in rounded.modules() if "Linear" in type(module).__name__)


def test_int8_schemes_move_the_distributions_and_8_bit_rows_are_offered_only_with_vnni() -> None:
    assert not any("8-bit" in label for label in rows(full_range_available=False))
    assert sum("8-bit" in label for label in rows(full_range_available=True)) == 5
    model = tiny_random_whisper().model
    examples = _examples(model.config.vocab_size)
    reference = stepwise_log_probs(model, examples, PROMPT)
    for label, make in rows(full_range_available=False).items():
        kl, _, agree = fidelity(reference, stepwise_log_probs(make(model), examples, PROMPT))
        assert kl < 0.05 and agree > 0.8, label  # a little
        if "bfloat16" not in label:  # (bfloat16 attention's effect on this tiny model is below 1e-6)
            assert kl > 0, label  # int8 moves the distributions
    assert model.config._attn_implementation == "sdpa"  # every row changed a copy, config included
