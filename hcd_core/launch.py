"""A data-parallel job whose rank 0 is the calling process: ranks 1..N-1 run in helper processes on
this machine (a service worker that owns N GPUs runs its job this way; `hcd train` uses torchrun).

Rank 0 keeps everything that talks to the outside (metrics, stop requests, checkpoints, export);
a helper builds the same job from a small JSON payload (the resolved spec and the local paths rank 0
resolved: teacher weights, data root, the checkpoint folder it resumes from), trains its part of
every batch and writes nothing. The ranks meet through torch's environment rendezvous on 127.0.0.1.

    with HelperRanks(world, payload):      # sets RANK/WORLD_SIZE/... for rank 0, starts ranks 1..N-1
        run_job(spec, ...)                 # rank 0, with its hooks

A helper dies with the process that started it (Linux: PR_SET_PDEATHSIG; enter the block on the
thread that runs the job, as the signal follows the starting thread); a helper that dies makes
rank 0 fail at its next collective (gloo at once, NCCL within `COLLECTIVE_TIMEOUT`).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

_ENV_KEYS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
HELPER_EXIT_GRACE_S = 60.0  # how long rank 0 waits for its helpers to finish after a completed run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent(parent: int) -> None:
    """In a helper, first thing: be killed when the process that started it ends (Linux), and end
    now if it already has (the check after the prctl closes the race)."""
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        sys.exit(1)


class HelperRanks:
    """Ranks 1..world-1 of a job as child processes, for the duration of a `with` block."""

    def __init__(self, world: int, payload: dict[str, Any]) -> None:
        self.world, self.payload = world, payload
        self.procs: list[subprocess.Popen[bytes]] = []
        self._saved: dict[str, str | None] = {}
        self._tmp: tempfile.TemporaryDirectory[str] | None = None

    def __enter__(self) -> "HelperRanks":
        port = str(_free_port())
        common = {"WORLD_SIZE": str(self.world), "LOCAL_WORLD_SIZE": str(self.world), "MASTER_ADDR": "127.0.0.1",
                  "MASTER_PORT": port}
        self._tmp = tempfile.TemporaryDirectory(prefix="hcd-ranks-")
        payload_path = Path(self._tmp.name) / "payload.json"
        payload_path.write_text(json.dumps({**self.payload, "output_dir": str(Path(self._tmp.name) / "out")}))
        for rank in range(1, self.world):
            env = {**os.environ, **common, "RANK": str(rank), "LOCAL_RANK": str(rank)}
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "hcd_core.launch", str(payload_path), str(os.getpid())], env=env,
                stdin=subprocess.DEVNULL,
            ))
        self._saved = {k: os.environ.get(k) for k in _ENV_KEYS}
        os.environ.update({**common, "RANK": "0", "LOCAL_RANK": "0"})
        return self

    def __exit__(
        self, kind: type[BaseException] | None, err: BaseException | None, tb: TracebackType | None
    ) -> None:
        for key, value in self._saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for proc in self.procs:
            try:  # after a completed run the helpers are finishing too; after an error they wait in vain
                proc.wait(timeout=HELPER_EXIT_GRACE_S if kind is None else 0.1)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._tmp is not None:
            self._tmp.cleanup()


def run_helper(payload_path: Path) -> int:
    """One helper rank: the same job as rank 0, with no hooks but the stop-poll cadence."""
    from hcd_core.engine import run_job
    from hcd_core.spec import JobSpec
    from hcd_core.types import RunHooks

    payload = json.loads(Path(payload_path).read_text())
    teacher = payload.get("teacher_weights")
    data_root = payload.get("data_root")
    run_job(JobSpec.model_validate(payload["spec"]), output_dir=Path(payload["output_dir"]),
            checkpoint_dir=Path(payload["checkpoint_dir"]), teacher_weights=Path(teacher) if teacher else None,
            teacher_card=payload.get("teacher_card"), hooks=RunHooks(stop_check_every=payload["stop_check_every"]),
            data_root=Path(data_root) if data_root else None)
    return 0


if __name__ == "__main__":
    _die_with_parent(int(sys.argv[2]))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # rank 0 decides when the run stops
    sys.exit(run_helper(Path(sys.argv[1])))
