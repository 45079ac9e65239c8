"""End to end over HTTP: a real `hcd api` (uvicorn), a real `hcd worker`, real Postgres and Redis."""

from __future__ import annotations

import hashlib
import json
import threading
import time

import httpx
import pytest
from safetensors.torch import load_file
from worker_fixtures import tiny_spec, wait_until

from jobs.storage import LocalStore

TERMINAL = ("succeeded", "failed", "cancelled")


class SseReader(threading.Thread):
    """Collects the SSE events of one job stream until the server closes it."""

    def __init__(self, url: str, headers: dict):
        super().__init__(daemon=True)
        self.url, self.headers, self.events, self.error = url, headers, [], None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, headers=self.headers, timeout=httpx.Timeout(120, connect=5)) as r:
                assert r.status_code == 200, r.read()
                assert r.headers["content-type"].startswith("text/event-stream")
                event: dict = {}
                for line in r.iter_lines():
                    if not line:
                        if "data" in event:
                            event["received"] = time.time()
                            self.events.append(event)
                        event = {}
                    elif line.startswith(":"):
                        continue
                    else:
                        key, _, value = line.partition(":")
                        event[key] = value[1:] if value.startswith(" ") else value
        except Exception as err:  # reported by the test
            self.error = err


def _submit(client: httpx.Client, spec: dict) -> dict:
    r = client.post("/jobs", json={"spec": spec, "metadata": {"test": "e2e"}})
    assert r.status_code == 202, r.text
    assert r.headers["location"] == f"/jobs/{r.json()['id']}"
    return r.json()


def _wait_job(client: httpx.Client, job_id: str, statuses, timeout: float, worker=None) -> dict:
    def check():
        job = client.get(f"/jobs/{job_id}").json()
        return job if job["status"] in statuses else None

    try:
        return wait_until(check, timeout, 0.2, f"job {job_id} in {statuses}")
    except AssertionError:
        job = client.get(f"/jobs/{job_id}").json()
        raise AssertionError(f"{job['status']} {job.get('error')}\n{worker.log()[-4000:] if worker else ''}") from None


def _all_metrics(client: httpx.Client, job_id: str, name: str) -> list[dict]:
    points, after = [], None
    while True:
        params = {"name": name, "limit": 1000, **({"after": after} if after else {})}
        page = client.get(f"/jobs/{job_id}/metrics", params=params).json()
        points += page["data"]
        if not page["has_more"]:
            return points
        after = page["next_cursor"]


@pytest.fixture
def client(api_server, api_key):
    with httpx.Client(base_url=api_server, headers={"Authorization": f"Bearer {api_key}"}, timeout=30) as c:
        yield c


def test_ce_then_hcd_job_from_its_weights_over_http(client, api_server, api_key, start_worker, service_settings):
    worker = start_worker()
    headers = {"Authorization": f"Bearer {api_key}"}

    teacher = _submit(client, tiny_spec("ce", arch="test_resnet", epochs=2, steps=5))
    assert teacher["status"] == "queued" and teacher["attempt"] == 0
    sse = SseReader(f"{api_server}/jobs/{teacher['id']}/metrics/stream", headers)
    sse.start()
    done = _wait_job(client, teacher["id"], TERMINAL, 120, worker)
    assert done["status"] == "succeeded", done
    assert done["attempt"] == 1 and done["progress"]["step"] == 10 and "val_top1" in done["result"]["final_metrics"]

    sse.join(30)
    assert not sse.is_alive() and sse.error is None, sse.error
    kinds = [e["event"] for e in sse.events]
    assert kinds[-1] == "end" and json.loads(sse.events[-1]["data"]) == {"status": "succeeded"}
    assert "metrics" in kinds and "status" in kinds
    streamed = [json.loads(e["data"]) for e in sse.events if e["event"] == "metrics"]
    assert any("loss" in m["values"] for m in streamed) and any("val_top1" in m["values"] for m in streamed)
    ids = [e["id"] for e in sse.events]
    assert len(set(ids)) == len(ids)

    # Resuming from the middle replays only what came after.
    middle = ids[len(ids) // 2]
    resumed = SseReader(f"{api_server}/jobs/{teacher['id']}/metrics/stream", {**headers, "Last-Event-ID": middle})
    resumed.run()
    assert [e["id"] for e in resumed.events] == ids[len(ids) // 2 + 1:]

    loss = _all_metrics(client, teacher["id"], "loss")
    assert sorted(p["step"] for p in loss) == sorted({p["step"] for p in loss}) and len(loss) == 10
    val = _all_metrics(client, teacher["id"], "val_top1")
    assert [p["epoch"] for p in val] == [0, 1]

    listed = {a["name"]: a for a in client.get(f"/jobs/{teacher['id']}/artifacts").json()["data"]}
    assert {"student.safetensors", "model_card.json"} <= set(listed)
    r = client.get(f"/jobs/{teacher['id']}/artifacts/student.safetensors")
    assert r.status_code == 200
    etag = r.headers["etag"].strip('"')
    assert hashlib.sha256(r.content).hexdigest() == etag == listed["student.safetensors"]["sha256"]

    from hcd_core.models import create_timm_model

    weights_file = service_settings.data_dir / "downloaded.safetensors"
    weights_file.write_bytes(r.content)
    model = create_timm_model("test_resnet", 10, 16)
    model.load_state_dict(load_file(str(weights_file)), strict=True)

    # The hcd student (a ViT) learns from the ce job's exported weights.
    student_spec = tiny_spec("hcd", arch="test_vit", epochs=1, steps=4,
                             teacher={"arch": "test_resnet", "weights": {"source": "job", "job_id": teacher["id"]}})
    student = _submit(client, student_spec)
    done = _wait_job(client, student["id"], TERMINAL, 120, worker)
    assert done["status"] == "succeeded", done
    terms = {p["name"] for p in client.get(f"/jobs/{student['id']}/metrics", params={"limit": 1000}).json()["data"]}
    assert {"loss", "sdd_ce", "sdd_kl", "ol"} <= terms or {"loss", "val_top1"} <= terms
    card = client.get(f"/jobs/{student['id']}/artifacts/model_card.json").json()
    assert card["arch"] == "test_vit" and card["teacher_sha256"] == etag


def test_cancel_running_job_ends_cancelled_with_a_checkpoint(client, start_worker, service_settings):
    worker = start_worker()
    job = _submit(client, tiny_spec("ce", epochs=40, steps=10))

    def trained_an_epoch():
        j = client.get(f"/jobs/{job['id']}").json()
        assert j["status"] not in TERMINAL, j
        return j["status"] == "running" and j["progress"].get("epoch", 0) >= 1

    wait_until(trained_an_epoch, 90, 0.2, "the job to train for an epoch")
    asked = time.monotonic()
    r = client.post(f"/jobs/{job['id']}/cancel")
    assert r.status_code == 202 and r.json()["status"] == "cancelling", r.text
    done = _wait_job(client, job["id"], TERMINAL, 30, worker)
    elapsed = time.monotonic() - asked
    assert done["status"] == "cancelled" and elapsed < 10, (done, elapsed)
    assert done["progress"]["step"] < 400
    assert (LocalStore(service_settings.data_dir).checkpoints / job["id"] / "checkpoint.pt").is_file()
    events = client.get(f"/jobs/{job['id']}/events").json()["data"]
    assert events[-1]["data"]["status"] == "cancelled"
    # Terminal states never change.
    assert client.post(f"/jobs/{job['id']}/cancel").status_code == 409
    assert client.get(f"/jobs/{job['id']}").json()["status"] == "cancelled"
