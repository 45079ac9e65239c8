"""Client commands for users of a running service: submit, status, watch, cancel, download.

Server and key come from HCD_SERVER_URL (default http://127.0.0.1:8000) and HCD_API_KEY.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import httpx

from jobs.status import TERMINAL, JobStatus

DEFAULT_SERVER = "http://127.0.0.1:8000"


class ClientError(Exception):
    pass


def make_client(timeout: float = 30.0) -> httpx.Client:
    key = os.environ.get("HCD_API_KEY")
    if not key:
        raise ClientError("set HCD_API_KEY to your API key")
    base = os.environ.get("HCD_SERVER_URL", DEFAULT_SERVER).rstrip("/")
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    text = f"{body.get('title', 'error')} ({body.get('code', response.status_code)}): {body.get('detail', '')}"
    for err in body.get("errors") or []:
        text += f"\n  {err.get('loc')}: {err.get('msg')}"
    return text


def _check(response: httpx.Response) -> httpx.Response:
    if response.status_code >= 400:
        raise ClientError(_problem_text(response))
    return response


def load_spec_file(path: str) -> dict[str, Any]:
    import yaml

    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    doc = yaml.safe_load(text)  # YAML is a superset of JSON
    if not isinstance(doc, dict):
        raise ClientError(f"{path}: the spec must be a mapping")
    return doc


def build_submit_body(doc: dict[str, Any], metadata: list[str]) -> dict[str, Any]:
    """A spec file may hold the spec itself or a full {"spec", "metadata"} body."""
    body = dict(doc) if set(doc) <= {"spec", "metadata"} and "spec" in doc else {"spec": doc}
    extra = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--metadata expects KEY=VALUE, got {item!r}")
        extra[key] = value
    if extra:
        body["metadata"] = {**(body.get("metadata") or {}), **extra}
    return body


# --------------------------------------------------------------------------- commands
def cmd_submit(args: argparse.Namespace) -> int:
    body = build_submit_body(load_spec_file(args.spec), args.metadata or [])
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with make_client() as client:
        job = _check(client.post("/jobs", json=body, headers=headers)).json()
    print(json.dumps(job, indent=2) if args.json else job["id"])
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with make_client() as client:
        job = _check(client.get(f"/jobs/{args.job_id}")).json()
    print(json.dumps(job, indent=2))
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client() as client:
        job = _check(client.post(f"/jobs/{args.job_id}/cancel")).json()
    print(f"{job['id']} {job['status']}")
    return 0


def iter_sse(lines: Iterator[str]) -> Iterator[dict[str, str]]:
    """Events {"id", "event", "data"} from SSE lines; comments and retry fields skipped."""
    event: dict[str, str] = {}
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                event["data"] = "\n".join(data)
                yield event
            event, data = {}, []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "data":
            data.append(value)
        elif field in ("id", "event"):
            event[field] = value


def _format_values(values: dict[str, Any]) -> dict[str, str]:
    return {k: f"{v:.4g}" if isinstance(v, (int, float)) else str(v) for k, v in list(values.items())[:6]}


def watch_job(client: httpx.Client, job_id: str, *, max_reconnect_wait: float = 5.0, quiet: bool = False) -> str:
    """Follow the job's event stream until it ends (reconnecting with Last-Event-ID); its final status."""
    from tqdm import tqdm

    job = _check(client.get(f"/jobs/{job_id}")).json()
    total = (job.get("progress") or {}).get("total_steps")
    bar = tqdm(total=total, unit="step", desc=job["status"], disable=quiet, dynamic_ncols=True)
    last_id: str | None = None
    final: str | None = None
    wait = 0.5
    try:
        while final is None:
            headers = {"Last-Event-ID": last_id} if last_id else {}
            try:
                with client.stream("GET", f"/jobs/{job_id}/metrics/stream", headers=headers,
                                   timeout=httpx.Timeout(30.0, read=60.0)) as response:
                    if response.status_code >= 400:
                        response.read()
                        raise ClientError(_problem_text(response))
                    wait = 0.5
                    for event in iter_sse(response.iter_lines()):
                        if "id" in event:
                            last_id = event["id"]
                        data = json.loads(event["data"])
                        kind = event.get("event", "message")
                        if kind == "metrics":
                            step = data.get("step")
                            if isinstance(step, int) and step >= bar.n:
                                bar.update(step - bar.n)
                            bar.set_postfix(_format_values(data.get("values") or {}), refresh=False)
                        elif kind == "status":
                            bar.set_description(f"{data.get('status')}/{data.get('phase') or '-'}")
                            if data.get("total_steps") and bar.total != data["total_steps"]:
                                bar.total = data["total_steps"]
                        elif kind == "end":
                            final = data.get("status")
                            break
            except (httpx.TransportError, httpx.RemoteProtocolError):
                pass  # dropped: reconnect and resume after the last event seen
            if final is None:
                # The stream closed without an end event (or dropped): ask the job itself.
                try:
                    job = _check(client.get(f"/jobs/{job_id}")).json()
                    if job["status"] in TERMINAL:
                        final = job["status"]
                        break
                    if (total := (job.get("progress") or {}).get("total_steps")) and bar.total != total:
                        bar.total = total
                except httpx.TransportError:
                    pass
                time.sleep(wait)
                wait = min(wait * 2, max_reconnect_wait)
    finally:
        bar.close()
    return final


def cmd_watch(args: argparse.Namespace) -> int:
    with make_client() as client:
        final = watch_job(client, args.job_id, quiet=args.quiet)
        job = _check(client.get(f"/jobs/{args.job_id}")).json()
    print(f"{args.job_id} {final}")
    if job.get("error"):
        print(f"error {job['error']['code']}: {job['error'].get('message')}", file=sys.stderr)
    if job.get("result"):
        print(json.dumps(job["result"], indent=2))
    return 0 if final == JobStatus.SUCCEEDED else 1


def download_artifact(client: httpx.Client, url: str, target: Path, expected_sha256: str) -> None:
    """Stream one file to `target`, verifying its sha256 against the ETag and the listing."""
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    with client.stream("GET", url) as response:
        if response.status_code >= 400:
            response.read()
            raise ClientError(_problem_text(response))
        etag = response.headers.get("etag", "").strip('"')
        with open(partial, "wb") as handle:
            for chunk in response.iter_bytes(1 << 20):
                digest.update(chunk)
                handle.write(chunk)
    actual = digest.hexdigest()
    if actual != etag or actual != expected_sha256:
        partial.unlink(missing_ok=True)
        raise ClientError(f"{target.name}: sha256 {actual} does not match the server's {etag or expected_sha256}")
    partial.replace(target)


def cmd_download(args: argparse.Namespace) -> int:
    out = Path(args.dir)
    out.mkdir(parents=True, exist_ok=True)
    with make_client(timeout=300.0) as client:
        artifacts = _check(client.get(f"/jobs/{args.job_id}/artifacts")).json()["data"]
        if not artifacts:
            raise ClientError("the job has no artifacts (has it succeeded?)")
        for item in artifacts:
            name = Path(item["name"]).name  # never write outside DIR
            download_artifact(client, item["url"], out / name, item["sha256"])
            print(f"{out / name}  {item['size']} bytes  sha256 {item['sha256']}")
    return 0


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except ClientError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
        except httpx.TransportError as err:
            print(f"error: cannot reach {os.environ.get('HCD_SERVER_URL', DEFAULT_SERVER)}: {err}", file=sys.stderr)
            return 1
    return run


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    submit = subparsers.add_parser("submit", help="submit a job spec (YAML or JSON) to the service")
    submit.add_argument("spec", help="spec file ('-' for stdin): the spec, or {spec, metadata}")
    submit.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    submit.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="label the job (repeatable)")
    submit.add_argument("--json", action="store_true", help="print the whole job object")
    submit.set_defaults(func=_guard(cmd_submit))

    status = subparsers.add_parser("status", help="show a job")
    status.add_argument("job_id")
    status.set_defaults(func=_guard(cmd_status))

    watch = subparsers.add_parser("watch", help="follow a job live; exit 0 if it succeeds, 1 otherwise")
    watch.add_argument("job_id")
    watch.add_argument("--quiet", action="store_true", help="no progress bar")
    watch.set_defaults(func=_guard(cmd_watch))

    cancel = subparsers.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=_guard(cmd_cancel))

    download = subparsers.add_parser("download", help="download a job's artifacts, verifying sha256")
    download.add_argument("job_id")
    download.add_argument("dir")
    download.set_defaults(func=_guard(cmd_download))
