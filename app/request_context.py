"""Per-request context at the edge: a request id, the routing headers, request metrics, and the 500.

Every response carries ``X-Request-Id`` (the client's, when it sent a sane one), ``X-Hush-Variant``
(the variant that served it, ``none`` when nothing was routed) and ``X-Hush-Route-Reason`` (plus
``X-Hush-Experiment`` and ``X-Hush-Arm`` when an A/B experiment took the request); a
transcription also carries ``Server-Timing`` (decode, detect, queue and inference milliseconds). An
unexpected exception is logged with the request id and answered with a generic 500 in OpenAI's
envelope: no stack trace reaches the client.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from starlette.datastructures import Headers, MutableHeaders
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.errors import internal_error_response
from app.metrics import HushMetrics
from app.service import RequestTrace

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-Id"
VARIANT_HEADER = "X-Hush-Variant"
ROUTE_REASON_HEADER = "X-Hush-Route-Reason"
EXPERIMENT_HEADER = "X-Hush-Experiment"  # only on requests an A/B experiment took
ARM_HEADER = "X-Hush-Arm"
SERVER_TIMING_HEADER = "Server-Timing"
TRACE_STATE_KEY = "trace"
NOT_ROUTED = "none"
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def endpoint_label(scope: Scope) -> str:
    """The matched route's template (a bounded label), or ``unmatched``."""
    route = scope.get("route")
    if isinstance(route, BaseRoute) and hasattr(route, "path"):
        return str(route.path)
    if scope.get("path", "").startswith("/metrics"):
        return "/metrics"
    return "unmatched"


class RequestContextMiddleware:
    """A pure ASGI middleware: cheap enough to wrap every request."""

    def __init__(self, app: ASGIApp, *, metrics: HushMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        offered = Headers(scope=scope).get(REQUEST_ID_HEADER, "")
        trace = RequestTrace(offered if _CLIENT_REQUEST_ID.match(offered) else uuid.uuid4().hex)
        scope.setdefault("state", {})[TRACE_STATE_KEY] = trace
        status = 500
        response_started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                response_started = True
                status = message["status"]
                headers = MutableHeaders(scope=message)
                headers[REQUEST_ID_HEADER] = trace.request_id
                headers[VARIANT_HEADER] = trace.variant or NOT_ROUTED
                headers[ROUTE_REASON_HEADER] = trace.route_reason or "not routed"
                if trace.experiment is not None and trace.arm is not None:
                    headers[EXPERIMENT_HEADER] = trace.experiment
                    headers[ARM_HEADER] = trace.arm
                if trace.timings_ms:
                    headers[SERVER_TIMING_HEADER] = ", ".join(
                        f"{stage};dur={milliseconds:.1f}" for stage, milliseconds in trace.timings_ms.items()
                    )
                self.metrics.request_duration.labels(endpoint=endpoint_label(scope)).observe(
                    time.perf_counter() - started
                )
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception:
            logger.exception("request %s failed", trace.request_id)
            if response_started:
                raise
            await internal_error_response(trace.request_id)(scope, receive, send_with_headers)
        finally:
            self.metrics.requests.labels(
                endpoint=endpoint_label(scope), variant=trace.variant or NOT_ROUTED, status=str(status)
            ).inc()
