"""Putting CLSR layers into a transformers Whisper, and reading or writing one language's experts."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal, cast

import torch
from torch import nn

from model_store.backends.experts.clsr import (
    EXPERT_KINDS,
    CLSRFeedForward,
    ExpertControl,
    ExpertKind,
    FeedForward,
    LowRankExpert,
)

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration

Stack = Literal["encoder", "decoder"]
STACKS: tuple[Stack, ...] = ("encoder", "decoder")


@dataclass(frozen=True)
class ExpertSpec:
    """Which FFNs get experts and what kind."""

    kind: ExpertKind = "lowrank"  # "full": a copy of the FFN (the paper); "lowrank": a rank-r correction
    rank: int = 16  # only for "lowrank"
    stacks: tuple[Stack, ...] = ("decoder",)  # which of the encoder and decoder FFNs are replaced

    def __post_init__(self) -> None:
        if self.kind not in EXPERT_KINDS:
            raise ValueError(f"unknown expert kind {self.kind!r}; choose one of: {', '.join(EXPERT_KINDS)}")
        unknown = [stack for stack in self.stacks if stack not in STACKS]
        if unknown or not self.stacks:
            raise ValueError(f"expert stacks must be among {', '.join(STACKS)}; got {self.stacks!r}")
        if self.kind == "lowrank" and self.rank < 1:
            raise ValueError("a low-rank expert needs rank >= 1")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> ExpertSpec:
        data: dict[str, Any] = json.loads(text)
        return cls(
            kind=cast(ExpertKind, data["kind"]),
            rank=int(data["rank"]),
            stacks=tuple(cast(Stack, stack) for stack in data["stacks"]),
        )


class ExpertModel:
    """A Whisper whose FFNs (in ``spec.stacks``) were replaced by CLSR layers sharing one control."""

    def __init__(
        self, model: WhisperForConditionalGeneration, spec: ExpertSpec, control: ExpertControl
    ) -> None:
        self.model = model
        self.spec = spec
        self.control = control
        self.layers: dict[str, CLSRFeedForward] = {}
        for stack in spec.stacks:
            layers = cast(nn.ModuleList, getattr(model.model, stack).layers)
            for index, layer in enumerate(layers):
                shared = FeedForward(
                    cast(nn.Linear, layer.fc1),
                    cast(nn.Linear, layer.fc2),
                    cast(nn.Module, layer.activation_fn),
                )
                clsr = CLSRFeedForward(shared, control, spec.kind, spec.rank).train(layer.training)
                # The layer computes fc2(activation(fc1(x))): fc1 becomes the whole routed block and the
                # other two pass its output through, so transformers' own forward runs unchanged.
                layer.fc1 = clsr
                layer.fc2 = nn.Identity()
                layer.activation_fn = nn.Identity()
                self.layers[f"model.{stack}.layers.{index}.fc1"] = clsr

    @property
    def languages(self) -> list[str]:
        first = next(iter(self.layers.values()))
        return sorted(first.experts.keys())

    def add_language(self, language: str) -> None:
        for layer in self.layers.values():
            layer.add_language(language)

    def expert_parameters(self, language: str) -> list[nn.Parameter]:
        """What trains for ``language``: its experts and gates (the shared FFNs stay frozen)."""
        parameters: list[nn.Parameter] = []
        for layer in self.layers.values():
            parameters += [*layer.experts[language].parameters(), *layer.gates[language].parameters()]
        return parameters

    def state_for(self, language: str) -> dict[str, torch.Tensor]:
        """One language's experts and gates, keyed by layer (``<layer>.expert.up1.weight``...)."""
        state: dict[str, torch.Tensor] = {}
        for name, layer in self.layers.items():
            for part, module in (("expert", layer.experts[language]), ("gate", layer.gates[language])):
                for key, tensor in module.state_dict().items():
                    state[f"{name}.{part}.{key}"] = tensor.detach().contiguous()
        return state

    def load_language(self, language: str, state: dict[str, torch.Tensor]) -> None:
        """Add ``language`` and set its experts and gates from :meth:`state_for`'s tensors (all of them)."""
        self.add_language(language)
        remaining = dict(state)
        for name, layer in self.layers.items():
            for part, module in (("expert", layer.experts[language]), ("gate", layer.gates[language])):
                prefix = f"{name}.{part}."
                own = {
                    key[len(prefix) :]: remaining.pop(key)
                    for key in list(remaining)
                    if key.startswith(prefix)
                }
                reference = layer.shared.fc1.weight
                module.load_state_dict({k: v.to(reference.device, reference.dtype) for k, v in own.items()})
        if remaining:
            raise ValueError(f"expert tensors of {language!r} that match no layer: {sorted(remaining)[:5]}")

    def expert_parameter_count(self, language: str) -> int:
        return sum(parameter.numel() for parameter in self.expert_parameters(language))

    def merge_into_model(self, language: str) -> WhisperForConditionalGeneration:
        """Fold ``language``'s low-rank experts into the FFN weights (gate ignored: always on) and remove
        the CLSR layers; the model becomes a plain Whisper again (the LoRA baseline is served so)."""
        for name, layer in self.layers.items():
            expert = layer.expert(language)
            if not isinstance(expert, LowRankExpert):
                raise ValueError("only low-rank experts fold into the FFN weights")
            fc1_weight, fc2_weight = expert.merged(layer.shared)
            parent = self.model.get_submodule(name.rsplit(".", 1)[0])
            parent.fc1 = layer.shared.fc1
            parent.fc2 = layer.shared.fc2
            parent.activation_fn = layer.shared.activation
            with torch.no_grad():
                parent.fc1.weight.copy_(fc1_weight)
                parent.fc2.weight.copy_(fc2_weight)
        self.layers = {}
        return self.model
