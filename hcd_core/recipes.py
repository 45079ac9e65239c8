"""Named training recipes. A spec picks one with `training.recipe` and overrides any field."""

from __future__ import annotations

from typing import Any

RECIPES: dict[str, dict[str, Any]] = {
    # Section 5 of the method spec (the OFA-KD CIFAR-100 recipe). Use it with dataset.image_size 224.
    "paper-cifar": dict(
        epochs=300,
        batch_size=128,
        lr=0.05,
        min_lr=1e-3,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=2e-3,
        schedule="cosine",
        step_milestones=None,
        step_gamma=0.1,
        warmup_epochs=3,
        label_smoothing=0.1,
        grad_clip=None,
        ema_decay=None,
        amp="auto",
        channels_last=True,
        augment="rrc_flip",
        num_workers=8,
        max_steps_per_epoch=None,
        device="auto",
        export="best",
        devices=1,
        compile=False,
        data_pipeline="auto",
    ),
    # Minutes on a CPU: small models, small images, a handful of epochs.
    "quick": dict(
        epochs=5,
        batch_size=64,
        lr=0.05,
        min_lr=0.0,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        step_milestones=None,
        step_gamma=0.1,
        warmup_epochs=1,
        label_smoothing=0.0,
        # A guard against spikes only. Measured on digits (test_convnext -> test_vit, 32 px, 20 epochs,
        # 3 seeds; benchmarks/digits_accuracy.py): 5.0 clipped 16% of kd's steps, 8% of ofa's, 25% of
        # hcd's and 72% of dkd's; 20.0 clips at most 1.1% of any method's steps.
        grad_clip=20.0,
        ema_decay=None,
        amp="auto",
        channels_last=True,
        augment="none",
        num_workers=0,
        max_steps_per_epoch=None,
        device="auto",
        export="best",
        devices=1,
        compile=False,
        data_pipeline="auto",
    ),
}
