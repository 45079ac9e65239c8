"""End-to-end training throughput (data included) against the step alone, eager and compiled.

Side by side in one process, on one teacher/student pair and one method:

- `step_only`: the trainer's own StepRunner on one fixed batch already on the device, `--steps`
  steps queued back to back with one sync at the end (what the GPU can do with no data to prepare),
  eager (measured first and again last; the ratios use the faster) and, with `--compile`, compiled
  (after `--warmup` steps that include the compilation);
- `epoch`: real epochs through `run_job` (data pipeline, step, metrics, the lagged host reads), the
  images/s of the second epoch (the first one warms up: cuDNN autotuning, compilation); for the
  synthetic task (held in memory at 32 px, upscaled and augmented per batch: the cost profile of
  CIFAR at 224 px) with the data pipeline on the device and on the host, and with `--imagefolder N`
  for a folder of N generated JPEGs, decoded once to the device cache or read per sample by
  DataLoader workers.

- `epoch_ddp` (with `--ddp N`): the synthetic epoch through `hcd train --nproc-per-node 1` and `N`
  (torchrun), from rank 0's metrics log.

One JSON line per measurement, then the ratios (medians over `--repeat` runs) the scaling issue sets targets for:
end-to-end / step-only >= 0.9, compiled / eager >= 1.3 and DDP on 2 GPUs / 1 >= 1.8 (on CUDA).

    python benchmarks/epoch_throughput.py                  # CPU: test models, 32 px
    python benchmarks/epoch_throughput.py --device cuda --teacher swin_tiny_patch4_window7_224 \\
        --student resnet18 --image-size 224 --batch-size 128 --compile --imagefolder 4000 --num-workers 8
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch._dynamo.utils import counters  # noqa: E402

from benchmarks.engine_step import NORM, build_step_runner  # noqa: E402
from hcd_core.engine import run_job  # noqa: E402
from hcd_core.models import create_timm_model  # noqa: E402
from hcd_core.spec import parse_spec  # noqa: E402
from hcd_core.teacher import build_teacher  # noqa: E402
from hcd_core.training import configure_backends, resolve_device, resolve_precision  # noqa: E402
from hcd_core.types import MetricPoint, RunHooks  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def step_only(args: argparse.Namespace, device: torch.device, compiled: bool, when: str = "first") -> dict[str, Any]:
    precision = resolve_precision(args.amp, True, device)
    torch.manual_seed(0)
    teacher = build_teacher(args.teacher, args.num_classes, input_size=args.image_size, input_norm=NORM).to(device)
    if precision.channels_last:
        teacher.to(memory_format=torch.channels_last)
    runner = build_step_runner(args.method, args, teacher, device, precision, grad_clip=None, compile=compiled)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        runner(x, y, epoch=30.0)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(args.steps):
        runner(x, y, epoch=30.0)
    _sync(device)
    elapsed = time.perf_counter() - t0
    return {"mode": "step_only", "compile": compiled, "when": when,
            "images_per_s": round(args.steps * args.batch_size / elapsed, 1),
            "step_ms": round(1000 * elapsed / args.steps, 3), "warmup_s": round(warmup_s, 1)}


def _teacher_file(args: argparse.Namespace, folder: Path) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_timm_model(args.teacher, args.num_classes, args.image_size)
    path = folder / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def _imagefolder(root: Path, count: int, num_classes: int) -> None:
    """`count` random 256x256 JPEGs in `num_classes` classes (train), a tenth of that for val."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", count), ("val", max(num_classes, count // 10))):
        for i in range(n):
            folder = root / split / f"c{i % num_classes:03d}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)


def epoch(args: argparse.Namespace, folder: Path, teacher: Path, dataset: dict[str, Any], pipeline: str,
          compiled: bool, label: str) -> dict[str, Any]:
    doc = {
        "method": {"name": args.method},
        "student": {"arch": args.student},
        "teacher": {"arch": args.teacher, "weights": {"source": "file", "path": str(teacher)}},
        "dataset": dataset,
        "training": {"recipe": "paper-cifar", "epochs": 2, "batch_size": args.batch_size, "device": args.device,
                     "max_steps_per_epoch": args.epoch_steps, "data_pipeline": pipeline, "compile": compiled,
                     "num_workers": args.num_workers, "amp": args.amp, "export": "last"},
    }
    # The second epoch, from the moment it starts (after the first one's evaluation and checkpoint)
    # to the report of its last step (which waits for that step to finish): every batch's data
    # preparation and step inside.
    span: dict[str, float] = {}
    steps: set[int] = set()

    def on_phase(name: str) -> None:
        if name == "training" and "start" not in span and steps:
            span["start"] = time.perf_counter()

    def on_metrics(points: list[MetricPoint]) -> None:
        losses = [p for p in points if p.name == "loss"]
        steps.update(p.step for p in losses)
        if "start" in span and losses:
            span["end"] = time.perf_counter()
            span["steps"] = span.get("steps", 0) + len(losses)

    out = Path(tempfile.mkdtemp(prefix=f"run-{label}-{pipeline}-{int(compiled)}-", dir=folder))
    counters.clear()
    t0 = time.perf_counter()
    run_job(parse_spec(doc), output_dir=out, checkpoint_dir=out / "ckpt",
            hooks=RunHooks(on_metrics=on_metrics, on_phase=on_phase))
    total = time.perf_counter() - t0
    timed = int(span.get("steps", 0))
    rate = timed * args.batch_size / (span["end"] - span["start"]) if timed else float("nan")
    row = {"mode": "epoch", "dataset": label, "pipeline": pipeline, "compile": compiled,
           "images_per_s": round(rate, 1), "steps_timed": timed, "run_s": round(total, 1)}
    if compiled:  # graphs made in this run (0 when the step-only run compiled the same code), breaks, recompiles
        row.update(new_graphs=counters["stats"]["unique_graphs"], graph_breaks=sum(counters["graph_break"].values()),
                   recompiles=sum(counters["recompiles"].values()))
    return row


def ddp_epoch(args: argparse.Namespace, folder: Path, teacher: Path, dataset: dict[str, Any], nproc: int) -> dict:
    """The synthetic epoch through `hcd train --nproc-per-node N` (torchrun; gloo on the CPU, NCCL on
    CUDA), images/s of the second epoch from rank 0's metrics log; the same global batch for every N."""
    import subprocess

    doc = {
        "method": {"name": args.method}, "student": {"arch": args.student},
        "teacher": {"arch": args.teacher, "weights": {"source": "file", "path": str(teacher)}},
        "dataset": dataset,
        "training": {"recipe": "paper-cifar", "epochs": 2, "batch_size": args.batch_size, "device": args.device,
                     "max_steps_per_epoch": args.epoch_steps, "amp": args.amp, "export": "last"},
    }
    spec = folder / f"ddp{nproc}.json"
    spec.write_text(json.dumps(doc))
    out = folder / f"ddp{nproc}"
    env = None
    if args.device == "cpu":  # the machine's cores shared out among the processes
        import os

        env = {**os.environ, "OMP_NUM_THREADS": str(max(1, torch.get_num_threads() // nproc))}
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hcd_cli.main", "train", str(spec), "--output", str(out),
                    "--no-progress", "--nproc-per-node", str(nproc)], check=True, env=env,
                   stdout=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # From the first epoch's last report (its evaluation; the checkpoint after it is inside the
    # span) to the report of the second epoch's last step, which waits for that step to finish.
    start = max(p["ts"] for p in points if p["epoch"] == 0)
    stamps = [p["ts"] for p in points if p["name"] == "loss" and p["epoch"] == 1]
    rate = len(stamps) * args.batch_size / (stamps[-1] - start)
    return {"mode": "epoch_ddp", "dataset": "synthetic", "processes": nproc, "images_per_s": round(rate, 1),
            "steps_timed": len(stamps), "run_s": round(total, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="test_vit")
    p.add_argument("--student", default="test_resnet")
    p.add_argument("--method", default="hcd")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=30, help="timed step-only steps")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--epoch-steps", type=int, default=30, help="steps per epoch of the end-to-end runs")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--compile", action="store_true", help="also measure the compiled step (and a compiled epoch)")
    p.add_argument("--imagefolder", type=int, default=0, metavar="N", help="also a folder of N generated JPEGs")
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=1, help="runs of each eager epoch measurement (median)")
    p.add_argument("--pipelines", nargs="+", default=["device", "host"], choices=["device", "host"])
    p.add_argument("--ddp", type=int, default=0, metavar="N",
                   help="also the synthetic epoch with 1 and N processes through torchrun (N GPUs on CUDA)")
    args = p.parse_args(argv)
    if args.method == "ce":
        p.error("--method ce has no teacher: pick a distillation method")

    device = resolve_device(args.device)
    args.device = device.type
    configure_backends(device)
    print(json.dumps({"config": {
        "teacher": args.teacher, "student": args.student, "method": args.method, "image_size": args.image_size,
        "batch_size": args.batch_size, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": resolve_precision(args.amp, True, device).describe(), "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }}), flush=True)
    rows: list[dict[str, Any]] = []

    def report(row: dict[str, Any]) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)

    report(step_only(args, device, compiled=False))
    if args.compile:
        report(step_only(args, device, compiled=True))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        teacher = _teacher_file(args, folder)
        synthetic = {"name": "synthetic", "image_size": args.image_size, "num_classes": args.num_classes,
                     "train_size": args.epoch_steps * args.batch_size, "val_size": 2 * args.batch_size}
        datasets = [("synthetic", synthetic)]
        if args.imagefolder:
            _imagefolder(folder / "images", args.imagefolder, args.num_classes)
            datasets.append(("imagefolder", {"name": "imagefolder", "root": str(folder / "images"),
                                             "image_size": args.image_size}))
        for i in range(args.repeat):  # interleaved, so a slow spell of the machine hits every kind
            for label, dataset in datasets:
                for pipeline in args.pipelines:
                    report({**epoch(args, folder, teacher, dataset, pipeline, False, label), "repeat": i})
        if args.compile:
            report(epoch(args, folder, teacher, synthetic, "device", True, "synthetic"))
        if args.ddp > 1:
            for nproc in (1, args.ddp):
                report(ddp_epoch(args, folder, teacher, synthetic, nproc))
    # The step alone again, last: the baseline is the faster of the two (clocks, caches and the
    # machine's other load differ between the start and the end of a run).
    report(step_only(args, device, compiled=False, when="last"))

    def rate(**match: Any) -> float | None:
        """The median images/s of the rows that match."""
        found = [float(r["images_per_s"]) for r in rows if all(r.get(k) == v for k, v in match.items())]
        return statistics.median(found) if found else None

    eager = max(rate(mode="step_only", compile=False, when="first") or 0.0,
                rate(mode="step_only", compile=False, when="last") or 0.0)
    ratios: dict[str, Any] = {}
    for label in ("synthetic", "imagefolder"):
        for pipeline in args.pipelines:
            value = rate(mode="epoch", dataset=label, pipeline=pipeline, compile=False)
            if value and eager:
                ratios[f"{label}_{pipeline}_epoch_over_step"] = round(value / eager, 3)
    compiled = rate(mode="step_only", compile=True)
    if compiled and eager:
        ratios["compiled_over_eager_step"] = round(compiled / eager, 3)
    compiled_epoch = rate(mode="epoch", dataset="synthetic", pipeline="device", compile=True)
    if compiled_epoch and compiled:
        ratios["synthetic_device_compiled_epoch_over_compiled_step"] = round(compiled_epoch / compiled, 3)
    one, many = rate(mode="epoch_ddp", processes=1), rate(mode="epoch_ddp", processes=args.ddp)
    if one and many:
        ratios[f"ddp_{args.ddp}_over_1"] = round(many / one, 3)
    ratios["targets"] = "epoch/step >= 0.9, compiled/eager >= 1.3, DDP 2 GPUs/1 >= 1.8 (CUDA)"
    print(json.dumps({"ratios": ratios}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
