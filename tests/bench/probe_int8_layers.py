"""Which Linears' int8 costs a Whisper its accuracy: a teacher-forced probe, per group of Linears.

    python -m tests.bench.probe_int8_layers --store .hush/store               # whisper-base, 1 dev utt a language
    python -m tests.bench.probe_int8_layers --store .hush/store --smooth 0.5,0.8 --per-language 2

For each row a copy of the float model gets some of its Linears replaced by PyTorch dynamic int8
(per-channel weights, one activation scale per matrix, as ``ptq-int8``) or by per-token int8 (as
``ptq-int8-per-token``), and is run teacher-forced on gold dev transcripts. The table gives the KL
divergence from the float model's next-token distribution to the variant's, averaged over target
tokens, and how often their top tokens agree. Teacher forcing runs the decoder on whole sequences, so
it overstates the decoder's share: while decoding, each step quantizes one token. A probe to find
where to look, not an accuracy figure: `hush eval` is that.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration, WhisperTokenizer

from compression.data.corpus import Corpus
from compression.quantize.calibration import (
    CalibrationExample,
    calibration_examples,
    calibration_utterances,
    covered_languages,
)
from compression.quantize.smoothed_parent import calibration_ranges
from compression.quantize.smoothing import smooth, whisper_smoothing_groups
from compression.quantize.torch_int8 import encoder_and_ffn_outputs
from compression.training.selection import select_utterances
from model_store.backends.int8_dynamic import int8_layer, per_channel_int8
from model_store.backends.per_token_int8 import PerTokenScheme
from model_store.manifest import Manifest
from model_store.whisper_tokens import SpecialTokens, special_tokens, transcription_prompt

Selection = Callable[[str], bool]
ROWS: dict[str, Selection] = {
    "all": lambda name: True,
    "encoder only": lambda name: name.startswith("model.encoder."),
    "decoder layers only": lambda name: name.startswith("model.decoder."),
    "output projection only": lambda name: name == "proj_out",
    "all but fc2": lambda name: not name.endswith(".fc2"),
}


def quantized_copy(
    model: WhisperForConditionalGeneration,
    chosen: Selection,
    per_token: Selection = lambda name: False,
    *,
    asymmetric: Selection = lambda name: False,
    full_range: bool = False,
) -> WhisperForConditionalGeneration:
    """A copy with the ``chosen`` Linears in int8, activations per token in the ``per_token`` ones
    (rows with a zero point in the ``asymmetric`` ones, symmetric in the others) and per matrix in
    the rest (8-bit with ``full_range``, else 7)."""

    def scheme_of(name: str) -> PerTokenScheme:
        return "asymmetric" if asymmetric(name) else "symmetric"

    quantized = copy.deepcopy(model)
    for name, module in list(quantized.named_modules()):
        if isinstance(module, nn.Linear) and chosen(name):
            weight, scales = per_channel_int8(module.weight.data)
            bias = None if module.bias is None else module.bias.data
            layer = int8_layer(
                weight,
                scales,
                bias,
                per_token=per_token(name),
                scheme=scheme_of(name),
                full_range=full_range,
            )
            quantized.set_submodule(name, layer)
    return quantized


@torch.inference_mode()
def _log_probs(
    model: WhisperForConditionalGeneration, examples: Sequence[CalibrationExample], prompt_length: int
) -> list[torch.Tensor]:
    """Next-token log-probabilities at the target positions (from the prompt's last token on)."""
    return [
        torch.log_softmax(
            model(input_features=e.features, decoder_input_ids=e.decoder_input_ids).logits[
                0, prompt_length - 1 :
            ],
            dim=-1,
        )
        for e in examples
    ]


def divergence(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float]:
    """Mean KL(reference || other) per target token, and the share of equal top tokens."""
    kl = torch.cat([(r.exp() * (r - o)).sum(-1) for r, o in zip(reference, other, strict=True)])
    agree = torch.cat([(r.argmax(-1) == o.argmax(-1)).float() for r, o in zip(reference, other, strict=True)])
    return float(kl.mean()), float(agree.mean())


def add_probe_arguments(parser: argparse.ArgumentParser, *, per_language: int) -> None:
    """The options both int8 probes take."""
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--variant", default="whisper-base", help="a float transformers variant")
    parser.add_argument("--corpus", type=Path, help="default: the one built under HUSH_HOME")
    parser.add_argument("--per-language", type=int, default=per_language, help="dev utterances per language")
    parser.add_argument("--threads", type=int, default=1)


@dataclass(frozen=True)
class ProbeInputs:
    """The float model, its tokenizer and the dev utterances a probe runs it on."""

    model: WhisperForConditionalGeneration
    manifest: Manifest
    corpus: Corpus
    tokenizer: WhisperTokenizer
    tokens: SpecialTokens
    examples: list[CalibrationExample]
    prompt_length: int


def probe_inputs(args: argparse.Namespace) -> ProbeInputs:
    """Open ``args.variant`` in float32 and the first ``args.per_language`` dev utterances of each
    language it covers (seeded selection), with ``args.threads`` torch threads."""
    from compression.evaluation.cli import find_corpus
    from model_store.settings import HushSettings
    from model_store.store import ModelStore

    torch.set_num_threads(args.threads)
    store = ModelStore(args.store)
    directory = store.path(args.variant)
    manifest = store.verify(args.variant)
    corpus = find_corpus(HushSettings(), args.corpus)
    tokenizer = WhisperTokenizer.from_pretrained(directory, local_files_only=True)
    tokens = special_tokens(tokenizer, multilingual=manifest.multilingual)
    model = WhisperForConditionalGeneration.from_pretrained(directory, torch_dtype=torch.float32).eval()
    languages = covered_languages(corpus, manifest)
    held_out = select_utterances(corpus, "dev", languages, args.per_language, seed=1)
    examples = calibration_examples(held_out, tokenizer, tokens, model.config.num_mel_bins)
    prompt_length = len(transcription_prompt(tokens, languages[0]))
    return ProbeInputs(model, manifest, corpus, tokenizer, tokens, examples, prompt_length)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_probe_arguments(parser, per_language=1)
    parser.add_argument("--smooth", default="", help="comma-separated SmoothQuant alphas to add rows for")
    args = parser.parse_args(argv)
    inputs = probe_inputs(args)
    model, examples, prompt_length = inputs.model, inputs.examples, inputs.prompt_length
    corpus, manifest, tokenizer, tokens = inputs.corpus, inputs.manifest, inputs.tokenizer, inputs.tokens
    reference = _log_probs(model, examples, prompt_length)

    rows: list[tuple[str, float, float]] = []
    for label, chosen in ROWS.items():
        rows.append(
            (
                label,
                *divergence(reference, _log_probs(quantized_copy(model, chosen), examples, prompt_length)),
            )
        )
    linear_names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    per_token = set(encoder_and_ffn_outputs(linear_names))  # as ptq-int8-per-token
    rows.append(
        (
            "all, encoder and fc2 per token",
            *divergence(
                reference,
                _log_probs(
                    quantized_copy(model, ROWS["all"], per_token.__contains__), examples, prompt_length
                ),
            ),
        )
    )
    alphas = [float(value) for value in args.smooth.split(",") if value]
    if alphas:  # one calibration: every alpha smooths a copy from the same input ranges
        calibration = calibration_examples(
            calibration_utterances(corpus, manifest, 4), tokenizer, tokens, model.config.num_mel_bins
        )
        ranges = calibration_ranges(model, calibration, progress=False)
    for alpha in alphas:
        smoothed = copy.deepcopy(model)
        smooth(smoothed, whisper_smoothing_groups(smoothed), ranges, alpha)
        for label in ("all", "all but fc2"):
            quantized = quantized_copy(smoothed, ROWS[label])
            rows.append(
                (
                    f"{label}, smoothed {alpha:g}",
                    *divergence(reference, _log_probs(quantized, examples, prompt_length)),
                )
            )

    print(f"{args.variant}: {len(examples)} dev utterances, teacher-forced, {args.threads} thread(s)\n")
    print(f"{'int8 Linears':40s} {'KL':>7s} {'top-1 agree':>12s}")
    for label, kl, agree in rows:
        print(f"{label:40s} {kl:7.4f} {agree:11.1%}")


if __name__ == "__main__":
    main()
