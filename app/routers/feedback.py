"""``POST /v1/feedback``: the true transcript of an earlier request, scored against what was served."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from pydantic import BaseModel, Field

from app.deps import LiveCerDep, MetricsDep, RecentDep
from app.errors import ApiError
from app.feedback import FeedbackError, UnknownRequestError
from app.live_cer import ArmRef
from app.security import require_api_key

router = APIRouter(prefix="/v1", tags=["feedback"], dependencies=[Depends(require_api_key)])


class FeedbackCreate(BaseModel):
    request_id: str = Field(min_length=1, max_length=128, description="X-Request-Id of the transcription.")
    text: str = Field(min_length=1, max_length=100_000, description="What was really said.")


class FeedbackPublic(BaseModel):
    request_id: str
    variant: str
    language: str
    experiment: str | None
    arm: str | None
    edits: int
    reference_chars: int
    cer: float


@router.post("/feedback", summary="Score an earlier transcription against its true transcript")
def post_feedback(
    body: FeedbackCreate, recent: RecentDep, live_cer: LiveCerDep, metrics: MetricsDep
) -> FeedbackPublic:
    try:
        if recent is None:
            raise UnknownRequestError(body.request_id, "this server keeps no requests for feedback")
        record = recent.claim(body.request_id)
    except FeedbackError as error:
        metrics.feedback.labels(outcome=error.outcome).inc()
        raise
    arm = None
    if record.experiment is not None and record.arm is not None:
        arm = ArmRef(record.experiment, record.arm)
    counts = live_cer.record(
        variant=record.variant,
        language=record.language,
        source="feedback",
        reference=body.text,
        hypothesis=record.text,
        arm=arm,
    )
    if counts is None:
        metrics.feedback.labels(outcome="empty_reference").inc()
        raise ApiError(
            400,
            "the text is empty once normalised (only punctuation or markup)",
            code="empty_reference",
            param="text",
        )
    metrics.feedback.labels(outcome="scored").inc()
    return FeedbackPublic(
        request_id=record.request_id,
        variant=record.variant,
        language=record.language,
        experiment=record.experiment,
        arm=record.arm,
        edits=counts.edits,
        reference_chars=counts.reference_length,
        cer=counts.rate,
    )
