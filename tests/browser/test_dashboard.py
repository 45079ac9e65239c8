"""The web dashboard in a real browser against a real service: sign-in, the jobs list, a job's plots
(history and live over SSE, resumed after a drop with Last-Event-ID), compare, a sweep, and that
nothing is fetched from anywhere but the server.

One worker runs the module's jobs in order: a sweep of 4 tiny `ce` runs (2 learning rates x 2
seeds, 1 epoch of 3 steps each), then a long job that the live test watches and cancels.
"""

from __future__ import annotations

import json
import re
import threading
import uuid

import httpx
import pytest
from browser_helpers import new_key, sign_in
from worker_fixtures import tiny_spec, wait_until

pytestmark = pytest.mark.slow

TERMINAL = ("succeeded", "failed", "cancelled")


def _wait_sweep(client: httpx.Client, sweep_id: str, timeout: float, worker) -> dict:
    def done():
        sweep = client.get(f"/sweeps/{sweep_id}").json()
        return sweep if sweep["status"] in TERMINAL else None

    try:
        sweep = wait_until(done, timeout, 0.5, f"sweep {sweep_id} to finish")
    except AssertionError:
        raise AssertionError(f"{client.get(f'/sweeps/{sweep_id}').json()}\n{worker.log()[-3000:]}") from None
    assert sweep["status"] == "succeeded", f"{sweep}\n{worker.log()[-3000:]}"
    return sweep


@pytest.fixture(scope="module")
def submitted(client, worker):
    """The module's jobs, submitted at once so the worker is busy while the first tests run."""
    body = {"base": tiny_spec("ce", epochs=1, steps=3), "grid": {"training.lr": [0.05, 0.1]}, "seeds": [0, 1],
            "metadata": {"test": "browser"}}
    r = client.post("/sweeps", json=body)
    assert r.status_code == 202, r.text
    sweep = r.json()
    # The live test's job: long (it is cancelled there), created after the sweep so it runs last.
    live_spec = tiny_spec("ce", epochs=40, steps=45)
    live_spec["training"]["batch_size"] = 16
    r = client.post("/jobs", json={"spec": live_spec, "metadata": {"test": "browser-live"}})
    assert r.status_code == 202, r.text
    yield {"sweep_id": sweep["id"], "live_id": r.json()["id"]}
    for job_id in [r.json()["id"]]:
        client.post(f"/jobs/{job_id}/cancel")


@pytest.fixture(scope="module")
def sweep(client, worker, submitted) -> dict:
    """The finished sweep (its 4 runs succeeded)."""
    return _wait_sweep(client, submitted["sweep_id"], 240, worker)


def _runs(sweep: dict) -> list[str]:
    return [job_id for cell in sweep["cells"] for job_id in cell["job_ids"]]


# --------------------------------------------------------------------------- sign-in
def test_sign_in_refuses_a_bad_key_then_signs_in_and_out(page, api_server, owner_key, submitted):
    # (`submitted`: the worker starts on the module's jobs now, while the tests that need none run)
    page.goto(f"{api_server}/")
    page.wait_for_url(re.compile(r"#/signin"))
    page.fill("#api-key", "hcd_thisIsNotAKeyOfThisServer0000")
    page.click("#signin-submit")
    error = page.locator("#signin-error")
    error.wait_for(state="visible")
    assert "refused" in error.inner_text()
    assert page.evaluate("localStorage.getItem('hcd.apiKey')") is None

    page.fill("#api-key", owner_key)
    page.click("#signin-submit")
    page.wait_for_selector(".jobs-table[data-loaded=true]")
    assert page.evaluate("localStorage.getItem('hcd.apiKey')") == owner_key
    assert page.url.endswith("#/jobs")
    sent = [r.headers.get("authorization") for r in page.recorder.requests if "/jobs?" in r.url]
    assert sent[0] == "Bearer hcd_thisIsNotAKeyOfThisServer0000"
    assert sent[1:] and all(header == f"Bearer {owner_key}" for header in sent[1:])

    page.click("#sign-out")
    page.wait_for_selector("#signin-form")
    assert page.evaluate("localStorage.getItem('hcd.apiKey')") is None
    page.goto(f"{api_server}/#/sweeps")  # no key: back to sign-in, remembering where to go
    page.wait_for_selector("#signin-form")
    assert "next=" in page.url


def test_a_refused_key_sends_you_back_to_sign_in(page, api_server, submitted):
    sign_in(page, api_server, "hcd_revokedOrUnknownKey000000000000")
    page.wait_for_selector("#signin-form")
    assert "refused" in page.inner_text(".signin .notice")
    assert page.evaluate("localStorage.getItem('hcd.apiKey')") is None


# --------------------------------------------------------------------------- the list
def test_jobs_list_shows_finished_jobs_and_filters(page, api_server, owner_key, sweep, submitted):
    runs = _runs(sweep)
    sign_in(page, api_server, owner_key)
    page.wait_for_selector(".jobs-table[data-loaded=true]")
    row = page.locator(f"tr[data-job-id='{runs[0]}']")
    row.wait_for()
    assert row.get_attribute("data-status") == "succeeded"
    assert row.locator(".status").inner_text().strip() == "succeeded"
    assert row.locator(".method").inner_text() == "ce"
    assert row.locator(".arch").inner_text() == "test_resnet"
    assert row.locator(".dataset").inner_text() == "digits (16 px)"
    bar = row.locator(".progress")
    assert bar.get_attribute("data-step") == bar.get_attribute("data-total") == "3"
    assert bar.get_attribute("aria-valuenow") == "100"
    assert re.fullmatch(r"\d+\.\d\d %", row.locator(".top1").inner_text())
    assert "ago" in row.locator(".age").inner_text()

    # Filter by status: the hash carries it, the API gets it.
    page.select_option("#filter-status", "succeeded")
    page.wait_for_url(re.compile(r"#/jobs\?status=succeeded"))
    page.wait_for_selector(".jobs-table[data-loaded=true]")
    wait_until(lambda: page.locator("tbody tr").count() == 4, 10, 0.2, "4 succeeded rows")
    assert set(page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.status)")) == {"succeeded"}
    assert any("status=succeeded" in u for u in page.recorder.urls())

    # Filter by sweep: only its runs.
    page.goto(f"{api_server}/#/jobs?sweep={sweep['id']}")
    page.wait_for_selector(f"#filter-sweep option[value='{sweep['id']}']", state="attached")
    wait_until(lambda: page.locator("tbody tr").count() == 4, 10, 0.2, "the sweep's 4 rows")
    shown = page.locator("tbody tr").evaluate_all("rows => rows.map(r => r.dataset.jobId)")
    assert sorted(shown) == sorted(runs)
    assert any(f"sweep_id={sweep['id']}" in u for u in page.recorder.urls())


def test_jobs_list_paginates_with_the_cursor(page, api_server, service_settings):
    """Another owner with 23 jobs: 20 shown, `Load more` fetches the rest with `after`."""
    from api_helpers import insert_job

    owner = f"browser-pages-{uuid.uuid4().hex[:6]}"
    key = new_key(service_settings, owner)
    for _ in range(23):
        insert_job(service_settings, owner, status="cancelled")
    sign_in(page, api_server, key)
    page.wait_for_selector(".jobs-table[data-loaded=true]")
    wait_until(lambda: page.locator("tbody tr").count() == 20, 10, 0.2, "the first page")
    page.click("#load-more")
    wait_until(lambda: page.locator("tbody tr").count() == 23, 10, 0.2, "the second page")
    assert page.locator("#load-more").is_hidden()
    assert any("after=" in u for u in page.recorder.urls())


# --------------------------------------------------------------------------- a job
def test_job_page_plots_its_metrics_and_downloads_artifacts(page, api_server, owner_key, client, sweep, tmp_path):
    job_id = _runs(sweep)[0]
    sign_in(page, api_server, owner_key, f"#/jobs/{job_id}")
    page.wait_for_selector(".view[data-loaded=true]")
    assert page.locator(".job-badge").inner_text().strip() == "succeeded"

    def series(chart: str) -> dict:
        return json.loads(page.get_attribute(f"#chart-{chart}", "data-series"))

    assert series("losses") == {"loss": 3, "ce": 3}  # one point per step of the 3
    assert series("accuracy") == {"val_top1": 1, "val_top5": 1}  # one evaluation
    assert series("lr") == {"lr": 3} and series("throughput") == {"images_per_s": 3}
    for chart in ("losses", "accuracy", "lr", "throughput"):
        assert page.locator(f"#chart-{chart} canvas").count() == 1, chart  # drawn by uPlot
    # uPlot's own data (x = steps 1..3 for the loss terms).
    assert page.evaluate("document.querySelector('#chart-losses .uplot') !== null")

    events = page.locator("#events li").evaluate_all("items => items.map(i => i.innerText)")
    assert any("succeeded" in e for e in events) and any("training" in e for e in events)
    assert '"arch": "test_resnet"' in page.inner_text("#spec")
    # A finished job: its history is complete, no live stream is opened.
    assert not any("/metrics/stream" in u for u in page.recorder.urls())

    names = page.locator("#artifacts tbody tr").evaluate_all("rows => rows.map(r => r.dataset.name)")
    assert {"student.safetensors", "model_card.json"} <= set(names)
    with page.expect_download() as download_info:
        page.click("#artifacts button[data-name='model_card.json']")
    download = download_info.value
    assert download.suggested_filename == "model_card.json"
    path = tmp_path / "model_card.json"
    download.save_as(path)
    card = json.loads(path.read_text())
    result = client.get(f"/jobs/{job_id}").json()["result"]
    assert card["final_metrics"]["val_top1"] == result["final_metrics"]["val_top1"]
    artifact_requests = [r for r in page.recorder.requests if "/artifacts/model_card.json" in r.url]
    assert artifact_requests and artifact_requests[0].headers.get("authorization") == f"Bearer {owner_key}"


# --------------------------------------------------------------------------- compare
def test_compare_overlays_curves_and_shows_the_differing_spec_fields(page, api_server, owner_key, client, sweep):
    def run(cell: int, seed: int) -> str:
        runs = sweep["cells"][cell]["job_ids"]
        return next(j for j in runs if client.get(f"/jobs/{j}").json()["spec"]["seed"] == seed)

    first, second = run(0, 0), run(1, 1)  # their specs differ in the learning rate and the seed
    sign_in(page, api_server, owner_key, f"#/jobs?sweep={sweep['id']}")
    page.wait_for_selector(".jobs-table[data-loaded=true]")
    for job_id in (first, second):
        page.check(f"tr[data-job-id='{job_id}'] input.select-job")
    assert page.inner_text("#compare-selected") == "Compare selected (2)"
    page.click("#compare-selected")
    page.wait_for_url(re.compile(r"#/compare\?ids="))
    page.wait_for_selector(".view[data-loaded=true]")

    curves = json.loads(page.get_attribute("#compare-chart", "data-series"))
    assert curves == {first: 1, second: 1}  # one val_top1 point (epoch 1) per job, overlaid
    assert page.locator("#compare-chart canvas").count() == 1
    rows = page.locator("#compare-metrics tbody tr")
    assert rows.count() == 2
    for i in range(2):
        assert re.fullmatch(r"\d+\.\d\d %", rows.nth(i).locator(".final-top1").inner_text())
        assert re.match(r"\d+\.\d\d %", rows.nth(i).locator(".best-top1").inner_text())
    diff = page.locator("#spec-diff tbody tr").evaluate_all(
        "rows => rows.map(r => [r.dataset.path, ...[...r.cells].slice(1).map(c => c.innerText)])")
    assert diff == [["seed", "0", "1"], ["training.lr", "0.05", "0.1"]]


# --------------------------------------------------------------------------- a sweep
def test_sweep_page_shows_its_cells_and_their_chart(page, api_server, owner_key, sweep):
    sign_in(page, api_server, owner_key, "#/sweeps")
    link = page.locator(f"tr[data-sweep-id='{sweep['id']}'] a")
    link.click()
    page.wait_for_url(re.compile(rf"#/sweeps/{sweep['id']}"))
    page.wait_for_selector(".view[data-loaded=true]")
    rows = page.locator("#cells-table tbody tr")
    assert rows.count() == 2
    for i, cell in enumerate(sweep["cells"]):
        row = rows.nth(i)
        assert row.locator("td").nth(1).inner_text() == str(cell["values"]["training.lr"])
        mean, std = cell["val_top1"]["mean"], cell["val_top1"]["std"]
        assert row.locator(".final").inner_text().startswith(f"{mean:.2f} ± {std:.2f}")
        assert row.locator(".job-links a").count() == 2
    assert json.loads(page.get_attribute("#sweep-chart", "data-series")) == {"final top-1": 2, "best top-1": 2}
    assert page.locator("#sweep-chart canvas").count() == 1
    page.click("#compare-sweep")
    page.wait_for_selector("#compare-metrics tbody tr")
    assert page.locator("#compare-metrics tbody tr").count() == 4


# --------------------------------------------------------------------------- live
class _StreamPrefix(threading.Thread):
    """The first SSE events of a live job, read with httpx (the test's own client)."""

    def __init__(self, url: str, key: str, count: int):
        super().__init__(daemon=True)
        self.url, self.key, self.count = url, key, count
        self.text, self.ids = "", []

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.stream("GET", self.url, headers=headers, timeout=60) as r:
            block: list[str] = []
            for line in r.iter_lines():
                block.append(line)
                if line == "" and any(b.startswith("id: ") for b in block):
                    self.ids.append(next(b[4:] for b in block if b.startswith("id: ")))
                    self.text += "\n".join(block) + "\n"
                    block = []
                    if len(self.ids) >= self.count:
                        return
                elif line == "":
                    block = []


def test_live_job_plot_grows_resumes_after_a_drop_and_is_cancelled(page, api_server, owner_key, client, worker,
                                                                  submitted, sweep):
    live = submitted["live_id"]

    def running():
        job = client.get(f"/jobs/{live}").json()
        assert job["status"] not in TERMINAL, job
        return job["status"] == "running" and job["progress"].get("step", 0) >= 2

    wait_until(running, 120, 0.3, "the live job to train")

    # The first connection gets a few real events, then drops (as a proxy or a network would):
    # the page must reconnect with Last-Event-ID and go on from there.
    prefix = _StreamPrefix(f"{api_server}/jobs/{live}/metrics/stream", owner_key, 4)
    prefix.start()
    prefix.join(60)
    assert len(prefix.ids) == 4, prefix.ids
    served = {"count": 0}

    def drop_first(route):
        served["count"] += 1
        if served["count"] == 1:
            route.fulfill(status=200, headers={"Content-Type": "text/event-stream"},
                          body="retry: 200\n\n" + prefix.text)
        else:
            route.continue_()

    page.route("**/metrics/stream", drop_first)
    sign_in(page, api_server, owner_key, f"#/jobs/{live}")
    page.wait_for_selector(".view[data-loaded=true]")
    page.wait_for_selector("#stream-state[data-state=open][data-connects='2']")
    streams = [r for r in page.recorder.requests if r.url.endswith("/metrics/stream")]
    assert streams[0].headers.get("last-event-id") is None
    assert streams[1].headers.get("last-event-id") == prefix.ids[-1]
    assert streams[1].headers.get("authorization") == f"Bearer {owner_key}"

    # The loss plot grows while we watch.
    def points() -> int:
        return int(page.get_attribute("#chart-losses", "data-points"))

    seen = [points()]
    for _ in range(2):
        seen.append(wait_until(lambda: points() if points() > seen[-1] else None, 30, 0.1, "more points"))
    assert seen[0] < seen[1] < seen[2], seen
    step = json.loads(page.get_attribute("#chart-losses", "data-series"))["loss"]
    assert step >= 3

    # Cancel from the page; the stream's status events bring the end; then delete it.
    page.on("dialog", lambda dialog: dialog.accept())
    page.click("#cancel-job")
    page.wait_for_selector(".view[data-status=cancelled]", timeout=60_000)
    page.wait_for_selector("#stream-state[data-state=ended]", state="attached")
    page.wait_for_selector("#delete-job:not([disabled])")
    page.click("#delete-job")
    page.wait_for_url(re.compile(r"#/jobs$"))
    assert client.get(f"/jobs/{live}").status_code == 404
