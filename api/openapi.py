"""The OpenAPI document, made to tell the truth about what each operation answers.

FastAPI's generated document is completed here, once, from the routes themselves:

- every error response is `application/problem+json` with the `Problem` schema, for each status the
  operation can return: what its route declares, plus what follows from how it is built (401 and 503
  on authenticated routes, 404 on routes with a path id, 408/413/415/422 on routes that read a body,
  422 on routes with query or header parameters) and the few listed in `_EXTRA_STATUSES`; FastAPI's
  own `HTTPValidationError` 422 (a shape this API never sends) is replaced, or dropped where no 422 can
  happen;
- the bearer requirement is set per operation (only on routes that depend on `require_owner`), so
  `/healthz`, `/readyz` and `/metrics` show none;
- the request bodies' schemas (`SubmitJobRequest`, `SubmitSweepRequest`: the routes read them raw)
  join the components, and every discriminated union (the spec's `method` on `name`, a teacher's
  `weights` on `source`) lists its discriminator property as required in each variant, as the
  server enforces.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts

from api.deps import require_owner
from api.problems import PROBLEM_MEDIA_TYPE, problem_title
from api.schemas import Problem, SubmitJobRequest, SubmitSweepRequest

PROBLEM_REF = "#/components/schemas/Problem"
BEARER = "bearer"

# Statuses an operation can return that its construction does not show (method, path template).
_EXTRA_STATUSES: dict[tuple[str, str], set[int]] = {
    ("POST", "/jobs"): {409},  # a concurrent submission with the same Idempotency-Key
    ("POST", "/sweeps"): {409},
}

_DESCRIPTIONS = {
    400: "The body is not JSON (`invalid_json`).",
    401: "Missing, malformed or revoked API key (`unauthorized`).",
    404: "No such resource among yours (`not_found`).",
    408: "The request body stalled (`request_timeout`); the connection is closed.",
    409: "The resource's state does not allow it (`invalid_state`, `teacher_in_use`, `conflict`).",
    413: "The request body is over this route's size cap (`payload_too_large`).",
    415: "The body's Content-Type is not one this route reads (`unsupported_media_type`).",
    416: "The Range is outside the file (`range_not_satisfiable`).",
    422: "The request or its document is invalid; `errors` names the fields (`validation_error`, "
         "`invalid_spec`, ...).",
    429: "A per-owner cap is reached (`too_many_active_jobs`, ...); retry after `Retry-After` seconds.",
    503: "A dependency is unavailable: `database_unavailable` or `storage_unavailable` (retry after "
         "`Retry-After` seconds), or `not_ready` on /readyz.",
}
_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer"}}}
_HEADERS: dict[int, dict[str, Any]] = {
    401: {"WWW-Authenticate": {"description": 'Bearer realm="hcd"', "schema": {"type": "string"}}},
    429: _RETRY_AFTER,
    503: _RETRY_AFTER,
}


def _dependants(dependant: Dependant) -> Iterator[Dependant]:
    yield dependant
    for sub in dependant.dependencies:
        yield from _dependants(sub)


def _calls(dependant: Dependant) -> set[Any]:
    return {d.call for d in _dependants(dependant) if d.call is not None}


def _has_params(dependant: Dependant, kind: str) -> bool:
    return any(getattr(d, kind) for d in _dependants(dependant))


def _is_problem(response: dict[str, Any]) -> bool:
    return PROBLEM_MEDIA_TYPE in response.get("content", {})


def _is_fastapi_validation_error(response: dict[str, Any]) -> bool:
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema.get("$ref", "").endswith("/HTTPValidationError"))


def problem_statuses(route: RouteContext, operation: dict[str, Any]) -> set[int]:
    """The error statuses `operation` (of `route`) can answer with."""
    responses: dict[str, Any] = operation.get("responses", {})
    statuses = {int(code) for code, response in responses.items() if code.isdigit() and _is_problem(response)}
    dependant = route.dependant
    if require_owner in _calls(dependant):
        statuses |= {401, 503}  # a key not in the cache is looked up in Postgres
    if "requestBody" in operation:
        statuses |= {408, 413, 415, 422}
    if _has_params(dependant, "query_params") or _has_params(dependant, "header_params"):
        statuses.add(422)
    if _has_params(dependant, "path_params"):
        statuses.add(404)  # a path id that is not a UUID, or not one of yours, is a 404
    for method in route.methods or ():
        statuses |= _EXTRA_STATUSES.get((method, str(route.path_format)), set())
    return statuses


def _problem_response(status: int) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": _DESCRIPTIONS.get(status, problem_title(status)),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": PROBLEM_REF}}},
    }
    if status in _HEADERS:
        response["headers"] = _HEADERS[status]
    return response


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _require_discriminators(components: dict[str, Any]) -> None:
    """A variant of a discriminated union must carry its tag: list it as required in each one."""
    for node in list(_walk(components)):
        discriminator = node.get("discriminator")
        if not isinstance(discriminator, dict):
            continue
        tag = discriminator.get("propertyName")
        for ref in discriminator.get("mapping", {}).values():
            variant = components.get(ref.rsplit("/", 1)[-1])
            if variant is not None and tag in variant.get("properties", {}):
                required = variant.setdefault("required", [])
                if tag not in required:
                    required.insert(0, tag)


def _drop_unreferenced(components: dict[str, Any], schema: dict[str, Any], names: tuple[str, ...]) -> None:
    for name in names:
        if name not in components:
            continue
        ref = f"#/components/schemas/{name}"
        others = {k: v for k, v in components.items() if k != name}
        if not any(n.get("$ref") == ref for n in _walk([schema.get("paths", {}), others])):
            del components[name]


def build_openapi(app: FastAPI) -> dict[str, Any]:
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components: dict[str, Any] = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (SubmitJobRequest, SubmitSweepRequest, Problem):
        body = model.model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(body.pop("$defs", {}))
        components[model.__name__] = body
    _require_discriminators(components)
    schema["components"]["securitySchemes"] = {
        BEARER: {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer hcd_...`."}
    }
    for route in iter_route_contexts(app.routes):  # included routers' routes too
        if not isinstance(route.original_route, APIRoute) or not route.include_in_schema:
            continue
        authenticated = require_owner in _calls(route.dependant)
        for method in sorted(route.methods or ()):
            operation = schema["paths"].get(str(route.path_format), {}).get(method.lower())
            if operation is None:
                continue
            responses = operation.setdefault("responses", {})
            statuses = problem_statuses(route, operation)
            if "422" in responses and _is_fastapi_validation_error(responses["422"]) and 422 not in statuses:
                del responses["422"]
            for status in statuses:
                responses[str(status)] = _problem_response(status)
            operation["responses"] = dict(sorted(responses.items()))
            if authenticated:
                operation["security"] = [{BEARER: []}]
    _drop_unreferenced(components, schema, ("HTTPValidationError", "ValidationError"))
    return schema


def install_openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = build_openapi(app)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return openapi
