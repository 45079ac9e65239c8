"""Liveness and readiness (no authentication)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.problems import problem_response
from api.schemas import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="The process is alive")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", response_model=Health, summary="Postgres and Redis are reachable",
            responses={503: {"content": {"application/problem+json": {}}}})
def readyz(request: Request):
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["postgres"] = "ok"
    except Exception as err:  # noqa: BLE001 - any failure means not ready
        checks["postgres"] = f"error: {type(err).__name__}"
    try:
        state.redis_sync().ping()
        checks["redis"] = "ok"
    except Exception as err:  # noqa: BLE001
        checks["redis"] = f"error: {type(err).__name__}"
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(503, "not_ready", f"not ready: {failing} unreachable", checks=checks,
                            instance=request.url.path)
