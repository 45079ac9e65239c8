"""Browser tests of the web dashboard: a real `hcd api` (uvicorn), a real `hcd worker`, real Postgres and
Redis (the fixtures of tests/service, loaded from there), and Debian's Chromium driven by Playwright.

Chromium: HCD_CHROMIUM or /usr/bin/chromium (`apt-get install chromium`; `.ci/run` installs it). The
Playwright browsers are never downloaded (`playwright install` is not needed). Without Playwright or
Chromium these tests are skipped, saying why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import uuid
from pathlib import Path

import httpx
import pytest

_SERVICE_TESTS = Path(__file__).resolve().parent.parent / "service"
if str(_SERVICE_TESTS) not in sys.path:
    sys.path.insert(0, str(_SERVICE_TESTS))  # worker_fixtures, api_helpers


def _load_service_conftest():
    name = "hcd_service_conftest"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, _SERVICE_TESTS / "conftest.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


_service = _load_service_conftest()
# The service fixtures this directory uses (pytest registers the fixtures named in a conftest).
pg_url = _service.pg_url
redis_url = _service.redis_url
service_settings = _service.service_settings
service_env = _service.service_env

import worker_fixtures  # noqa: E402
from worker_fixtures import HCD, start_process, wait_until  # noqa: E402

api_server = worker_fixtures.api_server  # a real `hcd api` subprocess; yields its URL

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]


def chromium_path() -> str | None:
    path = os.environ.get("HCD_CHROMIUM") or "/usr/bin/chromium"
    return path if Path(path).exists() else shutil.which("chromium")


@pytest.fixture(scope="module")
def browser():
    """Per module, not per session: Playwright's sync API keeps an asyncio loop running in this thread
    while it is started, and later tests that call asyncio.run() would fail under it."""
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="Playwright is a dev dependency: pip install -e '.[dev]'")
    executable = chromium_path()
    if executable is None:
        pytest.skip("no Chromium: apt-get install chromium (or set HCD_CHROMIUM)")
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def owner_key(service_settings) -> str:
    """One owner per test module (its list holds only this module's jobs); its active jobs are
    cancelled at the end so no later worker picks them up."""
    owner = f"browser-{uuid.uuid4().hex[:8]}"
    key = _service._new_key(service_settings, owner)
    yield key
    _service._cancel_leftover_jobs(service_settings, owner)


@pytest.fixture(scope="module")
def client(api_server, owner_key):
    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {owner_key}"}, timeout=30) as c:
        yield c


@pytest.fixture(scope="module")
def worker(service_env, tmp_path_factory):
    """One `hcd worker` for the module (CPU); it runs the module's jobs one at a time."""
    env = {**service_env, "HCD_WORKER_DEVICE": "cpu"}
    process = start_process("worker", HCD + ["worker", "--log-level", "info"], env,
                            tmp_path_factory.mktemp("browser-worker"))
    try:
        wait_until(lambda: "ready." in process.log() or not process.alive(), 90, 0.2, "the worker to be ready")
        assert process.alive(), f"the worker died:\n{process.log()[-3000:]}"
        yield process
    finally:
        process.stop()


class PageRecorder:
    """Every request a page makes, and its uncaught errors."""

    def __init__(self, page, origin: str):
        self.page, self.origin = page, origin
        self.requests: list = []
        self.errors: list[str] = []
        page.on("request", lambda request: self.requests.append(request))
        page.on("pageerror", lambda err: self.errors.append(str(err)))

    def urls(self) -> list[str]:
        return [r.url for r in self.requests]

    def foreign(self) -> list[str]:
        """Requests that went anywhere but the server (blob: URLs of downloads are local)."""
        return [u for u in self.urls() if not (u.startswith(self.origin + "/") or u == self.origin
                                               or u.startswith("blob:" + self.origin + "/"))]


@pytest.fixture
def page(browser, api_server):
    """A fresh browser context (empty localStorage) and page; at the end, no request may have left
    the server's origin and no script error may have happened."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    context.set_default_timeout(20_000)
    pw_page = context.new_page()
    recorder = PageRecorder(pw_page, api_server)
    pw_page.recorder = recorder
    yield pw_page
    context.close()
    assert recorder.foreign() == [], f"requests left {api_server}: {recorder.foreign()}"
    assert recorder.errors == [], f"script errors: {recorder.errors}"
