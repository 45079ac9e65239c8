"""Top-1/top-5 evaluation of a classifier alone (the student, or an exported model), in fp32.

Evaluation always runs in fp32 without autocast, so the accuracy reported at the end of training is
exactly what evaluating the exported weights later gives on the same device.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from hcd_core.data import BatchSource


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: BatchSource,
    device: torch.device,
    reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """{"val_top1", "val_top5" (percent), "val_loss" (mean CE)} over the whole validation set.

    `reduce`: under data parallelism each rank evaluates its part of every batch and `reduce` sums
    the counts over the ranks (a float64 host tensor in and out).

    cuDNN runs deterministic algorithms here: with cudnn.benchmark another process may pick another
    algorithm, and last-bit differences flip near-tied top-5 answers; fixed algorithms let the
    exported weights re-evaluate to the reported accuracy. No effect on the CPU.
    """
    was_training = model.training
    model.eval()
    correct1 = torch.zeros((), dtype=torch.long, device=device)
    correct5 = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    total = 0
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False, deterministic=True):
            for x, y in batches.batches():
                x = x.to(device, non_blocking=True)
                y = y.to(device, non_blocking=True)
                logits = model(x).float()
                k = min(5, logits.shape[1])
                top = logits.topk(k, dim=1).indices
                hits = top.eq(y.unsqueeze(1))
                correct1 += hits[:, 0].sum()
                correct5 += hits.any(dim=1).sum()
                loss_sum += F.cross_entropy(logits, y, reduction="sum").double()
                total += y.numel()
    finally:
        model.train(was_training)
    sums = torch.stack([correct1.double(), correct5.double(), loss_sum, loss_sum.new_tensor(float(total))]).cpu()
    if reduce is not None:
        sums = reduce(sums)
    c1, c5, ls, count = sums.tolist()
    total = max(int(count), 1)
    return {"val_top1": 100.0 * c1 / total, "val_top5": 100.0 * c5 / total, "val_loss": ls / total}


def evaluate_exported(
    weights: Path,
    *,
    dataset: str,
    root: str | None = None,
    image_size: int | None = None,
    batch_size: int = 256,
    card_path: Path | None = None,
    data_root: Path | None = None,
    device: str = "auto",
) -> dict[str, float]:
    """Evaluate an exported student (weights + model_card.json) on a dataset's validation split.

    The card gives the architecture, input size and normalisation; when `dataset` is the one the
    student was trained on, the card's dataset settings (synthetic sizes, root) are reused.
    """
    from hcd_core.data import build_data
    from hcd_core.export import load_student, read_card
    from hcd_core.spec import DatasetSpec
    from hcd_core.training import resolve_device

    card = read_card(Path(weights), card_path)
    model = load_student(Path(weights), card_path)
    ds: dict[str, Any] = {"name": dataset}
    trained_on = ((card.get("spec") or {}).get("dataset")) or {}
    if trained_on.get("name") == dataset:
        ds.update({k: v for k, v in trained_on.items() if v is not None})
        ds.pop("download", None)
    if root is not None:
        ds["root"] = root
    ds["image_size"] = image_size or card["image_size"]
    spec = DatasetSpec(**ds)
    norm = (tuple(card["mean"]), tuple(card["std"]))
    _, val, info = build_data(spec, batch_size=batch_size, eval_batch_size=batch_size, data_root=data_root, norm=norm)
    if info.num_classes != card["num_classes"]:
        raise ValueError(
            f"dataset {dataset!r} has {info.num_classes} classes but the model has {card['num_classes']}"
        )
    dev = resolve_device(device)
    model.to(dev)
    return evaluate(model, val, dev)
