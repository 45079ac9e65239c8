"""`hcd sweep`: a grid of spec values times a list of seeds, run on this machine or on the service.

    hcd sweep SPEC --grid PATH=V1,V2,... [--grid ...] --seeds 0,1,2 --output DIR [--parallel N] [--data-root DIR]
    hcd sweep submit SPEC --grid ... --seeds ... [--metadata K=V] [--idempotency-key K] [--json]
    hcd sweep status ID [--json]

A local sweep runs every cell and seed as its own `hcd train` subprocess into DIR/<cell>/seed-<s>,
at most N at once, and can be rerun to finish it: finished runs (a model_card.json) are kept, runs
with a checkpoint are resumed, failed and never-started runs are run again. It writes DIR/sweep.json
(every run) and DIR/summary.json / DIR/summary.md (every cell: mean ± std of val_top1 over its seeds).

Grid values are YAML flow scalars, read as if the whole list were `[V1,V2,...]`: `4` is an int, `0.1`
and `1e-3` floats, `true`/`false` booleans, anything else a string (`on`/`off`/`yes`/`no` stay strings);
`[0.5,0.5]` is a list value, and a string holding a comma is quoted: `--grid 'student.arch="a,b"'`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where used: `hcd --help` pays for neither the spec nor the HTTP client
    import yaml

    from hcd_core.sweep import Cell

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
SWEEP_FILE, SUMMARY_JSON, SUMMARY_MD, LOCK_FILE = "sweep.json", "summary.json", "summary.md", ".sweep.lock"
RUN_SPEC, RUN_LOG, CARD = "spec.json", "train.log", "model_card.json"
CHECKPOINT = Path("checkpoint") / "checkpoint.pt"  # hcd_core.checkpoint.CHECKPOINT_NAME under OUTPUT/checkpoint
POLL_S = 0.1

USAGE = """
  hcd sweep SPEC --grid PATH=V1,V2,... [--grid ...] --seeds S1,S2,... --output DIR [--parallel N] [--data-root DIR]
  hcd sweep submit SPEC --grid PATH=V1,V2,... [--grid ...] --seeds S1,S2,... [--metadata KEY=VALUE]
                        [--idempotency-key KEY] [--json]
  hcd sweep status ID [--json]"""

DESCRIPTION = """\
Run a grid of spec values times seeds: every combination of the --grid values is a cell, and every
cell runs once per seed.

  hcd sweep SPEC ...          runs the sweep on this machine: each run is an `hcd train` subprocess
                              writing DIR/<cell>/seed-<s>; rerun the same command to finish a sweep
                              (finished runs are kept, checkpointed ones resumed, failed ones retried).
                              Writes DIR/sweep.json, DIR/summary.json and DIR/summary.md.
                              Exit 0: all runs succeeded, 1: some failed, 2: bad input, 130: interrupted.
  hcd sweep submit SPEC ...   submits the sweep to the service (HCD_SERVER_URL, HCD_API_KEY); prints its id.
  hcd sweep status ID         shows a submitted sweep's cells (mean ± std of val_top1 over their seeds).

Grid values are read as YAML: 4 is an int, 0.1 and 1e-3 are floats, true/false booleans, other words
strings (on/off/yes/no too); [0.5,0.5,0.5] is a list value; quote a string holding a comma: 'a="x,y"'.
A spec file named `submit` or `status` is given as ./submit or ./status."""


class BadInput(Exception):
    """A user error found before anything runs: printed as one line plus `lines`, exit 2."""

    def __init__(self, message: str, lines: Sequence[str] = ()):
        super().__init__(message)
        self.lines = list(lines)


# --------------------------------------------------------------------------- parsing the arguments
def _grid_loader() -> type[yaml.SafeLoader]:
    """A SafeLoader with YAML 1.2's booleans (true/false only) and floats without a dot (1e-3)."""
    import yaml

    class GridLoader(yaml.SafeLoader):
        pass

    bool_tag, float_tag = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:float"
    GridLoader.yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != bool_tag]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }
    GridLoader.add_implicit_resolver(bool_tag, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
    GridLoader.add_implicit_resolver(
        float_tag, re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$"), list("-+0123456789.")
    )
    return GridLoader


def yaml_problem(err: Exception) -> str:
    """One line for a YAML error: its problem and where, without the quoted snippet."""
    problem, mark = getattr(err, "problem", None), getattr(err, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} (line {mark.line + 1}, column {mark.column + 1})"
    return str(problem or " ".join(str(err).split()))


def parse_grid_values(text: str) -> list[Any]:
    """`4,0.1,mlp,[0.5,0.5]` -> [4, 0.1, "mlp", [0.5, 0.5]] (see the module's docstring)."""
    import yaml

    try:
        values = yaml.load(f"[{text}]", Loader=_grid_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as err:
        raise BadInput(f"cannot read the values {text!r} as YAML: {getattr(err, 'problem', None) or err} "
                       "(quote values that hold commas)") from None
    if not isinstance(values, list):  # pragma: no cover - a flow sequence always loads as a list
        raise BadInput(f"cannot read the values {text!r}")
    return values


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    grid: dict[str, list[Any]] = {}
    for item in items:
        path, sep, values = item.partition("=")
        path = path.strip()
        if not sep or not path:
            raise BadInput(f"--grid expects PATH=V1,V2,..., got {item!r}")
        if path in grid:
            raise BadInput(f"--grid {path} is given twice: list all its values in one --grid")
        try:
            grid[path] = parse_grid_values(values)
        except BadInput as err:
            raise BadInput(f"--grid {path}: {err}") from None
    return grid


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        try:
            seeds.append(int(part.strip()))
        except ValueError:
            raise BadInput(f"--seeds expects integers such as 0,1,2, got {text!r}") from None
    return seeds


def parse_metadata(items: Sequence[str]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise BadInput(f"--metadata expects KEY=VALUE, got {item!r}")
        out[key] = value
    return out


# --------------------------------------------------------------------------- tables
def _fmt_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _fmt_num(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "-"


def fmt_summary(summary: Any) -> str:
    """{"mean", "std", "runs"} as `81.23 ± 1.05`, or `-` when no run has the metric."""
    if not isinstance(summary, Mapping) or not isinstance(summary.get("mean"), (int, float)):
        return "-"
    return f"{_fmt_num(summary['mean'])} ± {_fmt_num(summary.get('std'))}"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A Markdown table padded to line up in a terminal too."""
    def cell(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    table = [[cell(h) for h in header]] + [[cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in table]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def grid_paths(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    paths: list[str] = []
    for c in cells:
        for path in c.get("values") or {}:
            if path not in paths:
                paths.append(path)
    return paths


def cells_table(cells: Sequence[Mapping[str, Any]], extra: Sequence[tuple[str, Callable[[Mapping[str, Any]], str]]] = ()
                ) -> str:
    """One row per cell: its index, grid values, runs, and mean ± std of final and best val_top1."""
    paths = grid_paths(cells)
    header = ["#", *paths, "ok/n", "val_top1 (final)", "val_top1 (best)", *(name for name, _ in extra)]
    rows = []
    for c in cells:
        values = c.get("values") or {}
        rows.append([
            str(c.get("index", "")),
            *(_fmt_value(values[p]) if p in values else "" for p in paths),
            f"{c.get('succeeded', '-')}/{c.get('n', '-')}",
            fmt_summary(c.get("val_top1")), fmt_summary(c.get("best_val_top1")),
            *(render(c) for _, render in extra),
        ])
    return markdown_table(header, rows)


# --------------------------------------------------------------------------- local sweeps
@dataclass
class Run:
    cell: int
    values: dict[str, Any]
    seed: int
    slug: str
    folder: Path
    doc: dict[str, Any]  # the run's spec as written to folder/spec.json (teacher path made absolute)
    status: str = "pending"  # pending | running | succeeded | failed | stopped
    action: str | None = None  # what this invocation did: skipped | resumed | trained
    exit_code: int | None = None
    error: str | None = None
    wall_s: float | None = None  # over every attempt of this output folder
    started_at: float | None = None  # unix times of this invocation's attempt
    ended_at: float | None = None
    val_top1: float | None = None
    best_val_top1: float | None = None
    val_size: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    log: IO[bytes] | None = field(default=None, repr=False)
    log_offset: int = 0
    t0: float = 0.0
    signals_sent: int = 0

    def record(self, root: Path) -> dict[str, Any]:
        return {
            "cell": self.cell, "values": self.values, "seed": self.seed,
            "folder": str(self.folder.relative_to(root)), "status": self.status, "action": self.action,
            "exit_code": self.exit_code, "error": self.error, "wall_s": self.wall_s,
            "started_at": self.started_at, "ended_at": self.ended_at,
            "val_top1": self.val_top1, "best_val_top1": self.best_val_top1, "val_size": self.val_size,
        }


def _say(text: str = "", *, err: bool = False) -> None:
    """print(), except that a closed stdout (`hcd sweep ... | head`) does not end a running sweep."""
    stream = sys.stderr if err else sys.stdout
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())  # and no error when Python flushes at exit


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _write_json(path: Path, doc: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _read_card(folder: Path) -> dict[str, Any]:
    card = json.loads((folder / CARD).read_text())
    if not isinstance(card, dict):
        raise ValueError(f"{folder / CARD} is not a JSON object")
    return card


def _metric(metrics: Any, name: str) -> float | None:
    value = metrics.get(name) if isinstance(metrics, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def _take_card(run: Run) -> None:
    """The run's results from its model card (raises OSError/ValueError when it cannot be read)."""
    card = _read_card(run.folder)
    run.val_top1 = _metric(card.get("final_metrics"), "val_top1")
    run.best_val_top1 = _metric(card.get("best_metrics"), "val_top1")
    size = card.get("val_size")
    run.val_size = size if isinstance(size, int) else None


def _localize(doc: dict[str, Any], spec_dir: Path, loc: str) -> list[str]:
    """Make a file teacher's path absolute (relative paths are relative to the spec's folder, as in
    `hcd train`); the errors of a teacher that cannot be used locally, as `loc: msg` lines."""
    teacher = doc.get("teacher")
    if not isinstance(teacher, dict):
        return []
    weights = teacher.get("weights") or {}
    source = weights.get("source")
    if source in ("job", "model"):
        return [f"{loc}.teacher.weights.source: {source!r} refers to the service's jobs/models; locally use "
                '{"source": "file", "path": "teacher/student.safetensors"}']
    if source == "file":
        path = Path(str(weights["path"])).expanduser()
        if not path.is_absolute():
            path = spec_dir / path
        weights["path"] = str(path)
        if not path.is_file():
            return [f"{loc}.teacher.weights.path: file not found: {path}"]
    return []


def plan_runs(spec_path: Path, cells: Sequence[Cell], root: Path) -> list[Run]:
    """One Run per cell and seed with the spec it trains; BadInput for what would fail every time."""
    from hcd_core.sweep import cell_slug

    spec_dir = spec_path.resolve().parent
    runs: list[Run] = []
    errors: list[str] = []
    slugs: dict[str, int] = {}
    for cell in cells:
        slug = cell_slug(cell.values)
        if slug in slugs:
            raise BadInput(f"cells {slugs[slug]} and {cell.index} would share the folder {slug!r}: "
                           "give values that differ in letters or digits")
        slugs[slug] = cell.index
        for i, spec in enumerate(cell.specs):
            doc = spec.model_dump(mode="json")
            problems = _localize(doc, spec_dir, f"cells.{cell.index}.spec")
            if i == 0:  # every seed of a cell has the same teacher
                errors += problems
            runs.append(Run(cell=cell.index, values=dict(cell.values), seed=spec.seed, slug=slug,
                            folder=root / slug / f"seed-{spec.seed}", doc=doc))
    if errors:
        raise BadInput("the sweep's teacher cannot be used on this machine", errors)
    return runs


def _same_spec(trained: Any, expected: Any) -> bool:
    """Whether a card's spec is the run's spec, on the fields both know (a field added to the spec
    since the run was trained does not make it another spec)."""
    if isinstance(trained, dict) and isinstance(expected, dict):
        return all(_same_spec(trained[k], expected[k]) for k in trained.keys() & expected.keys())
    return bool(trained == expected)


def _check_finished(runs: Sequence[Run]) -> None:
    """A finished run in the output folder must be a run of this sweep's spec, else nothing runs."""
    from hcd_core.spec import JobSpec

    foreign = []
    for run in runs:
        if not (run.folder / CARD).is_file():
            continue
        try:
            trained = _read_card(run.folder).get("spec")
        except (OSError, ValueError):
            continue  # reported as a failed run
        if trained is not None and not _same_spec(
                trained, JobSpec.model_validate(run.doc).resolved().model_dump(mode="json")):
            foreign.append(f"{run.folder}: its model_card.json is of another spec")
    if foreign:
        raise BadInput("the output folder holds finished runs of another spec: move them away or use another "
                       "--output", foreign)


def _previous_wall_times(root: Path) -> dict[tuple[str, int], float]:
    try:
        doc = json.loads((root / SWEEP_FILE).read_text())
        return {(r["folder"], int(r["seed"])): float(r["wall_s"]) for r in doc.get("runs", [])
                if isinstance(r.get("wall_s"), (int, float))}
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}


@contextmanager
def _lock(root: Path) -> Iterator[None]:
    import fcntl

    with open(root / LOCK_FILE, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise BadInput(f"another hcd sweep is running in {root}") from None
        yield


@contextmanager
def _interrupts(state: dict[str, int]) -> Iterator[None]:
    """Count SIGINT/SIGTERM instead of dying: the loop forwards them to the runs, which checkpoint."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        state["count"] += 1
        if state["count"] == 1:
            _say("\nhcd sweep: stopping: the running runs save a checkpoint (Ctrl-C again to abort them); "
                 "rerun the same command to resume", err=True)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _error_text(run: Run) -> str:
    """What went wrong, from this attempt's part of the run's log: `hcd: error:` and what follows,
    else its last line (a traceback's exception)."""
    try:
        with open(run.folder / RUN_LOG, "rb") as fh:
            fh.seek(run.log_offset)
            text = fh.read().decode(errors="replace")
    except OSError:
        return "no log"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.startswith("hcd: error:"):
            return " / ".join(lines[i:i + 6])[:1000]
    return lines[-1][:1000] if lines else "no output"


class LocalSweep:
    """Runs the pending runs, at most `parallel` at once, each as an `hcd train` subprocess."""

    def __init__(self, runs: list[Run], *, root: Path, parallel: int, data_root: Path | None,
                 header: dict[str, Any]) -> None:
        self.runs, self.root, self.parallel, self.data_root = runs, root, parallel, data_root
        self.header = header
        self.threads = max(1, _cpu_count() // parallel)
        self.interrupts = {"count": 0}
        self.total = len(runs)

    def _say(self, run: Run, text: str) -> None:
        _say(f"[{self.runs.index(run) + 1}/{self.total}] {run.slug} seed {run.seed}: {text}")

    def write_state(self, status: str) -> None:
        _write_json(self.root / SWEEP_FILE, {**self.header, "status": status, "updated_at": time.time(),
                                             "runs": [r.record(self.root) for r in self.runs]})

    def _start(self, run: Run) -> None:
        run.folder.mkdir(parents=True, exist_ok=True)
        spec_file = run.folder / RUN_SPEC
        _write_json(spec_file, run.doc)
        resume = (run.folder / CHECKPOINT).is_file()
        run.action = "resumed" if resume else "trained"
        cmd = [sys.executable, "-m", "hcd_cli.main", "train", str(spec_file), "--output", str(run.folder),
               "--no-progress"]
        if resume:
            cmd.append("--resume")
        if self.data_root is not None:
            cmd += ["--data-root", str(self.data_root)]
        env = {**os.environ, "OMP_NUM_THREADS": str(self.threads), "MKL_NUM_THREADS": str(self.threads),
               "PYTHONUNBUFFERED": "1"}
        run.log = open(run.folder / RUN_LOG, "ab")
        run.log_offset = run.log.tell()
        run.log.write(f"=== hcd sweep: {run.action} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                      f"{' '.join(cmd)}\n".encode())
        run.log.flush()
        run.started_at, run.ended_at, run.t0 = time.time(), None, time.monotonic()
        run.status, run.exit_code, run.error, run.signals_sent = "running", None, None, 0
        # Its own session: a Ctrl-C in the terminal reaches the sweep alone, which forwards exactly one
        # SIGINT per Ctrl-C (a second SIGINT makes `hcd train` abort without its checkpoint).
        run.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=run.log, stderr=subprocess.STDOUT,
                                    env=env, start_new_session=True)
        self._say(run, f"{run.action.replace('trained', 'training')} ({self.threads} thread(s))")

    def _finish(self, run: Run, code: int) -> None:
        assert run.log is not None
        run.log.close()
        run.proc, run.log = None, None
        run.ended_at = time.time()
        elapsed = time.monotonic() - run.t0
        run.wall_s = (run.wall_s or 0.0) + elapsed
        run.exit_code = code
        if code == 0 and (run.folder / CARD).is_file():
            try:
                _take_card(run)
                run.status = "succeeded"
                self._say(run, f"succeeded in {elapsed:.1f} s: val_top1 {_fmt_num(run.val_top1)} "
                               f"(best {_fmt_num(run.best_val_top1)})")
                return
            except (OSError, ValueError) as err:
                run.status, run.error = "failed", f"cannot read its {CARD}: {err}"
        elif code == EXIT_INTERRUPTED or (self.interrupts["count"] and code != EXIT_BAD_INPUT):
            run.status = "stopped"
            run.error = "interrupted" + ("; resumes from its checkpoint" if (run.folder / CHECKPOINT).is_file()
                                         else "")
        else:
            run.status = "failed"
            run.error = _error_text(run) if code != 0 else f"exited 0 without writing {CARD}"
        self._say(run, f"{run.status} (exit {code}) after {elapsed:.1f} s: {run.error}")

    def _forward_interrupts(self, running: Sequence[Run]) -> None:
        for run in running:
            assert run.proc is not None
            while run.signals_sent < self.interrupts["count"]:
                run.signals_sent += 1
                try:
                    if run.signals_sent <= 2:
                        os.killpg(run.proc.pid, signal.SIGINT)
                    else:
                        os.killpg(run.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def execute(self) -> None:
        queue = [r for r in self.runs if r.status == "pending"]
        running: list[Run] = []
        with _interrupts(self.interrupts):
            try:
                while running or (queue and not self.interrupts["count"]):
                    while queue and len(running) < self.parallel and not self.interrupts["count"]:
                        run = queue.pop(0)
                        self._start(run)
                        running.append(run)
                    self._forward_interrupts(running)
                    for run in list(running):
                        assert run.proc is not None
                        code = run.proc.poll()
                        if code is not None:
                            running.remove(run)
                            self._finish(run, code)
                            self.write_state("running")
                    time.sleep(POLL_S)
            finally:
                for run in running:  # only on an unexpected error of the sweep itself
                    if run.proc is not None and run.proc.poll() is None:
                        os.killpg(run.proc.pid, signal.SIGINT)


def summarize(runs: Sequence[Run]) -> list[dict[str, Any]]:
    """Per cell: its values, n, succeeded, mean ± std of final and best val_top1, wall times."""
    from hcd_core.sweep import metric_summary

    cells: dict[int, list[Run]] = {}
    for run in runs:
        cells.setdefault(run.cell, []).append(run)
    out = []
    for index, members in cells.items():
        ok = [r for r in members if r.status == "succeeded"]
        walls = [r.wall_s for r in members if r.wall_s is not None]
        sizes = {r.val_size for r in ok if r.val_size is not None}
        out.append({
            "index": index, "folder": members[0].slug, "values": members[0].values,
            "n": len(members), "succeeded": len(ok),
            "val_top1": metric_summary(r.val_top1 for r in ok),
            "best_val_top1": metric_summary(r.best_val_top1 for r in ok),
            "wall_s": {"sum": sum(walls) if walls else None,
                       "mean_per_run": sum(walls) / len(walls) if walls else None},
            "val_size": sizes.pop() if len(sizes) == 1 else None,
        })
    return out


def summary_markdown(spec: str, seeds: Sequence[int], runs: Sequence[Run], cells: Sequence[dict[str, Any]]) -> str:
    sizes = {c["val_size"] for c in cells if c["val_size"] is not None}
    on = f" ({sizes.pop()} images)" if len(sizes) == 1 else ""
    ok = sum(r.status == "succeeded" for r in runs)
    lines = [
        f"# Sweep of {spec}", "",
        f"{len(cells)} cell(s) x seeds {', '.join(map(str, seeds))}: {ok}/{len(runs)} runs succeeded. "
        f"val_top1 is the top-1 accuracy (%) on the runs' evaluation split{on}, mean ± sample std over the "
        "seeds that succeeded: final after the last epoch, best at the best epoch (model_card.json's "
        "final_metrics and best_metrics).", "",
        cells_table(cells, [("wall s (sum)", lambda c: _fmt_num(c["wall_s"]["sum"], 1)),
                            ("wall s / run", lambda c: _fmt_num(c["wall_s"]["mean_per_run"], 1)),
                            ("folder", lambda c: str(c["folder"]))]),
    ]
    failed = [r for r in runs if r.status != "succeeded"]
    if failed:
        lines += ["", "Runs that did not succeed:", ""]
        lines += [f"- {r.slug}/seed-{r.seed}: {r.status}" + (f": {r.error}" if r.error else "") for r in failed]
    return "\n".join(lines) + "\n"


def cmd_local(args: argparse.Namespace) -> int:
    from hcd_cli.engine_cmds import load_spec_document
    from hcd_core.sweep import SweepError, expand

    spec_path: Path = args.target_path
    try:
        base = load_spec_document(spec_path)
    except FileNotFoundError:
        raise BadInput(f"spec file not found: {spec_path}") from None
    except Exception as err:  # JSON, YAML and OS errors alike: one line
        raise BadInput(f"cannot read spec {spec_path}: {yaml_problem(err)}") from None
    grid = parse_grid(args.grid or [])
    seeds = parse_seeds(args.seeds)
    parallel = 1 if args.parallel is None else args.parallel
    if parallel < 1:
        raise BadInput("--parallel must be at least 1")
    try:
        cells = expand(base, grid, seeds)
    except SweepError as err:
        raise BadInput(str(err), [f"{e['loc']}: {e['msg']}" for e in err.errors]) from None
    root: Path = args.output
    runs = plan_runs(spec_path, cells, root)
    _check_finished(runs)
    data_root = args.data_root.resolve() if args.data_root is not None else None

    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInput(f"cannot create --output {root}: {err.strerror or err}") from None
    with _lock(root):
        walls = _previous_wall_times(root)
        for run in runs:
            run.wall_s = walls.get((str(run.folder.relative_to(root)), run.seed))
            if (run.folder / CARD).is_file():
                run.action = "skipped"
                try:
                    _take_card(run)
                    run.status = "succeeded"
                except (OSError, ValueError) as err:
                    run.status, run.error = "failed", f"cannot read its {CARD}: {err}"
        header = {"spec": str(spec_path), "base": base, "grid": grid, "seeds": seeds, "parallel": parallel,
                  "output": str(root), "data_root": None if data_root is None else str(data_root)}
        sweep = LocalSweep(runs, root=root, parallel=parallel, data_root=data_root, header=header)
        skipped = sum(r.action == "skipped" for r in runs)
        todo = sum(r.status == "pending" for r in runs)
        _say(f"hcd sweep: {len(cells)} cell(s) x {len(seeds)} seed(s) = {len(runs)} runs in {root}; "
             f"{skipped} finished already, {todo} to run, {parallel} at once")
        sweep.write_state("running")
        sweep.execute()

        interrupted = sweep.interrupts["count"] > 0
        failed = any(r.status == "failed" for r in runs)
        unfinished = any(r.status != "succeeded" for r in runs)
        status = "stopped" if interrupted and unfinished else "failed" if failed else "succeeded"
        sweep.write_state(status)
        cells_summary = summarize(runs)
        _write_json(root / SUMMARY_JSON, {"spec": str(spec_path), "grid": grid, "seeds": seeds, "status": status,
                                          "metric": "val_top1", "cells": cells_summary})
        markdown = summary_markdown(str(spec_path), seeds, runs, cells_summary)
        (root / SUMMARY_MD).write_text(markdown)
    _say(f"\n{markdown}\n{root / SUMMARY_MD}, {root / SUMMARY_JSON}, {root / SWEEP_FILE}")
    if interrupted and unfinished:
        _say("hcd sweep: interrupted; rerun the same command to resume", err=True)
        return EXIT_INTERRUPTED
    if failed:
        _say("hcd sweep: some runs failed (see their train.log); rerun the same command to retry them", err=True)
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------- the service's sweeps
def cmd_submit(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import _check, load_spec_file, make_client

    grid = parse_grid(args.grid or [])
    seeds = parse_seeds(args.seeds)
    metadata = parse_metadata(args.metadata or [])
    doc = load_spec_file(args.target_path)
    # Like `hcd submit`, the file may hold the spec itself or {"spec", "metadata"}.
    if set(doc) <= {"spec", "metadata"} and "spec" in doc:
        metadata = {**(doc.get("metadata") or {}), **metadata}
        doc = doc["spec"]
    body: dict[str, Any] = {"base": doc, "grid": grid, "seeds": seeds}
    if metadata:
        body["metadata"] = metadata
    headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else {}
    with make_client() as client:
        sweep = _check(client.post("/sweeps", json=body, headers=headers)).json()
    print(json.dumps(sweep, indent=2) if args.json else sweep["id"])
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from hcd_cli.client_cmds import _check, make_client

    with make_client() as client:
        sweep = _check(client.get(f"/sweeps/{args.target_path}")).json()
    if args.json:
        print(json.dumps(sweep, indent=2))
        return EXIT_OK
    cells = sweep.get("cells") or []
    counts = sweep.get("counts") or {}
    jobs = ", ".join(f"{n} {status}" for status, n in counts.items() if n)
    print(f"sweep {sweep.get('id', args.target_path)}: {sweep.get('status', '?')}, {len(cells)} cell(s), "
          f"{sweep.get('runs', '?')} run(s)" + (f" ({jobs})" if jobs else ""))
    if cells:
        print(cells_table(cells, [("jobs", lambda c: str(len(c.get("job_ids") or [])))]))
    return EXIT_OK


def _client_guard(func: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """client_cmds' guard (API and connection errors: one line and its documented exit code), plus the
    local errors (missing file, bad YAML) as one line too."""
    import httpx
    import yaml

    from hcd_cli.client_cmds import ClientError, _guard

    def checked(args: argparse.Namespace) -> int:
        try:
            return func(args)
        except FileNotFoundError as err:
            raise ClientError(f"file not found: {err.filename}") from None
        except OSError as err:
            raise ClientError(f"cannot read {err.filename}: {err.strerror}") from None
        except yaml.YAMLError as err:
            raise ClientError(f"cannot read the spec as YAML/JSON: {yaml_problem(err)}") from None
        except httpx.InvalidURL as err:
            raise ClientError(f"HCD_SERVER_URL: {err}") from None
        except (httpx.HTTPError, ValueError, KeyError) as err:
            if isinstance(err, httpx.TransportError):
                raise
            raise ClientError(f"unexpected response from the server: {err!r}") from None

    return _guard(checked)


# --------------------------------------------------------------------------- the command
_LOCAL_ONLY = ("output", "parallel", "data_root")
_SUBMIT_ONLY = ("metadata", "idempotency_key")
_OPTION = {"output": "--output", "parallel": "--parallel", "data_root": "--data-root", "metadata": "--metadata",
           "idempotency_key": "--idempotency-key", "grid": "--grid", "seeds": "--seeds", "json": "--json"}


def _usage_check(args: argparse.Namespace) -> tuple[str, Callable[[argparse.Namespace], int]]:
    """Which form was given (local, submit, status), checking that its arguments fit it."""
    words = [args.target, *args.rest]
    mode = words[0] if words[0] in ("submit", "status") else "local"
    operands = words[1:] if mode != "local" else words
    what = {"local": "SPEC", "submit": "SPEC", "status": "ID"}[mode]
    if len(operands) != 1:
        raise BadInput(f"hcd sweep {'' if mode == 'local' else mode + ' '}takes one {what}, got "
                       f"{len(operands)}: {' '.join(operands) or '(none)'}")
    allowed = {"local": {"grid", "seeds", "output", "parallel", "data_root"},
               "submit": {"grid", "seeds", "metadata", "idempotency_key", "json"},
               "status": {"json"}}[mode]
    given = [name for name in _OPTION if getattr(args, name) not in (None, False, [])]
    wrong = [_OPTION[name] for name in given if name not in allowed]
    if wrong:
        form = "a local sweep" if mode == "local" else f"hcd sweep {mode}"
        raise BadInput(f"{', '.join(wrong)}: not an option of {form}")
    if mode in ("local", "submit") and args.seeds is None:
        raise BadInput("--seeds is required, e.g. --seeds 0,1,2")
    if mode == "local" and args.output is None:
        raise BadInput("--output DIR is required for a local sweep")
    # local: the spec's path; submit: the spec file as `hcd submit` reads it ('-': stdin); status: the id
    args.target_path = Path(operands[0]) if mode == "local" else operands[0]
    return mode, {"local": cmd_local, "submit": _client_guard(cmd_submit), "status": _client_guard(cmd_status)}[mode]


def cmd_sweep(args: argparse.Namespace) -> int:
    try:
        _, func = _usage_check(args)
        return func(args)
    except BadInput as err:
        print(f"hcd sweep: error: {err}", file=sys.stderr)
        for line in err.lines:
            print(f"  {line}", file=sys.stderr)
        return EXIT_BAD_INPUT


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser(
        "sweep", help="a grid of spec values x seeds: run it here (hcd sweep SPEC), or on the service "
                      "(hcd sweep submit SPEC, hcd sweep status ID)",
        usage=USAGE, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("target", metavar="SPEC|submit|status",
                   help="a spec file (.yaml, .yml or .json) for a local sweep, or `submit` / `status`")
    p.add_argument("rest", nargs="*", default=[], metavar="SPEC|ID",
                   help="submit: the spec file ('-': stdin); status: the sweep's id")
    both = p.add_argument_group("the grid (local sweeps and submit)")
    both.add_argument("--grid", action="append", metavar="PATH=V1,V2,...",
                      help="a dotted spec path and its values, e.g. method.temperature=1,4 (repeatable)")
    both.add_argument("--seeds", metavar="S1,S2,...", help="the seeds every cell runs with, e.g. 0,1,2")
    local = p.add_argument_group("local sweeps")
    local.add_argument("--output", "-o", type=Path, metavar="DIR", help="the sweep's folder (required)")
    local.add_argument("--parallel", "-j", type=int, metavar="N",
                       help="runs at once (default 1); each gets max(1, CPUs // N) threads")
    local.add_argument("--data-root", type=Path, metavar="DIR", help="base folder for relative dataset roots")
    service = p.add_argument_group("the service (submit, status)")
    service.add_argument("--metadata", action="append", metavar="KEY=VALUE", help="label the sweep (repeatable)")
    service.add_argument("--idempotency-key", metavar="KEY",
                         help="resubmitting with the same key returns the same sweep")
    service.add_argument("--json", action="store_true", help="print the whole sweep object")
    p.set_defaults(func=cmd_sweep)
