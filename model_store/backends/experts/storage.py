"""Experts on disk, one file per language, beside the unchanged base checkpoint.

Layout inside a variant directory::

    model.safetensors, config.json, tokenizer...   the base model, as its parent stored it
    experts/spec.json                                 the :class:`ExpertSpec` (kind, rank, stacks)
    experts/<language>.safetensors                    that language's experts and gates

Adding a language writes one more file and leaves the others' bytes (and SHA-256) as they were.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file

from model_store.backends.experts.attach import ExpertModel, ExpertSpec
from model_store.backends.experts.clsr import ExpertControl
from model_store.safetensors_file import save_safetensors

if TYPE_CHECKING:
    from transformers import WhisperForConditionalGeneration

logger = logging.getLogger(__name__)

EXPERTS_DIR = "experts"
SPEC_FILE = "spec.json"
FORMAT_NAME = "hush-clsr-experts"
STORAGE_DTYPE = torch.float16  # as the imported base checkpoints; loading casts to the compute dtype


def expert_file(directory: Path, language: str) -> Path:
    return directory / EXPERTS_DIR / f"{language}.safetensors"


def save_spec(spec: ExpertSpec, directory: Path) -> None:
    (directory / EXPERTS_DIR).mkdir(parents=True, exist_ok=True)
    (directory / EXPERTS_DIR / SPEC_FILE).write_text(spec.to_json() + "\n", encoding="utf-8")


def save_language(experts: ExpertModel, language: str, directory: Path) -> Path:
    """Write ``language``'s experts (and the spec, if missing) into ``directory``; returns the file."""
    if not (directory / EXPERTS_DIR / SPEC_FILE).is_file():
        save_spec(experts.spec, directory)
    path = expert_file(directory, language)
    state = {name: tensor.cpu().to(STORAGE_DTYPE) for name, tensor in experts.state_for(language).items()}
    save_safetensors(state, path, metadata={"format": FORMAT_NAME, "language": language})
    return path


def stored_languages(directory: Path) -> list[str]:
    return sorted(path.stem for path in (directory / EXPERTS_DIR).glob("*.safetensors"))


def load_experts(
    model: WhisperForConditionalGeneration, directory: Path, languages: list[str] | None = None
) -> ExpertModel:
    """Attach the stored experts to ``model`` (the base, already loaded) and load each language's file."""
    spec = ExpertSpec.from_json((directory / EXPERTS_DIR / SPEC_FILE).read_text(encoding="utf-8"))
    experts = ExpertModel(model, spec, ExpertControl())
    for language in languages if languages is not None else stored_languages(directory):
        experts.load_language(language, load_file(str(expert_file(directory, language))))
    logger.debug("loaded %s experts for %s from %s", spec.kind, ", ".join(experts.languages), directory)
    return experts
