"""Memory estimate: resource bombs are over any sane budget, the examples are small, and the data
parts match what hcd_core.data really allocates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from hcd_core.resources import estimate_memory
from hcd_core.spec import parse_spec

GIB = 2**30
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _spec(dataset: dict, **training):
    return parse_spec({"method": {"name": "ce"}, "student": {"arch": "test_resnet"}, "dataset": dataset,
                       "training": training})


def _parts(spec) -> dict[str, int]:
    return {p.name: p.bytes for p in estimate_memory(spec).parts}


def test_a_million_synthetic_images_is_a_bomb_named_by_its_fields():
    estimate = estimate_memory(_spec({"name": "synthetic", "image_size": 32, "train_size": 1_000_000}))
    assert 16 * GIB < estimate.total_bytes < 100 * GIB  # tens of GB
    assert estimate.fields[0] == "dataset.train_size"
    assert max(estimate.parts, key=lambda p: p.bytes).name == "dataset_build"


def test_huge_images_in_huge_batches_are_a_bomb_named_by_their_fields():
    estimate = estimate_memory(_spec({"name": "synthetic", "image_size": 1024}, batch_size=4096))
    parts = _parts(_spec({"name": "synthetic", "image_size": 1024}, batch_size=4096))
    assert parts["train_batch"] == 4096 * 3 * 1024**2 * 4  # ~51 GB for the input alone
    assert estimate.total_bytes > 16 * GIB
    assert set(estimate.fields[:2]) == {"training.batch_size", "dataset.image_size"}


def test_teacher_input_size_and_loader_workers_count():
    base = {"method": {"name": "kd"}, "student": {"arch": "test_resnet"},
            "dataset": {"name": "imagefolder", "root": "x", "image_size": 32},
            "training": {"batch_size": 64, "num_workers": 8}}
    teacher = {"arch": "test_vit", "weights": {"source": "timm"}}
    plain = _parts(parse_spec({**base, "teacher": teacher}))
    big = _parts(parse_spec({**base, "teacher": {**teacher, "image_size": 1024}}))
    assert "teacher_input" not in plain and big["teacher_input"] == 64 * 3 * 1024**2 * 4
    assert plain["loader_prefetch"] == 2 * 8 * 64 * 3 * 32**2 * 4


def _example_specs() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(EXAMPLES.glob("*.yaml")) + sorted(EXAMPLES.glob("*.json")):
        doc = yaml.safe_load(path.read_text()) if path.suffix == ".yaml" else json.loads(path.read_text())
        docs.append((path.name, doc.get("spec", doc)))  # service bodies wrap the spec
    return docs


@pytest.mark.parametrize("name,doc", _example_specs(), ids=lambda v: v if isinstance(v, str) else "")
def test_examples_are_under_a_gib(name, doc):
    assert estimate_memory(parse_spec(doc)).total_bytes < GIB


def test_synthetic_parts_match_the_tensors_build_data_makes():
    from hcd_core.data import build_data

    spec = _spec({"name": "synthetic", "image_size": 16, "train_size": 2000}, batch_size=32).resolved()
    train, val, _ = build_data(spec.dataset, batch_size=32)
    held = sum(t.nbytes for t in (train.images, train.labels, val.images, val.labels))
    parts = _parts(spec)
    assert parts["dataset"] == held
    assert parts["train_batch"] == next(train.batches(epoch_seed=1))[0].nbytes
    assert parts["eval_batch"] == next(val.batches())[0].nbytes


_MEASURE = """
import re, sys
from hcd_core.data import synthetic_arrays

def peak_rss():  # this process's own high-water mark (ru_maxrss may be inherited from the parent)
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024

synthetic_arrays(10, 100, 10, 32)  # warm up the allocator and the kernels
before = peak_rss()
synthetic_arrays(10, int(sys.argv[1]), 500, 32)
print(peak_rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc/self/status")
def test_synthetic_build_estimate_is_a_calibrated_lower_bound():
    """Peak memory of really generating 20,000 images (~250 MB a copy) against the estimate."""
    size = 20_000
    out = subprocess.run([sys.executable, "-c", _MEASURE, str(size)], check=True, capture_output=True, text=True)
    measured = int(out.stdout.split()[-1])
    parts = _parts(_spec({"name": "synthetic", "image_size": 32, "train_size": size}))
    estimated = parts["dataset"] + parts["dataset_build"]
    assert 0.9 * estimated <= measured <= 1.3 * estimated


@pytest.mark.parametrize("dataset", [
    {"name": "digits_hard"},
    {"name": "digits_hard", "eval_split": "holdout"},
    {"name": "synthetic", "image_size": 16, "train_size": 300, "val_size": 50, "eval_split": "holdout"},
    {"name": "digits", "eval_split": "holdout"},
])
def test_tensor_dataset_parts_match_what_build_data_holds(dataset):
    from hcd_core.data import build_data

    spec = _spec(dataset, batch_size=32).resolved()
    train, val, _ = build_data(spec.dataset, batch_size=32)
    held = sum(t.nbytes for t in (train.images, train.labels, val.images, val.labels))
    assert _parts(spec)["dataset"] == held


_MEASURE_HARD = """
import re, sys
import torch, torch.nn.functional as F
from hcd_core.data import digits_arrays, digits_hard_arrays

def peak_rss():
    with open("/proc/self/status") as status:
        return int(re.search(r"VmHWM:\\s+(\\d+) kB", status.read()).group(1)) * 1024

digits_arrays()  # warm up sklearn, the allocator and the kernels
F.grid_sample(torch.zeros(2, 1, 16, 16), F.affine_grid(torch.zeros(2, 2, 3), [2, 1, 16, 16], align_corners=False),
              align_corners=False)
before = peak_rss()
digits_hard_arrays()
print(peak_rss() - before)
"""


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc/self/status")
def test_digits_hard_build_estimate_is_a_calibrated_lower_bound():
    out = subprocess.run([sys.executable, "-c", _MEASURE_HARD], check=True, capture_output=True, text=True)
    measured = int(out.stdout.split()[-1])
    parts = _parts(_spec({"name": "digits_hard"}))
    estimated = parts["dataset"] + parts["dataset_build"]
    assert 0.9 * estimated <= measured <= 1.4 * estimated
