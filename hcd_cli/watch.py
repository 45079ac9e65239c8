"""`hcd watch`: follow a job's live event stream (SSE) and show where it is.

In a terminal (stderr is a TTY) three live lines, redrawn a few times a second:

    running/training  ━━━━━━━━━━━━━━━━━━━━━━━━────────────  27%  123/450 steps  epoch 2/5  2:06, ETA 5:40
      step 123  loss 1.234  lr 0.05  images_per_s 812
      val  epoch 1/5  val_top1 91.20  (best 91.20, epoch 1)  val_top5 99.10  val_loss 0.312  train_loss 0.52

Elsewhere (a pipe, a log file) plain lines: status changes, each epoch's validation, and the progress
every minute. The total is known from the job (GET /jobs/{id}) or the stream's entries (status and
metrics entries carry `total_steps` once training has started). The ETA is the remaining steps at the
attempt's average pace, measured on the training loop's own timestamps (`ts`), so evaluation pauses
count and a stream replayed from its start gives the right pace at once.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from hcd_cli.render import ACTIVE, TERMINAL, fmt_clock, fmt_metric, parse_time
from jobs.status import JobStatus

if TYPE_CHECKING:
    import httpx
    from rich.console import Console, RenderableType

EPOCH_PREFIXES = ("val_", "best_")  # evaluation points (worker.metrics.EPOCH_PREFIXES)
EPOCH_NAMES = ("train_loss",)  # an epoch point without the prefix
PLAIN_PROGRESS_EVERY = 60.0  # seconds between progress lines in plain mode


def is_epoch_value(name: str) -> bool:
    return name.startswith(EPOCH_PREFIXES) or name in EPOCH_NAMES


@dataclass
class WatchState:
    """What the watcher knows of the job, from the job document and the stream's entries.

    Dicts are replaced, never mutated, so that the display thread can read them while they change."""

    job_id: str
    status: str = "?"
    phase: str | None = None
    attempt: int | None = None
    step: int | None = None
    total: int | None = None
    epoch: int | None = None  # 0-based epoch in progress
    epochs: int | None = None
    step_values: dict[str, float] = field(default_factory=dict)
    val_values: dict[str, float] = field(default_factory=dict)
    val_epoch: int | None = None  # 0-based epoch of val_values
    best_top1: float | None = None
    best_epoch: int | None = None
    started: float | None = None  # unix time the job started running
    first_point: tuple[float, int] | None = None  # (ts, step) of the attempt's first step seen
    pace: float | None = None  # seconds per step, over the attempt so far
    eta_at_update: tuple[float, float] | None = None  # (monotonic time, seconds left then)
    final: str | None = None

    # ------------------------------------------------------------------ inputs
    def apply_job(self, job: Mapping[str, Any]) -> None:
        self.status = str(job.get("status") or self.status)
        self.phase = job.get("phase")
        self.attempt = job.get("attempt") if isinstance(job.get("attempt"), int) else self.attempt
        self._apply_progress(job.get("progress") or {})
        started = parse_time(job.get("started_at"))
        if started is not None:
            self.started = started.timestamp()
        latest = job.get("latest_metrics") or {}
        if not self.val_values:
            seeded = {k: float(v) for k, v in latest.items() if is_epoch_value(k) and isinstance(v, (int, float))}
            if seeded:
                self.val_values = seeded
                top1 = seeded.get("best_val_top1", seeded.get("val_top1"))
                if top1 is not None and self.best_top1 is None:
                    self.best_top1 = top1
        if self.status in TERMINAL:
            self.final = self.status

    def _apply_progress(self, data: Mapping[str, Any]) -> None:
        for name, attr in (("step", "step"), ("total_steps", "total"), ("epoch", "epoch"), ("epochs", "epochs")):
            value = data.get(name)
            if isinstance(value, int) and not isinstance(value, bool):
                setattr(self, attr, value)

    def apply_event(self, kind: str, data: Mapping[str, Any]) -> str | None:
        """Update from one SSE event; what changed: "status", "metrics", "val", "end" or None."""
        if kind == "status":
            attempt = data.get("attempt")
            if isinstance(attempt, int) and attempt != self.attempt:
                self.first_point, self.pace, self.eta_at_update = None, None, None  # a new attempt: new pace
                self.attempt = attempt
            status = str(data.get("status") or self.status)
            if status == JobStatus.RUNNING and self.status != JobStatus.RUNNING and self.started is None:
                self.started = time.time()
            self.status, self.phase = status, data.get("phase")
            self._apply_progress(data)
            return "status"
        if kind == "metrics":
            return self._apply_metrics(data)
        if kind == "end":
            self.final = str(data.get("status") or "unknown")
            if self.final in TERMINAL:
                self.status, self.phase = self.final, None
            return "end"
        return None

    def _apply_metrics(self, data: Mapping[str, Any]) -> str:
        self._apply_progress({k: data[k] for k in ("epochs", "total_steps") if k in data})
        values = {k: v for k, v in (data.get("values") or {}).items() if isinstance(v, (int, float))}
        step, epoch = data.get("step"), data.get("epoch")
        epoch_values = {k: float(v) for k, v in values.items() if is_epoch_value(k)}
        step_values = {k: float(v) for k, v in values.items() if not is_epoch_value(k)}
        if step_values:
            self.step_values = step_values
        if isinstance(epoch, int):
            self.epoch = epoch  # of the step points: the epoch in progress; of validation: the one just done
        if isinstance(step, int):
            self._step_seen(step, data.get("ts"))
        if not epoch_values:
            return "metrics"
        if isinstance(epoch, int) and epoch == self.val_epoch:
            self.val_values = {**self.val_values, **epoch_values}
        else:
            self.val_values = epoch_values
        self.val_epoch = epoch if isinstance(epoch, int) else None
        top1 = epoch_values.get("val_top1")
        if top1 is not None and (self.best_top1 is None or top1 > self.best_top1):
            self.best_top1, self.best_epoch = top1, self.val_epoch
        if "best_val_top1" in epoch_values:
            self.best_top1 = epoch_values["best_val_top1"]
        return "val"

    def _step_seen(self, step: int, ts: Any) -> None:
        if self.step is None or step >= self.step or self.first_point is None:
            self.step = step
        if not isinstance(ts, (int, float)):
            return
        if self.first_point is None or step < self.first_point[1]:
            self.first_point = (float(ts), step)  # the first step seen, or a resumed attempt's
            self.pace = None
        else:
            first_ts, first_step = self.first_point
            if step > first_step and ts > first_ts:
                self.pace = (ts - first_ts) / (step - first_step)
        if self.pace is not None and self.total is not None:
            self.eta_at_update = (time.monotonic(), max(0, self.total - step) * self.pace)

    # ------------------------------------------------------------------ derived
    def fraction(self) -> float | None:
        if self.total and self.step is not None:
            return min(1.0, max(0.0, self.step / self.total))
        return None

    def eta(self) -> float | None:
        if self.eta_at_update is None or self.status != JobStatus.RUNNING:
            return None
        at, left = self.eta_at_update
        return max(0.0, left - (time.monotonic() - at))

    def elapsed(self) -> float | None:
        return None if self.started is None else max(0.0, time.time() - self.started)

    # ------------------------------------------------------------------ text
    def status_label(self) -> str:
        return f"{self.status}/{self.phase}" if self.phase and self.status in ACTIVE else self.status

    def counts_text(self, pad: bool = False) -> str:
        """`27%  123/450 steps  epoch 2/5  2:06, ETA 5:40` (what is known of it); `pad`: the percentage
        in 4 characters, so that a bar before it keeps its width."""
        parts = []
        fraction = self.fraction()
        if fraction is not None:
            parts.append(f"{fraction * 100:{3 if pad else 0}.0f}%")
            parts.append(f"{self.step}/{self.total} steps")
        elif self.status == JobStatus.QUEUED:
            parts.append("waiting for its teacher" if self.phase == "waiting_for_teacher" else "waiting for a worker")
        if self.epochs:
            parts.append(f"epoch {min((self.epoch or 0) + 1, self.epochs)}/{self.epochs}")
        timing = []
        if (elapsed := self.elapsed()) is not None and self.status in ACTIVE:
            timing.append(fmt_clock(elapsed))
        if self.status == JobStatus.RUNNING and fraction is not None:
            timing.append(f"ETA {fmt_clock(self.eta())}")
        if timing:
            parts.append(", ".join(timing))
        return "  ".join(parts)

    def step_text(self) -> str | None:
        if not self.step_values:
            return None
        names = sorted(self.step_values, key=lambda n: (n != "loss", n in ("lr", "images_per_s", "grad_norm")))
        return f"step {self.step}  " + "  ".join(f"{n} {fmt_metric(n, self.step_values[n])}" for n in names)

    def val_text(self) -> str:
        if not self.val_values:
            return "val  (after the first epoch)"
        head = "val"
        if self.val_epoch is not None:
            head += f"  epoch {self.val_epoch + 1}" + (f"/{self.epochs}" if self.epochs else "")
        order = ("val_top1", "val_top5", "val_loss", "train_loss")
        names = [n for n in order if n in self.val_values] + sorted(
            n for n in self.val_values if n not in order and n != "best_val_top1")
        parts = [f"{n} {fmt_metric(n, self.val_values[n])}" for n in names]
        if self.best_top1 is not None:  # next to val_top1: a narrow terminal cuts the end of the line
            best = f"(best {self.best_top1:.2f}" + (
                f", epoch {self.best_epoch + 1})" if self.best_epoch is not None else ")")
            at = names.index("val_top1") + 1 if "val_top1" in names else 0
            parts.insert(at, best)
        return head + "  " + "  ".join(parts)


# --------------------------------------------------------------------------- displays
class Display(Protocol):
    def start(self) -> None: ...
    def update(self, what: str | None) -> None: ...
    def stop(self) -> None: ...


class QuietDisplay:
    def start(self) -> None:
        pass

    def update(self, what: str | None) -> None:
        pass

    def stop(self) -> None:
        pass


class PlainDisplay:
    """Lines for a pipe or a log: status changes, validation per epoch, progress every minute."""

    def __init__(self, state: WatchState, stream: Any = None):
        self.state, self.stream = state, stream
        self._last_status: tuple[str, bool] | None = None  # (label, total known)
        self._last_progress = 0.0
        self._t0 = time.monotonic()

    def _line(self, text: str) -> None:
        print(f"[{fmt_clock(time.monotonic() - self._t0)}] {text}", file=self.stream or sys.stderr, flush=True)

    def start(self) -> None:
        self.update("status")

    def update(self, what: str | None) -> None:
        s = self.state
        # training <-> evaluating flips every epoch: the validation line says that already.
        label = f"{s.status}/training" if s.phase in ("training", "evaluating") else s.status_label()
        if what in ("status", "job", "end") and (label, s.total is not None) != self._last_status:
            self._last_status = (label, s.total is not None)
            self._line(f"{label}  {s.counts_text()}".rstrip())
            self._last_progress = time.monotonic()
        elif what == "val":
            self._line(f"{s.val_text()}  ({s.counts_text()})")
            self._last_progress = time.monotonic()
        elif what == "metrics" and time.monotonic() - self._last_progress >= PLAIN_PROGRESS_EVERY:
            self._line(f"{s.counts_text()}  {s.step_text() or ''}".rstrip())
            self._last_progress = time.monotonic()

    def stop(self) -> None:
        pass


class LiveDisplay:
    """Three lines redrawn in place on a terminal (rich): progress, step metrics, validation."""

    def __init__(self, state: WatchState, console: Console | None = None):
        from rich.console import Console
        from rich.live import Live

        self.state = state
        self.console = console or Console(stderr=True, highlight=False)
        self.live = Live(console=self.console, get_renderable=self.render, refresh_per_second=4,
                         transient=False, redirect_stdout=False, redirect_stderr=False)

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        s = self.state
        width = max(40, self.console.width)
        styles = {JobStatus.SUCCEEDED.value: "bold green", JobStatus.FAILED.value: "bold red",
                  JobStatus.CANCELLED.value: "yellow"}
        status_style = styles.get(s.status, "bold")
        head = Text(s.status_label(), style=status_style)
        counts = s.counts_text(pad=True)
        fraction = s.fraction()
        line = Text(no_wrap=True, overflow="ellipsis")
        line.append_text(head)
        if fraction is not None:
            bar_width = max(10, min(40, width - len(head) - len(counts) - 6))
            filled = int(round(bar_width * fraction))
            bar_style = "green" if s.status == JobStatus.SUCCEEDED else "magenta"
            line.append("  ")
            line.append("━" * filled, style=bar_style)
            line.append("━" * (bar_width - filled), style="grey37")
        line.append(f"  {counts}")
        lines: list[RenderableType] = [line]
        if s.status in ACTIVE or s.step_values:
            if (step := s.step_text()) is not None:
                lines.append(Text("  " + step, no_wrap=True, overflow="ellipsis", style="dim"))
            if s.total is not None or s.val_values:
                lines.append(Text("  " + s.val_text(), no_wrap=True, overflow="ellipsis", style="cyan"))
        return Group(*lines)

    def start(self) -> None:
        self.live.start()

    def update(self, what: str | None) -> None:
        # Status changes and validation at once; step metrics with the next of the 4 redraws a second
        # (a stream replayed from its start must not cost a redraw per entry).
        if what is not None and what != "metrics":
            self.live.refresh()

    def stop(self) -> None:
        self.live.stop()


def make_display(state: WatchState, *, quiet: bool) -> Display:
    if quiet:
        return QuietDisplay()
    if sys.stderr.isatty():
        return LiveDisplay(state)
    return PlainDisplay(state)


# --------------------------------------------------------------------------- the stream
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
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            data.append(value)
        elif name in ("id", "event"):
            event[name] = value


def follow(client: httpx.Client, state: WatchState, display: Display, *, max_reconnect_wait: float = 5.0) -> str:
    """Follow the job's stream until it ends (reconnecting with Last-Event-ID); its final status
    ("deleted" when the job is gone)."""
    import httpx

    from hcd_cli.client_cmds import _check, get_job

    last_id: str | None = None
    wait = 0.5
    while state.final is None:
        headers = {"Last-Event-ID": last_id} if last_id else {}
        try:
            with client.stream("GET", f"/jobs/{state.job_id}/metrics/stream", headers=headers,
                               timeout=httpx.Timeout(30.0, read=60.0)) as response:
                if response.status_code >= 400:
                    response.read()
                    _check(response)  # raises ClientError with the exit code for the status
                wait = 0.5
                for event in iter_sse(response.iter_lines()):
                    if "id" in event:
                        last_id = event["id"]
                    try:
                        data = json.loads(event["data"])
                    except ValueError:
                        continue
                    if isinstance(data, dict):
                        display.update(state.apply_event(event.get("event", "message"), data))
                    if state.final is not None:
                        break
        except (httpx.TransportError, httpx.RemoteProtocolError):
            pass  # dropped: reconnect and resume after the last event seen
        if state.final is None:
            # The stream closed without an end event (or dropped): ask the job itself.
            try:
                state.apply_job(get_job(client, state.job_id))
                display.update("job")
            except httpx.TransportError:
                pass
            if state.final is None:
                time.sleep(wait)
                wait = min(wait * 2, max_reconnect_wait)
    return state.final


def watch(client: httpx.Client, job_id: str, *, quiet: bool = False) -> tuple[str, dict[str, Any]]:
    """Follow a job to its end: (final status, the job document at the end)."""
    from hcd_cli.client_cmds import ClientError, get_job
    from hcd_cli.exits import NOT_FOUND

    job = get_job(client, job_id)
    state = WatchState(job_id=str(job.get("id", job_id)))
    state.apply_job(job)
    if state.final is not None:
        return state.final, job
    display = make_display(state, quiet=quiet)
    if not quiet:
        print(f"watching job {state.job_id} (Ctrl-C stops watching; the job goes on)", file=sys.stderr, flush=True)
    display.start()
    try:
        follow(client, state, display)
        if state.final == "deleted":
            raise ClientError(f"job {job_id} was deleted while it was watched", NOT_FOUND)
        job = get_job(client, job_id)  # the result, error and timings
        state.apply_job(job)
        display.update("end")
    finally:
        display.stop()
    final = state.final or str(job.get("status"))
    return final, job
