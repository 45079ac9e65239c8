"""CUDA smoke run of the engine: a ce teacher (bf16, EMA), then HCD students with fp16 and bf16;
re-evaluating the exported student must reproduce the reported accuracy. Used by benchmarks/gpu_check.sh."""
import json
import math
import tempfile
import time
from pathlib import Path

from hcd_core.engine import RunHooks, run_job
from hcd_core.evaluate import evaluate_exported
from hcd_core.spec import parse_spec

d = Path(tempfile.mkdtemp())
ds = {"name": "synthetic", "image_size": 32, "num_classes": 10, "train_size": 2000, "val_size": 500}
t0 = time.time()
r = run_job(parse_spec({"method": {"name": "ce"}, "student": {"arch": "resnet18"}, "dataset": ds,
    "training": {"epochs": 2, "batch_size": 128, "device": "cuda", "augment": "crop_flip", "ema_decay": 0.99}}),
    output_dir=d / "t", checkpoint_dir=d / "tc")
print("ce bf16", r.status, r.final_metrics, round(time.time() - t0, 1))
print("hcd eval", evaluate_exported(d / "t" / "student.safetensors", dataset="synthetic"))
for amp in ("fp16", "bf16"):
    t0 = time.time()
    r2 = run_job(parse_spec({"method": {"name": "hcd"}, "student": {"arch": "mobilenetv2_100"},
        "teacher": {"arch": "resnet18", "weights": {"source": "file", "path": str(d / "t" / "student.safetensors")}},
        "dataset": ds, "training": {"epochs": 2, "batch_size": 128, "device": "cuda", "amp": amp}}),
        output_dir=d / amp, checkpoint_dir=d / (amp + "c"), teacher_weights=d / "t" / "student.safetensors",
        teacher_card=json.loads((d / "t" / "model_card.json").read_text()),
        hooks=RunHooks(should_stop=lambda: False))
    card = json.loads((d / amp / "model_card.json").read_text())
    print("hcd", amp, r2.status, r2.final_metrics, card["precision"], card["channels_last"], card["device"],
          round(time.time() - t0, 1))
    assert math.isfinite(r2.final_metrics["train_loss"]), f"{amp}: training diverged to NaN/inf"
