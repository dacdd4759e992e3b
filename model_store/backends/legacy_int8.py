"""PyTorch's legacy dynamic int8 Linear (fbgemm), the fast CPU kernel for int8 weights, isolated here.

``torch.ao.nn.quantized.dynamic`` rests on the quantized tensor dtypes (``torch.qint8``), which PyTorch
has deprecated for removal (pytorch/pytorch#184982; the ``torch.ao.quantization`` deprecation notice
first named release 2.10). Nothing else in hush imports them: the int8 bytes on disk are plain tensors,
and :mod:`model_store.backends.int8_dynamic` asks :func:`available` before it builds these modules,
falling back on a float Linear of the same int8 weights when a PyTorch release no longer has them.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from typing import Any

import torch
from torch import nn

_MODULE = "torch.ao.nn.quantized.dynamic"
# PyTorch warns at every quantized tensor it creates (each Linear, each load); hush knows, and falls back
# where the API is gone (the README's quantization section), so this one warning is not repeated in logs.
_QUANTIZED_TENSOR_WARNING = r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized"


@functools.cache
def available() -> bool:
    """Whether this PyTorch still has the dynamic int8 Linear and its fbgemm kernel."""
    try:
        importlib.import_module(_MODULE)
        return hasattr(torch.ops.quantized, "linear_dynamic") and hasattr(
            torch, "_make_per_channel_quantized_tensor"
        )
    except (ImportError, AttributeError, RuntimeError):
        return False


@functools.cache
def _full_range_kind() -> type[nn.Module]:
    dynamic: Any = importlib.import_module(_MODULE)

    class FullRangeDynamicLinear(dynamic.Linear):  # type: ignore[misc]
        """PyTorch's dynamic int8 Linear with its activations quantized to all 8 bits. The stock module
        asks fbgemm for 7 (``reduce_range``), which only CPUs without VNNI need (see
        :mod:`model_store.backends.cpu_features`)."""

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            output = torch.ops.quantized.linear_dynamic(
                x, self._packed_params._packed_params, reduce_range=False
            )
            return output.to(x.dtype)

        def extra_repr(self) -> str:
            return str(super().extra_repr()) + ", activations=int8 full range"

    return FullRangeDynamicLinear


def dynamic_linear_kind(*, full_range: bool) -> type[nn.Module]:
    """The module class: PyTorch's own, or its full-range subclass."""
    if full_range:
        return _full_range_kind()
    dynamic: Any = importlib.import_module(_MODULE)
    kind: type[nn.Module] = dynamic.Linear
    return kind


def quantizes_per_matrix(module: nn.Module) -> bool:
    """Whether ``module`` is a dynamic int8 Linear: one activation scale for its whole input matrix, so
    each row's output depends on the rows beside it (a batch is not its rows run one by one)."""
    if not available():
        return False
    dynamic: Any = importlib.import_module(_MODULE)
    return isinstance(module, dynamic.Linear)


def dynamic_linear(
    weight: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None, *, full_range: bool
) -> nn.Module:
    """A dynamic int8 Linear holding ``weight`` (int8, symmetric per output channel with ``scales``)."""
    out_features, in_features = weight.shape
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_QUANTIZED_TENSOR_WARNING, category=UserWarning)
        layer: Any = dynamic_linear_kind(full_range=full_range)(
            in_features, out_features, bias_=bias is not None, dtype=torch.qint8
        )
        zero_points = torch.zeros(out_features, dtype=torch.long)
        qweight = torch._make_per_channel_quantized_tensor(weight, scales.double(), zero_points, 0)
        layer.set_weight_bias(qweight, bias)
    return layer
