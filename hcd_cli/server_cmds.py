"""`hcd up` (everything on one machine, supervised), `hcd api` and `hcd worker` (the distributed pieces)."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobs.settings import Settings

EXIT_BAD_CONFIG = 2
_BACKOFF_FIRST, _BACKOFF_MAX = 1.0, 30.0  # seconds before a dead child is started again (doubling)
_HEALTHY_AFTER = 60.0  # a child that ran this long starts again with the first backoff


def register(sub: argparse._SubParsersAction[Any]) -> None:
    up = sub.add_parser("up", help="run migrations, the API and one worker on this machine, supervised")
    up.add_argument("--host", default=None, help="API bind address (default HCD_HOST or 127.0.0.1)")
    up.add_argument("--port", type=int, default=None, help="API port (default HCD_PORT or 8000)")
    up.add_argument("--data-dir", default=None, help="data directory (default HCD_DATA_DIR or ./hcd-data)")
    up.add_argument("--device", default=None, help="the worker's device: auto, cpu, cuda, cuda:N")
    up.add_argument("--gpus", default=None, metavar="0,1",
                    help="the worker's GPUs (as hcd worker --gpus): jobs with training.devices up to their number")
    up.add_argument("--verbose", "-v", action="store_true",
                    help="show the API's and the worker's output here (default: DATA_DIR/logs/api.log, worker.log)")
    up.set_defaults(func=cmd_up)

    api = sub.add_parser("api", help="serve the REST API (uvicorn)")
    api.add_argument("--host", default=None, help="bind address (default HCD_HOST or 127.0.0.1)")
    api.add_argument("--port", type=int, default=None, help="port (default HCD_PORT or 8000)")
    api.add_argument("--workers", type=int, default=None,
                     help="uvicorn worker processes (default HCD_API_WORKERS or min(4, CPU count))")
    api.add_argument("--log-level", default="info")
    api.set_defaults(func=cmd_api)

    worker = sub.add_parser("worker", help="run a job worker (one per GPU) with the outbox relay and lease sweep")
    worker.add_argument("--device", default=None,
                        help="auto, cpu, cuda or cuda:N (cuda:N exports CUDA_VISIBLE_DEVICES=N); "
                             "default HCD_WORKER_DEVICE or auto")
    worker.add_argument("--gpus", default=None, metavar="0,1,2,3",
                        help="the GPUs this worker owns (exports CUDA_VISIBLE_DEVICES; device cuda): it runs one "
                             "job at a time on up to that many GPUs (training.devices), data-parallel")
    worker.add_argument("--queue", default=None, help="queue name (default HCD_QUEUE_NAME or hcd-gpu)")
    worker.add_argument("--hostname", default=None, help="Celery node name (default hcd-<pid>@<host>)")
    worker.add_argument("--no-sweep", action="store_true",
                        help="run no outbox relay and lease sweep here (another worker must)")
    worker.add_argument("--metrics-port", type=int, default=None,
                        help="serve this worker's Prometheus metrics on this port (default HCD_WORKER_METRICS_PORT; "
                             "0: off); bind address HCD_WORKER_METRICS_HOST (127.0.0.1)")
    worker.add_argument("--log-level", default="info")
    worker.set_defaults(func=cmd_worker)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment; an invalid HCD_* variable ends the command with a clear message."""
    from pydantic import ValidationError

    from jobs.settings import describe_settings_error

    try:
        return Settings(**overrides)
    except ValidationError as err:
        print(f"hcd: invalid configuration: {describe_settings_error(err)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_CONFIG) from None


def _require_urls(settings: Settings) -> None:
    missing = [name for name, value in (("HCD_DATABASE_URL", settings.database_url),
                                        ("HCD_REDIS_URL", settings.redis_url)) if not value]
    if missing:
        raise SystemExit(f"hcd: {' and '.join(missing)} must be set (or use `hcd up` for embedded servers)")


# --------------------------------------------------------------------------- hcd api
def cmd_api(args: argparse.Namespace) -> int:
    import uvicorn

    from api.metrics_env import prepare_multiprocess_dir, remove_multiprocess_dir
    from jobs.logs import logging_config

    settings = load_settings()
    _require_urls(settings)
    port = args.port or settings.port
    # Before anything imports prometheus_client: the uvicorn processes add up their metrics there.
    metrics_dir = prepare_multiprocess_dir(port)
    try:
        uvicorn.run("api.app:create_app", factory=True, host=args.host or settings.host, port=port,
                    workers=args.workers or settings.api_workers, log_level=args.log_level,
                    log_config=logging_config(args.log_level, settings.log_format), timeout_graceful_shutdown=5)
    finally:
        remove_multiprocess_dir(metrics_dir)
    return 0


# --------------------------------------------------------------------------- hcd worker
def _apply_device(device: str) -> None:
    os.environ["HCD_WORKER_DEVICE"] = device
    if device.startswith("cuda:") and "CUDA_VISIBLE_DEVICES" not in os.environ:
        os.environ["CUDA_VISIBLE_DEVICES"] = device.split(":", 1)[1]


def _apply_gpus(gpus: str, command: str = "hcd worker") -> None:
    ids = [g.strip() for g in gpus.split(",") if g.strip()]
    if not ids or not all(g.isdigit() for g in ids) or len(set(ids)) != len(ids):
        raise SystemExit(f"{command}: --gpus takes distinct GPU indices such as 0,1,2,3, got {gpus!r}")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(ids)
    os.environ["HCD_WORKER_DEVICE"] = "cuda"
    os.environ["HCD_WORKER_DEVICES"] = str(len(ids))


def cmd_worker(args: argparse.Namespace) -> int:
    if args.gpus and args.device:
        raise SystemExit("hcd worker: give --gpus or --device, not both")
    if args.gpus:
        _apply_gpus(args.gpus)
    if args.device:
        _apply_device(args.device)
    if args.queue:
        os.environ["HCD_QUEUE_NAME"] = args.queue
    # The worker's metrics live in this process only (the API's multiprocess folder is not for it).
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    settings = load_settings()
    _require_urls(settings)
    # The device first: a worker that cannot use it must take no job (the GPU is checked in a child
    # process; this one never imports torch). HCD_WORKER_DEVICE=cuda:N exports CUDA_VISIBLE_DEVICES too.
    from worker.device_check import DeviceError, check_device, normalize_device
    try:
        _apply_device(normalize_device(settings.worker_device))
        device_info = check_device(settings.worker_device)
    except DeviceError as err:
        print(f"hcd worker: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    import logging

    from jobs.logs import configure_logging
    from worker.celery_app import make_worker_app
    from worker.housekeeping import HousekeepingThread
    from worker.prometheus import serve_metrics
    from worker.tasks import worker_identity

    configure_logging(args.log_level.upper(), settings.log_format)
    logging.getLogger("hcd.worker").info("device %s", device_info.description)
    metrics_port = settings.worker_metrics_port if args.metrics_port is None else args.metrics_port
    if metrics_port:
        try:
            serve_metrics(settings.worker_metrics_host, metrics_port, worker_id=worker_identity(),
                          device=settings.worker_device, queue=settings.queue_name)
        except OSError as err:
            raise SystemExit(f"hcd worker: cannot serve metrics on {settings.worker_metrics_host}:{metrics_port}: "
                             f"{err}") from None
    app = make_worker_app(settings)
    if not args.no_sweep:
        HousekeepingThread(settings).start()
    hostname = args.hostname or f"hcd-{os.getpid()}@{socket.gethostname()}"
    # solo pool: the task runs in this process (which never touches CUDA) and spawns one child per
    # job; concurrency 1 and prefetch 1 keep a busy worker from hoarding messages. JSON logs: no banner.
    quiet = ["--quiet"] if settings.log_format == "json" else []
    app.worker_main([
        *quiet, "worker", "--pool=solo", "--concurrency=1", "--prefetch-multiplier=1",
        "--queues", settings.queue_name, "--hostname", hostname,
        "--without-mingle", "--without-gossip", "--without-heartbeat", "--loglevel", args.log_level.upper(),
    ])
    return 0


# --------------------------------------------------------------------------- hcd up
def _ensure_admin_key(settings: Settings) -> str | None:
    """The bootstrap key when configured; else on first start a new admin key, returned once."""
    from jobs.db import database
    from jobs.keys import BOOTSTRAP_OWNER, create_key, ensure_bootstrap_key, has_active_key

    with database(settings).session() as session:
        if settings.bootstrap_api_key:
            ensure_bootstrap_key(session, settings)
            return None
        if has_active_key(session, BOOTSTRAP_OWNER):
            return None
        return create_key(session, BOOTSTRAP_OWNER)


def _wait_http(url: str, timeout: float, children: list[Child]) -> bool:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(c.proc is not None and c.proc.poll() is not None for c in children):
            return False
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def _say(message: str) -> None:
    print(f"hcd up: {message}", flush=True)


@dataclass
class Child:
    """A supervised child process in its own session (Ctrl-C reaches only `hcd up`, which stops it in order)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    grace: float  # seconds it gets to stop after SIGTERM
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0
    backoff: float = _BACKOFF_FIRST
    restart_at: float | None = field(default=None)
    log_path: Path | None = None  # its stdout and stderr are appended here (None: this terminal)

    def start(self) -> None:
        if self.log_path is None:
            self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True)
        else:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "ab") as log:
                log.write(f"\n--- hcd up: {self.name} started {time.strftime('%Y-%m-%d %H:%M:%S')} ---\n".encode())
                log.flush()
                self.proc = subprocess.Popen(self.argv, env=self.env, start_new_session=True, stdout=log,
                                             stderr=subprocess.STDOUT)
        self.started_at = time.monotonic()
        self.restart_at = None

    def log_tail(self, lines: int = 20) -> str:
        """The end of its log file (empty when it writes to the terminal)."""
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as log:
            log.seek(max(0, log.seek(0, os.SEEK_END) - 16384))
            text = log.read().decode(errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def _signal_leftovers(self, sig: int) -> None:
        """Signal what is left of a dead child's process group: uvicorn's worker processes outlive their
        supervisor (still serving on the port, which a new API could then not bind)."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass  # nothing left

    def check(self) -> None:
        """Start a dead child again after its backoff (doubling while it keeps dying young)."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self._signal_leftovers(signal.SIGKILL)  # those that ignored the SIGTERM below
                self.restarts += 1
                _say(f"starting the {self.name} again (restart {self.restarts})")
                self.start()
            return
        if self.proc is None or self.proc.poll() is None:
            return
        self._signal_leftovers(signal.SIGTERM)
        if now - self.started_at >= _HEALTHY_AFTER:
            self.backoff = _BACKOFF_FIRST
        where = f" (its log: {self.log_path})" if self.log_path else ""
        print(f"hcd up: the {self.name} exited with code {self.proc.returncode}; starting it again in "
              f"{self.backoff:.0f} s{where}", file=sys.stderr, flush=True)
        self.restart_at = now + self.backoff
        self.backoff = min(self.backoff * 2, _BACKOFF_MAX)

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is not None:  # died, its restart still pending: only leftovers to stop
            self._signal_leftovers(signal.SIGKILL)
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            print(f"hcd up: the {self.name} did not stop in {self.grace:.0f} s; killing it", file=sys.stderr)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def cmd_up(args: argparse.Namespace) -> int:
    import logging
    import warnings

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")  # platformdirs, as root: noise
    if args.data_dir:
        os.environ["HCD_DATA_DIR"] = str(Path(args.data_dir).expanduser().resolve())
    if args.gpus and args.device:
        raise SystemExit("hcd up: give --gpus or --device, not both")
    if args.gpus:
        _apply_gpus(args.gpus, "hcd up")
    if args.device:
        _apply_device(args.device)
    settings = load_settings()
    # A device the worker cannot use is refused now, not by a worker restarted forever.
    from worker.device_check import DeviceError, check_device

    try:
        check_device(settings.worker_device)
    except DeviceError as err:
        print(f"hcd up: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    data_dir = settings.data_dir.expanduser().resolve()
    from jobs.storage import LocalStore

    LocalStore(data_dir).ensure_layout()
    host, port = args.host or settings.host, args.port or settings.port

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())

    embedded = []
    children: list[Child] = []
    # The children's output (Celery's banner, uvicorn's and the worker's INFO lines) goes to log files;
    # this terminal gets one banner when all is up, and the supervisor's own messages.
    log_dir = None if args.verbose else data_dir / "logs"
    embedded_urls: dict[str, str] = {}
    _say(f"starting in {data_dir} ..." + (f" (the API's and worker's logs: {log_dir})" if log_dir else ""))
    try:
        env = dict(os.environ, HCD_DATA_DIR=str(data_dir), HCD_HOST=host, HCD_PORT=str(port))
        if log_dir is not None:
            env["PYTHONUNBUFFERED"] = "1"  # log lines reach the files as they are written
        if not settings.database_url:
            from jobs.embedded import start_postgres

            server = start_postgres(data_dir / "embedded" / "postgres")
            embedded.append(server)
            # Shown in the banner, so that `HCD_DATABASE_URL=... hcd keys create` can reach it while it runs.
            env["HCD_DATABASE_URL"] = embedded_urls["database"] = server.url
        if not settings.redis_url:
            from jobs.embedded import start_redis

            server = start_redis(data_dir / "embedded" / "redis")
            embedded.append(server)
            env["HCD_REDIS_URL"] = embedded_urls["redis"] = server.url
        settings = load_settings(database_url=env.get("HCD_DATABASE_URL"), redis_url=env.get("HCD_REDIS_URL"),
                                 data_dir=data_dir)

        from jobs.migrate import upgrade

        upgrade(settings.database_url)
        new_key = _ensure_admin_key(settings)

        cli = [sys.executable, "-m", "hcd_cli.main"]
        children = [
            Child("API", cli + ["api", "--host", host, "--port", str(port), "--workers", str(settings.api_workers)],
                  env, grace=10.0, log_path=log_dir / "api.log" if log_dir else None),
            Child("worker", cli + ["worker"], env, grace=90.0, log_path=log_dir / "worker.log" if log_dir else None),
        ]
        for child in children:
            child.start()

        shown_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        url = f"http://{shown_host}:{port}"
        if not _wait_http(f"{url}/healthz", 120, children) and not stop.is_set():
            print("hcd up: the API did not come up; stopping", file=sys.stderr)
            for child in children:
                if tail := child.log_tail():
                    print(f"--- the end of {child.log_path}:\n{tail}", file=sys.stderr)
            return 1
        if stop.is_set():
            return 0
        from hcd_cli.up_banner import banner

        print(banner(url=url, data_dir=data_dir, log_dir=log_dir, new_key=new_key,
                     bootstrap_key=bool(settings.bootstrap_api_key), database=embedded_urls.get("database"),
                     redis=embedded_urls.get("redis"), api_workers=settings.api_workers), flush=True)
        _say("press Ctrl-C to stop")
        # Supervise: a child that dies is started again (with backoff) while the rest keeps serving.
        while not stop.wait(0.5):
            for child in children:
                child.check()
        return 0
    finally:
        # The API first (no new jobs), then the worker (a running job checkpoints and is handed back),
        # then the servers they used.
        for child in children:
            child.stop()
        for server in reversed(embedded):
            try:
                server.stop()
            except Exception as err:  # keep stopping the rest
                print(f"hcd up: could not stop an embedded server cleanly: {err}", file=sys.stderr)
        _say("stopped")
