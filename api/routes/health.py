"""Liveness and readiness (no authentication)."""

from __future__ import annotations

from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import text

from api.problems import problem_response
from api.schemas import Health

router = APIRouter(tags=["health"])
_CHECK_SECONDS = 3.0  # each dependency answers within this, or counts as unreachable


@router.get("/healthz", response_model=Health, response_model_exclude_none=True, summary="The process is alive")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


async def _check(func: Any) -> str:
    try:
        with anyio.fail_after(_CHECK_SECONDS):
            await anyio.to_thread.run_sync(func, abandon_on_cancel=True)
        return "ok"
    except TimeoutError:
        return "error: timeout"
    except Exception as err:  # noqa: BLE001 - any failure means not ready
        return f"error: {type(err).__name__}"


@router.get("/readyz", response_model=Health, summary="Postgres and Redis are reachable",
            responses={503: {"content": {"application/problem+json": {}}}})
async def readyz(request: Request) -> Response:
    state = request.app.state

    def postgres() -> None:
        with state.db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    checks = {"postgres": await _check(postgres), "redis": await _check(lambda: state.redis_sync().ping())}
    if all(v == "ok" for v in checks.values()):
        return JSONResponse({"status": "ok", "checks": checks})
    failing = ", ".join(k for k, v in checks.items() if v != "ok")
    return problem_response(503, "not_ready", f"not ready: {failing} unreachable", checks=checks,
                            instance=request.url.path)
