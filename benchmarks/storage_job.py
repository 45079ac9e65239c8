"""One job's time with the local store vs an S3 bucket: what a worker does with its store around the
engine (every checkpoint uploaded when it is saved, the exported files published at the end), side by
side, the same spec, alternating runs.

The bucket is moto's S3 server on 127.0.0.1 (loopback, no network latency): the figure is the store's
own overhead (copies, hashing, multipart uploads through s3fs), not a WAN's.

    python benchmarks/storage_job.py [--arch resnet18] [--epochs 3] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hcd_core.engine import RunHooks, run_job  # noqa: E402
from hcd_core.spec import JobSpec  # noqa: E402
from jobs.s3store import S3Store  # noqa: E402
from jobs.storage import ArtifactStore, LocalStore  # noqa: E402


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def one_job(store: ArtifactStore, spec: JobSpec) -> tuple[float, int]:
    """Seconds from the attempt's start to its files published, and the checkpoint's size."""
    started = time.perf_counter()
    workspace = store.workspace(uuid.uuid4(), 1)
    hooks = RunHooks(after_checkpoint=workspace.checkpoint_saved)
    result = run_job(spec, output_dir=workspace.output_dir, checkpoint_dir=workspace.checkpoint_dir, hooks=hooks)
    size = sum(p.stat().st_size for p in workspace.checkpoint_dir.glob("*") if p.is_file())
    workspace.publish(result.artifacts)
    workspace.close()
    return time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import logging

    import boto3
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    os.environ.update({"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    boto3.client("s3").create_bucket(Bucket="bench")
    spec = JobSpec.model_validate({
        "method": {"name": "ce"}, "student": {"arch": args.arch},
        "dataset": {"name": "digits", "image_size": 32},
        "training": {"recipe": "quick", "epochs": args.epochs, "batch_size": 64, "max_steps_per_epoch": 2,
                     "device": "cpu"},
        "seed": 0,
    })
    times: dict[str, list[float]] = {"local": [], "s3": []}
    try:
        with tempfile.TemporaryDirectory() as scratch:
            stores: dict[str, ArtifactStore] = {
                "local": LocalStore(Path(scratch) / "data"),
                "s3": S3Store("s3://bench/hcd", Path(scratch) / "work"),
            }
            stores["local"].ensure_layout()
            one_job(stores["local"], spec)  # warm-up: imports, the dataset, the allocator
            size = 0
            for _ in range(args.repeats):
                for name, store in stores.items():  # alternating, so drift hits both alike
                    seconds, size = one_job(store, spec)
                    times[name].append(seconds)
    finally:
        server.stop()
    local, s3 = statistics.median(times["local"]), statistics.median(times["s3"])
    print(f"{args.arch}, {args.epochs} epochs x 2 steps (a checkpoint of {size / 1e6:.1f} MB each epoch), "
          f"median of {args.repeats}:")
    print(f"  local store   {local:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times['local'])})")
    print(f"  S3 (moto)     {s3:6.2f} s   (runs: {', '.join(f'{t:.2f}' for t in times['s3'])})")
    print(f"  S3 / local    {s3 / local:6.2f}x  ({s3 - local:+.2f} s per job)")


if __name__ == "__main__":
    main()
