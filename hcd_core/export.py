"""Exported artefacts of a job: the student alone as safetensors, its model card, the metrics log.

    output_dir/student.safetensors   the timm model's state dict (contiguous CPU tensors)
    output_dir/model_card.json       what is needed to rebuild, normalise and trust it
    output_dir/metrics.jsonl         every metric point, one JSON object per line

Every write raises `hcd_core.errors.OutputWriteError` when the file system refuses it.
"""

from __future__ import annotations

import json
import platform
from collections.abc import Iterable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from hcd_core.checkpoint import atomic_write_bytes
from hcd_core.data import DatasetInfo
from hcd_core.errors import writing
from hcd_core.hashing import sha256_file
from hcd_core.spec import JobSpec
from hcd_core.training import Precision
from hcd_core.types import CARD_NAME, METRICS_NAME, WEIGHTS_NAME, MetricPoint

__all__ = ["CARD_NAME", "CARD_VERSION", "METRICS_NAME", "WEIGHTS_NAME", "MetricsLog", "build_model_card",
           "device_name", "load_student", "read_card", "runtime_versions", "write_json", "write_state_dict",
           "write_student_weights"]
CARD_VERSION = 1


def write_student_weights(model: nn.Module, path: Path) -> str:
    """Save a model's state dict as safetensors atomically; returns the file's sha256."""
    return write_state_dict(model.state_dict(), path)


def write_state_dict(state: dict[str, torch.Tensor], path: Path) -> str:
    """Save a state dict as safetensors atomically; returns the file's sha256."""
    from safetensors.torch import save

    # Own copies: safetensors refuses tensors that share storage (tied weights, views).
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in state.items()}
    data = save(tensors, metadata={"format": "pt"})
    atomic_write_bytes(Path(path), lambda fh: fh.write(data), what="the student weights")
    return sha256_file(path)


def write_json(path: Path, doc: dict[str, Any], *, what: str = "a JSON file") -> None:
    text = json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(Path(path), lambda fh: fh.write(text.encode()), what=what)


def runtime_versions() -> dict[str, str]:
    import timm

    return {"torch": torch.__version__, "timm": str(timm.__version__), "python": platform.python_version()}


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def build_model_card(
    *,
    spec: JobSpec,
    info: DatasetInfo,
    final_metrics: dict[str, float],
    best_metrics: dict[str, float],
    ema_used: bool,
    device: torch.device,
    precision: Precision,
    epochs: int,
    steps: int,
    steps_per_epoch: int,
    teacher_sha256: str | None,
    student_sha256: str,
    extra_params_trained: int,
    exported: str = "last",
    exported_epoch: int | None = None,
) -> dict[str, Any]:
    """The model card of a finished job's student (`spec` is the resolved spec it was trained with).

    `exported` says whose weights the file holds: the best validation epoch's or the last one's;
    `exported_epoch` is that epoch (0-based) and `exported_metrics` its evaluation.
    """
    if exported_epoch is None:
        exported_epoch = int(final_metrics.get("epoch", epochs - 1))
    exported_metrics = best_metrics if exported == "best" else final_metrics
    teacher = spec.teacher
    return {
        "card_version": CARD_VERSION,
        "arch": spec.student.arch,
        "num_classes": info.num_classes,
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "class_names": info.class_names,
        "dataset": info.name,
        "eval_split": spec.dataset.eval_split,  # what val_* metrics were measured on
        "train_size": info.train_size,
        "val_size": info.val_size,  # images in that evaluation set
        "method": spec.method.name,
        "final_metrics": dict(final_metrics),
        "best_metrics": dict(best_metrics),
        "exported": exported,
        "exported_epoch": exported_epoch,
        "exported_metrics": {k: v for k, v in exported_metrics.items() if k in ("val_top1", "val_top5")},
        "ema_used": ema_used,
        "spec": spec.model_dump(mode="json"),
        "seed": spec.seed,
        "device": device_name(device),
        "precision": precision.describe(),
        "channels_last": precision.channels_last,
        "epochs": epochs,
        "steps": steps,
        "steps_per_epoch": steps_per_epoch,
        "effective_batch_size": spec.training.batch_size,
        "versions": runtime_versions(),
        "teacher": None if teacher is None else {
            "arch": teacher.arch, "source": teacher.weights.source, "sha256": teacher_sha256,
        },
        "teacher_sha256": teacher_sha256,
        "student_sha256": student_sha256,
        "extra_params_trained": extra_params_trained,
        "weights_file": WEIGHTS_NAME,
    }


def read_card(weights_path: Path, card_path: Path | None = None) -> dict[str, Any]:
    card_path = Path(card_path) if card_path else Path(weights_path).with_name(CARD_NAME)
    if not card_path.is_file():
        raise FileNotFoundError(f"model card not found: {card_path} (it is written next to {WEIGHTS_NAME})")
    card = json.loads(card_path.read_text())
    if not isinstance(card, dict):
        raise ValueError(f"model card {card_path} is not a JSON object")
    for key in ("arch", "num_classes", "image_size", "mean", "std"):
        if key not in card:
            raise ValueError(f"model card {card_path} lacks {key!r}")
    return card


def load_student(weights_path: Path, card_path: Path | None = None) -> nn.Module:
    """The exported timm model, rebuilt from its card and loaded with its weights (eval mode)."""
    from hcd_core.models import create_timm_model
    from hcd_core.teacher import load_safetensors_weights

    card = read_card(weights_path, card_path)
    model = create_timm_model(card["arch"], int(card["num_classes"]), int(card["image_size"]))
    load_safetensors_weights(model, weights_path, arch=card["arch"], num_classes=int(card["num_classes"]))
    return model.eval()


class MetricsLog:
    """Appends metric points to metrics.jsonl as training goes (flushed per write)."""

    WHAT = "the metrics log"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with writing(self.WHAT):
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop points after `step` (they are redone when a run resumes from that step)."""
        with writing(self.WHAT):
            if not self.path.is_file():
                return
            lines = self.path.read_text().splitlines()
        keep = []
        for line in lines:
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash
        text = "".join(line + "\n" for line in keep)
        atomic_write_bytes(self.path, lambda fh: fh.write(text.encode()), what=self.WHAT)

    def append(self, points: Iterable[MetricPoint]) -> None:
        lines = [json.dumps(asdict(p)) for p in points]
        if lines:
            with writing(self.WHAT), open(self.path, "a") as fh:
                fh.write("\n".join(lines) + "\n")
