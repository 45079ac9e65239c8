"""The ablation plans hold the study's rules: the same tuning budget for every distillation method,
tuning on a holdout split, and task/pair combinations that name what the plan defines."""

from __future__ import annotations

import importlib.util
import itertools
from pathlib import Path

import pytest

from hcd_core.method_configs import METHOD_NAMES

ABLATION = Path(__file__).resolve().parents[2] / "benchmarks" / "ablation"


def _study():
    spec = importlib.util.spec_from_file_location("ablation_study", ABLATION / "study.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("plan_file", ["study.yaml", "short.yaml"])
def test_every_method_gets_the_same_tuning_budget(plan_file):
    study = _study()
    plan = study.load_plan(ABLATION / plan_file)
    assert set(plan["methods"]) == set(METHOD_NAMES)
    budgets = {name: len(list(itertools.product(*conf["grid"].values())))
               for name, conf in plan["methods"].items() if name != "ce"}
    assert len(set(budgets.values())) == 1, budgets
    for task, pair in study.combos(plan) + study.tune_combos(plan):
        assert task in plan["tasks"] and pair in plan["pairs"]
    assert len(plan["final_seeds"]) >= 3


def test_tuning_never_looks_at_the_test_set(tmp_path, monkeypatch):
    study = _study()
    plan = study.load_plan(ABLATION / "short.yaml")
    seen = []
    monkeypatch.setattr(study, "_sweep", lambda spec, grid, seeds, out, parallel: seen.append(spec))
    study.stage_tune(plan, tmp_path, 1)
    assert seen and all(spec["dataset"]["eval_split"] == "holdout" for spec in seen)
    assert len(seen) == len(study.tune_combos(plan)) * (len(plan["methods"]) - 1)
