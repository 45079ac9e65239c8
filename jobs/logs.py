"""Logging of every service process: one `hcd.*` logger tree, job context on every line, text or JSON.

- `configure_logging(level, fmt)` sets up the root handler of `hcd worker` and of a job's child process
  (`hcd api` passes `logging_config(...)` to uvicorn instead, which applies it in each of its processes).
- `HCD_LOG_FORMAT=json`: one JSON object per line with `ts` (UTC, ISO 8601), `level`, `logger`,
  `message`, `pid`, and, on the lines of a job's work, `job_id` and `attempt`; `exception` holds the
  formatted traceback when there is one. Python warnings and uncaught exceptions are logged too, so a
  process's output stays one JSON object per line.
- The job context: `job_context(job_id, attempt)` (a context variable: the worker's task while it runs
  one job) or `set_process_job(job_id, attempt)` (a job's child process: every thread works for that job).
"""

from __future__ import annotations

import contextvars
import json
import logging
import logging.config
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_job: contextvars.ContextVar[tuple[str, int] | None] = contextvars.ContextVar("hcd_job", default=None)
_process_job: tuple[str, int] | None = None


@contextmanager
def job_context(job_id: object, attempt: int) -> Iterator[None]:
    """Every log line inside the block (in this thread or task) carries `job_id` and `attempt`."""
    token = _job.set((str(job_id), int(attempt)))
    try:
        yield
    finally:
        _job.reset(token)


def set_process_job(job_id: object | None, attempt: int = 0) -> None:
    """Every log line of this process, from any thread, carries `job_id` and `attempt` (a job's child);
    None: no more."""
    global _process_job
    _process_job = None if job_id is None else (str(job_id), int(attempt))


def current_job() -> tuple[str, int] | None:
    return _job.get() or _process_job


class JobContextFilter(logging.Filter):
    """Adds `job_id` and `attempt` (None outside a job) to every record that passes the handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            job = current_job()
            record.job_id, record.attempt = job if job else (None, None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            doc["job_id"] = job_id
            doc["attempt"] = getattr(record, "attempt", None)
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, _, status = record.args  # uvicorn's access line, as fields too
            doc.update(client=client, method=method, path=path, status=status)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return json.dumps(doc, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`ts LEVEL logger: message`, plus `[job=... attempt=...]` on the lines of a job's work."""

    def __init__(self, fmt: str = TEXT_FORMAT, datefmt: str | None = None):
        super().__init__(fmt, datefmt)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job_id = getattr(record, "job_id", None)
        if job_id is None:
            return line
        head, sep, tail = line.partition("\n")  # the context goes on the first line, before a traceback
        return f"{head} [job={job_id} attempt={getattr(record, 'attempt', None)}]{sep}{tail}"


def _formatter_class(fmt: str) -> type[logging.Formatter]:
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter if fmt == "json" else TextFormatter


def logging_config(level: str | int = "INFO", fmt: str = "text") -> dict[str, Any]:
    """A `logging.config.dictConfig` document: one stderr handler on the root logger with the job
    context and the chosen format; every other logger (uvicorn's, Celery's, `hcd.*`) propagates to it."""
    level_name = logging.getLevelName(level) if isinstance(level, int) else str(level).upper()
    formatter = _formatter_class(fmt)
    loggers: dict[str, Any] = {
        # uvicorn's own loggers: no handlers of their own, they propagate to the root handler.
        name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
    }
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"job": {"()": f"{__name__}.JobContextFilter"}},
        "formatters": {"hcd": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {"stderr": {"class": "logging.StreamHandler", "stream": "ext://sys.stderr",
                                "filters": ["job"], "formatter": "hcd"}},
        "root": {"level": level_name, "handlers": ["stderr"]},
        "loggers": loggers,
    }


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logging.getLogger("hcd").critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("hcd").critical("uncaught exception in thread %s", name,
                                      exc_info=(args.exc_type, args.exc_value, args.exc_traceback))


def configure_logging(level: str | int = "INFO", fmt: str = "text") -> None:
    """Set up this process's logging (replaces the root logger's handlers): see the module docstring."""
    logging.config.dictConfig(logging_config(level, fmt))
    logging.captureWarnings(True)  # warnings.warn(...) becomes a log record (py.warnings), not bare stderr
    if fmt == "json":
        sys.excepthook = _log_uncaught
        threading.excepthook = _log_uncaught_in_thread

