"""Language experts (CLSR) on tiny random Whispers: identity at init, one branch under the hard gate,
the noise schedule, per-language storage, training that lowers the loss, and an end-to-end run."""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

from compression.data.corpus import Utterance
from compression.distill.cached_decoding import CachedGreedyDecoder
from compression.experts.data import Example, language_batches
from compression.experts.job import ExpertsJob, run_experts_job
from compression.experts.losses import IGNORE_INDEX, gate_budget, js_divergence
from compression.experts.schedule import GateNoiseSchedule
from compression.experts.students import build_student
from compression.experts.trainer import Teacher, TrainingConfig, train
from compression.training.selection import sample_digest, select_utterances
from model_store.backends.experts.attach import ExpertModel, ExpertSpec
from model_store.backends.experts.clsr import CLSRFeedForward, ExpertControl, FeedForward
from model_store.backends.experts.storage import expert_file, load_experts, save_language
from model_store.backends.experts.transcriber import ExpertsTranscriber
from model_store.hashing import sha256_file
from model_store.opener import open_variant
from model_store.settings import RuntimeSettings
from model_store.store import ModelStore
from model_store.transcription import TranscribeOptions
from model_store.whisper_tokens import special_tokens
from tests.conftest import sine
from tests.factories import publish_tiny_variant, tiny_random_whisper
from tests.test_eval import make_corpus

SPECS = [
    ExpertSpec(kind="full", stacks=("encoder", "decoder")),
    ExpertSpec(kind="lowrank", rank=4, stacks=("encoder", "decoder")),
]


@functools.cache
def _tiny(seed: int) -> WhisperForConditionalGeneration:
    return tiny_random_whisper(seed).model.eval()


def tiny_model(seed: int = 0) -> WhisperForConditionalGeneration:
    """A fresh copy of a tiny random Whisper (built once per seed: the tokenizer is slow to read)."""
    return copy.deepcopy(_tiny(seed))


def logits_of(model: WhisperForConditionalGeneration, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(2, 80, 3000, generator=generator)
    tokens = torch.randint(0, 1000, (2, 7), generator=generator)
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=tokens).logits


def perturb(experts: ExpertModel, language: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in experts.expert_parameters(language):
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: spec.kind)
def test_experts_leave_the_model_unchanged_at_init(spec: ExpertSpec) -> None:
    model = tiny_model()
    reference = logits_of(model)
    experts = ExpertModel(model, spec, ExpertControl())
    experts.add_language("cs")
    with experts.control.use("cs"):
        hard = logits_of(model)  # gate logit 0 -> hard gate open -> the expert, an exact copy
        model.train()
        experts.control.noise_scale = 5.0
        soft = logits_of(model)  # any mix of two equal branches
        model.eval()
    assert experts.control.mean_gate_opening() == 1.0
    torch.testing.assert_close(hard, reference, rtol=0, atol=0)
    torch.testing.assert_close(soft, reference, rtol=1e-5, atol=1e-5)
    perturb(experts, "cs", seed=3)
    with experts.control.use("cs"):
        assert not torch.allclose(logits_of(model), reference, atol=1e-4)  # the expert is really used
    torch.testing.assert_close(logits_of(model), reference, rtol=0, atol=0)  # no language: shared only


def count_calls(module: nn.Module) -> list[int]:
    counted: list[int] = []
    module.register_forward_hook(lambda _m, inputs, _o: counted.append(int(inputs[0].shape[0])))
    return counted


@pytest.mark.parametrize("kind", ["full", "lowrank"])
def test_hard_gate_computes_only_the_chosen_branch(kind: str) -> None:
    shared = FeedForward(nn.Linear(8, 32), nn.Linear(32, 8), nn.GELU())
    control = ExpertControl()
    layer = CLSRFeedForward(shared, control, kind, rank=2)  # type: ignore[arg-type]
    layer.add_language("nl")
    layer.eval()
    gate = layer.gates["nl"]
    shared_rows, expert_rows = count_calls(layer.shared), count_calls(layer.experts["nl"])
    tokens = torch.randn(10, 8)
    with control.use("nl"), torch.no_grad():
        gate.out.bias.fill_(1.0)  # every token opens
        layer(tokens)
        assert (shared_rows, expert_rows) == ([], [10])
        gate.out.bias.fill_(-1.0)  # every token stays shared
        layer(tokens)
        assert (shared_rows, expert_rows) == ([10], [10])
        gate.out.bias.zero_()
        gate.hidden.weight.zero_()
        gate.hidden.bias.zero_()
        gate.hidden.weight[0, 0] = 1.0
        gate.out.weight[0, 0] = 1.0
        gate.out.bias.fill_(-1e-3)  # opens exactly where the first feature is positive
        output = layer(tokens)
    opened = int((tokens[:, 0] > 0).sum())
    assert 0 < opened < 10
    assert shared_rows[-1] == 10 - opened and expert_rows[-1] == opened
    expected = torch.where((tokens[:, :1] > 0), layer.experts["nl"](tokens, shared), shared(tokens))
    torch.testing.assert_close(output, expected)


def test_gate_noise_schedule_grows_linearly_then_holds() -> None:
    schedule = GateNoiseSchedule(total_steps=100)
    assert [schedule.scale(step) for step in (0, 25, 50, 100, 500)] == [0.0, 1.25, 2.5, 5.0, 5.0]
    with pytest.raises(ValueError):
        GateNoiseSchedule(total_steps=0)
    # the soft gate's spread follows the scale: no noise gives exactly sigmoid(0) = 0.5 at init
    shared = FeedForward(nn.Linear(8, 16), nn.Linear(16, 8), nn.GELU())
    control = ExpertControl(skip_probability=0.0)
    layer = CLSRFeedForward(shared, control, "lowrank", rank=2).train()
    layer.add_language("cs")
    with control.use("cs"):
        layer(torch.randn(200, 8))
        control.noise_scale = schedule.scale(100)
        layer(torch.randn(200, 8))
    quiet, noisy = control.recorded_gates
    assert torch.all(quiet == 0.5) and noisy.std() > 0.3


def test_losses() -> None:
    logits = torch.randn(2, 5, 11)
    other = torch.randn(2, 5, 11)
    labels = torch.tensor([[IGNORE_INDEX, 1, 2, 3, IGNORE_INDEX], [IGNORE_INDEX, 4, 5, 6, 7]])
    assert float(js_divergence(logits, logits, labels)) == pytest.approx(0.0, abs=1e-6)
    forward, backward = (
        float(js_divergence(logits, other, labels)),
        float(js_divergence(other, logits, labels)),
    )
    assert forward == pytest.approx(backward, rel=1e-5) and 0 < forward < np.log(2)
    assert float(gate_budget([torch.full((3,), 0.5), torch.full((5,), 0.5)])) == 0.0
    assert float(gate_budget([torch.ones(4)], budget=0.5)) == pytest.approx(0.5)


def test_experts_are_stored_one_file_per_language(tmp_path: Path) -> None:
    model = tiny_model()
    experts = ExpertModel(model, ExpertSpec(kind="lowrank", rank=4, stacks=("decoder",)), ExpertControl())
    for seed, language in enumerate(("cs", "nl")):
        experts.add_language(language)
        perturb(experts, language, seed)
        save_language(experts, language, tmp_path)
    cs_digest = sha256_file(expert_file(tmp_path, "cs"))
    experts.add_language("de")
    save_language(experts, "de", tmp_path)
    assert sha256_file(expert_file(tmp_path, "cs")) == cs_digest  # adding a language leaves the others
    reloaded = load_experts(tiny_model(), tmp_path)
    assert reloaded.languages == ["cs", "de", "nl"]
    for language in ("cs", "nl"):
        saved = experts.state_for(language)
        for name, tensor in reloaded.state_for(language).items():
            torch.testing.assert_close(tensor, saved[name].half().float())  # stored in float16
        with experts.control.use(language), reloaded.control.use(language):
            torch.testing.assert_close(
                logits_of(reloaded.model), logits_of(experts.model), atol=1e-3, rtol=1e-3
            )


class FixedEncoderOutputs:
    """A stand-in for the encoder: one fixed random hidden state per utterance (d_model 64)."""

    def __init__(self) -> None:
        self.states: dict[str, torch.Tensor] = {}

    def __call__(self, examples: Sequence[Example]) -> torch.Tensor:
        for example in examples:
            seed = sum(map(ord, example.utterance.id))
            generator = torch.Generator().manual_seed(seed)
            self.states.setdefault(example.utterance.id, torch.randn(30, 64, generator=generator))
        return torch.stack([self.states[example.utterance.id] for example in examples])


def toy_examples() -> list[Example]:
    examples = []
    for language, first in (("cs", 300), ("nl", 600)):
        for index in range(4):
            utterance = Utterance(
                f"{language}-{index}", "x.flac", language, "x", 1.0, "test", "s", "train", True, "CC0"
            )
            ids = (50258, first, 50360, 50364, *range(first + index, first + index + 6))
            labels = (IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, *ids[4:], 50257)
            examples.append(Example(utterance, ids, labels))
    return examples


@pytest.mark.parametrize("method", ["clsr", "lora", "finetune"])
def test_a_short_training_run_lowers_the_loss(method: str) -> None:
    torch.manual_seed(0)
    model = tiny_model()
    student = build_student(model, method, ["cs", "nl"], ExpertSpec(kind="lowrank", rank=4))  # type: ignore[arg-type]
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if "fc1.shared" in name}
    batches = language_batches(toy_examples(), 4, 50257)
    rate = 3e-3 if method == "finetune" else 3e-2
    config = TrainingConfig(steps=20, batch_size=4, learning_rate=rate, skip_probability=0.0)
    history = train(
        model,
        student.trainable,
        batches,
        FixedEncoderOutputs(),
        config,
        teacher=Teacher(tiny_model(seed=1), FixedEncoderOutputs()),
        control=student.control,
        expert_key=student.expert_key,
        progress=False,
    )
    assert {entry.language for entry in history[:2]} == {"cs", "nl"}  # one language per batch, in turns
    first, last = history[:4], history[-4:]
    assert sum(entry.ce for entry in last) / 4 < sum(entry.ce for entry in first) / 4 - 0.1  # nats
    assert sum(entry.loss for entry in last) < sum(entry.loss for entry in first)
    for name, parameter in model.named_parameters():
        if name in frozen:
            torch.testing.assert_close(parameter, frozen[name], rtol=0, atol=0)  # shared FFNs never train
    if method == "clsr":
        assert all(entry.mean_gate is not None for entry in history)


@pytest.mark.parametrize("train_embeddings", [False, True])
def test_finetune_trains_the_decoder_and_the_token_embedding_only_when_asked(train_embeddings: bool) -> None:
    model = tiny_model()
    student = build_student(model, "finetune", ["cs"], ExpertSpec(), train_embeddings=train_embeddings)
    names = {id(parameter): name for name, parameter in model.named_parameters()}
    trained = {names[id(parameter)] for parameter in student.trainable}
    assert trained == {name for name, parameter in model.named_parameters() if parameter.requires_grad}
    assert any(".decoder.layers." in name for name in trained)
    assert "model.decoder.layer_norm.weight" in trained
    assert not any(name.startswith("model.encoder.") or "embed_positions" in name for name in trained)
    assert ("model.decoder.embed_tokens.weight" in trained) is train_embeddings


def test_experts_variant_end_to_end(tmp_path: Path) -> None:
    """hush compress experts on a tiny corpus (live encoder: experts in both stacks), then open it."""
    store = ModelStore(tmp_path / "store")
    publish_tiny_variant(store, "tiny-base", seed=0)
    corpus = make_corpus(tmp_path / "corpus")
    job = ExpertsJob(
        base="tiny-base",
        languages=("en", "fr"),
        teacher="tiny-base",
        spec=ExpertSpec(kind="lowrank", rank=2, stacks=("encoder", "decoder")),
        training=TrainingConfig(steps=4, batch_size=2),
        variant_id="tiny-experts",
    )
    manifest = run_experts_job(store, corpus, job, cache_root=tmp_path / "cache", progress=False)
    assert manifest.recipe.method == "lang-experts" and manifest.languages == ("en", "fr")
    assert set(manifest.recipe.args["gate_opening_dev"]) == {"en", "fr"}
    # the sampling rule of every train command (hush compress distill's too): a teacher distilled on the
    # same --per-language and seed saw exactly the student's utterances
    assert manifest.recipe.args["train_sample"] == sample_digest(
        select_utterances(corpus, "train", ("en", "fr"), None, seed=0)
    )
    assert {file.path for file in manifest.weights} >= {"experts/en.safetensors", "experts/fr.safetensors"}
    transcriber = open_variant(store, "tiny-experts", RuntimeSettings(device="cpu"))
    assert isinstance(transcriber, ExpertsTranscriber)
    options = TranscribeOptions(language="fr", temperatures=(0.0,), max_new_tokens=4, without_timestamps=True)
    result = transcriber.transcribe(sine(1.0), options)
    assert result.language == "fr" and result.variant_id == "tiny-experts"
    assert transcriber.experts.control.tokens_seen > 0  # the French experts were routed
    detected = transcriber.transcribe(sine(1.0), TranscribeOptions(temperatures=(0.0,), max_new_tokens=2))
    assert (
        detected.language_probability is not None and detected.language in detected.all_language_probabilities
    )


def test_cached_decoding_runs_each_languages_experts_or_the_shared_branch() -> None:
    """quick-eval of an experts variant: the utterance's language picks its experts, as in serving."""
    imported = tiny_random_whisper(0)
    model = imported.model.eval()
    tokens = special_tokens(imported.tokenizer, multilingual=True)
    experts = ExpertModel(model, ExpertSpec(kind="lowrank", rank=4, stacks=("decoder",)), ExpertControl())
    experts.add_language("fr")
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():  # experts far from the shared branch, gates open on about half the tokens
        for parameter in experts.expert_parameters("fr"):
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    hidden = model.model.encoder(torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0)))[0][0]
    routed = CachedGreedyDecoder(model, imported.tokenizer, tokens, imported.generation, experts=experts)
    plain = CachedGreedyDecoder(model, imported.tokenizer, tokens, imported.generation)
    english = routed.token_ids(hidden, "en")
    assert experts.control.tokens_seen == 0  # no English experts: the shared branch alone
    assert english == plain.token_ids(hidden, "en")
    french = routed.token_ids(hidden, "fr")
    assert experts.control.tokens_seen > 0
    with experts.control.use("fr"):
        assert french == plain.token_ids(hidden, "fr")
    assert french != plain.token_ids(hidden, "fr")  # the experts changed what was decoded
    in_encoder = ExpertModel(
        tiny_model(), ExpertSpec(kind="lowrank", rank=2, stacks=("encoder",)), ExpertControl()
    )
    with pytest.raises(ValueError, match="hush eval"):
        CachedGreedyDecoder(model, imported.tokenizer, tokens, imported.generation, experts=in_encoder)
