"""JobSpec validation: every error names the faulty field; recipes fill and user values win."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from hcd_core.recipes import RECIPES
from hcd_core.spec import JobSpec, parse_spec


def _base(**over) -> dict:
    doc = {
        "method": {"name": "ce"},
        "student": {"arch": "test_resnet"},
        "dataset": {"name": "synthetic", "image_size": 16},
    }
    doc.update(over)
    return doc


def _error_text(doc: dict) -> str:
    with pytest.raises(ValidationError) as info:
        parse_spec(doc)
    return str(info.value)


def _locs(doc: dict) -> list[str]:
    with pytest.raises(ValidationError) as info:
        parse_spec(doc)
    return [".".join(map(str, e["loc"])) for e in info.value.errors()]


def test_minimal_spec_is_valid():
    spec = parse_spec(_base())
    assert spec.method.name == "ce" and spec.seed == 42 and spec.training.recipe == "quick"


def test_extra_key_is_named():
    assert "training.epoch" in _locs(_base(training={"epoch": 3}))
    assert "bogus" in _locs({**_base(), "bogus": 1})
    assert any(loc.endswith("hcd.num_sublogits") for loc in _locs(_base(method={"name": "hcd", "num_sublogits": 2})))


def test_bad_arch_is_named():
    locs = _locs(_base(student={"arch": "resnet1000"}))
    assert locs == ["student.arch"]


def test_out_of_bounds_numbers_are_named():
    assert "training.epochs" in _locs(_base(training={"epochs": 0}))
    assert "training.epochs" in _locs(_base(training={"epochs": 100000}))
    assert "training.lr" in _locs(_base(training={"lr": -1.0}))
    assert "training.lr" in _locs(_base(training={"lr": 50.0}))
    assert "dataset.image_size" in _locs(_base(dataset={"name": "synthetic", "image_size": 4}))


def test_teacher_required_and_forbidden():
    assert "teacher is required" in _error_text(_base(method={"name": "hcd"}))
    teacher = {"arch": "test_vit", "weights": {"source": "file", "path": "t.safetensors"}}
    assert "teacher must be absent" in _error_text(_base(teacher=teacher))
    spec = parse_spec(_base(method={"name": "hcd"}, teacher=teacher))
    assert spec.teacher.arch == "test_vit" and spec.method.num_sub_logits == 4


def test_unknown_method_and_source_named():
    assert any(loc.startswith("method") for loc in _locs(_base(method={"name": "fitnet"})))
    teacher = {"arch": "test_vit", "weights": {"source": "ftp", "path": "x"}}
    assert any(loc.startswith("teacher.weights") for loc in _locs(_base(method={"name": "kd"}, teacher=teacher)))


def test_dataset_rules():
    assert "dataset.root is required" in _error_text(_base(dataset={"name": "cifar10"}))
    assert "synthetic dataset only" in _error_text(_base(dataset={"name": "digits", "num_classes": 5}))


def test_recipe_fills_every_training_field():
    spec = parse_spec(_base()).resolved()
    for key, value in RECIPES["quick"].items():
        assert getattr(spec.training, key) == (tuple(value) if isinstance(value, list) else value), key


def test_user_values_override_recipe():
    spec = parse_spec(_base(training={"recipe": "paper-cifar", "epochs": 2, "lr": 0.01})).resolved()
    assert spec.training.epochs == 2 and spec.training.lr == 0.01
    assert spec.training.optimizer == "sgd" and spec.training.nesterov is True
    assert spec.training.min_lr == RECIPES["paper-cifar"]["min_lr"]
    # warm-up is capped at the number of epochs
    assert spec.training.warmup_epochs == 2


def test_unknown_recipe_named():
    assert "training.recipe" in _locs(_base(training={"recipe": "fast"}))


def test_resolved_spec_round_trips_through_json():
    spec = parse_spec(_base(method={"name": "hcd"}, teacher={"arch": "test_vit", "weights": {"source": "timm"}}))
    doc = spec.resolved().model_dump(mode="json")
    assert JobSpec.model_validate(doc) == spec.resolved()
