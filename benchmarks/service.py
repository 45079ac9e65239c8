"""Service benchmark, run against a live `hcd up` (or any deployment): latency figures as JSON.

    HCD_URL=http://127.0.0.1:8000 HCD_API_KEY=hcd_... python benchmarks/service.py [--clients 32]
    ... python benchmarks/service.py --tool wrk --duration 10     # load from wrk (C), not Python

1. POST /jobs and GET /jobs/{id}: p50/p99 with N concurrent clients (closed loop). Every job it
   creates is cancelled afterwards. Raise the server's HCD_MAX_QUEUED_JOBS_PER_OWNER for this
   part, or the per-owner cap answers 429 (counted and reported, excluded from the latencies).
   `--tool wrk` (default when `wrk` is on PATH: apt-get install wrk) drives the load from wrk
   with a Lua script (`--duration` seconds per call), so the load generator's CPU does not
   compete with the server's on a small machine; `--tool python` uses httpx (`--requests`).
   Latencies from wrk include non-2xx answers (their count is reported).
2. Submit -> running with an idle worker: polled client-side every 5 ms, and server-side
   (started_at - created_at).
3. Metric latency: for every SSE `metrics` event, receive time minus the time in its event id (the
   Redis stream entry id `<ms>-<seq>`: when the worker appended it to the stream, by Redis' clock);
   also reported from the point's `ts` (when the training loop made it, which adds the per-step
   throttle's hold). Client, Redis and worker must share a clock (same host, or NTP).
Targets (issue 3): p99 < 50 ms for both calls, submit->running < 1 s, metric p99 < 250 ms.
Load is sent to loopback addresses only unless --allow-remote is given.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path
from urllib.parse import urlsplit

import httpx

TINY = {
    "method": {"name": "ce"},
    "student": {"arch": "test_resnet"},
    "dataset": {"name": "digits", "image_size": 16},
    "training": {"recipe": "quick", "epochs": 1, "batch_size": 32, "max_steps_per_epoch": 2},
}


def long_spec(epochs: int, steps: int) -> dict:
    spec = json.loads(json.dumps(TINY))
    spec["training"].update(epochs=epochs, max_steps_per_epoch=steps)
    return spec


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = min(len(values) - 1, max(0, int(round(q / 100 * len(values) + 0.5)) - 1))
    return round(values[k], 2)


def summary_ms(samples: list[float]) -> dict:
    ms = [s * 1000 for s in samples]
    return {"n": len(ms), "p50_ms": pct(ms, 50), "p99_ms": pct(ms, 99), "max_ms": round(max(ms), 2) if ms else None}


async def _closed_loop(clients: int, total: int, call) -> tuple[list[float], dict]:
    latencies: list[float] = []
    codes: dict[int, int] = {}
    counter = iter(range(total))

    async def one_client():
        for i in counter:
            t0 = time.perf_counter()
            code = await call(i)
            dt = time.perf_counter() - t0
            codes[code] = codes.get(code, 0) + 1
            if code < 300:
                latencies.append(dt)

    await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, codes


async def bench_api(client: httpx.AsyncClient, clients: int, total: int) -> dict:
    created: list[str] = []

    async def post(_i):
        r = await client.post("/jobs", json={"spec": TINY, "metadata": {"bench": "service"}})
        if r.status_code == 202:
            created.append(r.json()["id"])
        return r.status_code

    await client.get("/healthz")
    post_lat, post_codes = await _closed_loop(clients, total, post)

    async def cancel(i):  # untimed: keeps the worker from training hundreds of jobs from here on
        return (await client.post(f"/jobs/{created[i]}/cancel")).status_code

    await _closed_loop(clients, len(created), cancel)
    if not created:
        raise SystemExit(f"no job was created (status codes {post_codes}); is the key right?")

    async def get(i):
        r = await client.get(f"/jobs/{created[i % len(created)]}")
        return r.status_code

    get_lat, get_codes = await _closed_loop(clients, total, get)

    return {
        "post_jobs": {**summary_ms(post_lat), "status_codes": post_codes},
        "get_job": {**summary_ms(get_lat), "status_codes": get_codes},
        "clients": clients,
    }


# --------------------------------------------------------------------------- wrk mode
# Lua for wrk: POST bodies (ids of created jobs are written to one file per wrk thread, to cancel
# them afterwards) and GETs cycling over those ids.
_WRK_POST_LUA = """
local counter = 0
function setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end
function init(args)
  ids = io.open(IDS_PREFIX .. tid, "w")
  wrk.method = "POST"
  wrk.body = BODY
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = AUTH
end
function response(status, headers, body)
  if status == 202 then
    local id = string.match(body, '"id":"([0-9a-f%-]+)"')
    if id then ids:write(id, "\\n") ids:flush() end
  end
end
"""

_WRK_GET_LUA = """
function init(args)
  ids = {}
  for line in io.lines(IDS_FILE) do ids[#ids + 1] = line end
  i = math.random(#ids)
  wrk.headers["Authorization"] = AUTH
end
function request()
  i = i % #ids + 1
  return wrk.format("GET", "/jobs/" .. ids[i])
end
"""

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _lua_string(value: str) -> str:
    return json.dumps(value)  # a JSON string literal is a valid Lua string literal for ASCII text


def _parse_duration_ms(text: str) -> float:
    match = re.fullmatch(r"([0-9.]+)(us|ms|s|m)", text.strip())
    if not match:
        raise ValueError(f"unexpected wrk duration {text!r}")
    return round(float(match.group(1)) * _UNIT_MS[match.group(2)], 3)


def parse_wrk_output(text: str) -> dict:
    """Percentiles, request count, rate and non-2xx count from `wrk --latency` output."""
    result: dict = {}
    in_distribution = False
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("Latency Distribution"):
            in_distribution = True
            continue
        if in_distribution:
            match = re.fullmatch(r"(\d+(?:\.\d+)?)%\s+(\S+)", stripped)
            if match:
                result[f"p{float(match.group(1)):g}_ms"] = _parse_duration_ms(match.group(2))
                continue
            in_distribution = False
        if match := re.match(r"(\d+) requests in ([0-9.]+\w+)", stripped):
            result["n"] = int(match.group(1))
            result["duration_s"] = round(_parse_duration_ms(match.group(2)) / 1000, 2)
        elif match := re.match(r"Requests/sec:\s+([0-9.]+)", stripped):
            result["requests_per_s"] = float(match.group(1))
        elif match := re.match(r"Non-2xx or 3xx responses:\s+(\d+)", stripped):
            result["non_2xx"] = int(match.group(1))
        elif stripped.startswith("Socket errors:"):
            result["socket_errors"] = stripped.split(":", 1)[1].strip()
        elif match := re.match(r"Latency\s+(\S+)\s+(\S+)\s+(\S+)", stripped):
            result["mean_ms"], result["max_ms"] = _parse_duration_ms(match.group(1)), _parse_duration_ms(match.group(3))
    result.setdefault("non_2xx", 0)
    return result


def _run_wrk(url: str, clients: int, duration: float, script: Path, threads: int) -> dict:
    command = ["wrk", f"-t{threads}", f"-c{clients}", f"-d{max(1, round(duration))}s", "--latency",
               "--timeout", "10s", "-s", str(script), url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    if done.returncode != 0:
        raise SystemExit(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    return parse_wrk_output(done.stdout)


class CpuMeter:
    """CPU seconds (user + system) of chosen local processes, from /proc (Linux): the given pids with
    all their descendants, plus every process whose command line matches a regex (e.g. the Postgres
    backends of one database). Sampled every 0.2 s while a run lasts, so processes that exit
    meanwhile (pool overflow connections) are counted up to their last sample.
    Lets a run report the server's CPU cost per request."""

    def __init__(self, pids: list[int], match: str | None):
        self.pids, self.match = set(pids), re.compile(match) if match else None
        self.tick = os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _stat(pid: str) -> tuple[int, int] | None:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return int(fields[1]), int(fields[11]) + int(fields[12])  # ppid, utime + stime (ticks)

    def sample(self) -> dict[str, dict[int, int]]:
        """{"server": {pid: ticks}, "matched": {pid: ticks}}."""
        stats = {int(p): st for p in os.listdir("/proc") if p.isdigit() and (st := self._stat(p))}
        chosen, frontier = set(), set(self.pids)
        while frontier:
            chosen |= frontier
            frontier = {pid for pid, (ppid, _) in stats.items() if ppid in frontier} - chosen
        matched = set()
        if self.match:
            for pid in stats.keys() - chosen:
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if self.match.search(cmdline):
                    matched.add(pid)
        return {"server": {p: stats[p][1] for p in chosen if p in stats},
                "matched": {p: stats[p][1] for p in matched}}

    def measure(self, run, requests_of) -> dict:
        """Run `run()` while sampling; add CPU ms per request (requests_of(result)) to its result."""
        import threading

        before, last = self.sample(), self.sample()
        stop = threading.Event()

        def sampler():
            while not stop.wait(0.2):
                for group, ticks in self.sample().items():
                    last[group].update(ticks)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        try:
            result = run()
        finally:
            stop.set()
            thread.join()
        for group, ticks in self.sample().items():
            last[group].update(ticks)
        requests = max(requests_of(result), 1)
        for group, label in (("server", "server_cpu_ms_per_request"), ("matched", "matched_cpu_ms_per_request")):
            if group == "matched" and not self.match:
                continue
            spent = sum(t - before[group].get(pid, 0) for pid, t in last[group].items()) / self.tick
            result[label] = round(spent * 1000 / requests, 3)
        return result


async def _cancel_uncaptured(client: httpx.AsyncClient, created: list[str]) -> None:
    """wrk drops the answers still in flight when it stops, yet those jobs exist: cancel every job of
    ours still queued/running that was created since the run began (newest first)."""
    sample = created[:: max(1, len(created) // 8)]
    firsts = [(await client.get(f"/jobs/{job_id}")).json()["created_at"] for job_id in sample]
    since = min(datetime.fromisoformat(t) for t in firsts)
    params = [("status", "queued"), ("status", "running"), ("limit", "100")]
    known, cursor = set(created), None
    while True:
        page = (await client.get("/jobs", params=params + ([("after", cursor)] if cursor else []))).json()
        for job in page["data"]:
            if datetime.fromisoformat(job["created_at"]) < since:
                return
            if job["id"] not in known:
                await client.post(f"/jobs/{job['id']}/cancel")
        if not page["has_more"]:
            return
        cursor = page["next_cursor"]


async def bench_api_wrk(client: httpx.AsyncClient, args) -> dict:
    """POST then GET, each for `args.duration` seconds from wrk; then cancels the created jobs."""
    threads = max(1, min(args.wrk_threads, args.clients))
    auth = client.headers["Authorization"]
    body = json.dumps({"spec": TINY, "metadata": {"bench": "service"}}, separators=(",", ":"))
    await client.get("/healthz")
    with tempfile.TemporaryDirectory(prefix="hcd-bench-") as tmp:
        tmpdir = Path(tmp)
        prefix = str(tmpdir / "ids-")
        post_lua = tmpdir / "post.lua"
        post_lua.write_text(f"IDS_PREFIX = {_lua_string(prefix)}\nBODY = {_lua_string(body)}\n"
                            f"AUTH = {_lua_string(auth)}\n" + _WRK_POST_LUA)
        cpu = CpuMeter(args.cpu_pids, args.cpu_match) if (args.cpu_pids or args.cpu_match) else None

        def wrk(script: Path) -> dict:
            def run() -> dict:
                return _run_wrk(f"{args.url}/jobs", args.clients, args.duration, script, threads)
            return cpu.measure(run, lambda r: r.get("n", 0)) if cpu else run()

        post = await asyncio.to_thread(wrk, post_lua)
        created = [line for f in sorted(tmpdir.glob("ids-*")) for line in f.read_text().split() if line]
        if not created:
            raise SystemExit(f"no job was created ({post}); is the key right?")

        async def cancel(i):  # untimed: keeps the worker from training thousands of jobs from here on
            return (await client.post(f"/jobs/{created[i]}/cancel")).status_code

        await _closed_loop(min(8, args.clients), len(created), cancel)
        await _cancel_uncaptured(client, created)
        ids_file = tmpdir / "ids.txt"
        ids_file.write_text("\n".join(created) + "\n")
        get_lua = tmpdir / "get.lua"
        get_lua.write_text(f"IDS_FILE = {_lua_string(str(ids_file))}\nAUTH = {_lua_string(auth)}\n" + _WRK_GET_LUA)
        get = await asyncio.to_thread(wrk, get_lua)
    return {"tool": "wrk", "post_jobs": {**post, "jobs_created": len(created)}, "get_job": get,
            "clients": args.clients}


def check_loopback(url: str) -> None:
    host = urlsplit(url).hostname or ""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except socket.gaierror as err:
        raise SystemExit(f"cannot resolve {host!r}: {err}") from None
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        raise SystemExit(f"{url} is not a loopback address; pass --allow-remote to load it anyway")


async def _wait_terminal(client: httpx.AsyncClient, job_id: str, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = (await client.get(f"/jobs/{job_id}")).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        await asyncio.sleep(0.2)
    raise TimeoutError(job_id)


async def _wait_idle(client: httpx.AsyncClient, timeout: float = 120) -> None:
    """No job of ours is queued or running (the worker is idle for us)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = False
        for status in ("queued", "running", "cancelling"):
            page = (await client.get("/jobs", params={"status": status, "limit": 1})).json()
            busy = busy or bool(page["data"])
        if not busy:
            return
        await asyncio.sleep(0.25)
    raise TimeoutError("the worker did not become idle")


async def bench_submit_to_running(client: httpx.AsyncClient, rounds: int) -> dict:
    client_side, server_side = [], []
    for round_ in range(rounds + 1):  # round 0 warms up (and lets the worker drain stale messages)
        await _wait_idle(client)
        await asyncio.sleep(0.5)  # the worker is blocked in BRPOP, as an idle worker would be
        t0 = time.perf_counter()
        job = (await client.post("/jobs", json={"spec": TINY})).json()
        while True:
            current = (await client.get(f"/jobs/{job['id']}")).json()
            if current["status"] != "queued":
                observed = time.perf_counter() - t0
                break
            await asyncio.sleep(0.005)
        done = await _wait_terminal(client, job["id"])
        if round_ == 0:
            continue
        client_side.append(observed)
        started = datetime.fromisoformat(done["started_at"])
        created = datetime.fromisoformat(done["created_at"])
        server_side.append((started - created).total_seconds())
    return {"client_observed": summary_ms(client_side), "server_started_minus_created": summary_ms(server_side)}


async def bench_metric_latency(client: httpx.AsyncClient, base_url: str, headers: dict, epochs: int,
                               steps: int) -> dict:
    await _wait_idle(client)
    job = (await client.post("/jobs", json={"spec": long_spec(epochs, steps)})).json()
    delays: list[float] = []  # stream append -> SSE client
    since_made: list[float] = []  # training loop made the point -> SSE client (adds the throttle's hold)
    event: dict = {}
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=httpx.Timeout(600, connect=5)) as sse:
        async with sse.stream("GET", f"/jobs/{job['id']}/metrics/stream") as response:
            async for line in response.aiter_lines():
                if line == "":
                    if event.get("event") == "metrics":
                        data = json.loads(event["data"])
                        now = time.time()
                        delays.append(now - int(event["id"].split("-")[0]) / 1000)  # appended (Redis ms)
                        since_made.append(now - data["ts"])
                    if event.get("event") == "end":
                        break
                    event = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(":")
                    event[key] = value.lstrip(" ")
    # Entries already in the stream before the client attached are history, not live latency.
    live = delays[1:] if len(delays) > 1 else delays
    made = since_made[1:] if len(since_made) > 1 else since_made
    return {"job_id": job["id"], **summary_ms(live), "since_point_made": summary_ms(made)}


async def main_async(args) -> dict:
    headers = {"Authorization": f"Bearer {args.key}"}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=args.url, headers=headers, limits=limits, timeout=30) as client:
        result = {"url": args.url}
        if not args.skip_api:
            if args.tool == "wrk":
                result["api"] = await bench_api_wrk(client, args)
            else:
                result["api"] = {"tool": "python", **await bench_api(client, args.clients, args.requests)}
        if args.api_only:
            return result
        result["submit_to_running"] = await bench_submit_to_running(client, args.rounds)
        result["metric_latency"] = await bench_metric_latency(client, args.url, headers, args.epochs, args.steps)
    result["targets"] = {
        "post_p99_under_50ms": (result.get("api", {}).get("post_jobs", {}).get("p99_ms") or 1e9) < 50,
        "get_p99_under_50ms": (result.get("api", {}).get("get_job", {}).get("p99_ms") or 1e9) < 50,
        "submit_to_running_under_1s": (result["submit_to_running"]["client_observed"]["max_ms"] or 1e9) < 1000,
        "metric_p99_under_250ms": (result["metric_latency"]["p99_ms"] or 1e9) < 250,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("HCD_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("HCD_API_KEY"))
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=640, help="requests per endpoint (--tool python)")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator for the POST/GET figures (auto: wrk when installed)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per endpoint (--tool wrk)")
    parser.add_argument("--wrk-threads", type=int, default=2)
    parser.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --url")
    parser.add_argument("--cpu-pids", type=lambda v: [int(p) for p in v.split(",") if p], default=[],
                        help="(wrk, Linux) pids of the API (descendants included) whose CPU per request to report")
    parser.add_argument("--cpu-match", default=None,
                        help="(wrk, Linux) regex over command lines of more processes to meter, e.g. "
                             "'postgres: .* hcd ' for the Postgres backends of database hcd")
    parser.add_argument("--rounds", type=int, default=5, help="submit->running measurements")
    parser.add_argument("--epochs", type=int, default=30, help="metric-latency job length")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--skip-api", action="store_true")
    parser.add_argument("--api-only", action="store_true", help="only the POST/GET figures (no worker needed)")
    args = parser.parse_args()
    if not args.key:
        raise SystemExit("pass --key or set HCD_API_KEY")
    if not args.allow_remote:
        check_loopback(args.url)
    if not (0 < args.duration <= 120 and 0 < args.requests <= 100_000 and 0 < args.clients <= 512):
        raise SystemExit("keep --duration in (0, 120] s, --requests <= 100000 and --clients <= 512")
    if args.tool == "auto":
        args.tool = "wrk" if shutil.which("wrk") else "python"
    elif args.tool == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install wrk), use --tool python")
    print(json.dumps(asyncio.run(main_async(args)), indent=2))


if __name__ == "__main__":
    main()
