"""Human-readable text for the client commands: tables, ages, durations, a job's summary.

Plain text (no colours, no box characters), so that it reads the same in a terminal, a pipe and a log.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from jobs.status import ACTIVE as _ACTIVE
from jobs.status import TERMINAL as _TERMINAL
from jobs.status import JobStatus

ACTIVE = frozenset(s.value for s in _ACTIVE)  # plain strings: a job document's status is one
TERMINAL = frozenset(s.value for s in _TERMINAL)


# --------------------------------------------------------------------------- small values
def parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def fmt_age(when: datetime | None, now: datetime | None = None) -> str:
    """How long ago: 12s, 5m, 3h, 2d."""
    if when is None:
        return "-"
    seconds = max(0.0, ((now or datetime.now(timezone.utc)) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def fmt_duration(seconds: float | None) -> str:
    """45s, 2m 06s, 1h 02m, 3d 04h."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    total = max(0, round(seconds))
    days, rest = divmod(total, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def fmt_clock(seconds: float | None) -> str:
    """2:06 or 1:02:06 (a progress bar's elapsed time and ETA); `-` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "-"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def fmt_number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "-" if value is None else str(value)
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


def fmt_metric(name: str, value: Any) -> str:
    """Accuracies (percent) with two decimals; everything else with 4 significant digits."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and ("top1" in name or "top5" in name):
        return f"{value:.2f}" if math.isfinite(value) else str(value)
    return fmt_number(value)


def fmt_bytes(size: Any) -> str:
    if not isinstance(size, (int, float)):
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"  # pragma: no cover


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Columns separated by two spaces, padded to line up (the last one not padded)."""
    cells = [[str(c).replace("\n", " ") for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = []
    for row in cells:
        padded = [c.ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)] + [row[-1]]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


# --------------------------------------------------------------------------- a job
def _spec(job: Mapping[str, Any]) -> Mapping[str, Any]:
    spec = job.get("spec")
    return spec if isinstance(spec, Mapping) else {}


def _section(spec: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = spec.get(name)
    return value if isinstance(value, Mapping) else {}


def job_method(job: Mapping[str, Any]) -> str:
    return str(_section(_spec(job), "method").get("name") or "-")


def teacher_text(job: Mapping[str, Any], *, long: bool = False) -> str | None:
    teacher = _section(_spec(job), "teacher")
    if not teacher:
        return None
    arch = str(teacher.get("arch") or "?")
    if not long:
        return arch
    weights = teacher.get("weights")
    if isinstance(weights, Mapping):
        source = weights.get("source")
        if source == "job":
            return f"{arch} (job {weights.get('job_id')})"
        if source == "model":
            return f"{arch} (model {weights.get('model_id')})"
        if source:
            return f"{arch} ({source})"
    return arch


def job_models(job: Mapping[str, Any], *, long: bool = False) -> str:
    """`student <- teacher` (or the student alone)."""
    student = str(_section(_spec(job), "student").get("arch") or "-")
    teacher = teacher_text(job, long=long)
    return f"{student} <- {teacher}" if teacher else student


def job_dataset(job: Mapping[str, Any]) -> str:
    dataset = _section(_spec(job), "dataset")
    name = str(dataset.get("name") or "-")
    size = dataset.get("image_size")
    return f"{name}/{size}" if size else name


def progress_fraction(job: Mapping[str, Any]) -> float | None:
    progress = job.get("progress") or {}
    total, step = progress.get("total_steps"), progress.get("step")
    if isinstance(total, int) and total > 0 and isinstance(step, int):
        return min(1.0, max(0.0, step / total))
    return None


def job_progress(job: Mapping[str, Any]) -> str:
    """`27% e2/5` while running, `100%` when done, `-` before training started."""
    fraction = progress_fraction(job)
    if fraction is None:
        return "-"
    progress = job.get("progress") or {}
    epoch, epochs = progress.get("epoch"), progress.get("epochs")
    text = f"{fraction * 100:.0f}%"
    if job.get("status") in ACTIVE and isinstance(epoch, int) and isinstance(epochs, int):
        text += f" e{min(epoch + 1, epochs)}/{epochs}"
    return text


def best_top1(job: Mapping[str, Any]) -> float | None:
    """The best val_top1 when known (the result, or the last epoch's best_val_top1); else the latest."""
    result = job.get("result") or {}
    best = (result.get("best_metrics") or {}).get("val_top1")
    if isinstance(best, (int, float)):
        return float(best)
    latest = job.get("latest_metrics") or {}
    for name in ("best_val_top1", "val_top1"):
        if isinstance(latest.get(name), (int, float)):
            return float(latest[name])
    return None


def status_text(job: Mapping[str, Any]) -> str:
    status, phase = str(job.get("status") or "?"), job.get("phase")
    return f"{status}/{phase}" if phase and status in ACTIVE else status


def list_row(job: Mapping[str, Any], now: datetime | None = None) -> list[str]:
    top1 = best_top1(job)
    return [str(job.get("id")), status_text(job), job_method(job), job_models(job), job_dataset(job),
            job_progress(job), "-" if top1 is None else f"{top1:.2f}", fmt_age(parse_time(job.get("created_at")), now)]


LIST_HEADER = ["ID", "STATUS", "METHOD", "STUDENT <- TEACHER", "DATASET", "PROGRESS", "TOP-1", "AGE"]


def run_seconds(job: Mapping[str, Any], now: datetime | None = None) -> float | None:
    """Seconds from start to finish (or until now while it runs)."""
    started = parse_time(job.get("started_at"))
    if started is None:
        return None
    finished = parse_time(job.get("finished_at")) or (now or datetime.now(timezone.utc))
    return max(0.0, (finished - started).total_seconds())


def download_hint(job_id: str) -> str:
    return f"hcd download {job_id} ./{job_id[:8]}"


def top1_text(job: Mapping[str, Any]) -> str | None:
    """`final 91.20 (epoch 5), best 92.10 (epoch 4), exported: best` from a succeeded job's result."""
    result = job.get("result") or {}
    parts = []
    for label, metrics in (("final", result.get("final_metrics")), ("best", result.get("best_metrics"))):
        if isinstance(metrics, Mapping) and isinstance(metrics.get("val_top1"), (int, float)):
            text = f"{label} {metrics['val_top1']:.2f}"
            if isinstance(metrics.get("epoch"), (int, float)):
                text += f" (epoch {int(metrics['epoch']) + 1})"
            parts.append(text)
    if not parts:
        return None
    exported = _section(_spec(job), "training").get("export")
    return ", ".join(parts) + (f"; exported: {exported}" if exported else "")


def job_summary(job: Mapping[str, Any], now: datetime | None = None) -> list[str]:
    """`hcd status`: a few labelled lines."""
    job_id = str(job.get("id"))
    rows: list[tuple[str, str]] = []
    attempt = f"attempt {job.get('attempt')} of {job.get('max_attempts')}" if job.get("attempt") else "not started"
    rows.append(("status", f"{status_text(job)} ({attempt})" + (", cancel requested"
                                                              if job.get("cancel_requested") and job.get("status")
                                                              in ACTIVE else "")))
    rows.append(("method", job_method(job)))
    rows.append(("models", job_models(job, long=True)))
    rows.append(("dataset", job_dataset(job)))
    progress = job.get("progress") or {}
    if progress_fraction(job) is not None:
        rows.append(("progress", f"{job_progress(job)}  (step {progress.get('step')}/{progress.get('total_steps')}, "
                                 f"epoch {min(progress.get('epoch', 0) + 1, progress.get('epochs', 0))}"
                                 f"/{progress.get('epochs')})"))
    latest = job.get("latest_metrics") or {}
    shown = [n for n in ("val_top1", "val_top5", "val_loss", "best_val_top1", "loss") if n in latest]
    if shown:
        rows.append(("metrics", "  ".join(f"{n} {fmt_metric(n, latest[n])}" for n in shown)))
    if (top1 := top1_text(job)) is not None:
        rows.append(("top-1", top1))
    error = job.get("error")
    if isinstance(error, Mapping) and error.get("code"):
        rows.append(("error", f"{error.get('code')}: {error.get('message') or ''}".rstrip(": ")))
    created = parse_time(job.get("created_at"))
    times = f"created {fmt_age(created, now)} ago"
    if job.get("started_at"):
        verb = "ran" if job.get("finished_at") else "running for"
        times += f", {verb} {fmt_duration(run_seconds(job, now))}"
    if job.get("finished_at"):
        times += f", finished {fmt_age(parse_time(job.get('finished_at')), now)} ago"
    rows.append(("time", times))
    metadata = job.get("metadata") or {}
    if metadata:
        rows.append(("metadata", ", ".join(f"{k}={v}" for k, v in metadata.items())))
    if job.get("sweep_id"):
        rows.append(("sweep", str(job["sweep_id"])))
    if job.get("status") == JobStatus.SUCCEEDED:
        rows.append(("download", download_hint(job_id)))
    elif job.get("status") in ACTIVE:
        rows.append(("follow", f"hcd watch {job_id}"))
    width = max(len(label) for label, _ in rows)
    return [f"job {job_id}"] + [f"  {label.ljust(width)}  {text}" for label, text in rows]
