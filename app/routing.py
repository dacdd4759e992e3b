"""Which variant serves a request: the best accuracy per millisecond (a pure policy: no I/O, no state).

The rule, for a request with a language, a duration and optional constraints:

1. Candidates are the variants that run here (a ``cuda`` variant needs a GPU), cover the language
   (``Manifest.covers``), can translate when asked to (multilingual), and match the requested ``tier``.
   A pinned ``model`` keeps only that variant and skips the quality floor (the client chose it).
2. Each candidate's CER for the language is the manifest's evaluated CER for it; failing that, its
   pooled CER over every evaluated language (edits / reference characters); failing that, unknown.
   A known CER above the quality floor excludes the candidate.
3. ``expected_ms`` comes from the variant's cost model (:mod:`app.cost_model`: an encoder part per
   window, as Whisper encodes 30 s whatever the clip's length unless the variant trims its context, and
   a decoder part per second of audio), built from the manifest's measured latency, else the nearest
   measured ancestor's (a fine-tuned or experts variant costs what its parent does; a distilled student
   at most that), else a prior proportional to the parameter count, calibrated on the variants measured
   on this machine (median ms per audio-second per million parameters) so that an unmeasured variant
   never wins on a guess from another machine. Once the variant has served requests here, the model is
   scaled by the server's moving estimate of observed over modelled milliseconds (queue wait included).
   The variant that detected the request's language has already encoded its first window, and a
   transcription of a clip of up to 30 s takes that encoding back: its encoder part is not charged again.
4. Among candidates with a known CER, the highest ``(1 - CER) / expected_ms`` wins (ties: the lower
   expected_ms, then the id). Only when none has a known CER within the floor do unevaluated ones
   compete, and then the fastest (lowest expected_ms) wins.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

from app.cost_model import CostModel
from model_store.manifest import Device, Latency, Manifest, SizeTier
from model_store.opener import runnable_here
from model_store.settings import RuntimeSettings
from model_store.transcription import Task

# Until a variant's latency is measured or observed: milliseconds of compute per second of audio per
# million parameters (about what whisper-base, 74M parameters, costs on a few CPU cores: ~37 ms/s).
PRIOR_MS_PER_AUDIO_SECOND_PER_MILLION_PARAMETERS = 0.5
MAX_EXPLANATION_CHARS = 480  # the explanation travels in a header


class RouteReason(StrEnum):
    """Why a variant was chosen, as a bounded label for metrics."""

    PINNED = "pinned"
    BEST_ACCURACY_PER_MS = "best_accuracy_per_ms"
    ONLY_CANDIDATE = "only_candidate"
    UNEVALUATED_FASTEST = "unevaluated_fastest"
    EXPERIMENT = "experiment"  # an A/B experiment's arm (app/experiments), routed as if pinned


@dataclass(frozen=True)
class LatencyPriors:
    """Latency guesses for variants with no measured or observed figure, from the rest of the catalog."""

    measured: Mapping[str, Latency]  # variant id -> its measured latency
    parents: Mapping[str, str | None]
    ms_per_million_parameters: float

    @classmethod
    def from_catalog(cls, manifests: Sequence[Manifest]) -> LatencyPriors:
        measured = {m.id: m.latency for m in manifests if m.latency is not None}
        per_million = sorted(
            m.latency.ms_per_audio_second / (m.parameters / 1e6)
            for m in manifests
            if m.latency is not None and m.parameters > 0
        )
        scale = (
            per_million[len(per_million) // 2]
            if per_million
            else PRIOR_MS_PER_AUDIO_SECOND_PER_MILLION_PARAMETERS
        )
        return cls(measured, {m.id: m.parent for m in manifests}, scale)

    def cost_for(self, manifest: Manifest) -> tuple[CostModel, str]:
        """(cost model, where it comes from) for a variant with no latency of its own."""
        seen = {manifest.id}
        ancestor = manifest.parent
        while ancestor is not None and ancestor not in seen:
            if ancestor in self.measured:
                cost = CostModel.from_latency(self.measured[ancestor], manifest.audio_context_seconds)
                return cost, f"prior: {ancestor}"
            seen.add(ancestor)
            ancestor = self.parents.get(ancestor)
        return CostModel.proportional(manifest.parameters / 1e6 * self.ms_per_million_parameters), "prior"


@dataclass(frozen=True)
class RouteRequest:
    """What the router knows about a request."""

    language: str
    audio_seconds: float
    task: Task = "transcribe"
    tier: SizeTier | None = None
    pinned: str | None = None  # a variant id the client asked for
    detected_by: str | None = None  # the variant that detected the language (its first window is encoded)


@dataclass(frozen=True)
class Candidate:
    """A variant that may serve the request, with the figures it is ranked by."""

    variant_id: str
    cer: float | None
    cer_source: str  # "eval <lang>", "pooled eval" or "no eval"
    modelled_ms: float  # the cost model's figure for this request
    latency_source: str  # "manifest", "prior: <ancestor id>" or "prior"
    slowdown: float | None = None  # observed over modelled ms on this server (None: not served yet)

    @property
    def expected_ms(self) -> float:
        return self.modelled_ms * (self.slowdown if self.slowdown is not None else 1.0)

    @property
    def measured(self) -> bool:
        """Whether the cost model comes from the variant's own measured latency."""
        return self.latency_source == "manifest"

    @property
    def accuracy(self) -> float | None:
        return None if self.cer is None else max(0.0, 1.0 - self.cer)

    @property
    def score(self) -> float | None:
        """Accuracy per expected millisecond."""
        return None if self.accuracy is None else self.accuracy / self.expected_ms

    def describe(self) -> str:
        accuracy = "?" if self.accuracy is None else f"{self.accuracy:.3f}"
        observed = "" if self.slowdown is None else f", observed x{self.slowdown:.2f}"
        return (
            f"{self.variant_id} (1-CER {accuracy} [{self.cer_source}] / {self.expected_ms:.0f} ms "
            f"[{self.latency_source}{observed}])"
        )


@dataclass(frozen=True)
class Exclusion:
    """A variant left out, why, and the request field that left it out (``None``: the quality floor)."""

    variant_id: str
    why: str
    param: str | None = None


@dataclass(frozen=True)
class RouteDecision:
    """The chosen variant, why, and what it was weighed against."""

    variant_id: str
    reason: RouteReason
    explanation: str  # human-readable, ASCII, one line
    ranked: tuple[Candidate, ...]  # best first
    excluded: tuple[Exclusion, ...]

    @property
    def chosen(self) -> Candidate:
        return self.ranked[0]


class NoRouteError(Exception):
    """No variant can serve the request; the message says why each was left out, ``param`` names the
    request field to change: ``tier`` where the tier left some variant out, else ``language`` where the
    language did, else ``model`` (``None``: only the quality floor did). A pinned request weighs its
    model alone, so its exclusion is the only one."""

    def __init__(self, message: str, excluded: Sequence[Exclusion] = ()) -> None:
        details = "; ".join(f"{item.variant_id}: {item.why}" for item in excluded)
        super().__init__(f"{message} ({details})" if details else message)
        self.excluded = tuple(excluded)
        causes = {item.param for item in excluded}
        self.param = next((name for name in ("tier", "language", "model") if name in causes), None)


class NoVariantsError(NoRouteError):
    """The store holds no variant that can run on this machine."""


def pooled_cer(manifest: Manifest) -> float | None:
    """Character edits over reference characters across every evaluated language."""
    if manifest.eval is None or not manifest.eval.languages:
        return None
    scores = manifest.eval.languages.values()
    reference = sum(score.ref_chars for score in scores)
    if reference == 0:
        return None
    return sum(score.char_edits for score in scores) / reference


@dataclass(frozen=True)
class RoutingPolicy:
    """Best accuracy per millisecond within a quality floor, on one device."""

    quality_floor_cer: float
    device: Device

    def choose(
        self,
        manifests: Sequence[Manifest],
        request: RouteRequest,
        slowdowns: Mapping[str, float],
    ) -> RouteDecision:
        """Pick the variant for ``request``; raises :class:`NoRouteError` when none qualifies.

        ``slowdowns``: per variant, the server's moving estimate of observed over modelled milliseconds."""
        runtime = RuntimeSettings(device=self.device)
        runnable = [manifest for manifest in manifests if runnable_here(manifest, runtime)]
        if not runnable:
            raise NoVariantsError(
                f"no variant in the store runs on this {self.device} machine",
                [Exclusion(manifest.id, "needs a CUDA GPU", "model") for manifest in manifests],
            )
        priors = LatencyPriors.from_catalog(manifests)
        excluded: list[Exclusion] = []
        evaluated: list[Candidate] = []
        unevaluated: list[Candidate] = []
        for manifest in manifests:
            if request.pinned is not None and manifest.id != request.pinned:
                continue
            exclusion = self._exclusion(manifest, request, runtime)
            if exclusion is not None:
                excluded.append(exclusion)
                continue
            candidate = self._candidate(manifest, request, slowdowns, priors)
            if candidate.cer is None:
                unevaluated.append(candidate)
            elif candidate.cer > self.quality_floor_cer and request.pinned is None:
                excluded.append(
                    Exclusion(
                        manifest.id,
                        f"CER {candidate.cer:.3f} [{candidate.cer_source}] above the floor "
                        f"{self.quality_floor_cer:.3f}",
                    )
                )
            else:
                evaluated.append(candidate)

        if evaluated:
            ranked = sorted(evaluated, key=lambda c: (-(c.score or 0.0), c.expected_ms, c.variant_id))
            ranked += sorted(unevaluated, key=lambda c: (c.expected_ms, c.variant_id))
            reason = RouteReason.BEST_ACCURACY_PER_MS if len(evaluated) > 1 else RouteReason.ONLY_CANDIDATE
        elif unevaluated:
            ranked = sorted(unevaluated, key=lambda c: (c.expected_ms, c.variant_id))
            reason = RouteReason.UNEVALUATED_FASTEST if len(unevaluated) > 1 else RouteReason.ONLY_CANDIDATE
        else:
            raise NoRouteError(self._no_route_message(request), excluded)
        if request.pinned is not None:
            reason = RouteReason.PINNED
        return RouteDecision(
            ranked[0].variant_id,
            reason,
            _explain(reason, request, ranked, excluded),
            tuple(ranked),
            tuple(excluded),
        )

    @staticmethod
    def _exclusion(manifest: Manifest, request: RouteRequest, runtime: RuntimeSettings) -> Exclusion | None:
        if not runnable_here(manifest, runtime):
            return Exclusion(manifest.id, "needs a CUDA GPU", "model")
        if not manifest.covers(request.language):
            return Exclusion(manifest.id, f"does not cover language {request.language!r}", "language")
        if request.task == "translate" and not manifest.multilingual:
            return Exclusion(manifest.id, "English-only: cannot translate", "model")
        if request.tier is not None and manifest.size_tier != request.tier:
            return Exclusion(manifest.id, f"tier {manifest.size_tier}, not {request.tier}", "tier")
        return None

    @staticmethod
    def _candidate(
        manifest: Manifest, request: RouteRequest, slowdowns: Mapping[str, float], priors: LatencyPriors
    ) -> Candidate:
        cer = manifest.cer_for(request.language)
        cer_source = f"eval {request.language}"
        if cer is None:
            cer = pooled_cer(manifest)
            cer_source = "pooled eval" if cer is not None else "no eval"
        if manifest.latency is not None:
            cost, latency_source = (
                CostModel.from_latency(manifest.latency, manifest.audio_context_seconds),
                "manifest",
            )
        else:
            cost, latency_source = priors.cost_for(manifest)
        modelled_ms = cost.expected_ms(
            request.audio_seconds, first_window_encoded=manifest.id == request.detected_by
        )
        return Candidate(
            manifest.id, cer, cer_source, modelled_ms, latency_source, slowdowns.get(manifest.id)
        )

    def _no_route_message(self, request: RouteRequest) -> str:
        if request.pinned is not None:
            return f"model {request.pinned!r} cannot serve this request"
        constraints = f"language {request.language!r}"
        if request.tier is not None:
            constraints += f", tier {request.tier!r}"
        if request.task == "translate":
            constraints += ", translation"
        return (
            f"no variant serves {constraints} within the quality floor "
            f"(CER <= {self.quality_floor_cer:.2f}); name a model to bypass the floor"
        )


def _explain(
    reason: RouteReason, request: RouteRequest, ranked: Sequence[Candidate], excluded: Sequence[Exclusion]
) -> str:
    best = ranked[0]
    if reason is RouteReason.PINNED:
        text = f"pinned by request: {best.describe()}"
    elif reason is RouteReason.UNEVALUATED_FASTEST:
        text = f"no evaluated variant for {request.language}; fastest unevaluated: {best.describe()}"
    elif reason is RouteReason.ONLY_CANDIDATE:
        text = f"only candidate for {request.language}: {best.describe()}"
    else:
        text = f"best accuracy/ms for {request.language}: {best.describe()} over {ranked[1].describe()}"
        if len(ranked) > 2:
            text += f" and {len(ranked) - 2} more"
    if excluded:
        text += "; excluded " + ", ".join(f"{item.variant_id} ({item.why})" for item in excluded)
    text = text.encode("ascii", "replace").decode("ascii")
    if len(text) > MAX_EXPLANATION_CHARS:
        text = text[: MAX_EXPLANATION_CHARS - 3] + "..."
    return text
