"""`hcd train` and `hcd eval` through the real entry point."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from hcd_cli.main import main

torch.set_num_threads(1)

DATASET = {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64, "val_size": 32}
TRAINING = {"epochs": 1, "batch_size": 16, "device": "cpu"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    spec = root / "teacher.yaml"
    spec.write_text(yaml.safe_dump({"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
                                    "dataset": DATASET, "training": TRAINING}))
    rc = main(["train", str(spec), "--output", str(root / "teacher"), "--no-progress"])
    assert rc == 0
    return root


def test_train_writes_artifacts_and_eval_reproduces(trained, capsys):
    out = trained / "teacher"
    for name in ("student.safetensors", "model_card.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    card = json.loads((out / "model_card.json").read_text())
    capsys.readouterr()
    assert main(["eval", str(out / "student.safetensors"), "--dataset", "synthetic"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["top1"] == card["final_metrics"]["val_top1"]
    assert printed["top5"] == card["final_metrics"]["val_top5"]


def test_distil_with_teacher_path_relative_to_spec(trained, capsys):
    spec = trained / "student.json"
    spec.write_text(json.dumps({
        "method": {"name": "kd"}, "student": {"arch": "test_vit"},
        "teacher": {"arch": "test_resnet", "weights": {"source": "file", "path": "teacher/student.safetensors"}},
        "dataset": DATASET, "training": TRAINING,
    }))
    assert main(["train", str(spec), "--output", str(trained / "student"), "--no-progress"]) == 0
    card = json.loads((trained / "student" / "model_card.json").read_text())
    assert card["teacher"]["arch"] == "test_resnet" and len(card["teacher_sha256"]) == 64
    # a second run into the same folder must be asked for explicitly
    capsys.readouterr()
    assert main(["train", str(spec), "--output", str(trained / "student"), "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(spec), "--output", str(trained / "student"), "--no-progress", "--resume"]) == 0


def test_bad_spec_exits_2_naming_the_field(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text(yaml.safe_dump({"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
                                    "dataset": DATASET, "training": {**TRAINING, "epochs": 0}}))
    assert main(["train", str(spec), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "training.epochs" in err
    assert not (tmp_path / "o").exists()  # failed before anything was built or written


def test_service_only_teacher_source_rejected(tmp_path, capsys):
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({"method": {"name": "kd"}, "student": {"arch": "test_resnet"},
                                "teacher": {"arch": "test_vit", "weights": {"source": "job", "job_id": "abc"}},
                                "dataset": DATASET}))
    assert main(["train", str(spec), "--output", str(tmp_path / "o")]) == 2
    assert "source 'job'" in capsys.readouterr().err


def test_missing_teacher_file_and_unreadable_spec(tmp_path, capsys):
    spec = tmp_path / "s.json"
    teacher = {"arch": "test_vit", "weights": {"source": "file", "path": "nope.safetensors"}}
    spec.write_text(json.dumps({"method": {"name": "kd"}, "student": {"arch": "test_resnet"}, "teacher": teacher,
                                "dataset": DATASET}))
    assert main(["train", str(spec), "--output", str(tmp_path / "o")]) == 2
    assert "teacher.weights.path" in capsys.readouterr().err
    broken = tmp_path / "b.json"
    broken.write_text("{not json")
    assert main(["train", str(broken), "--output", str(tmp_path / "o")]) == 2
    assert main(["eval", str(tmp_path / "none.safetensors"), "--dataset", "digits"]) == 2


def _forget_on_teardown(monkeypatch) -> None:
    """Unset what --gpus exports, and have pytest restore it after the test (set first: monkeypatch
    records only variables that existed)."""
    for name in ("CUDA_VISIBLE_DEVICES", "HCD_WORKER_DEVICE", "HCD_WORKER_DEVICES"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.mark.parametrize("command", ["worker", "up"])
@pytest.mark.parametrize("gpus", ["0,0", "a,b", ","])
def test_gpus_must_be_distinct_indices(command, gpus, monkeypatch):
    _forget_on_teardown(monkeypatch)
    with pytest.raises(SystemExit, match="distinct GPU indices"):
        main([command, "--gpus", gpus])
    assert "CUDA_VISIBLE_DEVICES" not in __import__("os").environ  # nothing was exported


def test_gpus_sets_what_the_worker_reads(monkeypatch):
    import os

    from hcd_cli.server_cmds import _apply_gpus
    from jobs.settings import Settings

    _forget_on_teardown(monkeypatch)
    _apply_gpus("2, 3")
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3"
    settings = Settings()
    assert (settings.worker_device, settings.worker_devices) == ("cuda", 2)
