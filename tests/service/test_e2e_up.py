"""`hcd up` on one machine: embedded Postgres and Redis, migrations, a key, API + worker; Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
from worker_fixtures import free_port, tiny_spec, wait_until


def _descendants(pid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,pgid="], capture_output=True, text=True).stdout
    rows = [tuple(int(x) for x in line.split()) for line in out.splitlines() if line.strip()]
    found, frontier = set(), {pid}
    while frontier:
        children = {p for p, pp, _ in rows if pp in frontier} - found
        found |= children
        frontier = children
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_hcd_up_serves_runs_a_job_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCD_")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HCD_SWEEP_INTERVAL_SECONDS="1")
    log_path = tmp_path / "up.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "hcd_cli.main", "up", "--port", str(port),
                                 "--data-dir", str(tmp_path / "data"), "--device", "cpu"],
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def ready():
            assert proc.poll() is None, log_path.read_text()[-4000:]
            return "press Ctrl-C" in log_path.read_text()

        wait_until(ready, 120, 0.25, "hcd up to be ready")
        text = log_path.read_text()
        key = re.search(r"^\s+(hcd_\S+)$", text, re.M).group(1)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz").status_code == 200
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            r = client.post("/jobs", json={"spec": tiny_spec("ce", epochs=1, steps=2)})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            job = wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"]
                             in ("succeeded", "failed") and j, 90, 0.25, "the job")
            assert job["status"] == "succeeded", job
        processes = _descendants(proc.pid)
        assert len(processes) >= 3  # api, worker, embedded redis (postgres daemonises itself)
        started = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        assert proc.wait(60) == 0, log_path.read_text()[-4000:]
        assert time.monotonic() - started < 45
        wait_until(lambda: not any(_alive(p) for p in processes), 10, 0.2, "every child to exit")
        assert "hcd up: stopped" in log_path.read_text()
        # The embedded Postgres (a daemon of its own session) is down too.
        pgdata = str(tmp_path / "data" / "embedded" / "postgres")

        def postgres_gone():
            ps = subprocess.run(["ps", "-eo", "args="], capture_output=True, text=True).stdout
            return not any("postgres" in line and pgdata in line for line in ps.splitlines())

        wait_until(postgres_gone, 15, 0.2, "embedded postgres to stop")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
