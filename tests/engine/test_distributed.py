"""Data-parallel training on the CPU (gloo): two processes, the engine's own DDP path."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from tests.engine.ddp_ranks import free_port, train_rank

pytestmark = pytest.mark.slow

WORLD = 2

DOC = {
    "method": {"name": "hcd", "num_stages": 2},
    "student": {"arch": "test_resnet"},
    "teacher": {"arch": "test_vit", "weights": {"source": "file", "path": "PLACEHOLDER"}},
    "dataset": {"name": "synthetic", "image_size": 16, "num_classes": 4, "train_size": 128, "val_size": 40},
    "training": {"epochs": 2, "batch_size": 16, "max_steps_per_epoch": 3, "device": "cpu", "augment": "crop_flip",
                 "ema_decay": 0.9, "devices": WORLD},
    "seed": 5,
}


@pytest.fixture(scope="module")
def doc(tmp_path_factory) -> dict:
    from safetensors.torch import save_file

    from hcd_core.models import create_timm_model

    torch.manual_seed(0)
    teacher = create_timm_model("test_vit", 4, 16)
    path = tmp_path_factory.mktemp("teacher") / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in teacher.state_dict().items()}, str(path))
    d = json.loads(json.dumps(DOC))
    d["teacher"]["weights"]["path"] = str(path)
    return d


def _spawn(doc: dict, out: Path, stop_at: int | None = None) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    mp.spawn(train_rank, args=(WORLD, free_port(), doc, str(out), stop_at), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def test_both_ranks_end_with_identical_weights(doc, tmp_path):
    ranks = _spawn(doc, tmp_path / "run")
    assert [r["status"] for r in ranks] == ["completed"] * WORLD
    a, b = ranks[0]["state"], ranks[1]["state"]
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name  # parameters, BN statistics and the method's extras
    assert ranks[0]["final"] == ranks[1]["final"]  # validation metrics reduced across the ranks


def test_resume_under_ddp_is_exact(doc, tmp_path):
    whole = _spawn(doc, tmp_path / "whole")
    _spawn(doc, tmp_path / "cut", stop_at=4)  # stopped mid-epoch 2 (3 steps per epoch)
    saved = torch.load(tmp_path / "cut" / "ckpt" / "checkpoint.pt", weights_only=True)
    assert saved["loop"]["global_step"] == 4 and len(saved["rng_ranks"]) == WORLD
    resumed = _spawn(doc, tmp_path / "cut")
    for name, value in whole[0]["state"].items():
        assert torch.equal(value, resumed[0]["state"][name]), name
    assert whole[0]["final"] == resumed[0]["final"]


def test_hcd_train_with_two_processes_learns(doc, tmp_path):
    """`hcd train --nproc-per-node 2` through torchrun: rank 0 exports, the loss falls, accuracy beats chance."""
    d = json.loads(json.dumps(doc))
    d["training"] = {"epochs": 4, "batch_size": 32, "device": "cpu", "augment": "flip", "lr": 0.05}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(d))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "hcd_cli.main", "train", str(spec_path), "--output", str(out), "--no-progress",
         "--nproc-per-node", "2"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["status"] == "completed"
    card = json.loads((out / "model_card.json").read_text())
    assert card["spec"]["training"]["devices"] == 2
    points = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [p["value"] for p in points if p["name"] == "loss"]
    steps = [p["step"] for p in points if p["name"] == "loss"]
    assert steps == list(range(1, len(steps) + 1))  # one point per step, from rank 0 alone
    k = max(1, len(losses) // 4)
    assert sum(losses[-k:]) / k < sum(losses[:k]) / k
    assert result["final"]["val_top1"] > 100 / 4 + 10  # 4 classes: chance is 25%


_PARENT = """
import json, sys, time
from pathlib import Path
from hcd_core.engine import run_job
from hcd_core.launch import HelperRanks
from hcd_core.spec import JobSpec
spec = JobSpec.model_validate(json.loads(sys.argv[1])).resolved()
out = Path(sys.argv[2])
payload = {"spec": spec.model_dump(mode="json"), "checkpoint_dir": str(out / "ckpt"), "teacher_weights": None,
           "teacher_card": None, "data_root": None, "stop_check_every": 1}
with HelperRanks(2, payload) as ranks:
    print(json.dumps([p.pid for p in ranks.procs]), flush=True)
    if sys.argv[3] == "train":
        run_job(spec, output_dir=out / "o", checkpoint_dir=out / "ckpt")
    else:  # rank 0 never joins: the helper waits at the rendezvous, where no peer can fail it
        time.sleep(600)
"""


@pytest.mark.parametrize("stage", ["train", "rendezvous"])
def test_helper_ranks_die_with_the_process_that_started_them(doc, tmp_path, stage):
    """A job process killed outright (SIGKILL: no cleanup runs) takes its helper ranks with it,
    whether they are training (a collective fails) or waiting to meet it (only the death signal)."""
    import os
    import signal
    import time

    d = json.loads(json.dumps(doc))
    d["training"].update({"epochs": 1000, "max_steps_per_epoch": 50})
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, json.dumps(d), str(tmp_path), stage],
                              stdout=subprocess.PIPE, text=True)
    helpers = json.loads(parent.stdout.readline())
    time.sleep(3)  # the ranks meet and start training
    assert parent.poll() is None
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        with open(f"/proc/{pid}/stat") as fh:  # a zombie has exited; its parent is gone
            return fh.read().split(") ")[1][0] != "Z"

    deadline = time.monotonic() + 20
    while any(alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(alive(pid) for pid in helpers)


def test_ctrl_c_stops_a_torchrun_training_after_the_step_and_resume_finishes_it(doc, tmp_path):
    """Ctrl-C in the terminal (SIGINT to the foreground process group) of `hcd train
    --nproc-per-node 2`: the ranks stop at the same step, rank 0 checkpoints, the command exits 130
    with no torchrun traceback; --resume finishes the run."""
    import os
    import signal
    import time

    d = json.loads(json.dumps(doc))
    d["training"].update({"epochs": 3, "max_steps_per_epoch": 30})
    d["dataset"]["train_size"] = 512  # 32 batches of 16: 30 steps an epoch
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(d))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "hcd_cli.main", "train", str(spec_path), "--output", str(out), "--no-progress"]
    proc = subprocess.Popen(command, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "continue with" in stderr
    stopped = json.loads(stdout.strip().splitlines()[-1])
    assert stopped["status"] == "stopped" and 0 < stopped["step"] < 90
    assert (out / "checkpoint" / "checkpoint.pt").is_file() and not (out / ".stop-request").exists()

    done = subprocess.run(command + ["--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1])["step"] == 90
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["name"] == "loss"]
    assert steps == list(range(1, 91))  # every step once: none lost, none repeated across the stop
