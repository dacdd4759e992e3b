"""``ct2-int8`` and ``ct2-int8_float16``: the parent exported to CTranslate2 (faster-whisper's engine)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import ctranslate2
from ctranslate2.converters import TransformersConverter
from transformers import WhisperConfig, WhisperFeatureExtractor

from compression.quantize.parent import Parent

PREPROCESSOR_FILENAME = "preprocessor_config.json"  # what faster-whisper reads the mel settings from


def export_ctranslate2(parent: Parent, target: Path, quantization: str) -> dict[str, Any]:
    """Convert the parent checkpoint into ``target`` with CTranslate2's ``quantization`` (int8, ...)."""
    converter = TransformersConverter(
        str(parent.directory),
        copy_files=["tokenizer.json"],
        load_as_float16=quantization in ("float16", "int8_float16"),
    )
    # The converter wants to own its output directory: convert into a scratch directory inside the
    # target (a run killed mid-way leaves it inside the staging directory, which the store sweeps),
    # then move the files up.
    with tempfile.TemporaryDirectory(dir=target, prefix=".ct2-") as scratch:
        output = Path(scratch) / "model"
        converter.convert(str(output), quantization=quantization, force=True)
        for path in output.iterdir():
            shutil.move(str(path), target / path.name)
    n_mels = WhisperConfig.from_pretrained(parent.directory, local_files_only=True).num_mel_bins
    WhisperFeatureExtractor(feature_size=n_mels).to_json_file(str(target / PREPROCESSOR_FILENAME))
    return {
        "quantization": quantization,
        "converter": "ctranslate2.converters.TransformersConverter",
        "ctranslate2": ctranslate2.__version__,
    }
