"""Count the aten ops one training step executes, per method, on CPU: a proxy for CUDA kernel launches.

On the GPU the HCD step is host-bound (launch count, not FLOPs, sets the step time), so the number
of ops each method adds over KD is the figure to drive down. One step = teacher forward, student
forward, method terms, backward, optimiser step and the one host sync, exactly as `StepRunner` does
it, profiled with torch.profiler after a few warm-up steps.

To look like the CUDA run: bf16 autocast (CPU autocast; its cast list is close to CUDA's),
channels_last, and the optimiser forced to its `foreach` (multi-tensor) path, which PyTorch picks by
default on CUDA but not on CPU (where it would loop over every parameter).

Counted per method:
  top      aten ops called directly from Python / autograd (not from inside another aten op)
  leaf     aten ops with no aten op inside them (after the exclusions below)
  kernels  ops that do work with no aten op inside them doing it (views, reshapes and empty
           allocations are not work): ~CUDA launches. CPU-only helpers are left out (Python scalar
           operands converted to tensors, reduction outputs pre-filled) and `_foreach_*` and batch
           norm ops count once (CUDA: a few fused launches; CPU: a loop or several helper ops).
  syncs    data-dependent-size ops (boolean indexing's nonzero...): each a host sync on CUDA.
           (`.item()`/`.tolist()` syncs are not seen: on CPU tensors they need no device op.)
and the same three for the method alone (method_*): its forward and backward on fixed student and
teacher outputs, i.e. the loss-side ops without the backbones and the optimiser. `--time-reps N`
adds the median wall time of the method alone (at batch 2 on CPU: mostly per-op host overhead).

    python benchmarks/op_count.py                              # swin_tiny -> resnet18, 224 px, batch 2
    python benchmarks/op_count.py --methods kd hcd --breakdown 40   # per-op diff of hcd over kd/ofa
    python benchmarks/op_count.py --method-ops --time-reps 50      # + hcd's own ops, method timings
"""

from __future__ import annotations

import argparse
import collections
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from engine_step import NORM, build_step_runner  # noqa: E402  (sibling script: the same step runner)
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from hcd_core.spec import METHOD_NAMES  # noqa: E402
from hcd_core.teacher import build_teacher  # noqa: E402
from hcd_core.training import Precision, StepRunner, stack_terms  # noqa: E402

# Ops that only make metadata (no kernel on CUDA).
METADATA_OPS = {
    "aten::view", "aten::_unsafe_view", "aten::reshape", "aten::as_strided", "aten::expand", "aten::t",
    "aten::transpose", "aten::permute", "aten::unsqueeze", "aten::squeeze", "aten::select", "aten::slice",
    "aten::narrow", "aten::detach", "aten::alias", "aten::unbind", "aten::split", "aten::chunk",
    "aten::empty", "aten::empty_like", "aten::empty_strided", "aten::resize_", "aten::lift_fresh",
    "aten::result_type", "aten::is_nonzero", "aten::_reshape_alias", "aten::view_as", "aten::expand_as",
    "aten::flatten", "aten::numpy_T", "aten::set_", "aten::_has_compatible_shallow_copy_type",
    "aten::detach_", "aten::squeeze_", "aten::unsqueeze_", "aten::item", "aten::_local_scalar_dense",
    "aten::is_same_size", "aten::contiguous", "aten::resolve_conj", "aten::resolve_neg", "aten::to",
    "aten::_to_copy_if_needed", "aten::as_strided_",
}
# Ops whose output size depends on the data: on CUDA they wait for the GPU (a host sync).
SYNCING_OPS = {"aten::nonzero", "aten::masked_select", "aten::_unique2", "aten::unique_consecutive"}


# Ops that CUDA runs as one launch (or a few) but CPU as a loop or several helper ops: counted once.
FUSED_ON_CUDA_PREFIXES = ("aten::_foreach_", "aten::native_batch_norm")
REDUCTIONS = {"aten::sum", "aten::mean", "aten::amax", "aten::amin", "aten::max", "aten::min", "aten::prod"}


def _aten_parent(event):
    parent = event.cpu_parent
    while parent is not None and not parent.name.startswith("aten::"):
        parent = parent.cpu_parent
    return parent


def _fused_on_cuda(event) -> bool:
    return event.name.startswith(FUSED_ON_CUDA_PREFIXES)


def _cpu_artifact(event) -> bool:
    """Helper ops CPU kernels run that CUDA does not: converting a Python scalar operand inside a
    binary op (CUDA passes it as a kernel argument) and pre-filling a reduction's output."""
    parent = _aten_parent(event)
    if parent is None:
        return False
    if event.name == "aten::to" and event.input_shapes and event.input_shapes[0] == []:
        return True
    return event.name == "aten::fill_" and parent.name in REDUCTIONS


def _skipped(event) -> bool:
    """Inside an op counted once, or part of a CPU-only helper."""
    node = event
    while node is not None:
        if _cpu_artifact(node):
            return True
        parent = _aten_parent(node)
        if parent is not None and _fused_on_cuda(parent):
            return True
        node = parent
    return False


def build_runner(name: str, args, teacher) -> tuple[StepRunner, torch.Tensor, torch.Tensor]:
    precision = Precision("cpu", torch.bfloat16 if args.amp == "bf16" else None, use_scaler=False,
                          channels_last=not args.no_channels_last)
    runner = build_step_runner(name, args, teacher, torch.device("cpu"), precision)
    for group in runner.optimizer.param_groups:  # CUDA's default; CPU would loop per parameter
        group["foreach"] = True
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=gen)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=gen)
    return runner, x, y


def _profile(fn) -> dict:
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    return _count(prof)


def count_step(runner: StepRunner, x: torch.Tensor, y: torch.Tensor) -> dict:
    """The whole training step."""
    return _profile(lambda: stack_terms(runner(x, y, epoch=30.0)))


def method_step(runner: StepRunner, x: torch.Tensor, y: torch.Tensor):
    """A function running the method alone (its forward and backward) on fixed student/teacher
    outputs made leaves."""
    p = runner.precision
    x = p.to_input(x)
    with p.autocast():
        t_out = runner.teacher(x) if runner.teacher is not None else None
        s_out = runner.student(x, with_features=bool(getattr(runner.method, "needs_features", False)))
    s_out.logits = s_out.logits.detach().requires_grad_()
    if s_out.features is not None:
        s_out.features = [f.detach().requires_grad_() for f in s_out.features]

    def run():
        with p.autocast():
            terms = runner.method(s_out, t_out, y, epoch=30.0, label_smoothing=runner.label_smoothing)
        terms["loss"].backward()

    return run


def count_method(runner: StepRunner, x: torch.Tensor, y: torch.Tensor) -> dict:
    return _profile(method_step(runner, x, y))


def time_method(runner: StepRunner, x: torch.Tensor, y: torch.Tensor, reps: int) -> float:
    """Median ms of the method alone: on CPU mostly per-op host overhead, as on a host-bound GPU."""
    run = method_step(runner, x, y)
    run()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def _count(prof) -> dict:
    events = [e for e in prof.events() if e.name.startswith("aten::")]
    top, leaf, kernels, syncs = (collections.Counter() for _ in range(4))
    work: dict[int, bool] = {}  # id(event) -> it or an aten op inside it does real work

    def does_work(e) -> bool:
        key = id(e)
        if key not in work:
            inner = [c for c in e.cpu_children if c.name.startswith("aten::") and not _cpu_artifact(c)]
            work[key] = _fused_on_cuda(e) or any(map(does_work, inner)) or e.name not in METADATA_OPS
        return work[key]

    for e in events:
        if _aten_parent(e) is None:
            top[e.name] += 1
        if e.name in SYNCING_OPS:
            syncs[e.name] += 1
        if _skipped(e):
            continue
        inner = [c for c in e.cpu_children if c.name.startswith("aten::") and not _cpu_artifact(c)]
        if not inner or _fused_on_cuda(e):
            leaf[e.name] += 1
        # A kernel: an op doing work with no aten op inside it doing the work.
        if does_work(e) and (_fused_on_cuda(e) or not any(map(does_work, inner))):
            kernels[e.name] += 1
    return {"top": top, "leaf": leaf, "kernels": kernels, "syncs": syncs}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="swin_tiny_patch4_window7_224")
    p.add_argument("--student", default="resnet18")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--num-classes", type=int, default=100)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--amp", default="bf16", choices=["bf16", "off"])
    p.add_argument("--no-channels-last", action="store_true")
    p.add_argument("--methods", nargs="+", default=["kd", "ofa", "hcd"], choices=list(METHOD_NAMES))
    p.add_argument("--breakdown", type=int, default=30, help="rows of the per-op diff of hcd over kd")
    p.add_argument("--method-ops", action="store_true", help="list the HCD method's own kernel ops")
    p.add_argument("--time-reps", type=int, default=0,
                   help="also time the method alone (forward + backward) over this many runs; median ms")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    teacher = build_teacher(args.teacher, args.num_classes, input_size=args.image_size, input_norm=NORM)
    if not args.no_channels_last:
        teacher.to(memory_format=torch.channels_last)
    counts = {}
    for name in args.methods:
        runner, x, y = build_runner(name, args, teacher)
        for _ in range(args.warmup):
            stack_terms(runner(x, y, epoch=30.0))
        counts[name] = count_step(runner, x, y)
        alone = count_method(runner, x, y)
        row = {"method": name, **{k: sum(v.values()) for k, v in counts[name].items()},
               **{f"method_{k}": sum(v.values()) for k, v in alone.items()}}
        if args.time_reps:
            row["method_ms_median"] = round(time_method(runner, x, y, args.time_reps), 3)
        if args.method_ops and name == "hcd":
            print("# hcd method alone (forward + backward), kernel ops:")
            for op, n in alone["kernels"].most_common():
                print(f"  {n:4d}  {op}")
        print(json.dumps(row), flush=True)

    if args.breakdown and "hcd" in counts:
        for base in ("kd", "ofa"):
            if base not in counts:
                continue
            diff = counts["hcd"]["kernels"] - counts[base]["kernels"]
            fewer = counts[base]["kernels"] - counts["hcd"]["kernels"]
            print(f"# kernel-op counts hcd minus {base} (total {sum(diff.values()) - sum(fewer.values()):+d})")
            for op, n in diff.most_common(args.breakdown):
                print(f"  +{n:4d}  {op}")
            for op, n in fewer.most_common(args.breakdown):
                print(f"  -{n:4d}  {op}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
