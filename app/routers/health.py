"""``GET /healthz`` (the process answers) and ``GET /readyz`` (the default variants are loaded); both
answer ``HEAD`` too, as load balancers' probes send it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import PoolDep, ReadinessDep
from app.state import ReadinessStatus

router = APIRouter(tags=["health"])


@router.api_route("/healthz", methods=["GET", "HEAD"], summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.api_route(
    "/readyz", methods=["GET", "HEAD"], summary="Readiness: 503 until the default variants are loaded"
)
def readyz(readiness: ReadinessDep, pool: PoolDep) -> JSONResponse:
    body: dict[str, Any] = {
        "status": readiness.status.value,
        "default_variants": readiness.variants,
        "loaded": pool.loaded_ids(),
    }
    ready = readiness.status is ReadinessStatus.READY
    if ready and not pool.manifests():
        ready, body["status"] = False, "empty_store"
    if readiness.error is not None:
        body["error"] = readiness.error
    return JSONResponse(body, status_code=200 if ready else 503)
