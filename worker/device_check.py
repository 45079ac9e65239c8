"""The worker's device, checked before it takes any job.

`hcd worker --device cuda` (or `HCD_WORKER_DEVICE=cuda` / `cuda:N`) on a host without a usable GPU
exits at once with one line and a non-zero code, instead of claiming queued jobs and failing every one
of them for the whole cluster. An unknown device value is refused the same way (it would otherwise fail
each job it claims).

The check runs in a short-lived child (`python -c`, which imports torch, initialises CUDA, runs one
small kernel and exits): the worker's own process never imports torch nor touches CUDA (CUDA and fork
do not mix, and a process returns its GPU memory only when it exits). `auto` and `cpu` need no check.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass

EXIT_UNUSABLE = 1  # the device is valid but not usable on this host
EXIT_INVALID = 2  # not one of auto, cpu, cuda, cuda:N (a configuration error)
CHECK_TIMEOUT_SECONDS = 180.0  # importing torch and creating a CUDA context: seconds, more on a busy host

# NVIDIA's minimum Linux driver for a CUDA major version (minor-version compatibility: a CUDA 13.x
# build runs on any driver >= 580, a 12.x build on >= 525). torch's PyPI wheel (torch==2.14.1) is a
# CUDA 13.0 build: the image and the README state driver 580 as the minimum.
MIN_DRIVER_BY_CUDA_MAJOR = {"12": 525, "13": 580}

_DEVICE = re.compile(r"^(auto|cpu|cuda)(?::(\d+))?$")


class DeviceError(Exception):
    """The worker's device cannot be used; str() is one line, `exit_code` the command's exit status."""

    def __init__(self, message: str, exit_code: int = EXIT_UNUSABLE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def normalize_device(device: str | None) -> str:
    """`auto`, `cpu`, `cuda` or `cuda:N`, lower case; DeviceError (exit 2) for anything else."""
    value = (device or "auto").strip().lower()
    match = _DEVICE.match(value)
    if match is None or (match.group(2) is not None and match.group(1) != "cuda"):
        raise DeviceError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N "
                          f"(--device or HCD_WORKER_DEVICE)", EXIT_INVALID)
    return value


def min_driver(cuda_version: str | None) -> int | None:
    """The minimum NVIDIA driver for torch's CUDA version ("13.0" -> 580), None when unknown."""
    if not cuda_version:
        return None
    return MIN_DRIVER_BY_CUDA_MAJOR.get(cuda_version.split(".", 1)[0])


# Run by `python -c` in a child: one JSON line on stdout, whatever happens (the parent reads the last line).
_PROBE = r"""
import json, sys, warnings
out = {}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    try:
        import torch
        out["torch"] = torch.__version__
        out["cuda"] = torch.version.cuda
        out["available"] = bool(torch.cuda.is_available())
        out["count"] = torch.cuda.device_count() if out["available"] else 0
        if out["available"]:
            x = torch.arange(8, device="cuda", dtype=torch.float32)
            out["sum"] = float((x * 2).sum().item())
            out["name"] = torch.cuda.get_device_name(0)
            out["capability"] = "%d.%d" % torch.cuda.get_device_capability(0)
    except BaseException as err:
        text = str(err).strip().splitlines()
        out["error"] = type(err).__name__ + (": " + text[0] if text else "")
out["warnings"] = [str(w.message).strip().splitlines()[0] for w in caught if str(w.message).strip()]
print(json.dumps(out), flush=True)
"""


@dataclass(frozen=True)
class DeviceInfo:
    """What the check found (for the worker's log)."""

    device: str
    description: str


def check_device(device: str | None, *, timeout: float = CHECK_TIMEOUT_SECONDS,
                 python: str | None = None) -> DeviceInfo:
    """DeviceInfo when `device` can be used by this worker's jobs, else DeviceError (one line).

    `auto` and `cpu` are not checked (no child, no delay). For `cuda` and `cuda:N` a child imports
    torch with this process' environment (CUDA_VISIBLE_DEVICES included: `cuda:N` exports N, so the job
    sees its GPU as device 0) and runs a small kernel on device 0.
    """
    value = normalize_device(device)
    if not value.startswith("cuda"):
        return DeviceInfo(value, value)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    where = f"CUDA_VISIBLE_DEVICES={visible}" if visible is not None else "CUDA_VISIBLE_DEVICES unset"
    try:
        proc = subprocess.run([python or sys.executable, "-c", _PROBE], capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"device {value} is not usable: the CUDA check did not finish in {timeout:.0f} s "
                          f"({where})") from None
    except OSError as err:
        raise DeviceError(f"device {value} is not usable: cannot run the CUDA check: {err}") from None
    lines = proc.stdout.strip().splitlines()
    try:
        found = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        found = None
    if not isinstance(found, dict):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DeviceError(f"device {value} is not usable: the CUDA check exited with code {proc.returncode} "
                          f"({where}): {last}")
    return _judge(value, found, where)


def _judge(value: str, found: dict[str, object], where: str) -> DeviceInfo:
    torch_version = found.get("torch")
    cuda_found = found.get("cuda")
    cuda = cuda_found if isinstance(cuda_found, str) else None
    build = f"torch {torch_version} (CUDA {cuda})" if cuda else f"torch {torch_version} (a CPU-only build)"
    driver = min_driver(cuda)
    needs = f"an NVIDIA GPU with driver {driver} or newer" if driver else "an NVIDIA GPU and its driver"
    hint = (f"needs {needs} and, in Docker, the NVIDIA Container Toolkit and a GPU for the container "
            f"(--gpus); --device auto or cpu runs on the CPU")
    warnings = found.get("warnings")
    warned = f": {warnings[0]}" if isinstance(warnings, list) and warnings else ""
    if torch_version is None:
        raise DeviceError(f"device {value} is not usable: {found.get('error', 'torch could not be imported')}")
    if found.get("error"):
        raise DeviceError(f"device {value} is not usable: {build} on {where}: {found['error']}{warned}; {hint}")
    if not cuda:
        raise DeviceError(f"device {value} is not usable: {build} cannot use a GPU; install torch's CUDA build")
    if not found.get("available"):
        raise DeviceError(f"device {value} is not usable: {build} finds no CUDA device ({where}){warned}; {hint}")
    return DeviceInfo(value, f"{value}: {found.get('name')} (compute capability {found.get('capability')}), "
                             f"{build}, {where}")
