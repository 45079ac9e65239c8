"""Whole-state training checkpoints: written atomically, loaded with `weights_only=True`.

Everything a run needs to continue exactly is in one file: model, method modules, optimiser,
scaler, EMA, every RNG (torch CPU/CUDA, numpy, Python, the data generator), position in the run,
best metrics, and the hash of the resolved spec (a checkpoint of another spec is refused).
"""

from __future__ import annotations

import os
import random
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, cast

import numpy as np
import torch

from hcd_core.errors import CheckpointMismatch as CheckpointMismatch
from hcd_core.errors import writing

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


def atomic_write_bytes(
    path: Path,
    write: Callable[[IO[bytes]], object],
    before_replace: Callable[[], None] | None = None,
    *,
    what: str = "a file",
) -> None:
    """Write through `write(fileobj)` to a temp file in the same folder, fsync, then rename over `path`.

    `before_replace()` runs once the temp file is complete and durable, just before the rename; if it
    raises, the temp file is removed, `path` is left untouched and its exception propagates as is.
    Any OSError of the write itself is raised as `OutputWriteError` about `what` (no path in it).
    """
    path = Path(path)
    with writing(what):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with writing(what):
            with os.fdopen(fd, "wb") as fh:
                write(fh)
                fh.flush()
                os.fsync(fh.fileno())
        if before_replace is not None:
            before_replace()
        with writing(what):
            os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


# --------------------------------------------------------------------------- RNG states
def capture_rng_state() -> dict[str, Any]:
    """All global RNG states in types `torch.load(weights_only=True)` accepts."""
    np_state = cast(tuple[Any, ...], np.random.get_state())  # legacy=True: (name, keys, pos, gauss...)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": np_state[0],
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "python": {"version": py_version, "internal": list(py_internal), "gauss_next": py_gauss},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    p = state["python"]
    random.setstate((p["version"], tuple(p["internal"]), p["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- save / load
def save_checkpoint(path: Path, state: dict[str, Any], *, before_replace: Callable[[], None] | None = None) -> None:
    """Write a checkpoint atomically; `before_replace` as in `atomic_write_bytes`."""
    payload = {"format_version": FORMAT_VERSION, **state}
    atomic_write_bytes(Path(path), lambda fh: torch.save(payload, fh), before_replace, what="the checkpoint")


def load_checkpoint(path: Path, *, expected_spec_hash: str) -> dict[str, Any]:
    """Load a checkpoint (tensors on CPU) and refuse it if it belongs to another spec."""
    state: dict[str, Any] = torch.load(Path(path), map_location="cpu", weights_only=True)
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointMismatch(
            f"checkpoint {path} has format {state.get('format_version')}, expected {FORMAT_VERSION}"
        )
    if state.get("spec_hash") != expected_spec_hash:
        raise CheckpointMismatch(
            f"checkpoint {path} was written for a different job spec (spec hash {str(state.get('spec_hash'))[:12]} "
            f"!= {expected_spec_hash[:12]}); use another checkpoint directory or the original spec"
        )
    return state
