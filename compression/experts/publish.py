"""Publishing what was trained: an experts variant (base + one file per language) or a plain checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from transformers import WhisperForConditionalGeneration

from compression.quantize.parent import Parent
from model_store.backends.experts import METHOD as EXPERTS_METHOD
from model_store.backends.experts.attach import ExpertModel
from model_store.backends.experts.storage import expert_file, save_language, save_spec
from model_store.manifest import Manifest, Recipe, size_tier_for
from model_store.store import ModelStore

_BASE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "model-*.safetensors")


def _copy_base(parent: Parent, target: Path) -> None:
    """The parent's checkpoint as it is (weights, configs, tokenizer): the experts' shared branch."""
    for pattern in _BASE_WEIGHTS:
        for path in parent.directory.glob(pattern):
            shutil.copy2(path, target / path.name)
    parent.copy_assets(target)


def publish_experts(
    store: ModelStore,
    parent: Parent,
    experts: ExpertModel,
    variant_id: str,
    args: dict[str, Any],
    *,
    replace: bool = False,
) -> Manifest:
    """Base checkpoint + ``experts/<language>.safetensors`` for every language; it covers those languages."""
    languages = experts.languages
    with store.publish(variant_id, replace=replace) as staging:
        _copy_base(parent, staging.directory)
        save_spec(experts.spec, staging.directory)
        per_language = {}
        for language in languages:
            save_language(experts, language, staging.directory)
            per_language[language] = {
                "parameters": experts.expert_parameter_count(language),
                "bytes": expert_file(staging.directory, language).stat().st_size,
            }
        parameters = parent.manifest.parameters + max(item["parameters"] for item in per_language.values())
        return staging.commit(
            parent=parent.manifest.id,
            recipe=Recipe(
                method=EXPERTS_METHOD,
                args={
                    "weights_format": "transformers",
                    "experts": {
                        "kind": experts.spec.kind,
                        "rank": experts.spec.rank,
                        "stacks": experts.spec.stacks,
                    },
                    "expert_storage": "float16",
                    "per_language": per_language,
                    "parent_weights_sha256": parent.weights_digest(),
                    **args,
                },
            ),
            backend="transformers",
            device="cpu",
            dtype=parent.manifest.dtype,
            parameters=parameters,
            size_tier=size_tier_for(parameters),
            multilingual=True,
            languages=tuple(languages),
            timestamps=False,  # experts trained on <|notimestamps|> sequences
        )


def publish_plain(
    store: ModelStore,
    parent: Parent,
    model: WhisperForConditionalGeneration,
    method: str,
    variant_id: str,
    args: dict[str, Any],
    *,
    languages: tuple[str, ...],
    replace: bool = False,
) -> Manifest:
    """A fine-tuned (or adapter-merged) model as an ordinary float16 transformers checkpoint."""
    with store.publish(variant_id, replace=replace) as staging:
        model.to(torch.float16).save_pretrained(staging.directory)  # type: ignore[arg-type]
        parent.copy_assets(staging.directory)
        parameters = sum(parameter.numel() for parameter in model.parameters())
        return staging.commit(
            parent=parent.manifest.id,
            recipe=Recipe(
                method=method,
                args={
                    "weights_format": "transformers",
                    "parent_weights_sha256": parent.weights_digest(),
                    **args,
                },
            ),
            backend="transformers",
            device="cpu",
            dtype="float16",
            parameters=parameters,
            size_tier=size_tier_for(parameters),
            multilingual=True,
            languages=languages,
            timestamps=False,  # fine-tuned on <|notimestamps|> sequences
        )
