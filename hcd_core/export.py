"""Exported artefacts of a job: the student alone as safetensors, its model card, the metrics log.

    output_dir/student.safetensors   the timm model's state dict (contiguous CPU tensors)
    output_dir/model_card.json       what is needed to rebuild, normalise and trust it
    output_dir/metrics.jsonl         every metric point, one JSON object per line
"""

from __future__ import annotations

import json
import platform
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn as nn

from hcd_core.checkpoint import atomic_write_bytes
from hcd_core.hashing import sha256_file

WEIGHTS_NAME = "student.safetensors"
CARD_NAME = "model_card.json"
METRICS_NAME = "metrics.jsonl"
CARD_VERSION = 1


def write_student_weights(model: nn.Module, path: Path) -> str:
    """Save a model's state dict as safetensors atomically; returns the file's sha256."""
    from safetensors.torch import save

    # Own copies: safetensors refuses tensors that share storage (tied weights, views).
    tensors = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    data = save(tensors, metadata={"format": "pt"})
    atomic_write_bytes(Path(path), lambda fh: fh.write(data))
    return sha256_file(path)


def write_json(path: Path, doc: dict) -> None:
    text = json.dumps(doc, indent=2, sort_keys=False, default=str) + "\n"
    atomic_write_bytes(Path(path), lambda fh: fh.write(text.encode()))


def runtime_versions() -> dict[str, str]:
    import timm

    return {"torch": torch.__version__, "timm": timm.__version__, "python": platform.python_version()}


def read_card(weights_path: Path, card_path: Path | None = None) -> dict[str, Any]:
    card_path = Path(card_path) if card_path else Path(weights_path).with_name(CARD_NAME)
    if not card_path.is_file():
        raise FileNotFoundError(f"model card not found: {card_path} (it is written next to {WEIGHTS_NAME})")
    card = json.loads(card_path.read_text())
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

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def truncate_after(self, step: int) -> None:
        """Drop points after `step` (they are redone when a run resumes from that step)."""
        if not self.path.is_file():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError):
                continue  # a torn last line from a crash
        text = "".join(line + "\n" for line in keep)
        atomic_write_bytes(self.path, lambda fh: fh.write(text.encode()))

    def append(self, points: Iterable) -> None:
        lines = [json.dumps(asdict(p) if hasattr(p, "__dataclass_fields__") else p) for p in points]
        if lines:
            with open(self.path, "a") as fh:
                fh.write("\n".join(lines) + "\n")
