"""A short real run on sklearn's digits: a `ce` teacher, then an `hcd` student of another family."""

from __future__ import annotations

import json

import pytest
import torch

from hcd_core.engine import RunHooks, run_job
from hcd_core.spec import parse_spec

pytestmark = pytest.mark.slow
torch.set_num_threads(1)

CHANCE = 10.0


def test_ce_teacher_then_hcd_student_beat_chance(tmp_path):
    dataset = {"name": "digits", "image_size": 32}
    teacher_spec = parse_spec({
        "method": {"name": "ce"}, "student": {"arch": "test_convnext"}, "dataset": dataset,
        "training": {"epochs": 3, "batch_size": 64, "device": "cpu"},
    })
    teacher = run_job(teacher_spec, output_dir=tmp_path / "teacher", checkpoint_dir=tmp_path / "tc")
    assert teacher.status == "completed"
    assert teacher.final_metrics["val_top1"] > 50.0 > CHANCE

    weights = tmp_path / "teacher" / "student.safetensors"
    student_spec = parse_spec({
        "method": {"name": "hcd"},
        "student": {"arch": "test_vit"},
        "teacher": {"arch": "test_convnext", "weights": {"source": "file", "path": str(weights)}},
        "dataset": dataset,
        "training": {"epochs": 3, "batch_size": 64, "device": "cpu"},
    })
    terms: set[str] = set()
    student = run_job(
        student_spec, output_dir=tmp_path / "student", checkpoint_dir=tmp_path / "sc",
        teacher_weights=weights, teacher_card=json.loads((tmp_path / "teacher" / "model_card.json").read_text()),
        hooks=RunHooks(on_metrics=lambda pts: terms.update(p.name for p in pts)),
    )
    assert student.status == "completed"
    assert student.final_metrics["val_top1"] > 50.0
    assert {"ce", "kd", "sdd_ce", "sdd_kl", "ol"} <= terms
