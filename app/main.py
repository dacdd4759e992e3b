"""The app factory: ``create_app(settings)`` builds a FastAPI app whose lifespan starts and stops hush.

Nothing is loaded when the app is created; the lifespan reads the store, loads the default variants in
the background (``/readyz`` says when they are ready) and polls the store for changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry, make_asgi_app
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from app.cpu_budget import log_cpu_budget
from app.errors import install_error_handlers
from app.metrics import HushMetrics
from app.pool import Opener, open_verified, watch_store
from app.request_context import (
    ARM_HEADER,
    EXPERIMENT_HEADER,
    REQUEST_ID_HEADER,
    ROUTE_REASON_HEADER,
    SERVER_TIMING_HEADER,
    VARIANT_HEADER,
    RequestContextMiddleware,
)
from app.routers import experiments, feedback, health, models, transcriptions
from app.settings import ServerSettings
from app.state import build_state, preload
from app.upload_limit import UploadLimitMiddleware
from model_store import __version__
from model_store.store import ModelStore

logger = logging.getLogger(__name__)


class _Endpoint:
    """An ASGI app served at one exact path (a ``Mount`` would redirect ``/metrics`` to ``/metrics/``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


def create_app(
    settings: ServerSettings | None = None,
    store: ModelStore | None = None,
    *,
    opener: Opener = open_verified,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """A hush server.

    ``store`` defaults to ``settings.store.root``; ``opener`` loads variants (tests stub it); metrics go
    to ``registry`` (a fresh one by default).
    """
    settings = settings if settings is not None else ServerSettings()
    store = store if store is not None else ModelStore(settings.store.root)
    metrics = HushMetrics(registry if registry is not None else CollectorRegistry())

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = build_state(settings, store, metrics, opener)
        app.state.hush = state
        await anyio.to_thread.run_sync(state.pool.sync_with_store)
        logger.info("serving %d variants from %s", len(state.pool.manifests()), store.root)
        log_cpu_budget(settings.runtime.threads)
        loading = asyncio.create_task(anyio.to_thread.run_sync(preload, state))
        watching = (
            asyncio.create_task(watch_store(state.pool, settings.server.store_poll_seconds))
            if settings.server.store_poll_seconds > 0
            else None
        )
        try:
            yield
        finally:
            if watching is not None:
                watching.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watching
            await loading  # a load in progress cannot be interrupted: let it finish, then unload
            if state.ab.shadow is not None:
                await state.ab.shadow.aclose()
            await anyio.to_thread.run_sync(state.close)

    app = FastAPI(
        title="hush",
        version=__version__,
        summary="An OpenAI-compatible transcription API over compressed Whisper variants, "
        "routed by accuracy per millisecond.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    app.include_router(transcriptions.router)
    app.include_router(models.router)
    app.include_router(experiments.router)
    app.include_router(feedback.router)
    app.include_router(health.router)
    app.router.routes.append(
        Route("/metrics", _Endpoint(make_asgi_app(registry=metrics.registry)), include_in_schema=False)
    )
    # the last added is the outermost: CORS, then request context, then the upload limit
    app.add_middleware(UploadLimitMiddleware, max_bytes=settings.server.max_upload_bytes)
    app.add_middleware(RequestContextMiddleware, metrics=metrics)
    if settings.server.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.server.cors_origins,
            allow_methods=["GET", "POST", "PUT", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                REQUEST_ID_HEADER,
                settings.experiments.client_id_header,
            ],
            expose_headers=[
                EXPERIMENT_HEADER,
                ARM_HEADER,
                REQUEST_ID_HEADER,
                VARIANT_HEADER,
                ROUTE_REASON_HEADER,
                SERVER_TIMING_HEADER,
                "Retry-After",
            ],
        )
    return app
