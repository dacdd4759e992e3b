"""What trains in each recipe: CLSR experts, a LoRA adapter (the baseline), or the decoder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

from torch import nn
from transformers import WhisperForConditionalGeneration

from compression.training.freezing import train_decoder_only
from model_store.backends.experts.attach import ExpertModel, ExpertSpec
from model_store.backends.experts.clsr import ExpertControl

Method = Literal["clsr", "lora", "finetune"]
METHODS: tuple[str, ...] = get_args(Method)
LORA_RANK = 64  # DistilWhisper's LoRA baseline: r = 64 on fc1/fc2
LORA_KEY = "all"  # the one adapter of the LoRA baseline, shared by every training language


@dataclass
class Student:
    """A model prepared for one recipe: what trains, and how a batch's language routes it."""

    method: Method
    model: WhisperForConditionalGeneration
    trainable: list[nn.Parameter]
    experts: ExpertModel | None = None
    control: ExpertControl | None = None
    expert_key: Callable[[str], str] = lambda language: language

    @property
    def trainable_parameters(self) -> int:
        return sum(parameter.numel() for parameter in self.trainable)


def _unique(parameters: list[nn.Parameter]) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for parameter in parameters:
        seen.setdefault(id(parameter), parameter)
    return list(seen.values())


def build_student(
    model: WhisperForConditionalGeneration,
    method: Method,
    languages: Sequence[str],
    spec: ExpertSpec,
    *,
    seed: int = 0,
    train_embeddings: bool = False,
) -> Student:
    """Freeze ``model`` and add what ``method`` trains.

    * ``clsr``: experts and gates per language (``spec``); the FFNs and everything else stay frozen;
    * ``lora``: one rank-64 low-rank adapter on fc1/fc2 of ``spec.stacks``, always on, for all languages
      (folded into the weights when published);
    * ``finetune``: the decoder's layers and final norm, and with ``train_embeddings`` its token
      embedding (:func:`~compression.training.freezing.train_decoder_only`, as ``hush compress
      distill``); the encoder stays frozen, so its outputs can be cached.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of: {', '.join(METHODS)}")
    model.requires_grad_(False)
    if method == "finetune":
        train_decoder_only(model, train_embeddings)
        trained = [parameter for parameter in model.model.decoder.parameters() if parameter.requires_grad]
        return Student(method, model, _unique(trained))
    control = ExpertControl(seed=seed)
    if method == "lora":
        lora_spec = ExpertSpec(kind="lowrank", rank=LORA_RANK, stacks=spec.stacks)
        experts = ExpertModel(model, lora_spec, control)
        experts.add_language(LORA_KEY)
        control.force_open = True
        return Student(
            method, model, experts.expert_parameters(LORA_KEY), experts, control, lambda _language: LORA_KEY
        )
    experts = ExpertModel(model, spec, control)
    trainable: list[nn.Parameter] = []
    for language in languages:
        experts.add_language(language)
        trainable += experts.expert_parameters(language)
    return Student(method, model, trainable, experts, control)
