"""RFC 9457 problem details (`application/problem+json`) for every error the API returns.

Each problem has a stable machine `code`; spec and request validation problems add
`errors: [{"loc": "method.temperature", "msg": "..."}]` naming the faulty fields.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import psycopg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.db import database_unavailable
from jobs.errors import DomainError, InUse, InvalidInput, InvalidState, LimitExceeded, NotFound
from jobs.storage import StorageError

PROBLEM_MEDIA_TYPE = "application/problem+json"
_log = logging.getLogger("hcd.api.problems")

_TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 406: "Not Acceptable", 408: "Request Timeout", 409: "Conflict", 413: "Content Too Large",
    415: "Unsupported Media Type", 416: "Range Not Satisfiable", 422: "Unprocessable Content",
    429: "Too Many Requests", 500: "Internal Server Error", 503: "Service Unavailable",
}
_DEFAULT_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 406: "not_acceptable", 408: "request_timeout", 409: "conflict", 413: "payload_too_large",
    415: "unsupported_media_type", 416: "range_not_satisfiable", 422: "validation_error",
    429: "too_many_requests", 500: "internal_error", 503: "unavailable",
}


def problem_title(status: int) -> str:
    return _TITLES.get(status, "Error")


class DatabaseUnavailable(Exception):
    """The database did not answer in time (raised by api.deps.in_db_thread)."""


_DOMAIN_STATUS: dict[type[DomainError], int] = {
    NotFound: 404, InvalidState: 409, InUse: 409, LimitExceeded: 429, InvalidInput: 422, StorageError: 503,
}


class ProblemError(Exception):
    """Raise anywhere in a request to answer with a problem+json response."""

    def __init__(
        self, status: int, code: str, detail: str, *, title: str | None = None,
        errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
        **extra: Any,
    ):
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail
        self.title = title or _TITLES.get(status, "Error")
        self.errors, self.headers, self.extra = errors, headers or {}, extra


def problem_response(
    status: int, code: str, detail: str, *, title: str | None = None,
    errors: list[dict[str, str]] | None = None, headers: dict[str, str] | None = None,
    instance: str | None = None, **extra: Any,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": f"https://hcd.dev/problems/{code.replace('_', '-')}",
        "title": title or _TITLES.get(status, "Error"),
        "status": status,
        "code": code,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors is not None:
        body["errors"] = errors
    body.update(extra)
    return JSONResponse(body, status_code=status, headers=headers, media_type=PROBLEM_MEDIA_TYPE)


def _loc_to_str(loc: Iterable[Any]) -> str:
    return ".".join(str(part) for part in loc)


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(
            exc.status, exc.code, exc.detail, title=exc.title, errors=exc.errors,
            headers=exc.headers, instance=request.url.path, **exc.extra,
        )

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": _loc_to_str(e.get("loc", ())), "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        names = ", ".join(e["loc"] for e in errors) or "request"
        return problem_response(
            422, "validation_error", f"invalid request: {names}", errors=errors, instance=request.url.path
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        status = exc.status_code
        detail = exc.detail if isinstance(exc.detail, str) else _TITLES.get(status, "error")
        if status == 404 and detail == "Not Found":
            detail = f"no route matches {request.url.path}"
        return problem_response(
            status, _DEFAULT_CODES.get(status, "error"), detail,
            headers=getattr(exc, "headers", None), instance=request.url.path,
        )

    @app.exception_handler(DomainError)
    async def _domain(request: Request, exc: DomainError) -> JSONResponse:
        status = next((code for cls, code in _DOMAIN_STATUS.items() if isinstance(exc, cls)), 400)
        headers: dict[str, str] | None = None
        errors: list[dict[str, str]] | None = None
        if isinstance(exc, LimitExceeded):
            headers = {"Retry-After": str(exc.retry_after)}
        elif isinstance(exc, StorageError):
            headers = {"Retry-After": str(request.app.state.settings.database_retry_after_seconds)}
        if isinstance(exc, InvalidInput):
            errors = exc.errors
        elif exc.loc:
            errors = [{"loc": exc.loc, "msg": exc.message}]
        return problem_response(status, exc.code, exc.message, errors=errors, headers=headers,
                                instance=request.url.path)

    @app.exception_handler(DatabaseUnavailable)
    async def _database_timeout(request: Request, exc: DatabaseUnavailable) -> JSONResponse:
        return _database_unavailable(request)

    async def _database_error(request: Request, exc: Exception) -> JSONResponse:
        if database_unavailable(exc):
            _log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
            return _database_unavailable(request)
        return await _unexpected(request, exc)

    # Registered by class (not only under Exception): Starlette's last-resort handler re-raises, and a
    # database outage must not fill the logs with tracebacks.
    app.add_exception_handler(SQLAlchemyError, _database_error)
    app.add_exception_handler(psycopg.Error, _database_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        if database_unavailable(exc):
            return _database_unavailable(request)
        _log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal_error", "internal server error", instance=request.url.path)


def _database_unavailable(request: Request) -> JSONResponse:
    retry_after = request.app.state.settings.database_retry_after_seconds
    return problem_response(503, "database_unavailable", "the database is unavailable; retry shortly",
                            headers={"Retry-After": str(retry_after)}, instance=request.url.path)
