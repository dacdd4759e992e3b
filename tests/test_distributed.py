"""Data-parallel training: several gloo processes on the CPU learn what one process learns on the
whole batch, and ``torchrun`` runs ``hush compress distill`` as one run that publishes once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.multiprocessing
from safetensors.torch import load_file
from torch import nn

from compression.training.distributed import Ranks
from compression.training.loop import LossTerms, TrainingOptions, train
from model_store.store import ModelStore
from tests.app_support import free_port
from tests.factories import publish_tiny_variant, tiny_corpus

STEPS = 4
OPTIONS = TrainingOptions(steps=STEPS, batch_size=6, learning_rate=0.05, warmup_steps=1, checkpoint_every=2)


@dataclass(frozen=True)
class Rows:
    inputs: torch.Tensor
    targets: torch.Tensor


class RegressionBatches:
    """Six rows per step, the same on every run; each process takes its share."""

    def __init__(self, ranks: Ranks) -> None:
        self.ranks = ranks

    def batch(self, step: int) -> Rows:
        generator = torch.Generator().manual_seed(step)
        inputs = torch.randn(6, 3, generator=generator)
        targets = inputs @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(6, 1, generator=generator)
        share = self.ranks.share(range(6))
        return Rows(inputs[share], targets[share])


def regression_run(ranks: Ranks, run_dir: Path) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Linear(3, 1)

    def objective(rows: Rows) -> LossTerms:
        loss = ((model(rows.inputs) - rows.targets) ** 2).mean()  # a mean over this process's rows
        return LossTerms(loss, {"mse": float(loss.item())}, tokens=len(rows.inputs))

    result = train(
        objective, RegressionBatches(ranks), {"model": model}, OPTIONS, run_dir, progress=False, ranks=ranks
    )
    return {"weight": model.weight.detach().clone(), "loss": torch.tensor(result.last_loss)}


def _worker(rank: int, world_size: int, port: int, run_dir: str, out_dir: str) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    ranks = Ranks(rank, world_size, rank)
    ranks.start()
    try:
        torch.save(regression_run(ranks, Path(run_dir)), Path(out_dir) / f"rank{rank}.pt")
    finally:
        ranks.stop()


def test_processes_sharing_each_batch_learn_what_one_process_learns(tmp_path: Path) -> None:
    single = regression_run(Ranks(), tmp_path / "single")
    torch.multiprocessing.spawn(
        _worker, args=(3, free_port(), str(tmp_path / "parallel"), str(tmp_path)), nprocs=3, join=True
    )
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(3)]
    torch.manual_seed(0)
    init = nn.Linear(3, 1)
    moved = (single["weight"] - init.weight.detach()).abs().max()
    assert moved > 0.1  # it learned something
    for result in ranks:  # every process holds the same weights: those of one process on whole batches
        torch.testing.assert_close(result["weight"], single["weight"], rtol=0, atol=1e-6)
        torch.testing.assert_close(result["loss"], single["loss"], rtol=1e-6, atol=1e-7)  # the whole batch's
    log = (tmp_path / "parallel" / "log.jsonl").read_text().splitlines()
    assert len(log) == 1 and json.loads(log[0])["step"] == STEPS  # written once, by the main process
    checkpoint = torch.load(tmp_path / "parallel" / "checkpoint.pt", weights_only=False)
    assert checkpoint["step"] == STEPS


def test_a_batch_smaller_than_the_processes_is_refused() -> None:
    with pytest.raises(ValueError, match="batch size of at least 4"):
        Ranks(0, 4).share(range(3))
    assert Ranks(1, 2).share(range(5)) == [1, 3]
    assert Ranks().share(range(3)) == [0, 1, 2]


@pytest.mark.slow
def test_torchrun_distills_with_two_processes_and_publishes_once(tmp_path: Path) -> None:
    corpus = tiny_corpus(tmp_path / "corpus" / "tiny-corpus")
    store = ModelStore(tmp_path / "store")
    publish_tiny_variant(store, "teacher")
    environment = {
        **os.environ,
        "HUSH_HOME": str(tmp_path),
        "HUSH_STORE__ROOT": str(store.root),
        "HUSH_EVAL__CORPUS": str(corpus),
        "OMP_NUM_THREADS": "1",
    }
    distill = [
        "-m", "model_store.cli", "compress", "distill", "teacher", "--languages", "en,cs",
        "--decoder-layers", "1", "--labels", "gold", "--steps", "3", "--batch-size", "4",
        "--learning-rate", "0.1", "--no-eval-dev",
    ]  # fmt: skip
    one = subprocess.run(
        [sys.executable, *distill, "--id", "student-one"], env=environment, capture_output=True, text=True
    )
    assert one.returncode == 0, one.stderr[-3000:]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run(
        [*torchrun, *distill, "--id", "student-two"], env=environment, capture_output=True, text=True
    )
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count('"sizes"') == 1  # one process reported, the main one
    assert store.verify("student-two").recipe.args["training"]["steps"] == 3
    single = load_file(store.path("student-one") / "model.safetensors")
    parallel = load_file(store.path("student-two") / "model.safetensors")
    assert single.keys() == parallel.keys()
    differences = {
        name: (parallel[name].float() - weights.float()).abs().max() for name, weights in single.items()
    }
    assert max(differences.values()) < 1e-3, differences  # float16 rounding of the same weights (6e-5 seen)
    teacher = load_file(store.path("teacher") / "model.safetensors")
    last = max(int(name.split(".")[3]) for name in teacher if name.startswith("model.decoder.layers."))
    copied = teacher[f"model.decoder.layers.{last}.fc1.weight"].float()  # one layer kept: the last
    moved = (single["model.decoder.layers.0.fc1.weight"].float() - copied).abs().max()
    assert moved > 2e-2  # training moved the copied layer (0.06 seen), both runs alike
