"""``GET /healthz`` (the process answers) and ``GET /readyz`` (the default variants are loaded)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.deps import PoolDep, ReadinessDep
from app.state import ReadinessStatus

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: 503 until the default variants are loaded")
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
