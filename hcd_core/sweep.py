"""Sweeps: a grid of spec values times a list of seeds, and the summary of its cells over their seeds.

A grid maps dotted spec paths (`method.temperature`, `training.lr`) to the values to try; the cells
are the cartesian product of those values (in the order given), and each cell runs once per seed.
Torch-free: the CLI's local sweeps and the service's `POST /sweeps` both use it.
"""

from __future__ import annotations

import copy
import itertools
import math
import re
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from hcd_core.spec import JobSpec
from hcd_core.validation import error_locations

__all__ = ["MAX_RUNS", "Cell", "SweepError", "cell_slug", "expand", "metric_summary", "set_path"]

MAX_RUNS = 256
_PATH = re.compile(r"^[a-z_][a-z0-9_]*(\.[a-z_][a-z0-9_]*)*$")


class SweepError(ValueError):
    """A grid or one of its runs is invalid; `errors` are [{"loc", "msg"}] with locations such as
    `grid.method.temperature` or `cells.3.spec.method.temperature` (the cell's index)."""

    def __init__(self, message: str, errors: list[dict[str, str]]):
        super().__init__(message)
        self.errors = errors


@dataclass(frozen=True)
class Cell:
    index: int
    values: dict[str, Any]  # dotted path -> value
    specs: list[JobSpec] = field(default_factory=list)  # one per seed, in the order of the seeds


def set_path(doc: dict[str, Any], path: str, value: Any) -> None:
    """doc[a][b][c] = value for path "a.b.c", creating missing mappings on the way."""
    node = doc
    *parents, leaf = path.split(".")
    for key in parents:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise SweepError(f"grid path {path!r}: {key!r} is not a mapping in the base spec",
                             [{"loc": f"grid.{path}", "msg": f"{key!r} is not a mapping in the base spec"}])
        node = child
    node[leaf] = value


def _check_grid(grid: Mapping[str, Sequence[Any]], seeds: Sequence[int]) -> None:
    errors = []
    if not seeds:
        errors.append({"loc": "seeds", "msg": "give at least one seed"})
    if len(set(seeds)) != len(seeds):
        errors.append({"loc": "seeds", "msg": "seeds must be distinct"})
    for path, values in grid.items():
        if not _PATH.match(path):
            errors.append({"loc": f"grid.{path}", "msg": "a dotted spec path such as method.temperature"})
        elif path == "seed" or path.startswith("seed."):
            errors.append({"loc": f"grid.{path}", "msg": "seeds are given by `seeds`, not in the grid"})
        if not isinstance(values, (list, tuple)) or not values:
            errors.append({"loc": f"grid.{path}", "msg": "a non-empty list of values"})
    if errors:
        raise SweepError("invalid sweep", errors)
    runs = math.prod(len(v) for v in grid.values()) * len(seeds)
    if runs > MAX_RUNS:
        raise SweepError(f"the sweep has {runs} runs; at most {MAX_RUNS} are allowed",
                         [{"loc": "grid", "msg": f"{runs} runs (cells x seeds); at most {MAX_RUNS}"}])


def expand(base: Mapping[str, Any], grid: Mapping[str, Sequence[Any]], seeds: Sequence[int]) -> list[Cell]:
    """Every cell of the grid with its validated spec per seed; raises SweepError naming the cell and
    the field of the first invalid run of each cell (nothing is partially valid)."""
    _check_grid(grid, seeds)
    paths = list(grid)
    cells, errors = [], []
    for index, combo in enumerate(itertools.product(*(grid[p] for p in paths))):
        values = dict(zip(paths, combo, strict=True))
        specs = []
        for seed in seeds:
            doc = copy.deepcopy(dict(base))
            for path, value in values.items():
                set_path(doc, path, value)
            doc["seed"] = seed
            try:
                specs.append(JobSpec.model_validate(doc))
            except ValidationError as err:
                for e in error_locations(err.errors(include_url=False), doc, ("cells", index, "spec")):
                    errors.append({"loc": e["loc"], "msg": e["msg"]})
                break
        cells.append(Cell(index, values, specs))
    if errors:
        raise SweepError(f"{len({e['loc'].split('.')[1] for e in errors})} cell(s) of the sweep are invalid", errors)
    return cells


def cell_slug(values: Mapping[str, Any]) -> str:
    """A folder name for a cell: `method.temperature=4,training.lr=0.1` made file-system safe."""
    if not values:
        return "base"
    text = ",".join(f"{path}={value}" for path, value in values.items())
    return re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)[:200]


def metric_summary(values: Iterable[float | None]) -> dict[str, float | int | None]:
    """{"mean", "std", "runs"} over the finite values (sample std; 0 for one run, None for none)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return {"mean": None, "std": None, "runs": 0}
    std = statistics.stdev(finite) if len(finite) > 1 else 0.0
    return {"mean": statistics.fmean(finite), "std": std, "runs": len(finite)}
