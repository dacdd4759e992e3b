"""``hush compress distill TEACHER --id ID --languages ..``: train and publish a student."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Annotated

import typer

from compression.cli_options import comma_list
from compression.distill.objective import LOSS_PRESETS
from compression.distill.plan import DistillPlan


def distill_command(
    teacher: Annotated[str, typer.Argument(help="A float transformers variant of the store (the teacher).")],
    variant_id: Annotated[str, typer.Option("--id", help="Id of the published student.")],
    languages: Annotated[str, typer.Option(help="Comma-separated languages to train on, e.g. cs,nl,es,ru.")],
    per_language: Annotated[int, typer.Option(help="Train utterances per language (0: all).")] = 100,
    decoder_layers: Annotated[
        int, typer.Option(help="Decoder layers kept (maximally spaced); 0: all (teacher adaptation).")
    ] = 2,
    encoder_layers: Annotated[int, typer.Option(help="Encoder layers kept; 0: all (frozen, shared).")] = 0,
    student: Annotated[
        str | None,
        typer.Option(
            help="A smaller pretrained Whisper as the student: a store variant id or a transformers directory."
        ),
    ] = None,
    preset: Annotated[str, typer.Option(help=f"Loss preset: {', '.join(LOSS_PRESETS)}.")] = "distil-whisper",
    matching: Annotated[
        str | None, typer.Option(help="Hidden-state matching: static or dynamic (--guided-match: guided).")
    ] = None,
    temperature: Annotated[float | None, typer.Option(help="Override the preset's temperature.")] = None,
    labels: Annotated[str, typer.Option(help="pseudo (teacher, WER-filtered) or gold.")] = "pseudo",
    qad_bits: Annotated[
        int | None,
        typer.Option(help="Quantization-aware training at 2 to 8 bits (b bits a code on disk)."),
    ] = None,
    ptq_bits: Annotated[int | None, typer.Option(help="Quantize after training only (2 to 8 bits).")] = None,
    guided_bits: Annotated[
        float | None, typer.Option(help="Guided mixed precision at this average bits per weight.")
    ] = None,
    guided_choices: Annotated[
        str, typer.Option(help="Bit widths --guided-bits chooses from per Linear, e.g. 4,5,6,7,8.")
    ] = "4,8",
    guided_measure: Annotated[
        str,
        typer.Option(
            help="Sensitivity for --guided-bits: linear-output (each Linear's own output error) or "
            "model-output (KL of the model's next-token distribution with that Linear quantized) or "
            "model-output-at-budget (the same, every other Linear quantized at the budget's uniform width) "
            "or decisions-at-budget (that, plus the greedy decisions it changes, an early end-of-text "
            "costing the rest of the transcript) or transcripts-at-budget (the at-budget KL plus the token "
            "edits of the calibration utterances' greedy transcripts; slowest)."
        ),
    ] = "linear-output",
    guided_verify: Annotated[
        bool,
        typer.Option(
            help="With --guided-bits: from uniform precision to the predicted optimum, a few candidate "
            "choices are each applied to the whole decoder and the calibration utterances decoded; the "
            "one closest to the float model's transcripts is kept (never worse there than uniform)."
        ),
    ] = False,
    guided_match: Annotated[
        int | None,
        typer.Option(
            help="Distil hidden states into only this many student layers: those furthest from their "
            "teacher layer, measured before training (needs the dq-whisper preset)."
        ),
    ] = None,
    calibration: Annotated[
        str,
        typer.Option(
            help="What --guided-bits and --guided-match measure on: train (the run's first training "
            "batches) or held-out (train utterances of the languages that --per-language leaves out, "
            "gold transcripts; as many)."
        ),
    ] = "train",
    granularity: Annotated[
        str,
        typer.Option(help="Scales per-channel, per-tensor, or per-group (of --group-size input columns)."),
    ] = "per-channel",
    group_size: Annotated[int, typer.Option(min=1, help="Input columns per scale with per-group.")] = 64,
    quantize_scope: Annotated[
        str,
        typer.Option(
            help="decoder: quantize the decoder layers' Linears; model: also the frozen encoder Linears "
            "and the output projection (= token embedding), post-training, at the same bits."
        ),
    ] = "decoder",
    steps: Annotated[int, typer.Option(help="Optimizer steps (0: publish the student at init).")] = 200,
    batch_size: Annotated[int, typer.Option(help="Utterances per step.")] = 8,
    learning_rate: Annotated[float, typer.Option(help="AdamW peak learning rate.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of data sampling, init and batch order.")] = 0,
    eval_dev: Annotated[
        bool, typer.Option(help="Quick dev CER from cached encoder outputs at the end.")
    ] = True,
    replace: Annotated[bool, typer.Option(help="Replace an existing variant with this id.")] = False,
    device: Annotated[
        str | None,
        typer.Option(
            help="auto (this process's GPU when CUDA is there, else the CPU), cpu or cuda; "
            "default HUSH_DISTILL__DEVICE (auto)."
        ),
    ] = None,
) -> None:
    """Distil TEACHER into a smaller student (optionally quantized) and publish it with its recipe.

    Several processes: `torchrun --standalone --nproc-per-node N -m model_store.cli compress distill ...`
    (each learns from its share of every batch; the batch size must be at least N).
    """
    import torch

    from compression.distill.pipeline import run_distillation
    from model_store.settings import HushSettings
    from model_store.store import ModelStore

    settings = HushSettings()
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    try:
        plan = DistillPlan(
            teacher=teacher,
            variant_id=variant_id,
            languages=comma_list(languages),
            per_language=per_language or None,
            decoder_layers=decoder_layers or None,
            encoder_layers=encoder_layers or None,
            student_path=student,
            preset=preset,
            matching=matching,  # type: ignore[arg-type]  # checked by LossConfig
            temperature=temperature,
            labels=labels,  # type: ignore[arg-type]
            qad_bits=qad_bits,
            ptq_bits=ptq_bits,
            guided_average_bits=guided_bits,
            guided_measure=guided_measure,  # type: ignore[arg-type]  # checked by DistillPlan
            guided_choices=tuple(int(bits) for bits in comma_list(guided_choices)),
            guided_verify=guided_verify,
            guided_match_layers=guided_match,
            calibration=calibration,  # type: ignore[arg-type]  # checked by DistillPlan
            granularity=granularity,  # type: ignore[arg-type]
            group_size=group_size,
            quantize_scope=quantize_scope,  # type: ignore[arg-type]  # checked by DistillPlan
            steps=steps,
            batch_size=batch_size,
            learning_rate=learning_rate,
            seed=seed,
            eval_dev=eval_dev,
            replace=replace,
        )
    except ValueError as error:  # the plan's own checks: name the problem, no traceback
        raise typer.BadParameter(str(error)) from None
    from compression.distill.students import IncompatibleStudentError
    from compression.training.checkpoint import PlanMismatchError
    from compression.training.distributed import Ranks
    from compression.training.placement import DEVICE_CHOICES, NoTrainingDeviceError

    if device is not None and device not in DEVICE_CHOICES:
        raise typer.BadParameter(f"--device must be one of {', '.join(DEVICE_CHOICES)}, not {device!r}")
    ranks = Ranks.from_environment()  # several processes under torchrun, else one
    ranks.start()
    try:
        outcome = run_distillation(
            settings, ModelStore(settings.store.root), plan, ranks=ranks, device=device
        )
    except (FileNotFoundError, IncompatibleStudentError, NoTrainingDeviceError) as error:
        # no corpus yet; a student it can't use; no GPU where one was asked for
        typer.echo(str(error), err=True)
        raise typer.Exit(2) from None
    except PlanMismatchError as error:
        typer.echo(
            f"{error}; train under another --id, or delete {settings.runs_dir / 'distill' / variant_id} "
            "to start this one afresh",
            err=True,
        )
        raise typer.Exit(2) from None
    finally:
        ranks.stop()
    if outcome is None:  # not the main process: it publishes and reports
        return
    manifest = outcome.manifest
    typer.echo(
        f"published {manifest.id}: {manifest.recipe.method} of {manifest.parent}, {manifest.parameters:,} "
        f"parameters, {manifest.bytes_on_disk:,} bytes",
        err=True,
    )
    summary = {key: outcome.report.get(key) for key in ("sizes", "pseudo_labels", "quick_dev")}
    typer.echo(json.dumps(summary, indent=2, default=str))


def quick_eval_command(
    variant: Annotated[
        str,
        typer.Argument(
            help="A transformers variant of the store; or several, comma-separated (the students of "
            "one recipe trained with different seeds), whose errors are summed per utterance."
        ),
    ],
    languages: Annotated[str, typer.Option(help="Comma-separated languages of the split.")],
    split: Annotated[
        str, typer.Option(help="dev (default), or test for final figures only (never to tune on).")
    ] = "dev",
    against: Annotated[
        str | None,
        typer.Option(
            help="A reference variant (or several, comma-separated, summed the same way): also prints "
            "VARIANT - REFERENCE CER per language and pooled, paired on the same utterances, with 95% "
            "bootstrap intervals."
        ),
    ] = None,
    fresh: Annotated[
        bool,
        typer.Option(
            "--fresh",
            help="Decode again instead of reading the transcripts an earlier quick-eval of the same "
            "weights, corpus and split left (after a change to the decoding code).",
        ),
    ] = False,
) -> None:
    """CER/WER per language of a split from cached encoder outputs (greedy, no timestamps); each
    variant's transcripts are kept, so it is decoded once per split however often it is compared."""
    if split not in ("dev", "test"):
        raise typer.BadParameter(f"--split must be dev or test, not {split!r}")
    import torch

    from compression.distill.pipeline import variant_quick_scores
    from compression.distill.quick_eval import compare_quick, summarize_quick
    from model_store.scoring import UtteranceScore, sum_runs
    from model_store.settings import HushSettings
    from model_store.store import ModelStore

    settings = HushSettings()
    if settings.runtime.threads:
        torch.set_num_threads(settings.runtime.threads)
    store = ModelStore(settings.store.root)
    wanted = comma_list(languages)

    decoded: dict[str, list[UtteranceScore]] = {}  # a variant named twice (A --against A) decodes once

    def scores_of(variants: tuple[str, ...]) -> list[UtteranceScore]:
        for one in variants:
            if one not in decoded:
                decoded[one] = variant_quick_scores(settings, store, one, wanted, split=split, fresh=fresh)
        runs = [decoded[one] for one in variants]
        return runs[0] if len(runs) == 1 else sum_runs(runs)

    variants = comma_list(variant)
    for named in (*variants, *comma_list(against or "")):
        store.get(named)  # an unknown id fails now, not after the first variant's decoding
    scores = scores_of(variants)
    report: dict[str, object] = {
        language: asdict(score) for language, score in summarize_quick(scores).items()
    }
    if len(variants) > 1:
        report = {"summed over": list(variants), **report}
    if against is not None:
        reference = scores_of(comma_list(against))
        report = {
            variant: report,
            "against": against,
            "difference": {
                language: asdict(comparison)
                for language, comparison in compare_quick(reference, scores).items()
            },
        }
    typer.echo(json.dumps(report, indent=2))
