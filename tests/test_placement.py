"""Where distillation trains: the device a choice resolves to, given how many GPUs are visible."""

import pytest
import torch

from compression.training.distributed import Ranks
from compression.training.placement import NoTrainingDeviceError, training_device


def test_cpu_is_the_cpu_whatever_gpus_there_are() -> None:
    assert training_device("cpu", cuda_devices=4) == torch.device("cpu")


def test_auto_takes_the_gpu_of_the_local_rank_or_the_cpu() -> None:
    assert training_device("auto", cuda_devices=0) == torch.device("cpu")
    assert training_device("auto", cuda_devices=2) == torch.device("cuda", 0)
    second = Ranks(rank=1, world_size=2, local_rank=1)
    assert training_device("auto", second, cuda_devices=2) == torch.device("cuda", 1)


def test_cuda_without_a_gpu_and_more_processes_than_gpus_are_refused() -> None:
    with pytest.raises(NoTrainingDeviceError, match="no CUDA GPU is visible"):
        training_device("cuda", cuda_devices=0)
    third = Ranks(rank=2, world_size=3, local_rank=2)
    with pytest.raises(NoTrainingDeviceError, match="at most one process per GPU"):
        training_device("auto", third, cuda_devices=2)
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        training_device("tpu")


def test_the_visible_gpus_are_counted_by_default() -> None:
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert training_device("auto") == expected
