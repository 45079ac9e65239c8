"""Screenshots of the web dashboard for the README: the jobs list and a job page with its plots.

    HCD_SERVER_URL=http://127.0.0.1:8000 HCD_API_KEY=hcd_... .venv/bin/python scripts/screenshots.py \
        [--demo] [--job JOB_ID] [--out docs/screenshots]

Against a running service (`hcd up`). `--demo` first submits a small example (on digits: a `ce`
teacher, an `hcd` student distilled from it and a 2 x 2 sweep of `ce` students, a few minutes on a
CPU) and waits for it, plus a longer job that is training when the list is shown, then cancelled.
The job page shown is `--job`, else the newest succeeded job that has a
teacher, else the newest succeeded job. Needs Playwright (a dev dependency) and Chromium
(HCD_CHROMIUM or /usr/bin/chromium); nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run", "--disable-sync"]
TERMINAL = {"succeeded", "failed", "cancelled"}


def _training(epochs: int) -> dict:
    return {"recipe": "quick", "epochs": epochs, "max_steps_per_epoch": 30, "batch_size": 32}


def submit_demo(client: httpx.Client) -> list[str]:
    dataset = {"name": "digits", "image_size": 32}
    teacher = client.post("/jobs", json={"spec": {
        "method": {"name": "ce"}, "student": {"arch": "test_convnext"}, "dataset": dataset,
        "training": _training(4), "seed": 0}, "metadata": {"role": "teacher"}})
    teacher.raise_for_status()
    teacher_id = teacher.json()["id"]
    student = client.post("/jobs", json={"spec": {
        "method": {"name": "hcd"}, "student": {"arch": "test_vit"},
        "teacher": {"arch": "test_convnext", "weights": {"source": "job", "job_id": teacher_id}},
        "dataset": dataset, "training": _training(4), "seed": 0}, "metadata": {"experiment": "digits-hcd"}})
    student.raise_for_status()
    sweep = client.post("/sweeps", json={
        "base": {"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
                 "dataset": {"name": "digits", "image_size": 16}, "training": _training(2)},
        "grid": {"training.lr": [0.02, 0.1]}, "seeds": [0, 1], "metadata": {"study": "lr"}})
    sweep.raise_for_status()
    return [teacher_id, student.json()["id"], *(j for c in sweep.json()["cells"] for j in c["job_ids"])]


def submit_running(client: httpx.Client) -> str:
    """A longer job, submitted last: it is training when the list is shown, then cancelled."""
    r = client.post("/jobs", json={"spec": {
        "method": {"name": "ce"}, "student": {"arch": "test_resnet"}, "dataset": {"name": "digits", "image_size": 16},
        "training": _training(10), "seed": 3}, "metadata": {"demo": "running"}})
    r.raise_for_status()
    return str(r.json()["id"])


def wait_for(client: httpx.Client, job_ids: list[str], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = [client.get(f"/jobs/{j}").json()["status"] for j in job_ids]
        print(f"\r{sum(s in TERMINAL for s in statuses)}/{len(job_ids)} jobs finished", end="", flush=True)
        if all(s in TERMINAL for s in statuses):
            print()
            return
        time.sleep(2)
    raise SystemExit(f"the demo jobs did not finish within {timeout:.0f} s")


def wait_training(client: httpx.Client, job_id: str, fraction: float, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/jobs/{job_id}").json()
        progress = job["progress"]
        if job["status"] in TERMINAL or progress.get("step", 0) >= fraction * max(1, progress.get("total_steps", 1)):
            return
        time.sleep(0.5)


def pick_job(client: httpx.Client) -> str:
    jobs = client.get("/jobs", params={"status": "succeeded", "limit": 100}).json()["data"]
    if not jobs:
        raise SystemExit("no succeeded job to show: run with --demo, or pass --job")
    with_teacher = [j for j in jobs if j["spec"].get("teacher")]
    return str((with_teacher or jobs)[0]["id"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", default=os.environ.get("HCD_SERVER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--key", default=os.environ.get("HCD_API_KEY"))
    parser.add_argument("--job", help="the job page to show (default: see above)")
    parser.add_argument("--demo", action="store_true", help="submit the demo jobs first and wait for them")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    if not args.key:
        raise SystemExit("give the API key: --key or HCD_API_KEY")
    chromium = os.environ.get("HCD_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    from playwright.sync_api import sync_playwright

    server = args.server.rstrip("/")
    client = httpx.Client(base_url=server, headers={"Authorization": f"Bearer {args.key}"}, timeout=30)
    running = None
    if args.demo:
        demo = submit_demo(client)
        running = submit_running(client)
        wait_for(client, demo, 1800)
        wait_training(client, running, 0.4, 600)
    job_id = args.job or pick_job(client)
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 900}, device_scale_factor=1)
            page.goto(f"{server}/#/signin")
            page.evaluate("key => localStorage.setItem('hcd.apiKey', key)", args.key)
            page.goto(f"{server}/#/jobs")
            page.wait_for_selector(".jobs-table[data-loaded=true]")
            bottom = page.evaluate("document.querySelector('.table-wrap').getBoundingClientRect().bottom")
            page.screenshot(path=args.out / "jobs.png", clip={"x": 0, "y": 0, "width": 1400, "height": bottom + 24})
            page.set_viewport_size({"width": 1400, "height": 1180})
            page.goto(f"{server}/#/jobs/{job_id}")
            page.wait_for_selector(".view[data-loaded=true]")
            time.sleep(0.5)  # let the charts settle at their final width
            page.screenshot(path=args.out / "job.png")
            browser.close()
    finally:
        if running is not None:
            client.post(f"/jobs/{running}/cancel")
        client.close()
    for name in ("jobs.png", "job.png"):
        print(args.out / name, file=sys.stderr)


if __name__ == "__main__":
    main()
