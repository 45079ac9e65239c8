"""Accuracy of every distillation method on sklearn's digits, three seeds each.

Trains one `ce` teacher (an architecture different from the student's), then the same student by
ce, kd, dkd, ofa and hcd with each seed, through `run_job` exactly as a job would run. Prints a
table and a JSON line with mean and standard deviation of the final top-1 per method (and of the
best epoch's, which `training.export: best` exports).

With gradient clipping on (the recipe's `grad_clip`, or `--grad-clip`), the pre-clip gradient norm
of every student step is collected too: the table then says how often clipping fired per method
and the norm's median / 95th percentile / maximum. `--grad-clip 1e4` measures the norms unclipped.

    python benchmarks/digits_accuracy.py                  # ~10-15 min on 2 CPU cores
    python benchmarks/digits_accuracy.py --epochs 2 --seeds 0   # a quick look
    python benchmarks/digits_accuracy.py --dataset digits_hard --grad-clip 5   # clipping at 5.0
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

from hcd_core.engine import RunHooks, run_job  # noqa: E402
from hcd_core.spec import parse_spec  # noqa: E402


def _training(args, epochs: int) -> dict:
    doc = {"epochs": epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": 1,
           "device": args.device, "augment": "none"}
    if args.grad_clip is not None:
        doc["grad_clip"] = args.grad_clip
    return doc


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


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
    p.add_argument("--dataset", default="digits", choices=["digits", "digits_hard"])
    p.add_argument("--grad-clip", type=float, default=None, help="override the recipe's grad_clip (max norm)")
    p.add_argument("--norm-thresholds", type=float, nargs="+", default=[5.0, 10.0, 20.0],
                   help="also report the share of steps whose pre-clip gradient norm exceeds each")
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
    dataset = {"name": args.dataset, "image_size": args.image_size}
    started = time.time()
    teacher_spec = parse_spec({"method": {"name": "ce"}, "student": {"arch": args.teacher}, "dataset": dataset,
                               "training": _training(args, args.teacher_epochs), "seed": 0})
    t = run_job(teacher_spec, output_dir=work / "teacher", checkpoint_dir=work / "teacher-ckpt")
    weights = work / "teacher" / "student.safetensors"
    card = json.loads((work / "teacher" / "model_card.json").read_text())
    top1 = t.final_metrics["val_top1"]
    print(f"teacher {args.teacher}: top-1 {top1:.2f} ({time.time() - started:.0f} s)", flush=True)

    results: dict[str, list[float]] = {m: [] for m in args.methods}
    best: dict[str, list[float]] = {m: [] for m in args.methods}
    norms: dict[str, list[list[float]]] = {m: [] for m in args.methods}  # per run, per step
    clip = parse_spec({"method": {"name": "ce"}, "student": {"arch": args.student}, "dataset": dataset,
                       "training": _training(args, 1)}).resolved().training.grad_clip
    for method in args.methods:
        for seed in args.seeds:
            doc = {"method": {"name": method}, "student": {"arch": args.student}, "dataset": dataset,
                   "training": _training(args, args.epochs), "seed": seed}
            if method != "ce":
                doc["teacher"] = {"arch": args.teacher, "weights": {"source": "file", "path": str(weights)}}
            run_dir = work / f"{method}-{seed}"
            t0 = time.time()
            run_norms: list[float] = []
            norms[method].append(run_norms)
            r = run_job(parse_spec(doc), output_dir=run_dir, checkpoint_dir=run_dir / "ckpt",
                        teacher_weights=weights if method != "ce" else None,
                        teacher_card=card if method != "ce" else None,
                        hooks=RunHooks(on_metrics=lambda pts, out=run_norms: out.extend(
                            p.value for p in pts if p.name == "grad_norm")))
            results[method].append(r.final_metrics["val_top1"])
            best[method].append(r.best_metrics["val_top1"])
            print(f"  {method:4s} seed {seed}: top-1 {r.final_metrics['val_top1']:.2f} ({time.time() - t0:.0f} s)",
                  flush=True)

    summary = {
        m: {"mean": statistics.mean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0, "runs": v,
            "best_mean": statistics.mean(best[m])}
        for m, v in results.items()
    }
    clipping = {}
    for m, runs in norms.items():
        every = [x for run in runs for x in run]
        if not every or not clip:
            continue
        first = [x for run in runs for x in run[:20]]
        clipping[m] = {
            "steps": len(every), "clipped_fraction": sum(x > clip for x in every) / len(every),
            "first20_clipped_fraction": sum(x > clip for x in first) / len(first),
            "median": _percentile(every, 0.5), "p95": _percentile(every, 0.95), "max": max(every),
            "above": {str(th): sum(x > th for x in every) / len(every) for th in args.norm_thresholds},
        }
    print()
    print(f"{args.dataset}, {args.image_size}px; teacher {args.teacher} ({args.teacher_epochs} epochs) top-1 "
          f"{t.final_metrics['val_top1']:.2f}; student {args.student}, {args.epochs} epochs, seeds {args.seeds}")
    print("| method | top-1 mean | std | best-epoch top-1 mean |")
    print("|---|---|---|---|")
    for m, s in summary.items():
        print(f"| {m} | {s['mean']:.2f} | {s['std']:.2f} | {s['best_mean']:.2f} |")
    if clipping:
        print(f"\ngrad_clip {clip}: pre-clip global gradient norm over every student step (all seeds)")
        above = "".join(f" > {th:g} |" for th in args.norm_thresholds)
        print(f"| method | steps | clipped | clipped in steps 1-20 | norm median | p95 | max |{above}")
        print("|---" * (7 + len(args.norm_thresholds)) + "|")
        for m, c in clipping.items():
            shares = "".join(f" {100 * v:.1f}% |" for v in c["above"].values())
            print(f"| {m} | {c['steps']} | {100 * c['clipped_fraction']:.1f}% | "
                  f"{100 * c['first20_clipped_fraction']:.0f}% | {c['median']:.2f} | {c['p95']:.2f} | {c['max']:.2f} |"
                  f"{shares}")
    print(json.dumps({"dataset": args.dataset, "teacher": args.teacher, "teacher_top1": t.final_metrics["val_top1"],
                      "student": args.student, "epochs": args.epochs, "seeds": args.seeds, "grad_clip": clip,
                      "results": summary, "clipping": clipping, "seconds": round(time.time() - started, 1)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
