"""Time one training step of every method on one teacher/student pair, side by side in one process.

Each method gets a fresh student (same seed) and its extras; the teacher (random weights: the cost
does not depend on them) is shared. After `--warmup` steps, `--steps` steps are timed one by one
(torch.cuda.synchronize on CUDA) and the median is reported. One JSON line per method:

    {"method", "step_ms", "images_per_s", "peak_mem_mb", "extra_params", ...}

then one line with the ratios hcd/kd and hcd/ofa. peak_mem_mb is torch.cuda.max_memory_allocated
on CUDA (reset per method) and the process's peak RSS sampled during the method's steps on CPU
(`mem_kind` says which).

    python benchmarks/engine_step.py                      # CPU defaults: vit_tiny -> resnet18, 32 px, batch 32
    python benchmarks/engine_step.py --teacher swin_tiny_patch4_window7_224 --student resnet18 \\
        --image-size 224 --batch-size 128 --device cuda  # bf16 + channels_last on CUDA
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from hcd_core.features import build_student  # noqa: E402
from hcd_core.methods import build_method, count_parameters  # noqa: E402
from hcd_core.spec import METHOD_NAMES, parse_spec  # noqa: E402
from hcd_core.teacher import build_teacher  # noqa: E402
from hcd_core.training import (  # noqa: E402
    ModelEma,
    StepRunner,
    build_optimizer,
    configure_backends,
    resolve_device,
    resolve_precision,
    stack_terms,
    trainable_parameters,
)

NORM = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # resource's ru_maxrss is the lifetime peak, in KiB on Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build_step_runner(name: str, args, teacher, device, precision, *, grad_clip=None, compile=False) -> StepRunner:
    """A fresh student (seed 0) and method extras for `name`, on the `paper-cifar` recipe's optimiser,
    wrapped in the trainer's own StepRunner (also used by benchmarks/op_count.py)."""
    doc = {
        "method": {"name": name},
        "student": {"arch": args.student},
        "dataset": {"name": "synthetic", "image_size": args.image_size, "num_classes": args.num_classes},
        "training": {"recipe": "paper-cifar", "batch_size": args.batch_size, "epochs": 10},
    }
    if name != "ce":
        doc["teacher"] = {"arch": args.teacher, "weights": {"source": "timm"}}
    spec = parse_spec(doc).resolved()
    torch.manual_seed(0)
    student = build_student(args.student, args.num_classes, args.image_size,
                            num_stages=getattr(spec.method, "num_stages", 4))
    method = build_method(spec.method, student, teacher if name != "ce" else None, args.num_classes)
    student.to(device)
    method.to(device)
    if precision.channels_last:
        student.to(memory_format=torch.channels_last)
        method.to(memory_format=torch.channels_last)
    params = trainable_parameters(student, method)
    optimizer = build_optimizer([student, method], spec.training, grad_scaling=precision.use_scaler)
    ema = ModelEma(student.model, spec.training.ema_decay) if spec.training.ema_decay else None
    return StepRunner(student=student, teacher=teacher if name != "ce" else None, method=method,
                      optimizer=optimizer, precision=precision, params=params, grad_clip=grad_clip,
                      label_smoothing=0.1, ema=ema, compile=compile)


def bench_method(name: str, args, teacher, device, precision) -> dict:
    runner = build_step_runner(name, args, teacher, device, precision, grad_clip=args.grad_clip)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen).to(device)

    for _ in range(args.warmup):
        stack_terms(runner(x, y, epoch=30.0))  # past DKD's warm-up: its full loss
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    peak_rss = _rss_mb()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        stack_terms(runner(x, y, epoch=30.0))  # one host sync per step, as in training
        _sync(device)
        times.append(time.perf_counter() - t0)
        if device.type != "cuda":
            peak_rss = max(peak_rss, _rss_mb())
    step_ms = statistics.median(times) * 1000
    row = {
        "method": name,
        "step_ms": round(step_ms, 3),
        "images_per_s": round(args.batch_size / (step_ms / 1000), 1),
        "peak_mem_mb": round(torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else peak_rss, 1),
        "extra_params": count_parameters(runner.method),
        "mem_kind": "cuda_max_allocated" if device.type == "cuda" else "cpu_rss_peak_sampled",
        "step_ms_p10": round(sorted(times)[len(times) // 10] * 1000, 3),
        "step_ms_p90": round(sorted(times)[(len(times) * 9) // 10] * 1000, 3),
    }
    del runner
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="vit_tiny_patch16_224")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--amp", default="auto", choices=["auto", "bf16", "fp16", "off"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--grad-clip", type=float, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--methods", nargs="+", default=list(METHOD_NAMES), choices=list(METHOD_NAMES))
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    configure_backends(device)
    precision = resolve_precision(args.amp, not args.no_channels_last, device)
    torch.manual_seed(0)
    teacher = build_teacher(args.teacher, args.num_classes, input_size=args.image_size, input_norm=NORM)
    teacher.to(device)
    if precision.channels_last:
        teacher.to(memory_format=torch.channels_last)
    header = {
        "teacher": args.teacher, "student": args.student, "image_size": args.image_size,
        "batch_size": args.batch_size, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": precision.describe(), "channels_last": precision.channels_last,
        "threads": torch.get_num_threads(), "steps": args.steps, "warmup": args.warmup,
        "torch": torch.__version__,
    }
    print(json.dumps({"config": header}), flush=True)
    rows = {}
    for name in args.methods:
        rows[name] = bench_method(name, args, teacher, device, precision)
        print(json.dumps(rows[name]), flush=True)
    ratios = {}
    if "hcd" in rows and "kd" in rows:
        ratios["hcd_over_kd"] = round(rows["hcd"]["step_ms"] / rows["kd"]["step_ms"], 3)
    if "hcd" in rows and "ofa" in rows:
        ratios["hcd_over_ofa"] = round(rows["hcd"]["step_ms"] / rows["ofa"]["step_ms"], 3)
    if ratios:
        ratios["target"] = "hcd/kd <= 1.15, hcd/ofa <= 1.0"
        print(json.dumps({"ratios": ratios}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
