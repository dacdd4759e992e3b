"""Per-token int8 activations: close to float where one outlier row ruins a per-matrix scale."""

from __future__ import annotations

import torch
from torch import nn

from model_store.backends.int8_dynamic import _quantized_linear, per_channel_int8
from model_store.backends.per_token_int8 import PerTokenInt8Linear


def _layers(seed: int = 0) -> tuple[nn.Linear, PerTokenInt8Linear, nn.Module]:
    torch.manual_seed(seed)
    float_layer = nn.Linear(256, 64)
    weight, scales = per_channel_int8(float_layer.weight.data)
    bias = float_layer.bias.data
    return (
        float_layer,
        PerTokenInt8Linear(weight, scales, bias),
        _quantized_linear(weight, scales, bias, full_range=False),
    )


def _relative_error(reference: torch.Tensor, other: torch.Tensor) -> float:
    return float((reference - other).norm() / reference.norm())


@torch.no_grad()
def test_per_token_matches_float_on_ordinary_inputs_of_any_shape() -> None:
    float_layer, per_token, _ = _layers()
    inputs = torch.randn(2, 5, 256)
    output = per_token(inputs)
    assert output.shape == (2, 5, 64) and output.dtype == torch.float32
    assert _relative_error(float_layer(inputs), output) < 0.02
    single = per_token(inputs[0, :1])  # one token, as a decoding step has
    assert torch.allclose(single, output[0, :1], atol=1e-5)  # rows are quantized independently
    assert torch.equal(per_token(torch.zeros(3, 256)), float_layer.bias.expand(3, 64))  # no division by 0


@torch.no_grad()
def test_an_outlier_row_spoils_a_per_matrix_scale_but_not_per_token_scales() -> None:
    float_layer, per_token, per_matrix = _layers()
    inputs = torch.randn(300, 256) * 0.05
    inputs[7] *= 400.0  # one frame 400x larger than the others, as Whisper's encoder has
    ordinary = torch.arange(300) != 7
    expected = float_layer(inputs)[ordinary]
    per_token_error = _relative_error(expected, per_token(inputs)[ordinary])
    per_matrix_error = _relative_error(expected, per_matrix(inputs)[ordinary])
    assert per_token_error < 0.02
    assert per_matrix_error > 5 * per_token_error


def _asymmetric(seed: int = 0) -> tuple[nn.Linear, PerTokenInt8Linear, PerTokenInt8Linear]:
    float_layer, symmetric, _ = _layers(seed)
    weight, scales = symmetric.weight_t.t().contiguous(), symmetric.weight_scale
    return float_layer, symmetric, PerTokenInt8Linear(weight, scales, float_layer.bias.data, "asymmetric")


@torch.no_grad()
def test_asymmetric_rows_halve_the_error_on_gelu_outputs() -> None:
    """A GELU's output spans about [-0.17, max]: symmetric rows use half their levels, asymmetric all."""
    float_layer, symmetric, asymmetric = _asymmetric()
    inputs = nn.functional.gelu(torch.randn(50, 256) * 2)
    expected = float_layer(inputs)
    symmetric_error = _relative_error(expected, symmetric(inputs))
    asymmetric_error = _relative_error(expected, asymmetric(inputs))
    assert asymmetric_error < 0.7 * symmetric_error < 0.02


@torch.no_grad()
def test_asymmetric_rows_are_exact_on_zeros_and_quantize_rows_independently() -> None:
    float_layer, _, asymmetric = _asymmetric(seed=1)
    assert torch.equal(asymmetric(torch.zeros(3, 256)), float_layer.bias.expand(3, 64))
    inputs = torch.randn(2, 7, 256) + 3.0  # all positive: the zero point sits at the bottom
    output = asymmetric(inputs)
    assert output.shape == (2, 7, 64)
    assert _relative_error(float_layer(inputs), output) < 0.01
    assert torch.allclose(asymmetric(inputs[1, 3:4]), output[1, 3:4], atol=1e-5)
