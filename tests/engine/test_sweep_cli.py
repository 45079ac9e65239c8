"""`hcd sweep`: local sweeps as real `hcd train` subprocesses (tiny digits runs), and the client's
errors without a server."""

from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from hcd_cli.main import main
from hcd_cli.sweep_cmds import parse_grid

pytestmark = pytest.mark.slow

DATASET = {"name": "digits", "image_size": 16}
TRAINING = {"epochs": 2, "batch_size": 32, "max_steps_per_epoch": 2, "device": "cpu"}
GRID = ["--grid", "training.lr=0.1,0.05"]


def write_spec(folder: Path, training: dict[str, object]) -> Path:
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump({"method": {"name": "ce"}, "student": {"arch": "test_resnet"},
                                    "dataset": DATASET, "training": training}))
    return spec


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A 2-cell x 2-seed sweep, two runs at once; its folder and its command line."""
    root = tmp_path_factory.mktemp("sweep")
    argv = ["sweep", str(write_spec(root, TRAINING)), *GRID, "--seeds", "0,1", "--output", str(root / "out"),
            "--parallel", "2"]
    assert main(argv) == 0
    return root / "out", argv


def runs_of(out: Path) -> list[dict[str, object]]:
    runs: list[dict[str, object]] = json.loads((out / "sweep.json").read_text())["runs"]
    return runs


def test_summary_is_the_mean_and_std_of_the_model_cards(swept: tuple[Path, list[str]]) -> None:
    out, _ = swept
    summary = json.loads((out / "summary.json").read_text())
    assert [c["values"] for c in summary["cells"]] == [{"training.lr": 0.1}, {"training.lr": 0.05}]
    markdown = (out / "summary.md").read_text()
    for cell, folder in zip(summary["cells"], ["training.lr=0.1", "training.lr=0.05"], strict=True):
        cards = [json.loads((out / folder / f"seed-{s}" / "model_card.json").read_text()) for s in (0, 1)]
        assert [c["seed"] for c in cards] == [0, 1] and {c["spec"]["training"]["lr"] for c in cards} == {
            cell["values"]["training.lr"]}
        assert cell["n"] == 2 and cell["succeeded"] == 2
        for key, metrics in (("val_top1", "final_metrics"), ("best_val_top1", "best_metrics")):
            values = [c[metrics]["val_top1"] for c in cards]
            assert cell[key]["runs"] == 2
            assert cell[key]["mean"] == pytest.approx(statistics.fmean(values))
            assert cell[key]["std"] == pytest.approx(statistics.stdev(values))
        assert cell["wall_s"]["sum"] > 0
        assert f"{cell['val_top1']['mean']:.2f} ± {cell['val_top1']['std']:.2f}" in markdown
    runs = runs_of(out)
    assert [(r["cell"], r["seed"], r["status"], r["action"]) for r in runs] == [
        (0, 0, "succeeded", "trained"), (0, 1, "succeeded", "trained"),
        (1, 0, "succeeded", "trained"), (1, 1, "succeeded", "trained")]


def test_parallel_2_runs_two_at_once(swept: tuple[Path, list[str]]) -> None:
    first, second = runs_of(swept[0])[:2]
    assert first["started_at"] < second["ended_at"] and second["started_at"] < first["ended_at"]  # type: ignore[operator]


def test_rerun_skips_finished_runs(swept: tuple[Path, list[str]], capsys: pytest.CaptureFixture[str]) -> None:
    out, argv = swept
    cards = sorted(out.glob("*/seed-*/model_card.json"))
    assert len(cards) == 4
    before = {p: p.stat().st_mtime_ns for p in cards}
    logs = {p: p.read_text() for p in out.glob("*/seed-*/train.log")}
    t0 = time.monotonic()
    capsys.readouterr()
    assert main(argv) == 0
    assert time.monotonic() - t0 < 5  # an `hcd train` subprocess alone takes longer
    assert "4 finished already, 0 to run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in cards} == before
    assert {p: p.read_text() for p in out.glob("*/seed-*/train.log")} == logs
    assert {r["action"] for r in runs_of(out)} == {"skipped"}
    assert all(r["wall_s"] for r in runs_of(out))  # kept from the runs that trained


def test_interrupted_run_checkpoints_and_the_rerun_resumes_it(tmp_path: Path) -> None:
    # One epoch of ~90 steps: interrupted after its first step, resumed by the rerun.
    spec = write_spec(tmp_path, {"epochs": 1, "batch_size": 16, "device": "cpu"})
    out = tmp_path / "out"
    argv = ["sweep", str(spec), "--grid", "training.lr=0.05", "--seeds", "3", "--output", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "hcd_cli.main", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    run = out / "training.lr=0.05" / "seed-3"
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 60
    while not (metrics.is_file() and '"loss"' in metrics.read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # to the sweep alone, as a terminal's Ctrl-C would: it forwards one
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert (run / "checkpoint" / "checkpoint.pt").is_file() and not (run / "model_card.json").exists()
    [record] = runs_of(out)
    assert record["status"] == "stopped" and json.loads((out / "sweep.json").read_text())["status"] == "stopped"
    stopped_lines = metrics.read_text().splitlines()
    steps = {json.loads(line)["step"] for line in stopped_lines}
    assert 1 <= max(steps) < 80  # stopped mid-epoch, not at its end

    assert main(argv) == 0
    [record] = runs_of(out)
    assert (record["status"], record["action"]) == ("succeeded", "resumed")
    card = json.loads((run / "model_card.json").read_text())
    assert card["steps"] == card["steps_per_epoch"] > max(steps)
    # The steps done before the interrupt were not trained again: their points (and times) are kept.
    assert metrics.read_text().splitlines()[:len(stopped_lines)] == stopped_lines
    assert "--resume" in (run / "train.log").read_text()


def test_invalid_cell_exits_2_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = write_spec(tmp_path, TRAINING)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--grid", "training.lr=0.1,-1", "--seeds", "0,1", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cells.1.spec.training.lr: " in err and "Traceback" not in err
    assert not out.exists()
    assert main(["sweep", str(spec), "--grid", "training.lr", "--seeds", "0", "--output", str(out)]) == 2
    assert main(["sweep", str(tmp_path / "none.yaml"), *GRID, "--seeds", "0", "--output", str(out)]) == 2
    assert main(["sweep", str(spec), *GRID, "--seeds", "0"]) == 2  # no --output
    assert main(["sweep", str(spec), *GRID, "--seeds", "0", "--output", str(out), "--metadata", "a=b"]) == 2
    assert "spec file not found" in capsys.readouterr().err
    assert not out.exists()


def test_missing_teacher_file_is_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = tmp_path / "kd.json"
    spec.write_text(json.dumps({
        "method": {"name": "kd"}, "student": {"arch": "test_resnet"}, "dataset": DATASET, "training": TRAINING,
        "teacher": {"arch": "test_resnet", "weights": {"source": "file", "path": "teacher/student.safetensors"}},
    }))
    assert main(["sweep", str(spec), "--grid", "method.temperature=1,4", "--seeds", "0",
                 "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    # relative to the spec's folder, as in `hcd train`
    assert f"cells.0.spec.teacher.weights.path: file not found: {tmp_path / 'teacher'}" in err


def test_grid_values_are_yaml() -> None:
    grid = parse_grid(["method.temperature=1,4.0,1e-3", "training.amp=auto,off", "x=true,mlp,[0.5,0.5],'a,b'"])
    assert grid == {"method.temperature": [1, 4.0, 0.001], "training.amp": ["auto", "off"],
                    "x": [True, "mlp", [0.5, 0.5], "a,b"]}
    assert type(grid["method.temperature"][0]) is int


def test_submit_without_a_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HCD_SERVER_URL", "http://127.0.0.1:9")  # discard: nothing listens
    monkeypatch.setenv("HCD_API_KEY", "k")
    spec = write_spec(tmp_path, TRAINING)
    capsys.readouterr()
    # The client's exit codes (hcd_cli.exits): 5 unreachable, 2 bad input or no key.
    assert main(["sweep", "submit", str(spec), *GRID, "--seeds", "0,1"]) == 5
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "cannot reach" in err
    assert main(["sweep", "status", "abc"]) == 5
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["sweep", "submit", str(tmp_path / "none.yaml"), *GRID, "--seeds", "0"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "none.yaml" in err
    assert main(["sweep", "submit", str(spec), *GRID, "--seeds", "0", "--output", "x"]) == 2
    monkeypatch.delenv("HCD_API_KEY")
    assert main(["sweep", "status", "abc"]) == 2
