"""How far each int8 activation scheme moves Whisper's next-token distributions, measured as decoding runs.

    python -m tests.bench.probe_int8_decoding --store .hush/store              # whisper-base, 3 dev utts a language

`probe_int8_layers` runs the decoder teacher-forced on whole sequences, where a per-matrix activation
scale covers every token at once; while decoding, each step quantizes one token. Here the decoder is
fed the gold transcript one token a step with its key/value cache, as greedy decoding feeds its own
tokens, so every scheme is measured under the numerics it has when serving. For each row: the mean
KL divergence from the float model's next-token distribution to the int8 model's, its median, and
how often their top tokens agree. Rows with 8-bit per-matrix activations need a CPU with VNNI and
are left out elsewhere. A fidelity probe with far less noise than decoded CER on a few utterances;
`hush eval` remains the accuracy figure.
"""

from __future__ import annotations

import argparse
import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn
from transformers import WhisperForConditionalGeneration

from compression.quantize.calibration import CalibrationExample
from compression.quantize.torch_int8 import encoder_and_ffn_outputs, is_ffn_output, many_rows_and_ffn_outputs
from model_store.backends.bf16_attention import use_bf16_encoder_attention
from model_store.backends.cache_keyword import cache_keyword
from model_store.backends.cpu_features import full_range_int8_is_exact
from model_store.backends.int8_dynamic import per_channel_int8
from tests.bench.probe_int8_layers import Selection, add_probe_arguments, probe_inputs, quantized_copy

Variant = Callable[[WhisperForConditionalGeneration], WhisperForConditionalGeneration]


@torch.inference_mode()
def stepwise_log_probs(
    model: WhisperForConditionalGeneration, examples: Sequence[CalibrationExample], prompt_length: int
) -> list[torch.Tensor]:
    """Next-token log-probabilities at the target positions, the prompt run as one block and then
    one gold token a step through the cache, as decoding runs the model."""
    result = []
    keyword = cache_keyword(model)
    for example in examples:
        encoded = model.model.encoder(example.features).last_hidden_state
        ids = example.decoder_input_ids
        step = model(encoder_outputs=(encoded,), decoder_input_ids=ids[:, :prompt_length], use_cache=True)
        logits = [step.logits[0, -1]]
        for position in range(prompt_length, ids.shape[1] - 1):
            step = model(
                encoder_outputs=(encoded,),
                decoder_input_ids=ids[:, position : position + 1],
                use_cache=True,
                **{keyword: getattr(step, keyword)},
            )
            logits.append(step.logits[0, -1])
        result.append(torch.log_softmax(torch.stack(logits), dim=-1))
    return result


def fidelity(reference: list[torch.Tensor], other: list[torch.Tensor]) -> tuple[float, float, float]:
    """Mean and median KL(reference || other) per token, and the share of equal top tokens."""
    kl = torch.cat([(r.exp() * (r - o)).sum(-1) for r, o in zip(reference, other, strict=True)])
    agree = torch.cat([(r.argmax(-1) == o.argmax(-1)).float() for r, o in zip(reference, other, strict=True)])
    return float(kl.mean()), float(kl.median()), float(agree.mean())


def weights_only(model: WhisperForConditionalGeneration) -> WhisperForConditionalGeneration:
    """Every Linear's weights rounded to per-channel int8, computed in float: the floor that no
    activation scheme can go below."""
    rounded = quantized_copy(model, lambda name: False)
    for module in rounded.modules():
        if isinstance(module, nn.Linear):
            weight, scales = per_channel_int8(module.weight.data)
            module.weight.data = weight.float() * scales[:, None]
    return rounded


def with_bf16_encoder_attention(make: Variant) -> Variant:
    """``make``'s model (a copy, with its own config) running the encoder's self-attention in bfloat16."""

    def made(model: WhisperForConditionalGeneration) -> WhisperForConditionalGeneration:
        changed = make(model)
        if changed is model:
            changed = copy.deepcopy(model)
        use_bf16_encoder_attention(changed)
        return changed

    return made


def rows(full_range_available: bool) -> dict[str, Variant]:
    def everything(name: str) -> bool:
        return True

    def selection(
        choose: Callable[[list[str]], list[str]],
    ) -> Callable[[WhisperForConditionalGeneration], Selection]:
        def chosen(model: WhisperForConditionalGeneration) -> Selection:
            names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
            return set(choose(names)).__contains__

        return chosen

    encoder_and_fc2 = selection(encoder_and_ffn_outputs)
    with_cross = selection(many_rows_and_ffn_outputs)

    def per_token_now(model: WhisperForConditionalGeneration) -> WhisperForConditionalGeneration:
        return quantized_copy(model, everything, with_cross(model), asymmetric=is_ffn_output, full_range=True)

    table: dict[str, Variant] = {
        "weights int8, activations float": weights_only,
        "ptq-int8, 7-bit": lambda model: quantized_copy(model, everything),
        "per token: encoder + fc2, symmetric, 7-bit (before session 13)": lambda model: quantized_copy(
            model, everything, encoder_and_fc2(model)
        ),
        "per token: encoder + fc2, fc2 rows asymmetric, 7-bit": lambda model: quantized_copy(
            model, everything, encoder_and_fc2(model), asymmetric=is_ffn_output
        ),
    }
    if full_range_available:
        table |= {
            "ptq-int8, 8-bit": lambda model: quantized_copy(model, everything, full_range=True),
            "per token: encoder + fc2, symmetric, 8-bit": lambda model: quantized_copy(
                model, everything, encoder_and_fc2(model), full_range=True
            ),
            "per token: encoder + fc2, every row asymmetric, 8-bit": lambda model: quantized_copy(
                model, everything, encoder_and_fc2(model), asymmetric=everything, full_range=True
            ),
            "per token: encoder + fc2, fc2 rows asymmetric, 8-bit": lambda model: quantized_copy(
                model, everything, encoder_and_fc2(model), asymmetric=is_ffn_output, full_range=True
            ),
            "per token: + cross-attention k/v, fc2 rows asymmetric, 8-bit (now)": per_token_now,
            "per token now + bfloat16 encoder attention (session 14)": with_bf16_encoder_attention(
                per_token_now
            ),
        }
    table["float, bfloat16 encoder attention (session 14)"] = with_bf16_encoder_attention(copy.deepcopy)
    return table


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_probe_arguments(parser, per_language=3)
    parser.add_argument("--only", default="", help="run only the rows whose label contains this text")
    args = parser.parse_args(argv)
    inputs = probe_inputs(args)
    model, examples, prompt_length = inputs.model, inputs.examples, inputs.prompt_length
    reference = stepwise_log_probs(model, examples, prompt_length)

    vnni = full_range_int8_is_exact()
    targets = sum(len(r) for r in reference)
    print(f"{args.variant}: {len(examples)} dev utterances, {targets} target tokens, decoded step by step,")
    print(f"{args.threads} thread(s); CPU with VNNI: {vnni}\n")
    print(f"| {'int8 scheme':70s} | {'KL mean':>8s} | {'KL median':>9s} | {'top-1 agree':>11s} |")
    print(f"|{'-' * 72}|{'-' * 10}|{'-' * 11}|{'-' * 13}|")
    for label, make in rows(vnni).items():
        if args.only not in label:
            continue
        kl, median, agree = fidelity(reference, stepwise_log_probs(make(model), examples, prompt_length))
        print(f"| {label:70s} | {kl:8.4f} | {median:9.5f} | {agree:11.1%} |", flush=True)


if __name__ == "__main__":
    main()
