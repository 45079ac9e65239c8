"""A worker's own Prometheus endpoint: `hcd worker --metrics-port 9101` (or `HCD_WORKER_METRICS_PORT`).

The figures of this worker process (the Celery parent, which never imports torch):

- `hcd_worker_messages_total{result}`: job messages taken from the queue: `claimed` (an attempt ran),
  `skipped` (nothing could start), `deferred` (Postgres was unavailable);
- `hcd_worker_jobs_claimed_total`, `hcd_worker_jobs_finished_total{outcome}` and
  `hcd_worker_attempt_duration_seconds{outcome}` (claim to the child's exit): outcome `succeeded`,
  `failed`, `cancelled` (the job's status after the attempt), `handed_back` (back to the queue: a
  shutdown, a storage error), `lease_lost` (another attempt owns the job), `crashed` (the child died),
  `unknown` (the database could not say);
- `hcd_worker_busy`, `hcd_worker_current_job{job_id, attempt}` (1 while it runs) and
  `hcd_worker_current_job_started_timestamp_seconds`;
- `hcd_worker_info{worker_id, device, queue}`;
- on a CUDA host, `hcd_worker_gpu_utilization_ratio`, `hcd_worker_gpu_memory_used_bytes` and
  `hcd_worker_gpu_memory_total_bytes` per GPU this worker sees (`CUDA_VISIBLE_DEVICES`), read from
  `nvidia-smi` at each scrape; nothing on a CPU host (device `cpu`, or no `nvidia-smi`);
- the process' CPU and memory (`process_*`).

The endpoint needs no authentication: bind it to a private address (`HCD_WORKER_METRICS_HOST`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, start_http_server
from prometheus_client.metrics_core import GaugeMetricFamily, Metric

from jobs.status import TERMINAL

_log = logging.getLogger("hcd.worker.prometheus")

REGISTRY = CollectorRegistry(auto_describe=True)
ATTEMPT_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400, 43200, 86400, 259200, 604800)
OUTCOMES = (*sorted(s.value for s in TERMINAL), "handed_back", "lease_lost", "crashed", "unknown")
_NVIDIA_SMI_SECONDS = 5.0
_MIB = 1024 * 1024

MESSAGES = Counter("hcd_worker_messages", "Job messages taken from the queue, by what came of them.",
                   ["result"], registry=REGISTRY)
CLAIMED = Counter("hcd_worker_jobs_claimed", "Job attempts this worker claimed.", registry=REGISTRY)
FINISHED = Counter("hcd_worker_jobs_finished", "Job attempts this worker ran to their end, by outcome.",
                   ["outcome"], registry=REGISTRY)
ATTEMPT_SECONDS = Histogram("hcd_worker_attempt_duration_seconds",
                            "Claim to the end of the attempt's child process, by outcome.", ["outcome"],
                            buckets=ATTEMPT_BUCKETS, registry=REGISTRY)
BUSY = Gauge("hcd_worker_busy", "1 while this worker runs a job attempt.", registry=REGISTRY)
CURRENT = Gauge("hcd_worker_current_job", "1 for the job attempt this worker runs now.", ["job_id", "attempt"],
                registry=REGISTRY)
CURRENT_STARTED = Gauge("hcd_worker_current_job_started_timestamp_seconds",
                        "When the running attempt was claimed (Unix time; 0 when idle).", registry=REGISTRY)
INFO = Gauge("hcd_worker_info", "This worker: its id, device setting and queue (always 1).",
             ["worker_id", "device", "queue"], registry=REGISTRY)

for _result in ("claimed", "skipped", "deferred"):
    MESSAGES.labels(_result)
for _outcome in OUTCOMES:  # every outcome shows from the start (0), so rate() sees the first one
    FINISHED.labels(_outcome)


def message_taken(result: str) -> None:
    MESSAGES.labels(result).inc()


class AttemptTimer:
    """Marks the worker busy with one attempt; `end(outcome)` records how it ended."""

    def __init__(self, job_id: str, attempt: int):
        self.labels = (job_id, str(attempt))
        self.started = time.monotonic()
        CLAIMED.inc()
        BUSY.set(1)
        CURRENT.labels(*self.labels).set(1)
        CURRENT_STARTED.set(time.time())

    def end(self, outcome: str) -> None:
        FINISHED.labels(outcome).inc()
        ATTEMPT_SECONDS.labels(outcome).observe(time.monotonic() - self.started)
        BUSY.set(0)
        CURRENT_STARTED.set(0)
        try:
            CURRENT.remove(*self.labels)
        except KeyError:
            pass


# --------------------------------------------------------------------------- GPUs (nvidia-smi)
@dataclass(frozen=True)
class GpuStat:
    index: str
    name: str
    utilization: float | None  # 0..1
    memory_used_bytes: float | None
    memory_total_bytes: float | None


_QUERY = "index,name,utilization.gpu,memory.used,memory.total"


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None  # "[N/A]", "[Not Supported]"


def parse_nvidia_smi(output: str) -> list[GpuStat]:
    """Rows of `nvidia-smi --query-gpu=index,name,utilization.gpu,memory.used,memory.total
    --format=csv,noheader,nounits` (utilization in %, memory in MiB)."""
    stats = []
    for line in output.splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) != 5 or not parts[0]:
            continue
        index, name, util, used, total = parts
        utilization = _number(util)
        used_mib, total_mib = _number(used), _number(total)
        stats.append(GpuStat(index, name, None if utilization is None else utilization / 100.0,
                             None if used_mib is None else used_mib * _MIB,
                             None if total_mib is None else total_mib * _MIB))
    return stats


class GpuCollector:
    """GPU utilisation and memory at scrape time, from `nvidia-smi` (the parent never imports torch)."""

    def __init__(self, device_setting: str):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        self.binary = shutil.which("nvidia-smi")
        self.enabled = (device_setting or "auto").lower() != "cpu" and self.binary is not None and visible != ""
        self.ids = visible.strip() if visible else None
        self._warned = False

    def read(self) -> list[GpuStat]:
        assert self.binary is not None
        command = [self.binary, f"--query-gpu={_QUERY}", "--format=csv,noheader,nounits"]
        if self.ids:
            command += ["-i", self.ids]
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=_NVIDIA_SMI_SECONDS, check=True)
        except (OSError, subprocess.SubprocessError) as err:
            if not self._warned:
                self._warned = True
                _log.warning("GPU metrics unavailable: nvidia-smi failed (%s)", err)
            return []
        return parse_nvidia_smi(done.stdout)

    def collect(self) -> Iterator[Metric]:
        if not self.enabled:
            return
        stats = self.read()
        if not stats:
            return
        labels = ["gpu", "name"]
        util = GaugeMetricFamily("hcd_worker_gpu_utilization_ratio",
                                 "Fraction of the last sample period the GPU was busy (nvidia-smi).", labels=labels)
        used = GaugeMetricFamily("hcd_worker_gpu_memory_used_bytes", "GPU memory in use (all processes).",
                                 labels=labels)
        total = GaugeMetricFamily("hcd_worker_gpu_memory_total_bytes", "GPU memory in all.", labels=labels)
        for gpu in stats:
            for family, value in ((util, gpu.utilization), (used, gpu.memory_used_bytes),
                                  (total, gpu.memory_total_bytes)):
                if value is not None:
                    family.add_metric([gpu.index, gpu.name], value)
        yield util
        yield used
        yield total


_started = False


def serve_metrics(host: str, port: int, *, worker_id: str, device: str, queue: str) -> None:
    """Start the endpoint (a daemon thread); OSError when the port cannot be bound."""
    global _started
    if _started:
        return
    INFO.labels(worker_id, device or "auto", queue).set(1)
    ProcessCollector(registry=REGISTRY)
    REGISTRY.register(GpuCollector(device))
    start_http_server(port, addr=host, registry=REGISTRY)
    _started = True
    _log.info("worker metrics at http://%s:%d/metrics", host, port)
