"""Where a training run computes: the CPU, or this process's GPU.

``auto`` takes the GPU of the process's local rank when CUDA is there (one GPU a process under
``torchrun``), else the CPU; ``cuda`` insists on a GPU and says so when there is none. Models, encoder
runs and batches go to the device; caches, memos, checkpoints and published weights stay on the CPU
side, so a run can resume or be evaluated on a machine without the GPU it trained on.
"""

from __future__ import annotations

from typing import get_args

import torch

from compression.training.distributed import SINGLE_PROCESS, Ranks
from model_store.settings import DeviceChoice

DEVICE_CHOICES: tuple[str, ...] = get_args(DeviceChoice)  # the setting's values, stated there once


class NoTrainingDeviceError(RuntimeError):
    """The requested device is not on this machine."""


def training_device(
    choice: str,
    ranks: Ranks = SINGLE_PROCESS,
    *,
    cuda_devices: int | None = None,
) -> torch.device:
    """The device for ``choice`` (one of :data:`DEVICE_CHOICES`); ``cuda_devices`` overrides the count
    of visible GPUs (``torch.cuda.device_count()``)."""
    if choice not in DEVICE_CHOICES:
        raise ValueError(f"unknown device {choice!r}; choose one of {', '.join(DEVICE_CHOICES)}")
    if choice == "cpu":
        return torch.device("cpu")
    count = torch.cuda.device_count() if cuda_devices is None else cuda_devices
    if count == 0:
        if choice == "cuda":
            raise NoTrainingDeviceError("device cuda asked for, but no CUDA GPU is visible on this machine")
        return torch.device("cpu")
    if ranks.local_rank >= count:
        raise NoTrainingDeviceError(
            f"process {ranks.local_rank} on this machine has no GPU of its own ({count} visible): "
            "start at most one process per GPU"
        )
    return torch.device("cuda", ranks.local_rank)
