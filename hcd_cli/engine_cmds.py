"""`hcd train` (one job from a spec file, on this machine) and `hcd eval` (an exported student)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used at run time: `hcd --help` must not pay for pydantic and the engine
    from pydantic import ValidationError

    from hcd_core.spec import JobSpec
    from hcd_core.types import MetricPoint, Progress

EXIT_BAD_INPUT = 2


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("train", help="train one job from a YAML/JSON spec on this machine")
    p.add_argument("spec", type=Path, help="job spec (.yaml, .yml or .json)")
    p.add_argument("--output", "-o", type=Path, required=True,
                   help="folder for student.safetensors, model_card.json, metrics.jsonl")
    p.add_argument("--data-root", type=Path, default=None, help="base folder for relative dataset roots")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in OUTPUT/checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--nproc-per-node", type=int, default=None, metavar="N",
                   help="data-parallel processes, one per GPU (default: the spec's training.devices); "
                        "started with torchrun, gloo on the CPU and NCCL on CUDA")
    p.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="evaluate an exported student (top-1/top-5 as JSON)")
    e.add_argument("weights", type=Path, help="student.safetensors (model_card.json next to it)")
    from hcd_core.spec import DATASET_NAMES  # torch-free

    e.add_argument("--dataset", required=True, choices=DATASET_NAMES)
    e.add_argument("--root", default=None, help="dataset root (cifar/imagefolder)")
    e.add_argument("--image-size", type=int, default=None, help="input size (default: the card's)")
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--card", type=Path, default=None, help="model card (default: next to the weights)")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.set_defaults(func=cmd_eval)


def _fail(message: str) -> int:
    print(f"hcd: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def load_spec_document(path: Path) -> dict[str, Any]:
    text = path.read_text()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        doc = yaml.safe_load(text)
    else:
        doc = json.loads(text)
    if not isinstance(doc, dict):
        raise ValueError("the spec must be a mapping with keys method, student, dataset, ...")
    return doc


def format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        where = ".".join(str(part) for part in e["loc"]) or "(spec)"
        lines.append(f"  {where}: {e['msg']}")
    return "invalid spec:\n" + "\n".join(lines)


def cmd_train(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from hcd_core.spec import FileWeights, parse_spec

    # Validate everything before any model is built.
    try:
        doc = load_spec_document(args.spec)
    except FileNotFoundError:
        return _fail(f"spec file not found: {args.spec}")
    except ValueError as err:  # JSON errors are ValueErrors
        return _fail(f"cannot read spec {args.spec}: {err}")
    except Exception as err:  # yaml.YAMLError
        return _fail(f"cannot read spec {args.spec}: {err}")
    if args.nproc_per_node is not None:
        if args.nproc_per_node < 1:
            return _fail("--nproc-per-node must be at least 1")
        doc = {**doc, "training": {**(doc.get("training") or {}), "devices": args.nproc_per_node}}
    try:
        spec = parse_spec(doc)
    except ValidationError as err:
        return _fail(format_validation_error(err))
    devices = int(spec.resolved().training.devices or 1)
    if devices > 1 and "WORLD_SIZE" not in os.environ:
        return _launch_torchrun(args, devices)

    teacher_weights: Path | None = None
    teacher_card: dict[str, Any] | None = None
    if spec.teacher is not None:
        weights = spec.teacher.weights
        source = weights.source
        if source in ("job", "model"):
            return _fail(
                f"teacher.weights.source {source!r} refers to the service's jobs/models; locally use "
                '{"source": "file", "path": "teacher/student.safetensors"} (or "timm" with internet)'
            )
        if isinstance(weights, FileWeights):  # source == "file"
            teacher_weights = Path(weights.path).expanduser()
            if not teacher_weights.is_absolute():
                teacher_weights = args.spec.resolve().parent / teacher_weights
            if not teacher_weights.is_file():
                return _fail(f"teacher.weights.path: file not found: {teacher_weights}")
            card_path = teacher_weights.with_name("model_card.json")
            if card_path.is_file():
                teacher_card = json.loads(card_path.read_text())

    from hcd_core.checkpoint import CHECKPOINT_NAME

    checkpoint_dir = args.output / "checkpoint"
    if (checkpoint_dir / CHECKPOINT_NAME).is_file() and not args.resume:
        return _fail(f"{args.output} holds a checkpoint of an earlier run: pass --resume, or choose another --output")

    return _run_train(args, spec, teacher_weights, teacher_card, checkpoint_dir)


STOP_REQUEST = ".stop-request"  # in the output folder: rank 0 of a torchrun'd `hcd train` stops there


def _launch_torchrun(args: argparse.Namespace, devices: int) -> int:
    """Run this same command in `devices` processes on this machine through torchrun (single node;
    several nodes: run torchrun yourself, see docs/scaling.md).

    torchrun turns a Ctrl-C into shutting its workers down, so it runs in a session of its own: a
    Ctrl-C here asks rank 0 to stop after the step (a file in the output folder; the ranks
    checkpoint and end, exit 130), a second one ends torchrun and the ranks at once.
    """
    import subprocess

    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={devices}",
               "-m", "hcd_cli.main", "train", str(args.spec), "--output", str(args.output),
               "--nproc-per-node", str(devices)]
    if args.data_root is not None:
        command += ["--data-root", str(args.data_root)]
    command += ["--resume"] * args.resume + ["--no-progress"] * args.no_progress
    stop_file = args.output / STOP_REQUEST
    stop_file.unlink(missing_ok=True)
    run = subprocess.Popen(command, start_new_session=True)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop_file.exists():
            os.killpg(run.pid, signal.SIGTERM)
            return
        args.output.mkdir(parents=True, exist_ok=True)
        stop_file.touch()
        print("\nstopping after this step (Ctrl-C again to abort)...", file=sys.stderr)

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        os.killpg(run.pid, signal.SIGTERM)  # the ranks must not outlive this command

    handlers = {signal.SIGINT: on_sigint, signal.SIGTERM: on_sigterm}
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()} if _main_thread() else {}
    try:
        code = run.wait()
    except BaseException:
        os.killpg(run.pid, signal.SIGTERM)
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if stop_file.exists():
        stop_file.unlink()
        return 130 if code == 0 else code
    return code


def _run_train(
    args: argparse.Namespace, spec: JobSpec, teacher_weights: Path | None, teacher_card: dict[str, Any] | None,
    checkpoint_dir: Path,
) -> int:
    from tqdm import tqdm

    from hcd_core.engine import RunHooks, run_job
    from hcd_core.errors import CheckpointMismatch, DatasetUnavailable

    bar = None
    shown: dict[str, float] = {}
    stop = {"requested": False}

    rank = int(os.environ.get("RANK", "0"))  # under torchrun, rank 0 alone reports

    def on_progress(p: Progress) -> None:
        nonlocal bar
        if args.no_progress or rank:
            return
        if bar is None:
            bar = tqdm(total=p.total_steps, initial=p.step, unit="step", dynamic_ncols=True)
        bar.set_description(f"epoch {min(p.epoch + 1, p.epochs)}/{p.epochs}")
        bar.update(p.step - bar.n)

    def on_metrics(points: list[MetricPoint]) -> None:
        for pt in points:
            if pt.name in ("loss", "lr", "val_top1"):
                shown["acc" if pt.name == "val_top1" else pt.name] = pt.value
        if bar is not None:
            bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        if not rank:
            print("\nstopping after this step (Ctrl-C again to abort)...", file=sys.stderr)

    stop_file = args.output / STOP_REQUEST  # under torchrun, the launching command's Ctrl-C

    def should_stop() -> bool:
        return stop["requested"] or (rank == 0 and "WORLD_SIZE" in os.environ and stop_file.exists())

    hooks = RunHooks(on_metrics=on_metrics, on_progress=on_progress, should_stop=should_stop, stop_check_every=1)
    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    try:
        result = run_job(spec, output_dir=args.output, checkpoint_dir=checkpoint_dir,
                         teacher_weights=teacher_weights, teacher_card=teacher_card, hooks=hooks,
                         data_root=args.data_root)
    except (CheckpointMismatch, DatasetUnavailable, FileNotFoundError, ValueError) as err:
        return _fail(str(err))
    finally:
        if bar is not None:
            bar.close()
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    under_torchrun = "TORCHELASTIC_RUN_ID" in os.environ  # torchrun counts any other exit code as a failure
    if rank:
        return 130 if result.status == "stopped" and not under_torchrun else 0
    out = {"status": result.status, "epoch": result.epoch, "step": result.step,
           "final": result.final_metrics, "best": result.best_metrics,
           "artifacts": {k: str(v) for k, v in result.artifacts.items()}}
    print(json.dumps(out))
    if result.status == "stopped":
        print(f"stopped; continue with: hcd train {args.spec} --output {args.output} --resume", file=sys.stderr)
        return 0 if under_torchrun else 130
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def cmd_eval(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from hcd_core.errors import DatasetUnavailable
    from hcd_core.evaluate import evaluate_exported

    if not args.weights.is_file():
        return _fail(f"weights not found: {args.weights}")
    try:
        metrics = evaluate_exported(args.weights, dataset=args.dataset, root=args.root, image_size=args.image_size,
                                    batch_size=args.batch_size, card_path=args.card, device=args.device)
    except ValidationError as err:
        return _fail(format_validation_error(err))
    except (DatasetUnavailable, FileNotFoundError, ValueError, RuntimeError) as err:
        return _fail(str(err))
    print(json.dumps({"top1": metrics["val_top1"], "top5": metrics["val_top5"], "loss": metrics["val_loss"]}))
    return 0
