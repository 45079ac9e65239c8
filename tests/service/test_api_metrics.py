"""Metric history from Postgres (filters, pagination) and the live SSE stream from Redis."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import redis
from api_helpers import assert_problem, insert_job

from jobs.db import database
from jobs.streams import stream_key
from jobs.tables import MetricPoint


def _add_points(settings, job_id, names, steps):
    now = datetime.now(timezone.utc)
    with database(settings).sessionmaker() as session:
        for name in names:
            for step in steps:
                session.add(MetricPoint(job_id=job_id, name=name, step=step, value=step / 10, epoch=step // 10, ts=now))
        session.commit()


def test_metric_history_filters_and_pages(api_client, auth_headers, service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="running")
    _add_points(service_settings, job_id, ["loss", "lr", "val_top1"], range(30))
    url = f"/jobs/{job_id}/metrics"

    everything, cursor = [], None
    while True:
        page = api_client.get(url, params={"limit": 17, **({"after": cursor} if cursor else {})},
                              headers=auth_headers).json()
        everything += page["data"]
        if not page["has_more"]:
            break
        cursor = page["next_cursor"]
    assert len(everything) == 90
    assert len({(p["name"], p["step"]) for p in everything}) == 90
    assert everything[0] == {"name": "loss", "value": 0.0, "step": 0, "epoch": 0,
                             "timestamp": everything[0]["timestamp"]}

    loss = api_client.get(url, params={"name": "loss", "min_step": 10, "max_step": 19}, headers=auth_headers).json()
    assert [p["step"] for p in loss["data"]] == list(range(10, 20))
    assert {p["name"] for p in loss["data"]} == {"loss"}
    two = api_client.get(url, params=[("name", "loss"), ("name", "lr"), ("max_step", 4)], headers=auth_headers).json()
    assert len(two["data"]) == 10
    assert_problem(api_client.get(url, params={"min_step": -1}, headers=auth_headers), 422, "validation_error")
    assert_problem(api_client.get(url, params={"after": "bm9wZQ"}, headers=auth_headers), 422, "validation_error")


def _parse_sse(text: str) -> list[dict]:
    events = []
    for block in text.split("\n\n"):
        event: dict = {}
        for line in block.splitlines():
            if line.startswith(":") or not line:
                continue
            field, _, value = line.partition(": ")
            if field == "data":
                event["data"] = json.loads(value)
            elif field in ("id", "event"):
                event[field] = value
        if "data" in event:
            events.append(event)
    return events


def test_sse_streams_entries_resumes_and_closes_at_end(api_client, auth_headers, service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="running")
    client = redis.Redis.from_url(service_settings.redis_url, decode_responses=True)
    key = stream_key(job_id)
    ids = [client.xadd(key, {"type": "metrics", "data": json.dumps({"step": s, "values": {"loss": 1 / (s + 1)}})})
           for s in range(3)]
    ids.append(client.xadd(key, {"type": "end", "data": json.dumps({"status": "succeeded"})}))
    try:
        r = api_client.get(f"/jobs/{job_id}/metrics/stream", headers=auth_headers)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = _parse_sse(r.text)
        assert [e["id"] for e in events] == ids
        assert [e["event"] for e in events] == ["metrics"] * 3 + ["end"]
        assert events[1]["data"]["step"] == 1

        resumed = api_client.get(f"/jobs/{job_id}/metrics/stream",
                                 headers={**auth_headers, "Last-Event-ID": ids[1]})
        assert [e["id"] for e in _parse_sse(resumed.text)] == ids[2:]
        by_query = api_client.get(f"/jobs/{job_id}/metrics/stream", params={"last_event_id": ids[2]},
                                  headers=auth_headers)
        assert [e["id"] for e in _parse_sse(by_query.text)] == ids[3:]
        bad = api_client.get(f"/jobs/{job_id}/metrics/stream", headers={**auth_headers, "Last-Event-ID": "x"})
        assert_problem(bad, 422, "validation_error")
    finally:
        client.delete(key)


def test_sse_closes_for_finished_job_without_stream(api_client, auth_headers, service_settings, api_owner):
    job_id = insert_job(service_settings, api_owner, status="cancelled")
    r = api_client.get(f"/jobs/{job_id}/metrics/stream", headers=auth_headers)
    events = _parse_sse(r.text)
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "cancelled"


def test_sse_generator_keeps_alive_and_survives_redis_down(service_settings):
    """Direct test of the generator: keep-alive comments while idle, live entries, end from Postgres."""
    import asyncio
    import uuid

    import redis.asyncio as aioredis

    from api.sse import job_event_stream

    async def collect(url: str, statuses: list[str], add_entry: bool) -> list[str]:
        client = aioredis.Redis.from_url(url, decode_responses=True, socket_connect_timeout=0.2)
        job_id = uuid.uuid4()
        remaining = list(statuses)

        async def job_status():
            return remaining.pop(0) if len(remaining) > 1 else remaining[0]

        chunks = []
        try:
            async for chunk in job_event_stream(client, job_id, "0-0", job_status, block_ms=100,
                                                keepalive_seconds=0.05):
                chunks.append(chunk)
                if add_entry and len(chunks) == 2:
                    await client.xadd(stream_key(job_id), {"type": "metrics", "data": '{"step": 7}'})
        finally:
            await client.delete(stream_key(job_id)) if add_entry else None
            await client.aclose()
        return chunks

    chunks = asyncio.run(collect(service_settings.redis_url, ["running"] * 4 + ["succeeded"], True))
    text = "".join(chunks)
    assert ": keep-alive" in text and '"step": 7' in text
    assert text.rstrip().endswith('data: {"status": "succeeded", "source": "database"}')

    down = asyncio.run(collect("redis://127.0.0.1:1/0", ["running", "failed"], False))
    assert "event: end" in down[-1] and "failed" in down[-1]


def test_non_finite_metric_values_are_sent_as_null(api_client, auth_headers, service_settings, api_owner):
    """NaN/inf are legal in metric_points (double precision) but not in JSON: null, never a 500."""
    job_id = insert_job(service_settings, api_owner, status="running")
    now = datetime.now(timezone.utc)
    with database(service_settings).sessionmaker() as session:
        for step, value in enumerate([float("nan"), float("inf"), float("-inf"), 1.5]):
            session.add(MetricPoint(job_id=job_id, name="loss", step=step, value=value, epoch=0, ts=now))
        session.commit()
    r = api_client.get(f"/jobs/{job_id}/metrics", headers=auth_headers)
    assert r.status_code == 200, r.text
    assert [p["value"] for p in r.json()["data"]] == [None, None, None, 1.5]
    assert api_client.get(f"/jobs/{job_id}", headers=auth_headers).status_code == 200
    described = api_client.get("/openapi.json").json()["paths"]["/jobs/{job_id}/metrics"]["get"]["description"]
    assert "null" in described and "NaN" in described


def test_job_json_encoder_turns_non_finite_floats_into_null():
    from jobs.jsonutil import dumps

    body = {"latest_metrics": {"loss": float("nan"), "top1": 0.5}, "result": {"best": [float("inf"), 1.0]}}
    assert json.loads(dumps(body)) == {"latest_metrics": {"loss": None, "top1": 0.5}, "result": {"best": [None, 1.0]}}
    assert dumps({"at": datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc)}) == b'{"at":"2024-01-02T03:04:05Z"}'
