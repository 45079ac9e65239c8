"""The web dashboard: `/` is its single page, `/static/...` its files (shipped in the package, no CDN).

No authentication here: these files hold no data. The page asks for an API key, keeps it in the
browser's localStorage and calls the API with `Authorization: Bearer`. Routing is by URL hash
(`#/jobs/<id>`), so the server serves only these two paths. The page's Content-Security-Policy
allows no origin but this one: the dashboard works offline and sends nothing elsewhere.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

DASHBOARD_DIR = Path(__file__).resolve().parent.parent / "dashboard"
STATIC_DIR = DASHBOARD_DIR / "static"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",  # uPlot sizes its elements with style attributes
    "img-src 'self' data: blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
_PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "Cache-Control": "no-cache",  # revalidated (ETag) on each visit: an upgraded server is seen at once
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_MEDIA_TYPES = {  # not left to the host's mimetypes table: module scripts need a JavaScript type
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


class DashboardFiles(StaticFiles):
    """StaticFiles with the dashboard's headers and fixed media types."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code in (200, 206, 304):
            for name, value in _PAGE_HEADERS.items():
                response.headers[name] = value
            media_type = _MEDIA_TYPES.get(Path(path).suffix.lower())
            if media_type is not None and response.status_code != 304:
                response.headers["Content-Type"] = media_type
        return response


router = APIRouter(include_in_schema=False)


@router.get("/", include_in_schema=False)
async def dashboard_page() -> FileResponse:
    return FileResponse(DASHBOARD_DIR / "index.html", media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


router.mount("/static", DashboardFiles(directory=STATIC_DIR), name="dashboard-static")
