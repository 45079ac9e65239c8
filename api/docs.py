"""`/docs`: Swagger UI served from the package itself, so the docs work on a host without internet.

The assets in `api/static/swagger-ui/` are swagger-ui-dist's, unmodified (version and checksums in
`api/static/swagger-ui/VERSION`; its LICENSE and NOTICE beside them, also served). ReDoc is not served.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from api.problems import ProblemError

ASSETS_DIR = Path(__file__).resolve().parent / "static" / "swagger-ui"
ASSETS_PATH = "/docs/swagger-ui"
_MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain; charset=utf-8",
    "NOTICE": "text/plain; charset=utf-8",
    "swagger-ui-bundle.js.LICENSE.txt": "text/plain; charset=utf-8",
    "VERSION": "text/plain; charset=utf-8",
}
_CACHE = "public, max-age=86400"


def install_docs(app: FastAPI) -> None:
    """Routes `/docs` and `/docs/swagger-ui/{name}` (create the app with `docs_url=None, redoc_url=None`)."""

    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        assets = f"{root}{ASSETS_PATH}"
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API docs",
            swagger_js_url=f"{assets}/swagger-ui-bundle.js",
            swagger_css_url=f"{assets}/swagger-ui.css",
            swagger_favicon_url=f"{assets}/favicon-32x32.png",
            # No online validator badge (it would call out to validator.swagger.io); keep the key
            # entered under "Authorize" across page reloads.
            swagger_ui_parameters={"validatorUrl": None, "persistAuthorization": True},
        )

    async def swagger_asset(name: str) -> FileResponse:
        media_type = _MEDIA_TYPES.get(name)
        if media_type is None:
            raise ProblemError(404, "not_found", f"no docs asset named {name[:100]!r}")
        return FileResponse(ASSETS_DIR / name, media_type=media_type, headers={"Cache-Control": _CACHE})

    app.add_api_route("/docs", swagger_ui, methods=["GET"], include_in_schema=False)
    app.add_api_route(f"{ASSETS_PATH}/{{name}}", swagger_asset, methods=["GET"], include_in_schema=False)
