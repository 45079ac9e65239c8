"""Exceptions of the engine that callers classify (torch-free).

- `OutputWriteError`: a write into the output or checkpoint directory failed (storage: disk full,
  read-only mount, ...). An infrastructure failure, not the spec's fault.
- `DatasetUnavailable`: the dataset is not on disk (and downloading was not asked for).
- `CheckpointMismatch`: the checkpoint was written for another spec or by an incompatible version.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["CheckpointMismatch", "DatasetUnavailable", "OutputWriteError", "writing"]


class OutputWriteError(OSError):
    """A write the engine makes into output_dir or checkpoint_dir failed with an OSError.

    Keeps the cause's `errno` and `strerror`; `str()` says what could not be written and why, never
    a path (e.g. "could not write the checkpoint: No space left on device").
    """

    def __init__(self, errno: int | None, strerror: str | None, what: str = "the output") -> None:
        super().__init__(errno, strerror)
        self.what = what

    def __str__(self) -> str:
        return f"could not write {self.what}: {self.strerror or 'input/output error'}"

    def __reduce__(self) -> tuple[type[OutputWriteError], tuple[int | None, str | None, str]]:
        return type(self), (self.errno, self.strerror, self.what)


class DatasetUnavailable(RuntimeError):
    """The dataset is not on disk (and downloading was not asked for)."""


class CheckpointMismatch(ValueError):
    """The checkpoint was written for another spec (or by an incompatible version)."""


@contextmanager
def writing(what: str) -> Iterator[None]:
    """Raise an OSError inside the block as an `OutputWriteError` about `what` ("the checkpoint"),
    also when a serialiser wrapped it in another exception (torch.save raises RuntimeError for a full disk)."""
    try:
        yield
    except OutputWriteError:
        raise
    except Exception as err:
        cause = _os_error(err)
        if cause is None:
            raise
        raise OutputWriteError(cause.errno, cause.strerror or type(cause).__name__, what) from err


def _os_error(err: BaseException | None) -> OSError | None:
    """`err` if it is an OSError, else the OSError it was raised from or while handling, if any."""
    while err is not None:
        if isinstance(err, OSError):
            return err
        err = err.__cause__ or err.__context__
    return None
