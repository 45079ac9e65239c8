"""`hcd worker --device cuda` checks its GPU before it takes any job (worker.device_check).

On a host without a usable GPU (this CPU-only test machine) it exits at once with one line and a
non-zero code, and a job queued before stays queued: one bad host cannot claim and fail the cluster's jobs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest
from sqlalchemy import text
from worker_fixtures import HCD, get_job, insert_job, job_events, tiny_spec

from jobs.db import database
from worker import device_check
from worker.device_check import EXIT_INVALID, EXIT_UNUSABLE, DeviceError, check_device

_REASON = "is not usable"


@pytest.fixture(scope="module")
def no_gpu() -> None:
    try:
        info = check_device("cuda")
    except DeviceError:
        return
    pytest.skip(f"this host has a usable GPU ({info.description})")


# --------------------------------------------------------------------------- the check itself
def test_auto_and_cpu_start_no_child(monkeypatch):
    def no_child(*args, **kwargs):
        raise AssertionError("auto and cpu need no CUDA check")

    monkeypatch.setattr(device_check.subprocess, "run", no_child)
    assert check_device("auto").device == "auto"
    assert check_device(None).device == "auto"
    assert check_device(" CPU ").device == "cpu"


@pytest.mark.parametrize("value", ["gpu", "cuda:", "cuda:x", "cpu:0", "auto:1", "cuda:0:1", "mps"])
def test_unknown_devices_are_refused_as_configuration_errors(value):
    with pytest.raises(DeviceError) as err:
        check_device(value)
    assert err.value.exit_code == EXIT_INVALID
    assert "not one of auto, cpu, cuda, cuda:N" in str(err.value) and "\n" not in str(err.value)


def test_the_check_never_imports_torch_in_the_calling_process():
    code = textwrap.dedent("""
        import sys
        from worker.device_check import DeviceError, check_device
        try:
            check_device("cuda")
        except DeviceError:
            pass
        assert "torch" not in sys.modules, "the worker's process imported torch"
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def test_reasons_from_the_child_are_one_line_with_the_minimum_driver():
    judge = device_check._judge
    where = "CUDA_VISIBLE_DEVICES unset"
    too_old = {"torch": "2.14.1+cu130", "cuda": "13.0", "available": False, "count": 0,
               "warnings": ["CUDA initialization: The NVIDIA driver on your system is too old (found version 12080)."]}
    with pytest.raises(DeviceError) as err:
        judge("cuda", too_old, where)
    message = str(err.value)
    assert "too old" in message and "driver 580 or newer" in message and "\n" not in message
    assert err.value.exit_code == EXIT_UNUSABLE

    with pytest.raises(DeviceError, match="CPU-only build"):
        judge("cuda", {"torch": "2.14.1+cpu", "cuda": None, "available": False, "warnings": []}, where)
    with pytest.raises(DeviceError, match="no kernel image"):
        judge("cuda", {"torch": "2.14.1+cu130", "cuda": "13.0", "available": True, "count": 1, "warnings": [],
                       "error": "AcceleratorError: CUDA error: no kernel image is available"}, where)
    with pytest.raises(DeviceError, match="No module named 'torch'"):
        judge("cuda", {"error": "ModuleNotFoundError: No module named 'torch'", "warnings": []}, where)
    ok = judge("cuda:1", {"torch": "2.14.1+cu130", "cuda": "13.0", "available": True, "count": 1, "sum": 56.0,
                          "name": "NVIDIA H100", "capability": "9.0", "warnings": []}, "CUDA_VISIBLE_DEVICES=1")
    assert ok.device == "cuda:1" and "NVIDIA H100" in ok.description and "CUDA 13.0" in ok.description


def test_a_child_that_crashes_or_hangs_is_a_reason_too(tmp_path):
    crash = tmp_path / "crash"
    crash.write_text("#!/bin/sh\necho 'Segmentation fault' >&2\nexit 139\n")
    crash.chmod(0o755)
    with pytest.raises(DeviceError, match="exited with code 139.*Segmentation fault"):
        check_device("cuda", python=str(crash))
    hang = tmp_path / "hang"
    hang.write_text("#!/bin/sh\nexec sleep 30\n")
    hang.chmod(0o755)
    started = time.monotonic()
    with pytest.raises(DeviceError, match="did not finish in 1 s"):
        check_device("cuda", python=str(hang), timeout=1)
    assert time.monotonic() - started < 10


def test_min_driver_of_the_cuda_majors():
    assert device_check.min_driver("13.0") == 580 and device_check.min_driver("13.2") == 580
    assert device_check.min_driver("12.8") == 525
    assert device_check.min_driver(None) is None and device_check.min_driver("11.8") is None


# --------------------------------------------------------------------------- `hcd worker` on this host
def _run_worker(env: dict, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    proc = subprocess.run(HCD + ["worker", *args], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    return proc, time.monotonic() - started


@pytest.mark.parametrize(("args", "env_device", "visible"), [
    (["--device", "cuda"], None, "CUDA_VISIBLE_DEVICES unset"),
    ([], "cuda", "CUDA_VISIBLE_DEVICES unset"),
    ([], "cuda:1", "CUDA_VISIBLE_DEVICES=1"),  # the variable alone exports CUDA_VISIBLE_DEVICES too
])
def test_cuda_worker_without_a_gpu_exits_at_once_and_claims_nothing(no_gpu, service_settings, service_env,
                                                                     args, env_device, visible):
    job_id = insert_job(service_settings, tiny_spec("ce", epochs=1, steps=2))  # unpublished: a relay would send it
    env = {k: v for k, v in service_env.items() if k not in ("HCD_WORKER_DEVICE", "CUDA_VISIBLE_DEVICES")}
    if env_device:
        env["HCD_WORKER_DEVICE"] = env_device
    try:
        proc, seconds = _run_worker(env, *args)
        assert proc.returncode == EXIT_UNUSABLE, (proc.returncode, proc.stdout, proc.stderr)
        assert seconds < 60, f"took {seconds:.1f} s"
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hcd worker: device cuda") and _REASON in lines[0], proc.stderr
        assert visible in lines[0] and "driver 580 or newer" in lines[0]
        assert proc.stdout == ""  # no Celery banner: the worker never started
        job = get_job(service_settings, job_id)
        assert (job.status, job.attempt, job.worker_id, job.started_at) == ("queued", 0, None, None)
        assert job.published_at is None  # not even its relay ran
        assert all(event.attempt == 0 for event in job_events(service_settings, job_id))
    finally:
        with database(service_settings).session() as session:  # no later test's worker may take it
            session.execute(text("UPDATE jobs SET status = 'cancelled', finished_at = now() WHERE id = :id"),
                            {"id": job_id})


def test_unknown_device_exits_2_before_touching_anything(service_env):
    env = {k: v for k, v in service_env.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc, seconds = _run_worker(env, "--device", "gpu")
    assert proc.returncode == EXIT_INVALID and seconds < 30
    assert proc.stderr.strip() == ("hcd worker: device 'gpu' is not one of auto, cpu, cuda, cuda:N "
                                   "(--device or HCD_WORKER_DEVICE)")


def test_the_worker_process_never_imports_torch_on_the_way_out(no_gpu, service_env):
    code = textwrap.dedent("""
        import sys
        from hcd_cli.main import main
        code = main(["worker", "--device", "cuda"])
        assert "torch" not in sys.modules, "hcd worker imported torch in its own process"
        sys.exit(code)
    """)
    env = {k: v for k, v in service_env.items() if k != "CUDA_VISIBLE_DEVICES"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == EXIT_UNUSABLE, proc.stderr
