"""Accuracy of every distillation method on sklearn's digits, three seeds each.

Trains one `ce` teacher (an architecture different from the student's), then the same student by
ce, kd, dkd, ofa and hcd with each seed, through `run_job` exactly as a job would run. Prints a
table and a JSON line with mean and standard deviation of the final top-1 per method.

    python benchmarks/digits_accuracy.py                  # ~10-15 min on 2 CPU cores
    python benchmarks/digits_accuracy.py --epochs 2 --seeds 0   # a quick look
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hcd_core.engine import run_job  # noqa: E402
from hcd_core.spec import parse_spec  # noqa: E402


def _training(args, epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": 1,
            "device": args.device, "augment": "none"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="test_convnext")
    p.add_argument("--student", default="test_vit")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--teacher-epochs", type=int, default=15)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=["ce", "kd", "dkd", "ofa", "hcd"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--workdir", type=Path, default=None, help="keep runs here (default: a temp folder)")
    args = p.parse_args(argv)
    if args.student == args.teacher:
        p.error("the teacher must have a different architecture from the student")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    work = args.workdir or Path(tempfile.mkdtemp(prefix="hcd-digits-"))
    dataset = {"name": "digits", "image_size": args.image_size}
    started = time.time()
    teacher_spec = parse_spec({"method": {"name": "ce"}, "student": {"arch": args.teacher}, "dataset": dataset,
                               "training": _training(args, args.teacher_epochs), "seed": 0})
    t = run_job(teacher_spec, output_dir=work / "teacher", checkpoint_dir=work / "teacher-ckpt")
    weights = work / "teacher" / "student.safetensors"
    card = json.loads((work / "teacher" / "model_card.json").read_text())
    top1 = t.final_metrics["val_top1"]
    print(f"teacher {args.teacher}: top-1 {top1:.2f} ({time.time() - started:.0f} s)", flush=True)

    results: dict[str, list[float]] = {m: [] for m in args.methods}
    for method in args.methods:
        for seed in args.seeds:
            doc = {"method": {"name": method}, "student": {"arch": args.student}, "dataset": dataset,
                   "training": _training(args, args.epochs), "seed": seed}
            if method != "ce":
                doc["teacher"] = {"arch": args.teacher, "weights": {"source": "file", "path": str(weights)}}
            run_dir = work / f"{method}-{seed}"
            t0 = time.time()
            r = run_job(parse_spec(doc), output_dir=run_dir, checkpoint_dir=run_dir / "ckpt",
                        teacher_weights=weights if method != "ce" else None,
                        teacher_card=card if method != "ce" else None)
            results[method].append(r.final_metrics["val_top1"])
            print(f"  {method:4s} seed {seed}: top-1 {r.final_metrics['val_top1']:.2f} ({time.time() - t0:.0f} s)",
                  flush=True)

    summary = {
        m: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v}
        for m, v in results.items()
    }
    print()
    print(f"digits, {args.image_size}px; teacher {args.teacher} ({args.teacher_epochs} epochs) top-1 "
          f"{t.final_metrics['val_top1']:.2f}; student {args.student}, {args.epochs} epochs, seeds {args.seeds}")
    print("| method | top-1 mean | std |")
    print("|---|---|---|")
    for m, s in summary.items():
        print(f"| {m} | {s['mean']:.2f} | {s['std']:.2f} |")
    print(json.dumps({"teacher": args.teacher, "teacher_top1": t.final_metrics["val_top1"], "student": args.student,
                      "epochs": args.epochs, "seeds": args.seeds, "results": summary,
                      "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
