"""The dashboard's files as the API serves them (no auth, right types, offline: no external URL), and
its pure modules (the SSE parser, the spec diff) run in the browser."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from browser_helpers import new_key, sign_in

import api

DASHBOARD = Path(api.__file__).resolve().parent / "dashboard"
SCHEME_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s\"'`)<>]*")
# Strings that look like URLs but are never fetched.
NOT_FETCHED = {
    "http://www.w3.org/2000/svg",  # the SVG namespace of the favicon
    "https://github.com/leeoniya/uPlot",  # uPlot's licence banner comment
}
TEXT_SUFFIXES = {".html", ".js", ".css", ".svg", ".md"}


def _served_files() -> list[str]:
    files = ["/"]
    for path in sorted((DASHBOARD / "static").rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES | {".LICENSE"}:
            files.append("/static/" + path.relative_to(DASHBOARD / "static").as_posix())
    return files


def test_page_and_files_are_served_without_auth_with_their_types(api_server):
    with httpx.Client(base_url=api_server, timeout=10) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "connect-src 'self'" in csp and "script-src 'self'" in csp
        assert '<script src="static/js/main.js" type="module">' in page.text
        types = {"/static/js/main.js": "text/javascript", "/static/dashboard.css": "text/css",
                 "/static/vendor/uPlot.iife.min.js": "text/javascript", "/static/vendor/uPlot.min.css": "text/css",
                 "/static/favicon.svg": "image/svg+xml"}
        for path, media_type in types.items():
            r = client.get(path)
            assert r.status_code == 200, path
            assert r.headers["content-type"].startswith(media_type), (path, r.headers["content-type"])
        assert client.get("/static/nope.js").status_code == 404
        assert client.get("/static/../routes/dashboard.py").status_code == 404
        assert client.get("/static/%2e%2e/routes/dashboard.py").status_code == 404
        # The API around it is unchanged: still authenticated, still documented.
        assert client.get("/jobs").status_code == 401
        assert client.get("/healthz").status_code == 200
        paths = client.get("/openapi.json").json()["paths"]
        assert "/jobs" in paths and "/" not in paths and not any(p.startswith("/static") for p in paths)


def test_no_file_references_anything_outside_the_server(api_server):
    with httpx.Client(base_url=api_server, timeout=10) as client:
        for path in _served_files():
            r = client.get(path)
            assert r.status_code == 200, path
            text = r.text
            for url in SCHEME_URL.findall(text):
                assert url.rstrip(".,;") in NOT_FETCHED, f"{path} refers to {url}"
            # Protocol-relative references (//host/...) in markup, CSS and imports.
            assert not re.search(r"""(?:src|href|action)\s*=\s*["']?//""", text), path
            assert not re.search(r"""url\(\s*["']?//""", text), path
            assert not re.search(r"""@import""", text) or path.endswith(".md"), path
            if path.endswith(".js") and "/vendor/" not in path:
                for spec in re.findall(r"""^\s*import\s.*?from\s+["']([^"']+)["']""", text, re.M):
                    assert spec.startswith(("./", "../")), f"{path} imports {spec}"
    # The licence of the vendored library ships beside it.
    assert "MIT License" in (DASHBOARD / "static" / "vendor" / "uPlot.LICENSE").read_text()


def test_every_view_loads_only_from_the_server(page, api_server, service_settings):
    """Sign-in, the lists, an unknown job, compare: every request stays on the server's origin (the
    `page` fixture asserts it too), and the vendored chart library is among them."""
    key = new_key(service_settings, "browser-views")
    page.goto(f"{api_server}/")
    page.wait_for_selector("#signin-form")
    sign_in(page, api_server, key)
    page.wait_for_selector(".jobs-table[data-loaded=true]")
    assert "No jobs yet" in page.inner_text(".list-message")
    for route, selector in [("#/sweeps", "#sweeps-table"), ("#/compare?ids=", ".notice"),
                            ("#/jobs/00000000-0000-0000-0000-000000000000", ".error"),
                            ("#/sweeps/00000000-0000-0000-0000-000000000000", ".error")]:
        page.goto(f"{api_server}/{route}")
        page.wait_for_selector(selector)
    assert "job not found" in page.inner_text(".error").lower() or "not found" in page.inner_text(".error").lower()
    urls = page.recorder.urls()
    assert any(u.endswith("/static/vendor/uPlot.iife.min.js") for u in urls)
    assert any("/sweeps?" in u for u in urls)
    assert page.recorder.foreign() == []
    assert page.evaluate("typeof window.uPlot") == "function"


def test_sse_parser_handles_any_chunking(page, api_server):
    page.goto(f"{api_server}/#/signin")
    result = page.evaluate("""async () => {
        const {SSEParser} = await import('/static/js/sse.js');
        const stream = 'retry: 250\\r\\n: keep-alive\\r\\n\\r\\nid: 1-0\\r\\nevent: metrics\\r\\n' +
                       'data: {"step": 1}\\r\\n\\r\\nid: 1-1\\revent: status\\rdata: a\\rdata:b\\r\\r' +
                       'data: no id\\n\\nid: 2-0\\nevent: end\\ndata: {}\\n\\nevent: lost\\ndata: unfinished';
        const whole = new SSEParser();
        const all = whole.feed(stream).concat(whole.end());
        // The same stream cut at every position gives the same events.
        for (let cut = 1; cut < stream.length; cut++) {
            const p = new SSEParser();
            const events = p.feed(stream.slice(0, cut)).concat(p.feed(stream.slice(cut)), p.end());
            if (JSON.stringify(events) !== JSON.stringify(all)) return {cut, events, all};
        }
        return {all, retry: whole.retry};
    }""")
    assert "cut" not in result, result
    assert result["retry"] == 250
    assert result["all"] == [
        {"event": "metrics", "data": '{"step": 1}', "id": "1-0"},
        {"event": "status", "data": "a\nb", "id": "1-1"},
        {"event": "message", "data": "no id", "id": "1-1"},  # the last id carries over, as in EventSource
        {"event": "end", "data": "{}", "id": "2-0"},
    ]


def test_spec_diff_flattens_to_dotted_paths(page, api_server):
    page.goto(f"{api_server}/#/signin")
    rows = page.evaluate("""async () => {
        const {specDiff} = await import('/static/js/spec.js');
        return specDiff([
            {seed: 0, method: {name: 'kd', temperature: 4}, training: {lr: 0.05, milestones: [1, 2]}, teacher: null},
            {seed: 1, method: {name: 'kd', temperature: 4}, training: {lr: 0.05, milestones: [1, 3]},
             teacher: {arch: 'x'}},
        ]).map(r => [r.path, ...r.values.map(v => v === undefined ? '(absent)' : JSON.stringify(v))]);
    }""")
    assert rows == [["seed", "0", "1"], ["teacher", "null", "(absent)"], ["teacher.arch", "(absent)", '"x"'],
                    ["training.milestones", "[1,2]", "[1,3]"]]


@pytest.mark.parametrize("width", [390])
def test_the_page_fits_a_narrow_screen(page, api_server, service_settings, width):
    page.set_viewport_size({"width": width, "height": 800})
    sign_in(page, api_server, new_key(service_settings, "browser-narrow"))
    page.wait_for_selector(".jobs-table[data-loaded=true]")
    assert page.evaluate("document.documentElement.scrollWidth") <= width + 1
