"""`hcd up` (everything on one machine), `hcd api` and `hcd worker` (the distributed pieces)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    up = sub.add_parser("up", help="run migrations, the API, one worker and the sweep on this machine")
    up.add_argument("--host", default=None, help="API bind address (default HCD_HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="API port (default HCD_PORT or 8000)")
    up.add_argument("--data-dir", default=None, help="data directory (default HCD_DATA_DIR or ./hcd-data)")
    up.add_argument("--device", default=None, help="the worker's device: auto, cpu, cuda, cuda:N")
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="serve the REST API (uvicorn)")
    api.add_argument("--host", default=None, help="bind address (default HCD_HOST or 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default HCD_PORT or 8000)")
    api.add_argument("--workers", type=int, default=None,
                     help="uvicorn worker processes (default HCD_API_WORKERS or min(4, CPU count))")
    api.add_argument("--log-level", default="info")
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a job worker (one per GPU) with the periodic sweep")
    worker.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:N (cuda:N exports CUDA_VISIBLE_DEVICES=N); "
                             "default HCD_WORKER_DEVICE or auto")
    worker.add_argument("--queue", default=None, help="queue name (default HCD_QUEUE_NAME or hcd-gpu)")
    worker.add_argument("--hostname", default=None, help="Celery node name (default hcd-<pid>@<host>)")
    worker.add_argument("--no-sweep", action="store_true", help="do not run the sweep in this worker")
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(func=cmd_worker)


def _require_urls(settings) -> None:
    missing = [name for name, value in (("HCD_DATABASE_URL", settings.database_url),
                                        ("HCD_REDIS_URL", settings.redis_url)) if not value]
    if missing:
        raise SystemExit(f"hcd: {' and '.join(missing)} must be set (or use `hcd up` for embedded servers)")


# --------------------------------------------------------------------------- hcd api
def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.settings import Settings

    settings = Settings()
    _require_urls(settings)
    uvicorn.run("api.app:create_app", factory=True, host=args.host or settings.host,
                port=args.port or settings.port, workers=args.workers or settings.api_workers, log_level=args.log_level,
                timeout_graceful_shutdown=5)
    return 0


# --------------------------------------------------------------------------- hcd worker
def _apply_device(device: str) -> None:
    os.environ["HCD_WORKER_DEVICE"] = device
    if device.startswith("cuda:") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]


def cmd_worker(args: argparse.Namespace) -> int:
    import logging

    if args.device:
        _apply_device(args.device)
    if args.queue:
        os.environ["HCD_QUEUE_NAME"] = args.queue
    from api.settings import Settings
    from worker.celery_app import make_worker_app
    from worker.sweep import SweepThread

    settings = Settings()
    _require_urls(settings)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = make_worker_app(settings)
    if not args.no_sweep:
        SweepThread(settings).start()
    hostname = args.hostname or f"hcd-{os.getpid()}@{socket.gethostname()}"
    # solo pool: the task runs in this process (which never touches CUDA) and spawns one child per
    # job; concurrency 1 and prefetch 1 keep a busy worker from hoarding messages.
    app.worker_main([
        "worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--queues", settings.queue_name, "--hostname", hostname,
        "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel", args.log_level.upper(),
    ])
    return 0


# --------------------------------------------------------------------------- hcd up
def _ensure_admin_key(settings) -> str | None:
    """The bootstrap key when configured; else on first start a new admin key, returned once."""
    from sqlalchemy import select

    from api.auth import BOOTSTRAP_OWNER, create_api_key, ensure_bootstrap_key
    from api.db import session_scope
    from api.tables import ApiKey

    if settings.bootstrap_api_key:
        ensure_bootstrap_key(settings)
        return None
    with session_scope(settings.database_url) as session:
        exists = session.execute(
            select(ApiKey.id).where(ApiKey.owner == BOOTSTRAP_OWNER, ApiKey.revoked_at.is_(None)).limit(1)
        ).first()
        if exists:
            return None
        return create_api_key(session, BOOTSTRAP_OWNER)


def _wait_http(url: str, timeout: float, procs: list[subprocess.Popen]) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _stop_child(proc: subprocess.Popen, name: str, grace: float) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        print(f"hcd up: {name} did not stop in {grace:.0f} s; killing it", file=sys.stderr)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def cmd_up(args: argparse.Namespace) -> int:
    import logging

    from api.settings import Settings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.data_dir:
        os.environ["HCD_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    if args.device:
        _apply_device(args.device)
    settings = Settings()
    data_dir = settings.data_dir.expanduser().resolve()
    for sub in ("artifacts", "checkpoints", "uploads", "datasets"):
        (data_dir / sub).mkdir(parents=True, exist_ok=True)
    host, port = args.host or settings.host, args.port or settings.port

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    embedded = []
    children: list[tuple[str, subprocess.Popen, float]] = []
    code = 0
    try:
        env = dict(os.environ, HCD_DATA_DIR=str(data_dir), HCD_HOST=host, HCD_PORT=str(port))
        if not settings.database_url:
            from api.embedded import start_postgres

            server = start_postgres(data_dir / "embedded" / "postgres")
            embedded.append(server)
            env["HCD_DATABASE_URL"] = server.url
            # Printed so that `HCD_DATABASE_URL=... hcd keys create` can reach it while it runs.
            print(f"hcd up: embedded Postgres at {server.url} (data in {data_dir / 'embedded' / 'postgres'})")
        if not settings.redis_url:
            from api.embedded import start_redis

            server = start_redis(data_dir / "embedded" / "redis")
            embedded.append(server)
            env["HCD_REDIS_URL"] = server.url
            print(f"hcd up: embedded Redis at {server.url}")
        settings = Settings(database_url=env.get("HCD_DATABASE_URL"), redis_url=env.get("HCD_REDIS_URL"),
                            data_dir=data_dir)

        from api.migrate import upgrade

        upgrade(settings.database_url)
        new_key = _ensure_admin_key(settings)

        cli = [sys.executable, "-m", "hcd_cli.main"]
        # Own sessions: Ctrl-C reaches only this process, which then stops the children in order.
        api = subprocess.Popen(cli + ["api", "--host", host, "--port", str(port), "--workers", str(settings.api_workers)],
                               env=env, start_new_session=True)
        children.append(("api", api, 10.0))
        worker = subprocess.Popen(cli + ["worker"], env=env, start_new_session=True)
        children.append(("worker", worker, 90.0))

        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{shown_host}:{port}"
        if not _wait_http(f"{url}/healthz", 120, [api, worker]) and not stop.is_set():
            print("hcd up: the API did not come up; stopping", file=sys.stderr)
            return 1
        if stop.is_set():
            return 0
        print(f"hcd up: API ready at {url} (docs at {url}/docs, {settings.api_workers} processes); data in {data_dir}")
        if new_key:
            print(f"hcd up: created an API key for owner 'admin' (shown only now, store it):\n  {new_key}")
        elif settings.bootstrap_api_key:
            print("hcd up: the key in HCD_BOOTSTRAP_API_KEY is valid for owner 'admin'")
        else:
            print("hcd up: using the existing keys; create another with `hcd keys create --owner NAME`")
        print("hcd up: press Ctrl-C to stop", flush=True)
        while not stop.wait(0.5):
            for name, proc, _ in children:
                if proc.poll() is not None:
                    print(f"hcd up: the {name} exited with code {proc.returncode}; stopping", file=sys.stderr)
                    code = 1
                    stop.set()
        return code
    finally:
        # The API first (no new jobs), then the worker (a running job checkpoints and is handed back),
        # then the servers they used.
        for name, proc, grace in children:
            _stop_child(proc, name, grace)
        for server in reversed(embedded):
            try:
                server.stop()
            except Exception as err:  # keep stopping the rest
                print(f"hcd up: could not stop an embedded server cleanly: {err}", file=sys.stderr)
        print("hcd up: stopped", flush=True)
