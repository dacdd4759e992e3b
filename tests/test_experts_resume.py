"""Checkpoints of ``hush compress experts``: an interrupted run resumes to bit-identical weights, a
checkpoint of another plan is refused, and the command resumes, refuses and restarts in its run dir."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import typer
from safetensors.torch import load_file
from typer.testing import CliRunner

from compression.experts.checkpoints import Checkpointing
from compression.experts.cli import experts_command
from compression.experts.data import language_batches
from compression.experts.students import Method, build_student
from compression.experts.trainer import StepLog, Teacher, TrainingConfig, train
from compression.training.checkpoint import CHECKPOINT, LOG, PlanMismatchError, load_checkpoint
from model_store.backends.experts.attach import ExpertSpec
from model_store.store import ModelStore
from tests.factories import publish_tiny_variant
from tests.test_eval import make_corpus
from tests.test_experts import FixedEncoderOutputs, tiny_model, toy_examples

# skips and gate noise both on, so that their draws must resume exactly
CONFIG = TrainingConfig(steps=6, batch_size=3, learning_rate=3e-2, skip_probability=0.5, max_gate_noise=5.0)
PLAN = {"what": "a test plan", "steps": CONFIG.steps}


class InjectedCrashError(RuntimeError):
    pass


def run(
    method: Method,
    run_dir: Path | None,
    *,
    stop_after: int | None = None,
    on_step: Callable[[StepLog], None] | None = None,
    plan: dict[str, object] = PLAN,
) -> tuple[dict[str, torch.Tensor], list[StepLog]]:
    """A fresh model and student (as in a new process), trained; its trainable weights and log."""
    model, teacher = tiny_model(), tiny_model(seed=1)
    torch.manual_seed(0)  # the experts' initial weights (the first tiny_model() call draws too)
    student = build_student(model, method, ["cs", "nl"], ExpertSpec(kind="lowrank", rank=2), seed=0)
    checkpointing = None if run_dir is None else Checkpointing(run_dir, plan, every=2, log_every=1)
    history = train(
        model,
        student.trainable,
        language_batches(toy_examples(), CONFIG.batch_size, 50257, seed=0),
        FixedEncoderOutputs(),
        CONFIG,
        teacher=Teacher(teacher, FixedEncoderOutputs()),
        control=student.control,
        expert_key=student.expert_key,
        progress=False,
        on_step=on_step,
        checkpointing=checkpointing,
        stop_after=stop_after,
    )
    weights = {
        name: parameter.detach().clone()
        for name, parameter in model.named_parameters()
        if any(parameter is trained for trained in student.trainable)
    }
    return weights, history


def crash_at(step: int) -> Callable[[StepLog], None]:
    def hook(entry: StepLog) -> None:
        if entry.step == step:
            raise InjectedCrashError(f"injected crash after step {step}")

    return hook


def assert_identical(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys() and left
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


def test_batches_are_a_function_of_seed_and_step() -> None:
    examples = toy_examples()
    ahead = language_batches(examples, 3, 50257, seed=4)
    for step in (0, 5, 11):
        ahead.batch(step)
    fresh = language_batches(examples, 3, 50257, seed=4)
    assert [fresh.batch(step).examples for step in (11, 3, 0)] == [
        ahead.batch(step).examples for step in (11, 3, 0)
    ]
    languages = [ahead.batch(step).language for step in range(4)]
    assert languages == ["cs", "nl", "cs", "nl"]
    seen = [example.utterance.id for step in (0, 2, 4, 6) for example in ahead.batch(step).examples]
    assert sorted(seen[:4]) == ["cs-0", "cs-1", "cs-2", "cs-3"]  # each pass covers every example
    other = language_batches(examples, 3, 50257, seed=5)
    assert [other.batch(step).examples for step in range(8)] != [ahead.batch(s).examples for s in range(8)]


@pytest.mark.parametrize(
    ("method", "interrupt"),
    [("clsr", "stop_after"), ("clsr", "crash"), ("lora", "crash")],
)
def test_an_interrupted_run_resumes_to_bit_identical_weights(
    tmp_path: Path, method: Method, interrupt: str
) -> None:
    straight, straight_log = run(method, None)
    if interrupt == "stop_after":
        _, first = run(method, tmp_path, stop_after=3)  # checkpoints at 2 and (this call's end) 3
        assert len(first) == 3 and int(load_checkpoint(tmp_path)["step"]) == 3  # type: ignore[index]
    else:
        with pytest.raises(InjectedCrashError):
            run(method, tmp_path, on_step=crash_at(4))  # dies after step 5; last checkpoint at 4
        assert int(load_checkpoint(tmp_path)["step"]) == 4  # type: ignore[index]
    resumed, resumed_log = run(method, tmp_path)
    assert_identical(resumed, straight)
    assert resumed_log == straight_log  # the whole log, restored steps included
    if method == "clsr":  # the skip draws and the gate noise did vary the gates
        assert len({entry.mean_gate for entry in straight_log}) == len(straight_log)
    logged = [json.loads(line) for line in (tmp_path / LOG).read_text().splitlines()]
    assert logged[-1]["step"] == CONFIG.steps and logged[-1]["tokens_per_second"] > 0


def test_a_checkpoint_of_another_plan_is_refused(tmp_path: Path) -> None:
    run("clsr", tmp_path, stop_after=2)
    before = (tmp_path / CHECKPOINT).read_bytes()
    with pytest.raises(PlanMismatchError, match="differs in: steps"):
        run("clsr", tmp_path, plan={**PLAN, "steps": 7})
    assert (tmp_path / CHECKPOINT).read_bytes() == before  # left as it was


def test_experts_command_resumes_refuses_and_restarts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``hush compress experts`` keeps its checkpoint in <home>/runs/experts/<id>/."""
    monkeypatch.setenv("HUSH_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HUSH_STORE__ROOT", str(tmp_path / "store"))
    store = ModelStore(tmp_path / "store")
    publish_tiny_variant(store, "tiny-base", seed=0)
    make_corpus(tmp_path / "corpus")
    app = typer.Typer()
    app.command("experts")(experts_command)
    app.command("noop")(lambda: None)  # a second command keeps `experts` a subcommand
    base = ["experts", "--base", "tiny-base", "--languages", "en,fr", "--rank", "2", "--batch-size", "2"]
    base += ["--corpus", str(tmp_path / "corpus"), "--id", "tiny-x", "--checkpoint-every", "1"]
    run_dir = tmp_path / "home" / "runs" / "experts" / "tiny-x"

    def invoke(*extra: str) -> tuple[int, str]:
        result = CliRunner().invoke(app, [*base, *extra])
        return result.exit_code, result.output

    code, output = invoke("--steps", "3")
    assert code == 0, output
    assert int(load_checkpoint(run_dir)["step"]) == 3  # type: ignore[index]
    published = load_file(store.path("tiny-x") / "experts" / "en.safetensors")

    code, output = invoke("--steps", "3", "--replace")  # the same plan: nothing left to train
    assert code == 0, output
    assert "resuming" in output and "at step 3 of 3" in output
    assert store.get("tiny-x").recipe.args["resumed_from_step"] == 3
    # the same tensors (not the same bytes: safetensors writes its metadata in a per-process order)
    assert_identical(load_file(store.path("tiny-x") / "experts" / "en.safetensors"), published)

    code, output = invoke("--steps", "4", "--replace")
    assert code == 2 and "another plan" in output and "training.steps" in output and "--restart" in output

    code, output = invoke("--steps", "4", "--replace", "--restart")
    assert code == 0, output
    assert int(load_checkpoint(run_dir)["step"]) == 4  # type: ignore[index]
    assert store.get("tiny-x").recipe.args["resumed_from_step"] == 0

    # the gate budget is part of the plan, and recorded with the training options
    code, output = invoke("--steps", "4", "--replace", "--gate-budget", "0.9")
    assert code == 2 and "training.gate_budget" in output
    code, output = invoke("--steps", "4", "--replace", "--gate-budget", "1.5")
    assert code == 2 and "--gate-budget" in output
    assert store.get("tiny-x").recipe.args["training"]["gate_budget"] == 0.5

    # training the embedding is a fine-tuning choice only
    code, output = invoke("--steps", "4", "--replace", "--train-embeddings")
    assert code == 2 and "only --method finetune" in output
    code, output = invoke("--steps", "4", "--replace", "--languages", "en,xx")  # a language it lacks
    assert code == 2 and "no train utterances of xx" in " ".join(output.replace("│", " ").split())
