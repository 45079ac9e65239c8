"""Writes into output_dir/checkpoint_dir: the checkpoint guard (fencing), storage failures as
OutputWriteError without paths, and the shared hashing helpers."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import pickle
import resource
import signal
from pathlib import Path

import pytest
import torch

from hcd_core.checkpoint import CHECKPOINT_NAME, atomic_write_bytes, save_checkpoint
from hcd_core.engine import RunHooks, run_job
from hcd_core.errors import OutputWriteError
from hcd_core.hashing import sha256_file, sha256_file_and_size, sha256_json
from hcd_core.spec import parse_spec

torch.set_num_threads(1)


def _spec(epochs: int = 2):
    return parse_spec({
        "method": {"name": "ce"}, "student": {"arch": "test_resnet"},
        "dataset": {"name": "synthetic", "image_size": 16, "num_classes": 3, "train_size": 16, "val_size": 8},
        "training": {"epochs": epochs, "batch_size": 8, "max_steps_per_epoch": 1, "device": "cpu"},
    })


class Fenced(Exception):
    pass


# --------------------------------------------------------------------------- atomic writes and the guard
def test_guard_that_raises_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "f.bin"
    atomic_write_bytes(path, lambda fh: fh.write(b"old"))
    seen: list[bytes] = []

    def guard() -> None:
        seen.append(path.read_bytes())  # the new data is complete in a temp file, not yet in place
        raise Fenced

    with pytest.raises(Fenced):
        atomic_write_bytes(path, lambda fh: fh.write(b"new"), before_replace=guard)
    assert seen == [b"old"] and path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]
    atomic_write_bytes(path, lambda fh: fh.write(b"new"), before_replace=lambda: None)
    assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["f.bin"]


def test_run_job_guard_that_raises_keeps_the_previous_checkpoint(tmp_path):
    ckpt = tmp_path / "c" / CHECKPOINT_NAME
    raised = Fenced("lease lost")
    previous: list[bytes] = []

    def guard() -> None:
        if ckpt.exists():  # the second checkpoint (end of epoch 2): refuse it
            previous.append(ckpt.read_bytes())
            raise raised

    with pytest.raises(Fenced) as info:
        run_job(_spec(), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
                hooks=RunHooks(checkpoint_guard=guard))
    assert info.value is raised  # propagates unchanged
    assert ckpt.read_bytes() == previous[0]
    assert torch.load(ckpt, weights_only=True)["loop"]["epoch"] == 1
    assert os.listdir(tmp_path / "c") == [CHECKPOINT_NAME]
    assert not (tmp_path / "o" / "student.safetensors").exists()


def test_run_job_guard_that_passes_changes_nothing(tmp_path):
    calls: list[int] = []
    result = run_job(_spec(), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c",
                     hooks=RunHooks(checkpoint_guard=lambda: calls.append(1)))
    assert result.status == "completed" and len(calls) == 2  # one checkpoint per epoch
    assert torch.load(tmp_path / "c" / CHECKPOINT_NAME, weights_only=True)["loop"]["epoch"] == 2
    assert os.listdir(tmp_path / "c") == [CHECKPOINT_NAME]


# --------------------------------------------------------------------------- storage failures
def test_output_dir_that_is_a_file_is_an_output_write_error_without_path(tmp_path):
    blocker = tmp_path / "occupied"
    blocker.write_text("not a directory")
    with pytest.raises(OutputWriteError) as info:
        run_job(_spec(), output_dir=blocker, checkpoint_dir=tmp_path / "c")
    err = info.value
    assert isinstance(err, OSError) and err.errno == errno.EEXIST and err.strerror
    assert str(err) == f"could not write the output directory: {err.strerror}"
    assert str(tmp_path) not in str(err) and "occupied" not in str(err)


@contextlib.contextmanager
def _small_disk():
    """Files larger than 64 KiB cannot be written (RLIMIT_FSIZE: EFBIG), as on a full disk."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, old_limit[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
        signal.signal(signal.SIGXFSZ, old_handler)


def test_full_disk_while_checkpointing_is_an_output_write_error(tmp_path):
    path = tmp_path / "c" / CHECKPOINT_NAME
    save_checkpoint(path, {"x": torch.zeros(4)})
    before = path.read_bytes()
    with pytest.raises(OutputWriteError) as info:
        with _small_disk():
            save_checkpoint(path, {"x": torch.zeros(100_000)})  # torch.save wraps the OSError
    assert info.value.errno == errno.EFBIG
    assert str(info.value) == f"could not write the checkpoint: {os.strerror(errno.EFBIG)}"
    assert path.read_bytes() == before and os.listdir(path.parent) == [CHECKPOINT_NAME]


def test_full_disk_during_a_run_is_an_output_write_error(tmp_path):
    with pytest.raises(OutputWriteError) as info:
        with _small_disk():
            run_job(_spec(), output_dir=tmp_path / "o", checkpoint_dir=tmp_path / "c")
    assert str(tmp_path) not in str(info.value) and "could not write the checkpoint" in str(info.value)
    assert os.listdir(tmp_path / "c") == []


def test_output_write_error_pickles_and_other_errors_pass_through(tmp_path):
    err = pickle.loads(pickle.dumps(OutputWriteError(errno.ENOSPC, "No space left on device", "the model card")))
    assert (err.errno, err.strerror, str(err)) == (
        errno.ENOSPC, "No space left on device", "could not write the model card: No space left on device")
    with pytest.raises(ZeroDivisionError):  # not a storage failure: unchanged
        atomic_write_bytes(tmp_path / "f", lambda fh: 1 / 0)
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------- hashing
def test_hashing_helpers(tmp_path):
    path = tmp_path / "blob"
    data = os.urandom(3 * 2**20 + 5)  # spans several read chunks
    path.write_bytes(data)
    assert sha256_file_and_size(path) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_file(Path(str(path))) == hashlib.sha256(data).hexdigest()
    doc = {"b": [1, 2.5, None], "a": {"z": "é", "y": True}}
    canonical = '{"a":{"y":true,"z":"é"},"b":[1,2.5,null]}'.encode()
    assert sha256_json(doc) == hashlib.sha256(canonical).hexdigest()
    assert sha256_json(dict(reversed(list(doc.items())))) == sha256_json(doc)
    with pytest.raises(ValueError):
        sha256_json({"x": float("nan")})
