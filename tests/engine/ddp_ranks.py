"""What each process of a data-parallel test runs (spawned by torch.multiprocessing, so module level)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class StopAt:
    def __init__(self, step: int) -> None:
        self.step, self.seen = step, 0

    def __call__(self) -> bool:
        self.seen += 1
        return self.seen >= self.step


def train_rank(rank: int, world: int, port: int, doc: dict[str, Any], out: str, stop_at: int | None) -> None:
    """One rank: the engine's own build and train under the run's process group; then this rank's
    student weights (and buffers) to OUT/rank{rank}.pt."""
    os.environ.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                       "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    from hcd_core.checkpoint import CHECKPOINT_NAME, load_checkpoint
    from hcd_core.distributed import join_group, leave_group
    from hcd_core.engine import build, checkpoint_spec_hash, train
    from hcd_core.export import METRICS_NAME, MetricsLog
    from hcd_core.spec import parse_spec
    from hcd_core.types import RunHooks

    spec = parse_spec(doc).resolved()
    base = Path(out)
    ckpt_path = base / "ckpt" / CHECKPOINT_NAME
    spec_hash = checkpoint_spec_hash(spec)

    def save(state: dict[str, Any]) -> None:
        from hcd_core.checkpoint import save_checkpoint

        save_checkpoint(ckpt_path, {**state, "spec_hash": spec_hash})

    dist = join_group("cpu")
    try:
        ckpt = load_checkpoint(ckpt_path, expected_spec_hash=spec_hash) if ckpt_path.is_file() else None
        hooks = RunHooks(should_stop=StopAt(stop_at) if stop_at else None, stop_check_every=1)
        job = build(spec, teacher_weights=None, teacher_card=None, data_root=None, hooks=hooks,
                    emit=lambda points: None, save=save, dist=dist)
        status = train(job, ckpt, MetricsLog(base / METRICS_NAME))
        state = {f"student.{k}": v for k, v in job.student.state_dict().items()}
        state.update({f"method.{k}": v for k, v in job.method.state_dict().items()})
        torch.save({"status": status, "state": state, "loop": job.trainer.state.global_step,
                    "final": job.trainer.state.final_metrics}, base / f"rank{rank}.pt")
    finally:
        leave_group(dist)
