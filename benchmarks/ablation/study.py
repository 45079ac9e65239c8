"""The ablation study: teachers, tuning on a holdout split, final runs on the test sets, tables.

    python benchmarks/ablation/study.py run [--out runs/ablation] [--parallel 2] [--stage all|teachers|tune|final]
    python benchmarks/ablation/study.py report [--out runs/ablation]      # markdown tables on stdout

Everything is read from `study.yaml` next to this file. Every run is a `hcd sweep` (resumable: an
interrupted study continues where it stopped). Tuning evaluates on `dataset.eval_split: holdout` (a
fixed 20% of the training set) with the tune seeds; each method keeps the configuration with the best
mean holdout top-1 over all tasks and pairs; the final runs use it on the test sets with the final
seeds. HCD's current defaults also get final runs when tuning chose otherwise, so that a change of
default can be judged on the test sets (mean over tasks, and no task worse by more than one std).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from hcd_core.sweep import cell_slug  # noqa: E402

HCD = [sys.executable, "-m", "hcd_cli.main"]


def load_plan(path: Path) -> dict[str, Any]:
    return dict(yaml.safe_load(path.read_text()))


def _spec(plan: dict[str, Any], task: str, student: str, method: dict[str, Any], *, epochs: int,
          eval_split: str = "test", teacher: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "method": method, "student": {"arch": student},
        "dataset": {**plan["tasks"][task]["dataset"], "eval_split": eval_split},
        "training": {**plan["training"], "epochs": epochs}, "seed": 0,
    }
    if teacher is not None:
        spec["teacher"] = teacher
    return spec


def _sweep(spec: dict[str, Any], grid: dict[str, list[Any]], seeds: list[int], out: Path, parallel: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    spec_file = out / "base.json"
    spec_file.write_text(json.dumps(spec, indent=2))
    command = [*HCD, "sweep", str(spec_file), "--seeds", ",".join(map(str, seeds)), "--output", str(out),
               "--parallel", str(parallel)]
    for path, values in grid.items():
        command += ["--grid", f"{path}=" + ",".join(json.dumps(v) if not isinstance(v, str) else v for v in values)]
    started = time.monotonic()
    result = subprocess.run(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    print(f"  {out.relative_to(out.parents[3])}: exit {result.returncode} in {time.monotonic() - started:.0f} s",
          flush=True)
    if result.returncode not in (0, 1):
        raise SystemExit(f"hcd sweep failed for {out}:\n{result.stderr[-2000:]}")


def _summary(out: Path) -> list[dict[str, Any]]:
    path = out / "summary.json"
    if not path.is_file():
        return []
    cells = json.loads(path.read_text())
    return list(cells["cells"] if isinstance(cells, dict) else cells)


def _teacher_weights(out: Path, task: str, arch: str) -> dict[str, Any]:
    path = out / "teachers" / task / cell_slug({"student.arch": arch}) / "seed-0" / "student.safetensors"
    return {"arch": arch, "weights": {"source": "file", "path": str(path)}}


def stage_teachers(plan: dict[str, Any], out: Path, parallel: int) -> None:
    for task, conf in plan["tasks"].items():
        archs = sorted({plan["pairs"][pair]["teacher"] for t, pair in combos(plan) if t == task})
        if not archs:
            continue
        epochs = round(conf["epochs"] * plan["teacher_epochs_factor"])
        spec = _spec(plan, task, archs[0], {"name": "ce"}, epochs=epochs)
        _sweep(spec, {"student.arch": archs}, [0], out / "teachers" / task, parallel)


def combos(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """The (task, pair) combinations the plan runs: `combos` when it lists them, else every task x pair."""
    if plan.get("combos"):
        return [(task, pair) for task, pair in plan["combos"]]
    return [(task, pair) for task in plan["tasks"] for pair in plan["pairs"]]


def tune_combos(plan: dict[str, Any]) -> list[tuple[str, str]]:
    """Where tuning runs: `tune_combos` when the plan lists them, else every combination it runs."""
    return [(task, pair) for task, pair in plan["tune_combos"]] if plan.get("tune_combos") else combos(plan)


def _method_spec(plan: dict[str, Any], name: str) -> dict[str, Any]:
    return {"name": name, **plan["methods"][name].get("method", {})}


def stage_tune(plan: dict[str, Any], out: Path, parallel: int) -> None:
    for task, pair_name in tune_combos(plan):
        conf, pair = plan["tasks"][task], plan["pairs"][pair_name]
        teacher = _teacher_weights(out, task, pair["teacher"])
        for method, mconf in plan["methods"].items():
            if not mconf.get("grid"):
                continue
            spec = _spec(plan, task, pair["student"], _method_spec(plan, method), epochs=conf["epochs"],
                         eval_split="holdout", teacher=teacher)
            _sweep(spec, mconf["grid"], plan["tune_seeds"], out / "tune" / task / pair_name / method, parallel)


def tuning_table(plan: dict[str, Any], out: Path) -> dict[str, list[tuple[dict[str, Any], float, int]]]:
    """Per method: (config values, mean holdout top-1 over tasks x pairs, runs), best first."""
    table: dict[str, list[tuple[dict[str, Any], float, int]]] = {}
    for method, mconf in plan["methods"].items():
        if not mconf.get("grid"):
            continue
        scores: dict[str, list[float]] = {}
        values: dict[str, dict[str, Any]] = {}
        for task, pair_name in tune_combos(plan):
            for cell in _summary(out / "tune" / task / pair_name / method):
                key = json.dumps(cell["values"], sort_keys=True)
                values[key] = cell["values"]
                if cell["val_top1"]["mean"] is not None:
                    scores.setdefault(key, []).append(cell["val_top1"]["mean"])
        rows = [(values[k], statistics.fmean(v), len(v)) for k, v in scores.items()]
        table[method] = sorted(rows, key=lambda r: -r[1])
    return table


def _resolved(method: dict[str, Any]) -> Any:
    """A method spec with its defaults filled in (two specs may spell the same configuration)."""
    from pydantic import TypeAdapter

    from hcd_core.method_configs import MethodConfig

    return TypeAdapter(MethodConfig).validate_python(method)


def chosen_configs(plan: dict[str, Any], out: Path) -> dict[str, dict[str, Any]]:
    """Per final row name: the method spec to run (tuned; plus HCD's defaults when tuning chose otherwise)."""
    tuned = tuning_table(plan, out)
    chosen: dict[str, dict[str, Any]] = {}
    for method in plan["methods"]:
        spec = _method_spec(plan, method)
        if method in tuned and tuned[method]:
            for path, value in tuned[method][0][0].items():
                spec[path.split(".", 1)[1]] = value
        chosen[method] = spec
    if _resolved(chosen["hcd"]) != _resolved(_method_spec(plan, "hcd")):
        chosen["hcd (defaults)"] = _method_spec(plan, "hcd")
    chosen.update(plan.get("extra_rows") or {})  # fixed configurations reported beside the tuned ones
    return chosen


def stage_final(plan: dict[str, Any], out: Path, parallel: int) -> None:
    """Per task and pair: one sweep over every distillation row (a grid over the whole `method`) x the
    final seeds, so that `--parallel` stays busy; `ce` (no teacher) in a sweep of its own."""
    chosen = chosen_configs(plan, out)
    distilled = [spec for spec in chosen.values() if spec["name"] != "ce"]
    for task, pair_name in combos(plan):
        conf, pair = plan["tasks"][task], plan["pairs"][pair_name]
        where = out / "final" / task / pair_name
        spec = _spec(plan, task, pair["student"], {"name": "ce"}, epochs=conf["epochs"])
        _sweep(spec, {}, plan["final_seeds"], where / "ce", parallel)
        teacher = _teacher_weights(out, task, pair["teacher"])
        spec = _spec(plan, task, pair["student"], distilled[0], epochs=conf["epochs"], teacher=teacher)
        _sweep(spec, {"method": distilled}, plan["final_seeds"], where / "distilled", parallel)


def _final_cell(out: Path, task: str, pair_name: str, method_spec: dict[str, Any]) -> dict[str, Any] | None:
    where = out / "final" / task / pair_name
    if method_spec["name"] == "ce":
        cells = _summary(where / "ce")
        return cells[0] if cells else None
    return next((c for c in _summary(where / "distilled") if c["values"].get("method") == method_spec), None)


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell or cell["val_top1"]["mean"] is None:
        return "-"
    return f"{cell['val_top1']['mean']:.2f} ± {cell['val_top1']['std']:.2f}"


def report(plan: dict[str, Any], out: Path) -> str:
    chosen = chosen_configs(plan, out)
    lines = ["## Final runs: test top-1 (%), mean ± std over seeds " + str(plan["final_seeds"]), ""]
    overall: dict[str, list[float]] = {row: [] for row in chosen}
    per_task: dict[str, dict[str, list[float]]] = {task: {row: [] for row in chosen} for task in plan["tasks"]}
    spreads: dict[str, dict[str, list[float]]] = {task: {row: [] for row in chosen} for task in plan["tasks"]}
    for task in plan["tasks"]:
        pairs = [pair for t, pair in combos(plan) if t == task]
        if not pairs:
            continue
        cards = sorted((out / "final" / task).rglob("model_card.json"))
        test_size = json.loads(cards[0].read_text()).get("val_size") if cards else None
        teacher_accs = []
        for arch in sorted({plan["pairs"][p]["teacher"] for p in pairs}):
            card = out / "teachers" / task / cell_slug({"student.arch": arch}) / "seed-0" / "model_card.json"
            if card.is_file():
                teacher_accs.append(f"{arch} {json.loads(card.read_text())['final_metrics']['val_top1']:.2f}")
        lines += [f"### {task} (test set: {test_size or '?'} images; teachers: {', '.join(teacher_accs)})", "",
                  "| method | " + " | ".join(pairs) + " |", "|---|" + "---|" * len(pairs)]
        for row in chosen:
            cells = []
            for pair_name in pairs:
                cell = _final_cell(out, task, pair_name, chosen[row])
                cells.append(_fmt(cell))
                if cell and cell["val_top1"]["mean"] is not None:
                    overall[row].append(cell["val_top1"]["mean"])
                    per_task[task][row].append(cell["val_top1"]["mean"])
                    spreads[task][row].append(cell["val_top1"]["std"])
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Mean over tasks and pairs", "", "| method | config | mean test top-1 | " +
              " | ".join(plan["tasks"]) + " |", "|---|---|---|" + "---|" * len(plan["tasks"])]
    for row, spec in chosen.items():
        if not overall[row]:
            continue
        config = ", ".join(f"{k}={v}" for k, v in spec.items() if k != "name") or "-"
        tasks = " | ".join(f"{statistics.fmean(per_task[t][row]):.2f}" if per_task[t][row] else "-"
                           for t in plan["tasks"])
        lines.append(f"| {row} | {config} | {statistics.fmean(overall[row]):.2f} | {tasks} |")
    lines += ["", "## Tuning: mean holdout top-1 (%) over tasks and pairs, seeds " + str(plan["tune_seeds"]), ""]
    for method, rows in tuning_table(plan, out).items():
        lines.append(f"- **{method}**: " + "; ".join(
            f"{', '.join(f'{k.split(chr(46), 1)[1]}={v}' for k, v in values.items())}: {score:.2f} ({n} runs)"
            for values, score, n in rows))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["run", "report"])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "ablation")
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--stage", choices=["all", "teachers", "tune", "final"], default="all")
    parser.add_argument("--plan", type=Path, default=HERE / "study.yaml")
    args = parser.parse_args()
    plan, out = load_plan(args.plan), args.out.resolve()
    if args.command == "report":
        print(report(plan, out), end="")
        return
    started = time.monotonic()
    for stage, run in (("teachers", stage_teachers), ("tune", stage_tune), ("final", stage_final)):
        if args.stage in ("all", stage):
            print(f"stage {stage}", flush=True)
            run(plan, out, args.parallel)
    print(f"done in {(time.monotonic() - started) / 60:.1f} min", flush=True)


if __name__ == "__main__":
    main()
