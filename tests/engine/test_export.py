"""Export: the student alone, a complete model card, and accuracy reproduced exactly on reload."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from hcd_core.data import build_data
from hcd_core.engine import run_job
from hcd_core.evaluate import evaluate, evaluate_exported
from hcd_core.export import load_student
from hcd_core.hashing import sha256_file
from hcd_core.spec import DatasetSpec, parse_spec

torch.set_num_threads(1)

DATASET = {"name": "digits", "image_size": 32}


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("teacher")
    spec = parse_spec({"method": {"name": "ce"}, "student": {"arch": "test_convnext"}, "dataset": DATASET,
                       "training": {"epochs": 1, "batch_size": 64, "max_steps_per_epoch": 6, "device": "cpu"}})
    result = run_job(spec, output_dir=root / "out", checkpoint_dir=root / "ckpt")
    return result, root / "out"


@pytest.fixture(scope="module")
def student_run(tmp_path_factory, teacher_run):
    _, tdir = teacher_run
    root = tmp_path_factory.mktemp("student")
    spec = parse_spec({
        "method": {"name": "ofa", "num_stages": 2},
        "student": {"arch": "test_resnet"},
        "teacher": {"arch": "test_convnext", "weights": {"source": "file", "path": str(tdir / "student.safetensors")}},
        "dataset": DATASET,
        "training": {"epochs": 2, "batch_size": 64, "max_steps_per_epoch": 4, "device": "cpu", "ema_decay": 0.5},
    })
    card = json.loads((tdir / "model_card.json").read_text())
    result = run_job(spec, output_dir=root / "out", checkpoint_dir=root / "ckpt",
                     teacher_weights=tdir / "student.safetensors", teacher_card=card)
    return result, root / "out", tdir


def test_reported_accuracy_reproduced_exactly_by_loader(teacher_run):
    result, out = teacher_run
    model = load_student(out / "student.safetensors")
    _, val, _ = build_data(DatasetSpec(**DATASET), batch_size=64)
    metrics = evaluate(model, val, torch.device("cpu"))
    assert metrics["val_top1"] == result.final_metrics["val_top1"]
    assert metrics["val_top5"] == result.final_metrics["val_top5"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["final_metrics"]["val_top1"] == metrics["val_top1"]


def test_ema_student_accuracy_reproduced_by_evaluate_exported(student_run):
    result, out, _ = student_run
    metrics = evaluate_exported(out / "student.safetensors", dataset="digits")
    # the best epoch's EMA weights are exported (training.export "best", the default)
    assert metrics["val_top1"] == result.best_metrics["val_top1"]
    assert metrics["val_top5"] == result.best_metrics["val_top5"]


def test_export_holds_only_the_student(student_run):
    _, out, _ = student_run
    from hcd_core.models import create_timm_model

    state = load_file(str(out / "student.safetensors"))
    expected = create_timm_model("test_resnet", 10, 32).state_dict()
    assert state.keys() == expected.keys()
    assert all(v.is_contiguous() for v in state.values())


def test_card_fields(student_run, teacher_run):
    result, out, tdir = student_run
    card = json.loads((out / "model_card.json").read_text())
    assert card["arch"] == "test_resnet" and card["num_classes"] == 10 and card["image_size"] == 32
    assert len(card["mean"]) == 3 and len(card["std"]) == 3
    assert card["class_names"] == [str(i) for i in range(10)]
    assert card["final_metrics"]["val_top1"] == result.final_metrics["val_top1"]
    assert card["best_metrics"]["val_top1"] == result.best_metrics["val_top1"] >= result.final_metrics["val_top1"]
    assert card["spec"]["training"]["lr"] == 0.05 and card["spec"]["method"]["name"] == "ofa"  # resolved
    assert card["seed"] == 42 and card["device"] == "cpu" and card["ema_used"] is True
    assert card["exported"] == "best" and card["exported_epoch"] == int(result.best_metrics["epoch"])
    assert card["exported_metrics"]["val_top1"] == result.best_metrics["val_top1"]
    assert card["versions"]["torch"] == torch.__version__ and card["versions"]["timm"]
    assert card["teacher_sha256"] == sha256_file(tdir / "student.safetensors")
    assert card["student_sha256"] == sha256_file(out / "student.safetensors")
    tcard = json.loads((tdir / "model_card.json").read_text())
    assert tcard["teacher_sha256"] is None and tcard["ema_used"] is False and tcard["method"] == "ce"


def test_metrics_jsonl_is_one_point_per_line(teacher_run):
    _, out = teacher_run
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {"name", "value", "step", "epoch", "ts"} == set(rows[0])
    assert any(r["name"] == "val_top1" for r in rows) and any(r["name"] == "ce" for r in rows)


def test_teacher_class_count_mismatch_is_clear(tmp_path, teacher_run):
    _, tdir = teacher_run
    spec = parse_spec({
        "method": {"name": "kd"}, "student": {"arch": "test_resnet"},
        "teacher": {"arch": "test_convnext", "weights": {"source": "file", "path": str(tdir / "student.safetensors")}},
        "dataset": {"name": "synthetic", "image_size": 32, "num_classes": 3, "train_size": 16, "val_size": 8},
        "training": {"epochs": 1, "device": "cpu"},
    })
    card = json.loads((tdir / "model_card.json").read_text())
    with pytest.raises(ValueError, match="10 classes"):
        run_job(spec, output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c", teacher_card=card)
    # without a card the weights themselves do not fit
    with pytest.raises(ValueError, match="classes"):
        run_job(spec, output_dir=tmp_path / "o2", checkpoint_dir=tmp_path / "c2")


# --------------------------------------------------------------------------- export: best | last
def _ramp_spec(export: str):
    """A run whose lr keeps rising (warm-up over all 3 epochs, to 0.5): its best epoch (1) is not its last."""
    return parse_spec({
        "method": {"name": "ce"}, "student": {"arch": "test_resnet"}, "dataset": {"name": "digits", "image_size": 16},
        "training": {"epochs": 3, "batch_size": 32, "max_steps_per_epoch": 8, "device": "cpu", "lr": 0.5,
                     "warmup_epochs": 3, "ema_decay": 0.5, "export": export},
        "seed": 0,
    })


def _evaluate_file(path):
    _, val, _ = build_data(DatasetSpec(name="digits", image_size=16), batch_size=64)
    return evaluate(load_student(path), val, torch.device("cpu"))


@pytest.fixture(scope="module")
def ramp_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ramp")
    runs = {}
    for export in ("best", "last"):
        result = run_job(_ramp_spec(export), output_dir=root / export, checkpoint_dir=root / f"{export}-ckpt")
        runs[export] = (result, root / export)
    return runs


def test_export_best_gives_the_best_epochs_weights(ramp_runs):
    result, out = ramp_runs["best"]
    assert result.best_metrics["epoch"] < 2 and result.best_metrics["val_top1"] > result.final_metrics["val_top1"]
    metrics = _evaluate_file(out / "student.safetensors")
    assert metrics["val_top1"] == result.best_metrics["val_top1"]
    assert metrics["val_top5"] == result.best_metrics["val_top5"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["exported"] == "best" and card["exported_epoch"] == int(result.best_metrics["epoch"])
    assert card["exported_metrics"] == {"val_top1": result.best_metrics["val_top1"],
                                        "val_top5": result.best_metrics["val_top5"]}
    assert card["student_sha256"] == sha256_file(out / "student.safetensors")


def test_export_last_gives_the_last_epochs_weights(ramp_runs):
    result, out = ramp_runs["last"]
    best_result, _ = ramp_runs["best"]
    assert result.final_metrics == best_result.final_metrics  # the same training either way
    metrics = _evaluate_file(out / "student.safetensors")
    assert metrics["val_top1"] == result.final_metrics["val_top1"] != result.best_metrics["val_top1"]
    card = json.loads((out / "model_card.json").read_text())
    assert card["exported"] == "last" and card["exported_epoch"] == 2
    assert card["exported_metrics"]["val_top1"] == result.final_metrics["val_top1"]


def test_best_weights_survive_a_resume(tmp_path, ramp_runs):
    from hcd_core.engine import RunHooks

    _, reference = ramp_runs["best"]
    calls = []

    def stop_in_the_last_epoch() -> bool:  # after the best epoch (1) is done
        calls.append(1)
        return len(calls) == 19

    stopped = run_job(_ramp_spec("best"), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
                      hooks=RunHooks(should_stop=stop_in_the_last_epoch, stop_check_every=1))
    assert stopped.status == "stopped" and stopped.epoch == 2
    resumed = run_job(_ramp_spec("best"), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c")
    assert resumed.status == "completed"
    assert sha256_file(tmp_path / "o" / "student.safetensors") == sha256_file(reference / "student.safetensors")
