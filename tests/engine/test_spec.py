"""JobSpec validation: every error names the faulty field; recipes fill and user values win."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from hcd_core.method_configs import METHOD_CONFIGS
from hcd_core.recipes import RECIPES
from hcd_core.resources import estimate_memory
from hcd_core.spec import DatasetSpec, JobSpec, parse_spec


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


def test_new_dataset_fields():
    assert "synthetic dataset only" in _error_text(_base(dataset={"name": "digits_hard", "noise": 0.5}))
    assert "dataset.eval_split" in _locs(_base(dataset={"name": "digits", "eval_split": "val"}))
    assert "dataset.noise" in _locs(_base(dataset={"name": "synthetic", "noise": -0.1}))
    spec = parse_spec(_base(dataset={"name": "synthetic", "noise": 0.6, "num_classes": 20}))
    assert spec.dataset.noise == 0.6 and spec.dataset.eval_split == "test"
    for name in ("digits", "digits_hard", "synthetic", "cifar10"):
        extra = {"root": "r"} if name == "cifar10" else {}
        spec = parse_spec(_base(dataset={"name": name, "eval_split": "holdout", **extra}))
        assert spec.dataset.eval_split == "holdout"


def test_export_field():
    assert parse_spec(_base()).resolved().training.export == "best"
    assert parse_spec(_base(training={"export": "last"})).resolved().training.export == "last"
    assert "training.export" in _locs(_base(training={"export": "first"}))


def test_hcd_ablation_switch_defaults_are_todays_behaviour():
    teacher = {"arch": "test_vit", "weights": {"source": "timm"}}
    m = parse_spec(_base(method={"name": "hcd"}, teacher=teacher)).method
    assert (m.sdd_ce_input, m.fusion_student, m.fusion_teacher, m.sdd_temperature, m.cfm_teacher_feature) == (
        "fused", 1.0, 1.0, None, True)
    assert m.temperature == 4.0  # changed from 1 by the ablation study (docs/ablation.md)
    assert "method.hcd.fusion_teacher" in _locs(_base(method={"name": "hcd", "fusion_teacher": -1}, teacher=teacher))
    assert "method.hcd.sdd_temperature" in _locs(_base(method={"name": "hcd", "sdd_temperature": 0}, teacher=teacher))


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


def test_min_lr_is_checked_against_the_recipes_lr():
    assert "training.min_lr must not exceed" in _error_text(_base(training={"min_lr": 1.0}))  # quick: lr 0.05
    assert parse_spec(_base(training={"min_lr": 1.0, "lr": 2.0})).resolved().training.min_lr == 1.0


def test_batch_size_must_split_evenly_over_the_devices():
    assert "must be a multiple of devices" in _error_text(_base(training={"devices": 3}))  # quick: 64
    assert "training" in _locs(_base(training={"devices": 3}))
    spec = parse_spec(_base(training={"devices": 4})).resolved().training
    assert (spec.devices, spec.compile, spec.data_pipeline) == (4, False, "auto")


def test_a_multi_device_spec_run_as_one_process_says_how_to_launch_it(tmp_path):
    from hcd_core.engine import run_job

    spec = parse_spec({"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
                       "dataset": {"name": "synthetic", "image_size": 16, "num_classes": 2, "train_size": 8,
                                   "val_size": 4},
                       "training": {"devices": 2, "batch_size": 4, "device": "cpu"}})
    with pytest.raises(ValueError, match="--nproc-per-node 2"):
        run_job(spec, output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c")


# --------------------------------------------------------------------------- finite, bounded numbers
def test_infinite_teacher_mean_is_named():
    doc = json.loads('{"teacher": {"mean": [1e999, 0, 0]}}')  # Python's json reads 1e999 as inf
    assert any(loc.startswith("teacher.mean") for loc in _locs(doc))


@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan"), 11.0, -11.0])
def test_teacher_mean_must_be_finite_and_bounded(bad):
    teacher = {"arch": "test_vit", "weights": {"source": "timm"}, "mean": [bad, 0.5, 0.5]}
    assert "teacher.mean.0" in _locs(_base(method={"name": "kd"}, teacher=teacher))


@pytest.mark.parametrize("bad", [0.0, -1.0, 10.5, float("inf"), float("nan")])
def test_teacher_std_must_be_positive_and_bounded(bad):
    teacher = {"arch": "test_vit", "weights": {"source": "timm"}, "std": [0.2, bad, 0.2]}
    assert "teacher.std.1" in _locs(_base(method={"name": "kd"}, teacher=teacher))


@pytest.mark.parametrize("field", ["lr", "grad_clip", "min_lr"])
def test_non_finite_training_numbers_are_named(field):
    for bad in (float("inf"), float("nan")):
        assert f"training.{field}" in _locs(_base(training={field: bad}))
    assert "method.hcd.temperature" in _locs(_base(method={"name": "hcd", "temperature": float("nan")}))


def _unbounded_numbers(node: object, path: str = "") -> list[str]:
    """JSON-schema paths of number/integer nodes that lack a lower or an upper bound."""
    found = []
    if isinstance(node, dict):
        if node.get("type") in ("number", "integer"):
            low = "minimum" in node or "exclusiveMinimum" in node
            high = "maximum" in node or "exclusiveMaximum" in node
            if not (low and high):
                found.append(path)
        for key, value in node.items():
            found += _unbounded_numbers(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _unbounded_numbers(value, f"{path}/{i}")
    return found


def test_every_number_in_the_spec_is_bounded():
    schema = JobSpec.model_json_schema()
    assert set(METHOD_CONFIGS) <= {d["properties"]["name"].get("const") for d in schema["$defs"].values()
                                   if "name" in d.get("properties", {})}
    assert _unbounded_numbers(schema) == []


# --------------------------------------------------------------------------- dataset facts
@pytest.mark.parametrize("dataset,expected", [
    ({"name": "cifar10", "root": "c"}, 10),
    ({"name": "cifar100", "root": "c"}, 100),
    ({"name": "digits"}, 10),
    ({"name": "digits_hard"}, 10),
    ({"name": "synthetic"}, 10),
    ({"name": "synthetic", "num_classes": 7}, 7),
    ({"name": "imagefolder", "root": "i"}, None),
])
def test_known_num_classes(dataset, expected):
    assert DatasetSpec(**dataset).known_num_classes() == expected


def test_known_num_classes_agree_with_the_built_data():
    from hcd_core.data import build_data

    for dataset in ({"name": "digits_hard"}, {"name": "synthetic", "train_size": 8, "val_size": 4},
                    {"name": "synthetic", "num_classes": 3, "train_size": 8, "val_size": 4}):
        spec = DatasetSpec(**dataset)
        assert build_data(spec, batch_size=4)[2].num_classes == spec.known_num_classes()


def test_spec_and_resources_import_without_torch():
    code = ("import sys, hcd_core.spec, hcd_core.resources, hcd_core.hashing, hcd_core.types, hcd_core.errors; "
            "assert 'torch' not in sys.modules and 'timm' not in sys.modules, 'torch imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------- property: refused or finite
def _seed_documents() -> list[dict]:
    """One valid document per method, with every field of every section set (mutations hit them all)."""
    teacher = {"arch": "test_vit", "weights": {"source": "timm"}, "image_size": 32,
               "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    dataset = {"name": "synthetic", "image_size": 16, "num_classes": 3, "train_size": 40, "val_size": 8}
    training = {**RECIPES["quick"], "recipe": "quick", "step_milestones": [2, 4], "grad_clip": 1.0,
                "ema_decay": 0.5, "max_steps_per_epoch": 3}
    docs = []
    for config in METHOD_CONFIGS.values():
        doc = {"method": config().model_dump(), "student": {"arch": "test_resnet"}, "dataset": dict(dataset),
               "training": dict(training), "seed": 1}
        if config.needs_teacher:
            doc["teacher"] = {**teacher, "weights": dict(teacher["weights"])}
        docs.append(doc)
    return docs


_SEEDS = _seed_documents()
_edges = st.sampled_from([float("inf"), float("-inf"), float("nan"), 1e308, -1e308, 10**40, -(2**63), 10**400])
_numbers = st.floats(min_value=-1.0, max_value=1.0) | st.integers(min_value=0, max_value=64) | st.floats() | _edges
_json = st.recursive(
    st.none() | st.booleans() | _numbers | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)
_values = st.one_of(_edges, _numbers, _numbers, st.lists(_numbers, min_size=3, max_size=3), _json)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    """Every leaf of a document (list items included) and a new key in each mapping."""
    paths = [] if isinstance(node, (dict, list)) else [prefix]
    if isinstance(node, dict):
        paths.append((*prefix, "extra"))
        for key, value in node.items():
            paths += _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            paths += _paths(value, (*prefix, i))
    return paths


@st.composite
def _spec_documents(draw: st.DrawFn) -> dict:
    """A valid seed document with up to three leaves replaced by arbitrary JSON (numbers of any
    size, inf, nan, wrong types, nested values) or unknown keys added."""
    doc = copy.deepcopy(draw(st.sampled_from(_SEEDS)))
    for _ in range(draw(st.integers(min_value=0, max_value=3))):
        *parents, last = draw(st.sampled_from(_paths(doc)))
        node = doc
        for key in parents:
            node = node[key]
        node[last] = draw(_values)
    return doc


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(doc=_spec_documents())
def test_any_document_is_refused_or_gives_a_finite_spec(doc):
    try:
        spec = parse_spec(doc)
    except ValidationError:
        return
    json.dumps(spec.model_dump(mode="json"), allow_nan=False)
    json.dumps(spec.resolved().model_dump(mode="json"), allow_nan=False)
    assert estimate_memory(spec).total_bytes > 0


def test_seed_documents_are_valid():
    for doc in _SEEDS:
        parse_spec(doc)
