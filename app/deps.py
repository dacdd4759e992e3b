"""Dependencies of the request handlers, as ``Annotated`` aliases (override them in tests).

All are ``async def``: they only read state, and FastAPI would run a plain ``def`` dependency on a
worker thread, a thread hop per dependency per request (about 20 ms of overhead on a busy CPU).
"""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import Depends, Request

from app.experiments.registry import ExperimentRegistry
from app.experiments.results import ExperimentTracker
from app.feedback import RecentRequests
from app.latency import LatencyTracker
from app.live_cer import LiveCer
from app.metrics import HushMetrics
from app.pool import VariantPool
from app.request_context import TRACE_STATE_KEY
from app.service import RequestTrace, TranscriptionService
from app.settings import ServerSettings
from app.state import AppState, Readiness


async def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.hush
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_settings(state: StateDep) -> ServerSettings:
    return state.settings


async def get_pool(state: StateDep) -> VariantPool:
    return state.pool


async def get_service(state: StateDep) -> TranscriptionService:
    return state.service


async def get_latency(state: StateDep) -> LatencyTracker:
    return state.latency


async def get_readiness(state: StateDep) -> Readiness:
    return state.readiness


async def get_experiments(state: StateDep) -> ExperimentRegistry:
    return state.ab.experiments


async def get_tracker(state: StateDep) -> ExperimentTracker:
    return state.ab.tracker


async def get_recent(state: StateDep) -> RecentRequests | None:
    return state.ab.recent


async def get_live_cer(state: StateDep) -> LiveCer:
    return state.live_cer


async def get_metrics(state: StateDep) -> HushMetrics:
    return state.metrics


async def get_sticky_key(
    request: Request, settings: Annotated[ServerSettings, Depends(get_settings)]
) -> str | None:
    """Who the client is, for sticky A/B assignment: its client id header, else its API key."""
    client = request.headers.get(settings.experiments.client_id_header, "").strip()
    if client:
        return f"client:{client}"
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return f"key:{token.strip()}"
    return None


async def get_trace(request: Request) -> RequestTrace:
    """The request's trace, set by the request-context middleware."""
    trace = getattr(request.state, TRACE_STATE_KEY, None)
    if not isinstance(trace, RequestTrace):
        trace = RequestTrace(uuid.uuid4().hex)
        setattr(request.state, TRACE_STATE_KEY, trace)
    return trace


SettingsDep = Annotated[ServerSettings, Depends(get_settings)]
PoolDep = Annotated[VariantPool, Depends(get_pool)]
ServiceDep = Annotated[TranscriptionService, Depends(get_service)]
LatencyDep = Annotated[LatencyTracker, Depends(get_latency)]
ReadinessDep = Annotated[Readiness, Depends(get_readiness)]
TraceDep = Annotated[RequestTrace, Depends(get_trace)]
ExperimentsDep = Annotated[ExperimentRegistry, Depends(get_experiments)]
TrackerDep = Annotated[ExperimentTracker, Depends(get_tracker)]
RecentDep = Annotated[RecentRequests | None, Depends(get_recent)]
LiveCerDep = Annotated[LiveCer, Depends(get_live_cer)]
MetricsDep = Annotated[HushMetrics, Depends(get_metrics)]
StickyKeyDep = Annotated[str | None, Depends(get_sticky_key)]
