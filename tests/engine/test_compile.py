"""`training.compile`: the student + method step and the teacher compile to one graph each, with
no graph breaks and no recompilation after the first step (epoch boundaries and evaluation included)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from safetensors.torch import save_file
from torch._dynamo.utils import counters

from hcd_core.engine import run_job
from hcd_core.models import create_timm_model
from hcd_core.spec import parse_spec
from hcd_core.types import RunHooks

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", [{"name": "hcd", "num_stages": 2}, {"name": "dkd", "warmup_epochs": 2}])
def test_compiled_step_does_not_recompile(tmp_path, method):
    torch.manual_seed(0)
    teacher = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in create_timm_model("test_vit", 4, 16).state_dict().items()}, str(teacher))
    doc = {
        "method": method, "student": {"arch": "test_resnet"},
        "teacher": {"arch": "test_vit", "weights": {"source": "file", "path": str(teacher)}},
        "dataset": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 64, "val_size": 16},
        # The epoch changes every step (DKD's warm-up reads it), grad clipping and EMA are on.
        "training": {"epochs": 3, "batch_size": 8, "max_steps_per_epoch": 3, "device": "cpu", "compile": True,
                     "grad_clip": 5.0, "ema_decay": 0.9, "augment": "crop_flip"},
    }
    torch._dynamo.reset()
    counters.clear()
    graphs: list[int] = []

    def on_metrics(points) -> None:
        graphs.append(counters["stats"]["unique_graphs"])

    result = run_job(parse_spec(doc), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
                     hooks=RunHooks(on_metrics=on_metrics))
    assert result.status == "completed"
    assert graphs[0] == 2  # the teacher and the student + method step
    assert set(graphs) == {2}  # the same two graphs at every later step: nothing recompiled
    assert not counters["graph_break"]
    assert not counters["recompiles"]

    eager = run_job(parse_spec({**doc, "training": {**doc["training"], "compile": False}}),
                    output_dir=tmp_path / "eo", checkpoint_dir=tmp_path / "ec")
    # The compiled step computes the same training (fused kernels round differently: 1% after 9 steps).
    assert result.final_metrics["train_loss"] == pytest.approx(eager.final_metrics["train_loss"], rel=0.01)
