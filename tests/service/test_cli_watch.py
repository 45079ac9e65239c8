"""`hcd watch` as a person sees it: in a terminal (pexpect's pseudo-terminal), against a real `hcd api`,
for a real tiny job on a real `hcd worker`; and Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from datetime import datetime, timedelta, timezone

import pexpect
import redis
import yaml
from api_helpers import insert_job
from sqlalchemy import func, update
from worker_fixtures import tiny_spec

from hcd_cli import exits
from jobs.db import database
from jobs.streams import stream_key
from jobs.tables import Job

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def _plain(text: str) -> str:
    return _ANSI.sub("", text)


def _spawn(args: list[str], env: dict) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "hcd_cli.main", *args], env=env, dimensions=(30, 130),
                         encoding="utf-8", codec_errors="replace", timeout=120)


def _env(url: str, key: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCD_")}
    env.update(HCD_SERVER_URL=url, HCD_API_KEY=key, TERM="xterm-256color", PYTHONUNBUFFERED="1")
    env.pop("COLUMNS", None)
    env.pop("LINES", None)
    return env


def test_submit_watch_shows_total_percent_eta_and_a_summary(api_server, api_key, start_worker, tmp_path):
    start_worker()
    spec_file = tmp_path / "job.yaml"
    spec_file.write_text(yaml.safe_dump(tiny_spec("ce", epochs=2, steps=40)))
    started = time.monotonic()
    child = _spawn(["submit", str(spec_file), "--watch"], _env(api_server, api_key))
    child.expect(pexpect.EOF)
    child.close()
    output = _plain(child.before)
    assert child.exitstatus == exits.OK, output
    assert "Traceback" not in output
    job_id = output.strip().splitlines()[0].strip()
    assert f"watching job {job_id}" in output
    # Live lines while it trained: total, percent, epoch, ETA and the phase; the step and validation lines.
    assert re.search(r"running/training .*\d+%  \d+/80 steps  epoch [12]/2  \d+:\d\d, ETA \d+:\d\d", output), output
    assert re.search(r"step \d+  loss \S+", output), output
    assert re.search(r"val  epoch 1/2  val_top1 \d+\.\d\d  \(best \d+\.\d\d, epoch 1\)  val_top5 \S+  "
                     r"val_loss \S+  train_loss \S+", output), output
    assert "succeeded/" not in output and "appended_at" not in output
    # The final frame and the summary.
    assert re.search(r"succeeded .*100%  80/80 steps  epoch 2/2", output), output
    summary = output[output.index(f"job {job_id} succeeded in "):].splitlines()
    assert re.match(rf"job {job_id} succeeded in \d+s|job {job_id} succeeded in \d+m \d\ds", summary[0]), summary
    assert re.match(r"  top-1     final \d+\.\d\d \(epoch 2\), best \d+\.\d\d \(epoch [12]\); exported: best",
                    summary[1]), summary
    assert summary[2] == f"  download  hcd download {job_id} ./{job_id[:8]}", summary
    print(f"submit --watch of an 80-step job: {time.monotonic() - started:.1f} s")


def test_ctrl_c_stops_watching_with_130_and_a_hint(api_server, api_key, service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="running", phase="training",
                        progress={"epoch": 0, "epochs": 4, "step": 5, "total_steps": 40},
                        started_at=datetime.now(timezone.utc) - timedelta(seconds=10))
    client = redis.Redis.from_url(service_settings.redis_url)
    now = time.time()
    for step in (4, 5):
        client.xadd(stream_key(job_id), {"type": "metrics", "data": json.dumps(
            {"step": step, "epoch": 0, "ts": now - 10 + step, "values": {"loss": 2.0 / step},
             "epochs": 4, "total_steps": 40})})
    try:
        child = _spawn(["watch", str(job_id)], _env(api_server, api_key))
        # 1 s a step, 35 steps left; it started 10 s ago
        child.expect(r"running/training.* 12%  5/40 steps  epoch 1/4  0:1\d, ETA 0:3\d", timeout=60)
        child.sendintr()
        child.expect(pexpect.EOF, timeout=30)
        child.close()
        output = _plain(child.before)
        assert child.exitstatus == exits.INTERRUPTED, output
        assert f"re-attach with: hcd watch {job_id}" in output
        assert "Traceback" not in output and "KeyboardInterrupt" not in output
    finally:
        client.delete(stream_key(job_id))
        with database(service_settings).sessionmaker() as session:  # no lease sweep may pick it up later
            session.execute(update(Job).where(Job.id == job_id).values(status="cancelled", finished_at=func.now()))
            session.commit()
