"""Database fault drill: the real service while its Postgres is stopped, frozen, or away for several leases.

    python benchmarks/db_faults.py [--down 5] [--hung 3] [--outages 3] [--outage-leases 4] [--lease 6]

Starts its own embedded Postgres and Redis, `hcd api` (one process) and `hcd worker` (CPU), then:
- down: stop Postgres, send one request to each of 7 database routes, restart it, and measure how long
  the API takes to answer 200 again;
- hung: freeze every Postgres process (SIGSTOP), send the 7 requests concurrently, thaw, measure recovery;
- outage: a job trains, Postgres stops for `outage-leases` x `lease` seconds and comes back; did the job
  succeed without spending another attempt?
Prints one JSON document with k-of-n counts and latencies (all times in seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "service")]

from pg_faults import FaultyPostgres  # noqa: E402
from worker_fixtures import HCD, free_port, start_process, tiny_spec, wait_until  # noqa: E402

from jobs.db import database  # noqa: E402
from jobs.embedded import start_redis  # noqa: E402
from jobs.keys import create_key  # noqa: E402
from jobs.settings import Settings  # noqa: E402

DEADLINE = 10.0
SPEC = {"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
        "dataset": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 32, "val_size": 16},
        "training": {"recipe": "quick", "epochs": 1, "batch_size": 16, "max_steps_per_epoch": 2}}


def _routes(job_id: str) -> list[tuple[str, str, dict | None]]:
    return [("GET", "/jobs", None), ("GET", f"/jobs/{job_id}", None), ("POST", "/jobs", {"spec": SPEC}),
            ("GET", f"/jobs/{job_id}/events", None), ("GET", f"/jobs/{job_id}/metrics", None),
            ("GET", f"/jobs/{job_id}/artifacts", None), ("GET", "/models", None)]


def _timed(client: httpx.Client, method: str, path: str, body: dict | None) -> tuple[int, str, float]:
    started = time.monotonic()
    try:
        response = client.request(method, path, json=body)
        code = response.json().get("code", "") if response.status_code >= 400 else ""
        return response.status_code, code, time.monotonic() - started
    except httpx.HTTPError as err:
        return 0, type(err).__name__, time.monotonic() - started


def _recovery(client: httpx.Client, job_id: str) -> float:
    started = time.monotonic()
    wait_until(lambda: client.get(f"/jobs/{job_id}").status_code == 200, 60, 0.05, "recovery")
    return time.monotonic() - started


def _summary(samples: list[tuple[int, str, float]]) -> dict[str, object]:
    if not samples:
        return {}
    good = [s for s in samples if s[0] == 503 and s[1] == "database_unavailable" and s[2] < DEADLINE]
    latencies = [s[2] for s in samples]
    return {"answered_503_within_10s": f"{len(good)} of {len(samples)}",
            "latency_p50": round(statistics.median(latencies), 3), "latency_max": round(max(latencies), 3),
            "other_answers": sorted({f"{s[0]} {s[1]}" for s in samples if s not in good})}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--down", type=int, default=5, help="rounds with Postgres stopped")
    parser.add_argument("--hung", type=int, default=3, help="rounds with Postgres frozen")
    parser.add_argument("--outages", type=int, default=3, help="running jobs taken through an outage")
    parser.add_argument("--outage-leases", type=float, default=4.0, help="outage length, in leases")
    parser.add_argument("--lease", type=int, default=6, help="HCD_LEASE_SECONDS of the drill")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="hcd-db-faults-"))
    pg = FaultyPostgres.start_new(work / "pgdata")
    redis_server = start_redis(work / "redis")
    settings = Settings(database_url=pg.url, redis_url=redis_server.url, data_dir=work / "data",
                        lease_seconds=args.lease, _env_file=None)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCD_")}
    env.update(HCD_DATABASE_URL=pg.url, HCD_REDIS_URL=redis_server.url, HCD_DATA_DIR=str(work / "data"),
               HCD_LEASE_SECONDS=str(args.lease), HCD_SWEEP_INTERVAL_SECONDS="1", HCD_WORKER_DEVICE="cpu",
               HCD_MAX_QUEUED_JOBS_PER_OWNER="1000")
    with database(settings).session() as session:
        key = create_key(session, "drill")
    port = free_port()
    api = start_process("api", HCD + ["api", "--port", str(port), "--workers", "1", "--log-level", "warning"], env,
                        work)
    worker = start_process("worker", HCD + ["worker", "--log-level", "warning"], env, work)
    base = f"http://127.0.0.1:{port}"
    result: dict[str, object] = {"lease_seconds": args.lease}
    try:
        client = httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=30)
        wait_until(lambda: _ok(client), 90, 0.2, "the API")
        job_id = client.post("/jobs", json={"spec": SPEC}).json()["id"]

        samples, recoveries = [], []
        for _ in range(args.down):
            pg.stop()
            samples += [_timed(client, *route) for route in _routes(job_id)]
            pg.start()
            recoveries.append(_recovery(client, job_id))
        result["down"] = {**_summary(samples), "recovery_seconds": [round(r, 2) for r in recoveries]}

        samples, recoveries = [], []
        for _ in range(args.hung):
            pg.freeze()
            with ThreadPoolExecutor(8) as pool:
                samples += list(pool.map(lambda route: _timed(client, *route), _routes(job_id)))
            pg.thaw()
            recoveries.append(_recovery(client, job_id))
        result["hung"] = {**_summary(samples), "recovery_seconds": [round(r, 2) for r in recoveries]}

        outcomes = []
        for _ in range(args.outages):
            spec = tiny_spec("ce", epochs=40, steps=10, seed=len(outcomes))
            job = client.post("/jobs", json={"spec": spec}).json()["id"]
            wait_until(lambda j=job: (client.get(f"/jobs/{j}").json().get("progress") or {}).get("epoch", 0) >= 2,
                       120, 0.2, "the job to train")
            pg.stop()
            time.sleep(args.outage_leases * args.lease)
            pg.start()
            done = wait_until(lambda j=job: _ended(client, j), 300, 0.5, "the job to end")
            events = client.get(f"/jobs/{job}/events").json()["data"]
            restored = [e["data"]["outage_seconds"] for e in events if e["type"] == "lease_restored"]
            outcomes.append({"status": done["status"], "attempt": done["attempt"], "lease_restored_after": restored})
        kept = sum(o["status"] == "succeeded" and o["attempt"] == 1 for o in outcomes)
        result["outage"] = {"seconds": args.outage_leases * args.lease,
                            "succeeded_on_first_attempt": f"{kept} of {len(outcomes)}", "jobs": outcomes}
    finally:
        api.stop()
        worker.stop()
        pg.close()
        redis_server.stop()
    print(json.dumps(result, indent=2))


def _ok(client: httpx.Client) -> bool:
    try:
        return client.get("/readyz").status_code == 200
    except httpx.HTTPError:
        return False


def _ended(client: httpx.Client, job_id: str) -> dict | None:
    job = client.get(f"/jobs/{job_id}").json()
    return job if job.get("status") in ("succeeded", "failed", "cancelled") else None


if __name__ == "__main__":
    main()
