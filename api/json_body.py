"""JSON responses built without a pydantic round trip (hot routes), by the rules of jobs.jsonutil."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response

from jobs.jsonutil import dumps


def json_response(body: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status_code, headers=headers, media_type="application/json")
