"""Client commands for users of a running service: submit, status, list, watch, events, cancel, delete,
download.

Server and key come from HCD_SERVER_URL (default http://127.0.0.1:8000) and HCD_API_KEY. Every user
error (a missing or bad file, an unreachable server, an HTTP error) is one line on stderr and an exit
code from hcd_cli.exits, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from hcd_cli import exits
from jobs.status import JobStatus

if TYPE_CHECKING:  # imported where used: `hcd --help` does not pay for the HTTP client
    import httpx

DEFAULT_SERVER = "http://127.0.0.1:8000"
JOB_STATUSES = tuple(s.value for s in JobStatus)
SUBMIT_RETRIES = 5  # 429 answers retried by `hcd submit` (after their Retry-After)
MAX_RETRY_WAIT = 300.0  # seconds: a longer Retry-After is waited this long


class ClientError(Exception):
    """A user-facing error: printed as `hcd: error: <message>`, then the command exits with `exit_code`."""

    def __init__(self, message: str, exit_code: int = exits.FAILED):
        super().__init__(message)
        self.exit_code = exit_code


def server_url() -> str:
    return os.environ.get("HCD_SERVER_URL", DEFAULT_SERVER).rstrip("/") or DEFAULT_SERVER


def make_client(timeout: float = 30.0) -> httpx.Client:
    import httpx

    key = os.environ.get("HCD_API_KEY")
    if not key:
        raise ClientError("set HCD_API_KEY to your API key (`hcd up` prints one on its first start)", exits.USAGE)
    base = server_url()
    if not base.startswith(("http://", "https://")):
        raise ClientError(f"HCD_SERVER_URL must start with http:// or https://, got {base!r}", exits.USAGE)
    return httpx.Client(base_url=base, headers={"Authorization": f"Bearer {key}"}, timeout=timeout)


def path_id(value: str) -> str:
    """An id as one path segment (an id such as `../x` must not reach another route)."""
    return quote(value.strip(), safe="")


def _problem_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    detail = str(body.get("detail") or body.get("title") or f"HTTP {response.status_code}")
    text = f"{detail} ({body.get('code', response.status_code)})"
    for err in body.get("errors") or []:  # one line per field, unless it only repeats the detail
        if isinstance(err, dict) and err.get("msg") != detail:
            text += f"\n  {err.get('loc')}: {err.get('msg')}"
    return text


def exit_code_for(status: int) -> int:
    if status == 404:
        return exits.NOT_FOUND
    if status == 429 or status >= 500:
        return exits.UNAVAILABLE
    return exits.REFUSED


def _check(response: httpx.Response) -> httpx.Response:
    """The response, or a ClientError with the problem's text and the exit code for its status."""
    if response.status_code >= 400:
        text = _problem_text(response)
        if response.status_code in (401, 403):
            text += " (check HCD_API_KEY)"
        raise ClientError(text, exit_code_for(response.status_code))
    return response


def _json(response: httpx.Response) -> Any:
    try:
        return _check(response).json()
    except ValueError:
        raise ClientError(f"unexpected answer from {server_url()} (not JSON): is HCD_SERVER_URL the hcd API?",
                          exits.UNAVAILABLE) from None


def get_job(client: httpx.Client, job_id: str) -> dict[str, Any]:
    job = _json(client.get(f"/jobs/{path_id(job_id)}"))
    if not isinstance(job, dict):
        raise ClientError(f"unexpected answer from {server_url()}", exits.UNAVAILABLE)
    return job


def get_pages(client: httpx.Client, path: str, params: Sequence[tuple[str, Any]] = (),
              limit: int | None = None) -> list[dict[str, Any]]:
    """Every item of a paginated list (`data`, `has_more`, `next_cursor`), up to `limit`."""
    items: list[dict[str, Any]] = []
    cursor: str | None = None
    while limit is None or len(items) < limit:
        page_size = 100 if limit is None else min(100, limit - len(items))
        query = [*params, ("limit", page_size)] + ([("after", cursor)] if cursor else [])
        page = _json(client.get(path, params=query))
        items.extend(page.get("data") or [])
        cursor = page.get("next_cursor")
        if not page.get("has_more") or not cursor:
            break
    return items


# --------------------------------------------------------------------------- spec files
def load_spec_file(path: str) -> dict[str, Any]:
    """A YAML or JSON mapping from a file ('-': stdin); a missing or bad file is a ClientError (exit 2)."""
    import yaml

    from hcd_cli.sweep_cmds import yaml_problem

    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except FileNotFoundError:
        raise ClientError(f"{path}: no such file", exits.USAGE) from None
    except IsADirectoryError:
        raise ClientError(f"{path}: is a folder, not a spec file", exits.USAGE) from None
    except UnicodeDecodeError:
        raise ClientError(f"{path}: not a text file (expected a YAML or JSON spec)", exits.USAGE) from None
    except OSError as err:
        raise ClientError(f"cannot read {path}: {err.strerror or err}", exits.USAGE) from None
    try:
        doc = yaml.safe_load(text)  # YAML is a superset of JSON
    except yaml.YAMLError as err:
        raise ClientError(f"{path}: not valid YAML or JSON: {yaml_problem(err)}", exits.USAGE) from None
    if not isinstance(doc, dict):
        kind = "empty" if doc is None else f"a {type(doc).__name__}"
        raise ClientError(f"{path}: the spec must be a mapping (method, student, dataset, ...), got {kind}",
                          exits.USAGE)
    return doc


def build_submit_body(doc: dict[str, Any], metadata: list[str]) -> dict[str, Any]:
    """A spec file may hold the spec itself or a full {"spec", "metadata"} body."""
    body = dict(doc) if set(doc) <= {"spec", "metadata"} and "spec" in doc else {"spec": doc}
    extra = {}
    for item in metadata:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ClientError(f"--metadata expects KEY=VALUE, got {item!r}", exits.USAGE)
        extra[key] = value
    if extra:
        body["metadata"] = {**(body.get("metadata") or {}), **extra}
    return body


def apply_overrides(spec: Any, items: Sequence[str]) -> None:
    """`--set training.epochs=3`: each dotted path set to its value, read as YAML like `hcd sweep`'s grid
    values (4 an int, 0.1 a float, true a boolean, [1,2] a list, null nothing, other words strings)."""
    if not items:
        return
    from hcd_cli.sweep_cmds import BadInput, parse_grid_values
    from hcd_core.sweep import SweepError, set_path

    if not isinstance(spec, dict):
        raise ClientError("--set needs a spec that is a mapping", exits.USAGE)
    for item in items:
        path, sep, text = item.partition("=")
        path = path.strip()
        if not sep or not path or not all(part.strip() for part in path.split(".")):
            raise ClientError(f"--set expects PATH=VALUE such as training.epochs=3, got {item!r}", exits.USAGE)
        try:
            values = parse_grid_values(text)
        except BadInput as err:
            raise ClientError(f"--set {path}: {err}", exits.USAGE) from None
        if len(values) != 1:
            raise ClientError(f"--set {path}: give exactly one value (null for none; quote a string holding a "
                              f"comma: {path}='\"a,b\"')", exits.USAGE)
        try:
            set_path(spec, path, values[0])
        except SweepError as err:
            reason = err.errors[0]["msg"] if err.errors else str(err)
            raise ClientError(f"--set {path}: {reason}", exits.USAGE) from None


def _retry_after(response: httpx.Response, default: float = 5.0) -> float:
    value = response.headers.get("retry-after", "").strip()
    seconds = default
    if value.isdigit():
        seconds = float(value)
    elif value:
        from email.utils import parsedate_to_datetime

        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            pass
    return min(max(seconds, 1.0), MAX_RETRY_WAIT)


def post_job(client: httpx.Client, body: dict[str, Any], headers: dict[str, str], retries: int) -> dict[str, Any]:
    """POST /jobs; a 429 (too many queued jobs) is retried after its Retry-After, at most `retries` times."""
    for attempt in range(retries + 1):
        response = client.post("/jobs", json=body, headers=headers)
        if response.status_code != 429:
            return dict(_json(response))
        if attempt == retries:
            break
        wait = _retry_after(response)
        detail = _problem_text(response).split("\n")[0]
        print(f"hcd: the server is busy: {detail}; retrying in {wait:.0f} s ({attempt + 1}/{retries})",
              file=sys.stderr, flush=True)
        time.sleep(wait)
    tries = f" (after {retries} retries)" if retries else ""
    raise ClientError(f"{_problem_text(response)}{tries}", exits.UNAVAILABLE)


# --------------------------------------------------------------------------- commands
def cmd_submit(args: argparse.Namespace) -> int:
    body = build_submit_body(load_spec_file(args.spec), args.metadata or [])
    apply_overrides(body.get("spec"), args.set or [])
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with make_client() as client:
        job = post_job(client, body, headers, max(0, args.retries))
        print(json.dumps(job, indent=2) if args.json else job["id"], flush=True)
        if args.watch:
            return _watch_and_summarize(client, str(job["id"]), quiet=args.quiet)
    return exits.OK


def cmd_status(args: argparse.Namespace) -> int:
    from hcd_cli.render import job_summary

    with make_client() as client:
        job = get_job(client, args.job_id)
    print(json.dumps(job, indent=2) if args.json else "\n".join(job_summary(job)))
    return exits.OK


def cmd_list(args: argparse.Namespace) -> int:
    from hcd_cli.render import LIST_HEADER, list_row, table

    statuses = [s.strip() for item in args.status or [] for s in item.split(",") if s.strip()]
    unknown = [s for s in statuses if s not in JOB_STATUSES]
    if unknown:
        raise ClientError(f"--status {', '.join(unknown)}: not a status; choose from {', '.join(JOB_STATUSES)}",
                          exits.USAGE)
    if args.limit < 1:
        raise ClientError("--limit must be at least 1", exits.USAGE)
    params: list[tuple[str, Any]] = [("status", s) for s in statuses]
    if args.sweep:
        params.append(("sweep_id", args.sweep.strip()))
    with make_client() as client:
        jobs = get_pages(client, "/jobs", params, limit=args.limit)
    if args.json:
        print(json.dumps(jobs, indent=2))
    elif not jobs:
        print("no jobs" + (" match" if statuses or args.sweep else " yet: submit one with `hcd submit SPEC`"),
              file=sys.stderr)
    else:
        print(table(LIST_HEADER, [list_row(job) for job in jobs]))
    return exits.OK


def _event_details(data: Any) -> str:
    if not isinstance(data, dict):
        return "" if data is None else json.dumps(data)
    return "  ".join(f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in data.items() if v is not None)


def cmd_events(args: argparse.Namespace) -> int:
    from hcd_cli.render import parse_time, table

    with make_client() as client:
        events = get_pages(client, f"/jobs/{path_id(args.job_id)}/events")
    if args.json:
        print(json.dumps(events, indent=2))
        return exits.OK
    rows = []
    for event in events:
        when = parse_time(event.get("ts"))
        shown = when.astimezone().strftime("%Y-%m-%d %H:%M:%S") if when else str(event.get("ts"))
        rows.append([shown, str(event.get("type")), str(event.get("attempt", "")), _event_details(event.get("data"))])
    print(table(["TIME", "TYPE", "ATTEMPT", "DETAILS"], rows))
    return exits.OK


def cmd_cancel(args: argparse.Namespace) -> int:
    with make_client() as client:
        job = _json(client.post(f"/jobs/{path_id(args.job_id)}/cancel"))
    print(f"{job['id']} {job['status']}")
    return exits.OK


def delete_each(collection: str, ids: list[str], label: str = "") -> int:
    """DELETE /<collection>/<id> for each id, in order, saying each; the first refusal stops it."""
    with make_client() as client:
        for item in ids:
            _check(client.delete(f"/{collection}/{path_id(item)}"))
            print(f"deleted {label}{item}", flush=True)
    return exits.OK


def cmd_delete(args: argparse.Namespace) -> int:
    return delete_each("jobs", args.job_ids)


def summary_lines(job: dict[str, Any], final: str) -> list[str]:
    """What `hcd watch` prints at the end: the outcome, top-1, the error, where to download."""
    from hcd_cli.render import download_hint, fmt_duration, run_seconds, top1_text

    job_id = str(job.get("id"))
    took = fmt_duration(run_seconds(job))
    head = f"job {job_id} {final}"
    if job.get("started_at"):
        head += f" in {took}" if final == JobStatus.SUCCEEDED else f" after {took}"
    if isinstance(job.get("attempt"), int) and job["attempt"] > 1:
        head += f" (attempt {job['attempt']} of {job.get('max_attempts')})"
    lines = [head]
    if (top1 := top1_text(job)) is not None:
        lines.append(f"  top-1     {top1}")
    error = job.get("error")
    if isinstance(error, dict) and error.get("code"):
        lines.append(f"  error     {error['code']}: {error.get('message') or ''}".rstrip(": "))
    if final == JobStatus.SUCCEEDED:
        lines.append(f"  download  {download_hint(job_id)}")
    return lines


def _watch_and_summarize(client: httpx.Client, job_id: str, *, quiet: bool) -> int:
    from hcd_cli.watch import watch

    try:
        final, job = watch(client, job_id, quiet=quiet)
    except KeyboardInterrupt:
        print(f"\nstopped watching; the job goes on. re-attach with: hcd watch {job_id}", file=sys.stderr,
              flush=True)
        return exits.INTERRUPTED
    print("\n".join(summary_lines(job, final)), flush=True)
    return exits.OK if final == JobStatus.SUCCEEDED else exits.FAILED


def cmd_watch(args: argparse.Namespace) -> int:
    with make_client() as client:
        return _watch_and_summarize(client, args.job_id, quiet=args.quiet)


def download_artifact(client: httpx.Client, url: str, target: Path, expected_sha256: str) -> None:
    """Stream one file to `target`, verifying its sha256 against the ETag and the listing."""
    import hashlib

    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    with client.stream("GET", url) as response:
        if response.status_code >= 400:
            response.read()
            _check(response)
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
    with make_client(timeout=300.0) as client:
        artifacts = _json(client.get(f"/jobs/{path_id(args.job_id)}/artifacts"))["data"]
        if not artifacts:
            raise ClientError(f"job {args.job_id} has no files to download (has it succeeded? `hcd status "
                              f"{args.job_id}`)", exits.NOT_FOUND)
        out.mkdir(parents=True, exist_ok=True)
        for item in artifacts:
            name = Path(item["name"]).name  # never write outside DIR
            download_artifact(client, item["url"], out / name, item["sha256"])
            print(f"{out / name}  {item['size']} bytes  sha256 {item['sha256']}", flush=True)
    return exits.OK


# --------------------------------------------------------------------------- errors
def fail(message: str, code: int) -> int:
    print(f"hcd: error: {message}", file=sys.stderr, flush=True)
    return code


def _guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Every user error as one line (`hcd: error: ...`) and its exit code (hcd_cli.exits)."""

    def run(args: argparse.Namespace) -> int:
        import httpx

        try:
            return func(args)
        except ClientError as err:
            return fail(str(err), err.exit_code)
        except httpx.TimeoutException:
            return fail(f"the server at {server_url()} did not answer in time; try again later", exits.UNAVAILABLE)
        except (httpx.InvalidURL, httpx.UnsupportedProtocol) as err:
            return fail(f"HCD_SERVER_URL {server_url()!r} is not a usable URL: {err}", exits.USAGE)
        except httpx.TransportError as err:
            reason = str(err) or type(err).__name__
            return fail(f"cannot reach the server at {server_url()} ({reason}); is it running? "
                        "(set HCD_SERVER_URL to its address)", exits.UNAVAILABLE)
        except BrokenPipeError:
            raise  # the output was closed: main() exits quietly
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as err:
            where = err.filename or ""
            return fail(f"{where}: {err.strerror or err}" if where else str(err), exits.USAGE)

    return run


# --------------------------------------------------------------------------- parsers
_SUBMIT_EXAMPLES = """\
examples:
  hcd submit examples/digits-teacher.yaml --watch
  hcd submit student.yaml --set training.epochs=3 --set teacher.weights.job_id=JOB_ID
  hcd submit spec.yaml --set method.temperature=4 --set 'training.step_milestones=[30,60]' --metadata team=vision

--set values are read as YAML: 3 is an int, 0.1 a float, true a boolean, [1,2] a list, null none,
other words strings; a missing mapping on the path is created."""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    raw = argparse.RawDescriptionHelpFormatter
    submit = subparsers.add_parser("submit", help="submit a job spec (YAML or JSON) to the service",
                                   description="Submit a job; prints its id (or the job with --json).",
                                   epilog=_SUBMIT_EXAMPLES, formatter_class=raw)
    submit.add_argument("spec", help="spec file ('-' for stdin): the spec, or {spec, metadata}")
    submit.add_argument("--set", action="append", metavar="PATH=VALUE",
                        help="override a spec field by its dotted path, e.g. training.epochs=3 (repeatable)")
    submit.add_argument("--watch", "-w", action="store_true", help="then follow the job as `hcd watch` does")
    submit.add_argument("--quiet", "-q", action="store_true", help="with --watch: only the final summary")
    submit.add_argument("--idempotency-key", help="resubmitting with the same key returns the same job")
    submit.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="label the job (repeatable)")
    submit.add_argument("--retries", type=int, default=SUBMIT_RETRIES, metavar="N",
                        help=f"when the server answers 429 (too many queued jobs), wait its Retry-After and try "
                             f"again, at most N times (default {SUBMIT_RETRIES}; 0: never)")
    submit.add_argument("--json", action="store_true", help="print the whole job object")
    submit.set_defaults(func=_guard(cmd_submit))

    status = subparsers.add_parser("status", help="show a job (a summary; --json: the whole document)")
    status.add_argument("job_id")
    status.add_argument("--json", action="store_true", help="print the job's JSON document")
    status.set_defaults(func=_guard(cmd_status))

    listing = subparsers.add_parser("list", help="list your jobs, newest first (a table)")
    listing.add_argument("--status", action="append", metavar="STATUS",
                         help=f"only jobs with this status ({', '.join(JOB_STATUSES)}); repeatable or a,b")
    listing.add_argument("--sweep", metavar="SWEEP_ID", help="only the runs of this sweep")
    listing.add_argument("--limit", "-n", type=int, default=20, help="at most this many jobs (default 20)")
    listing.add_argument("--json", action="store_true", help="print the jobs' JSON documents")
    listing.set_defaults(func=_guard(cmd_list))

    watch = subparsers.add_parser(
        "watch", help="follow a job live; exit 0 if it succeeds, 1 if it fails or is cancelled",
        description="Follow a job live: status and phase, a progress bar with the total, percentage and ETA, "
                    "the latest step metrics and the latest validation metrics; at the end a summary (top-1, "
                    "duration, how to download). Ctrl-C stops watching (exit 130); the job goes on.")
    watch.add_argument("job_id")
    watch.add_argument("--quiet", "-q", action="store_true", help="no live display: only the final summary")
    watch.set_defaults(func=_guard(cmd_watch))

    events = subparsers.add_parser("events", help="a job's history: status and phase changes, resumes, ...")
    events.add_argument("job_id")
    events.add_argument("--json", action="store_true", help="print the events' JSON")
    events.set_defaults(func=_guard(cmd_events))

    cancel = subparsers.add_parser("cancel", help="cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=_guard(cmd_cancel))

    delete = subparsers.add_parser("delete", help="delete finished jobs with their files")
    delete.add_argument("job_ids", nargs="+", metavar="job_id")
    delete.set_defaults(func=_guard(cmd_delete))

    download = subparsers.add_parser("download", help="download a job's files (weights, model card), verifying sha256")
    download.add_argument("job_id")
    download.add_argument("dir")
    download.set_defaults(func=_guard(cmd_download))
