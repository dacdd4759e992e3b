"""What one ``hush compress distill`` run does: a frozen description of its choices."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from compression.distill.fake_quant import BITS_IN_WORDS, QUANTIZATION_BITS, Granularity
from compression.distill.guided import SENSITIVITY_MEASURES, SensitivityMeasure
from compression.distill.objective import LOSS_PRESETS, Matching

Labels = Literal["pseudo", "gold"]
QuantizeScope = Literal["decoder", "model"]
# where guided choices are measured: the first training batches, or train utterances the run leaves out
CalibrationSource = Literal["train", "held-out"]
CALIBRATION_SOURCES: tuple[CalibrationSource, ...] = ("train", "held-out")


@dataclass(frozen=True)
class DistillPlan:
    """One run: teacher, student, data, loss, quantization, training length, and what to publish."""

    teacher: str  # variant id of a float transformers teacher in the store
    variant_id: str  # id of the published student
    languages: tuple[str, ...]  # trained (and quickly evaluated) languages
    per_language: int | None = 100  # training utterances per language (None: the whole train split)
    decoder_layers: int | None = 2  # shrink: decoder layers kept; None: all (teacher adaptation)
    encoder_layers: int | None = None  # shrink the encoder too (needs its own encoder cache)
    student_path: str | None = None  # a smaller pretrained Whisper (transformers directory) as student
    preset: str = "distil-whisper"  # loss preset: ce, distil-whisper, dq-whisper
    matching: Matching | None = None  # override the preset's matching
    temperature: float | None = None  # override the preset's temperature
    labels: Labels = "pseudo"  # CE targets (and teacher-forced inputs): teacher pseudo-labels or gold
    qad_bits: int | None = None  # fake-quantize decoder Linears during training (QUANTIZATION_BITS)
    ptq_bits: int | None = None  # quantize decoder Linears after training only (the PTQ control)
    granularity: Granularity = "per-channel"
    group_size: int = 64  # input columns per scale with granularity per-group
    # decoder: the decoder layers' Linears only; model: also the frozen encoder Linears and the output
    # projection (= the token embedding), post-training quantized before the student's encoder cache
    quantize_scope: QuantizeScope = "decoder"
    guided_average_bits: float | None = None  # guided mixed precision at this average bits per weight
    guided_choices: tuple[int, ...] = (4, 8)  # the bit widths guided chooses from for each Linear
    guided_measure: SensitivityMeasure = "linear-output"  # how guided measures sensitivity (guided.py)
    guided_verify: bool = False  # guided: candidates measured on the whole model (guided_verify.py)
    guided_match_layers: int | None = None  # hidden states distilled into this many layers only
    calibration: CalibrationSource = "train"  # the utterances guided measures on (calibration.py)
    train_embeddings: bool = False  # the token embedding (tied to the output projection) stays frozen
    steps: int = 200
    batch_size: int = 8
    learning_rate: float = 1e-4
    seed: int = 0
    eval_dev: bool = True  # quick dev CER from cached encoder outputs after publishing
    replace: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.preset not in LOSS_PRESETS:
            raise ValueError(f"loss preset must be one of {', '.join(LOSS_PRESETS)}, not {self.preset!r}")
        if not self.languages:
            raise ValueError("--languages names no language")
        for name, value, least in (
            ("--per-language", self.per_language, 1),
            ("--decoder-layers", self.decoder_layers, 1),
            ("--encoder-layers", self.encoder_layers, 1),
            ("--steps", self.steps, 0),
            ("--batch-size", self.batch_size, 1),
        ):
            if value is not None and value < least:
                raise ValueError(f"{name} must be at least {least}, not {value}")
        if not self.learning_rate > 0:  # NaN too
            raise ValueError(f"--learning-rate must be positive, not {self.learning_rate}")
        if sum(x is not None for x in (self.qad_bits, self.ptq_bits, self.guided_average_bits)) > 1:
            raise ValueError("choose one of --qad-bits, --ptq-bits and --guided-bits")
        for bits in (self.qad_bits, self.ptq_bits):
            if bits is not None and bits not in QUANTIZATION_BITS:
                raise ValueError(f"quantization bits must be {BITS_IN_WORDS}, not {bits}")
        if not self.guided_choices or any(bits not in QUANTIZATION_BITS for bits in self.guided_choices):
            raise ValueError(f"guided choices must be among {BITS_IN_WORDS}, not {self.guided_choices}")
        object.__setattr__(self, "guided_choices", tuple(sorted(set(self.guided_choices))))
        if self.guided_measure not in SENSITIVITY_MEASURES:
            raise ValueError(
                f"guided measure must be one of {', '.join(SENSITIVITY_MEASURES)}, not {self.guided_measure!r}"
            )
        if self.guided_match_layers is not None:
            if self.guided_match_layers < 1:
                raise ValueError(f"--guided-match needs at least one layer, not {self.guided_match_layers}")
            if self.matching not in (None, "guided"):
                raise ValueError(
                    f"--guided-match chooses the matching; do not also ask for {self.matching!r}"
                )
            if self.preset not in LOSS_PRESETS or LOSS_PRESETS[self.preset].hidden <= 0:
                raise ValueError(
                    f"--guided-match needs a preset with hidden-state distillation (dq-whisper), not {self.preset!r}"
                )
        if self.guided_verify and self.guided_average_bits is None:
            raise ValueError("--guided-verify checks the choice of --guided-bits; ask for that too")
        if self.calibration not in CALIBRATION_SOURCES:
            raise ValueError(
                f"calibration must be {' or '.join(CALIBRATION_SOURCES)}, not {self.calibration!r}"
            )
        if self.calibration == "held-out":
            if not self.calibrates:
                raise ValueError("--calibration held-out is for --guided-bits or --guided-match")
            if self.per_language is None:
                raise ValueError(
                    "--calibration held-out needs --per-language: the whole train split leaves none out"
                )
        if self.granularity not in ("per-channel", "per-tensor", "per-group"):
            raise ValueError(
                f"granularity must be per-channel, per-tensor or per-group, not {self.granularity!r}"
            )
        if self.group_size < 1:
            raise ValueError(f"group size must be positive, not {self.group_size}")
        if self.quantize_scope not in ("decoder", "model"):
            raise ValueError(f"quantize scope must be decoder or model, not {self.quantize_scope!r}")
        if self.quantize_scope == "model":
            if self.qad_bits is None and self.ptq_bits is None:
                raise ValueError(
                    "--quantize-scope model needs --qad-bits or --ptq-bits (the bits of every part)"
                )
            if self.train_embeddings:
                raise ValueError(
                    "--quantize-scope model quantizes the frozen token embedding; do not train it"
                )
        if self.student_path is not None and self.decoder_layers is not None:
            object.__setattr__(self, "decoder_layers", None)

    def training_plan(self) -> dict[str, Any]:
        """What decides the student (all but the publishing options): recorded in the recipe, and in
        training checkpoints so that another plan's is not resumed."""
        return {key: value for key, value in asdict(self).items() if key not in ("replace", "eval_dev")}

    @property
    def calibrates(self) -> bool:
        """Whether the run measures anything on calibration batches before training (guided
        precision or guided matching)."""
        return self.guided_average_bits is not None or self.guided_match_layers is not None

    @property
    def method(self) -> str:
        """The recipe method recorded in the manifest."""
        if self.guided_average_bits is not None:
            return "guided"
        if self.qad_bits is not None:
            return "qad"
        if self.ptq_bits is not None:
            return "distill-ptq"
        if self.decoder_layers is None and self.student_path is None:
            return "adapt"
        return "distill"
