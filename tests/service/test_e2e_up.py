"""`hcd up` on one machine: embedded Postgres and Redis, migrations, a key, API + worker supervised
(a child that dies is started again); Ctrl-C stops all."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import httpx
import pytest
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


def _command_line(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _child(up_pid: int, needle: str) -> int:
    """The one live descendant of `hcd up` whose command line contains `needle`."""
    found = [p for p in _descendants(up_pid) if needle in _command_line(p) and _alive(p)]
    assert len(found) == 1, (needle, found)
    return found[0]


def _group(pgid: int) -> set[int]:
    out = subprocess.run(["ps", "-eo", "pid=,pgid="], capture_output=True, text=True).stdout
    return {int(p) for p, g in (line.split() for line in out.splitlines() if line.strip()) if int(g) == pgid}


def _started_for(data_dir: str) -> set[int]:
    """Processes whose environment names `data_dir` (all that `hcd up --data-dir data_dir` started)."""
    needle = f"HCD_DATA_DIR={data_dir}".encode()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/environ", "rb") as fh:
                    if needle in fh.read().split(b"\0"):
                        found.add(int(entry))
            except OSError:
                pass
    return found


def _clean_up(proc: subprocess.Popen, data_dir: str) -> None:
    """After the test, passed or not: `hcd up` stopped as Ctrl-C would, anything it left behind killed."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in _started_for(data_dir):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow  # embedded servers, two API starts and a training run: ~20-40 s
def test_hcd_up_serves_restarts_dead_children_runs_a_job_and_stops_cleanly_on_ctrl_c(tmp_path):
    """One `hcd up` start (the slow part) for the whole life cycle: a killed worker and a killed API
    are started again while the rest keeps serving, a job runs, Ctrl-C stops everything."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCD_")}
    # Two API processes: uvicorn's multi-process supervisor, as on any machine with 2+ cores.
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", HCD_SWEEP_INTERVAL_SECONDS="1", HCD_API_WORKERS="2")
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
        key = re.search(r"^    API key +(hcd_\S+)  \(owner admin; shown only this once", text, re.M).group(1)
        base = f"http://127.0.0.1:{port}"
        assert httpx.get(f"{base}/readyz").status_code == 200
        # One banner: where to go, the key, where things are; the children's chatter is in their logs.
        data_dir, log_dir = (tmp_path / "data").resolve(), (tmp_path / "data" / "logs").resolve()
        assert re.search(rf"^    dashboard +{base}/$", text, re.M), text
        assert re.search(rf"^    data +{data_dir}  ", text, re.M), text
        assert re.search(rf"^    logs +{log_dir / 'api.log'}, {log_dir / 'worker.log'}$", text, re.M), text
        assert f"export HCD_SERVER_URL={base} HCD_API_KEY={key}" in text
        assert len(text.splitlines()) <= 25, text
        for chatter in ("celery@", "[tasks]", "[queues]", "Application startup complete", " INFO "):
            assert chatter not in text, (chatter, text)
        assert "[queues]" in (log_dir / "worker.log").read_text()
        assert "--- hcd up: API started" in (log_dir / "api.log").read_text()

        def log_tail() -> str:
            return log_path.read_text()[-4000:]

        # The worker dies (SIGKILL: no goodbye): `hcd up` starts another after its 1 s backoff, and the
        # API answers all along.
        worker = _child(proc.pid, "hcd_cli.main worker")
        os.kill(worker, signal.SIGKILL)
        killed = time.monotonic()

        def new_worker():
            assert proc.poll() is None, log_tail()
            assert httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            found = [p for p in _descendants(proc.pid) if "hcd_cli.main worker" in _command_line(p) and p != worker]
            return found[0] if found else None

        restarted = wait_until(new_worker, 10, 0.1, "a new worker")
        assert time.monotonic() - killed < 6
        text = log_path.read_text()
        assert (f"the worker exited with code -9; starting it again in 1 s (its log: {log_dir / 'worker.log'})"
                in text), log_tail()
        assert "starting the worker again (restart 1)" in text, log_tail()

        # A job submitted afterwards runs on the new worker.
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            r = client.post("/jobs", json={"spec": tiny_spec("ce", epochs=1, steps=2)})
            assert r.status_code == 202, r.text
            job_id = r.json()["id"]
            job = wait_until(lambda: (j := client.get(f"/jobs/{job_id}").json())["status"]
                             in ("succeeded", "failed") and j, 90, 0.25, "the job")
            assert job["status"] == "succeeded", job
        assert _alive(restarted)

        # The API's supervisor dies: its uvicorn workers (same process group) must not linger on the
        # port, and a new API serves again.
        api = _child(proc.pid, "hcd_cli.main api")
        old_api = _group(api)
        assert len(old_api) >= 3, old_api  # uvicorn's supervisor and its 2 workers
        os.kill(api, signal.SIGKILL)
        wait_until(lambda: not any(_alive(p) for p in old_api), 10, 0.1, "the old API's processes to exit")

        def api_back():
            assert proc.poll() is None, log_tail()
            try:
                return httpx.get(f"{base}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(api_back, 30, 0.2, "the API to answer again")
        new_api = _child(proc.pid, "hcd_cli.main api")
        assert new_api != api
        text = log_path.read_text()
        assert "the API exited with code -9" in text and "starting the API again (restart 1)" in text, log_tail()
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}) as client:
            assert client.get(f"/jobs/{job_id}").json()["status"] == "succeeded"

        # Ctrl-C stops everything, the restarted children included.
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
        _clean_up(proc, str((tmp_path / "data").resolve()))
