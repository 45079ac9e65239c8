"""The per-run folder of prometheus-client's multiprocess mode for `hcd api` (its uvicorn processes add
up their counters there). Nothing here imports prometheus_client: `PROMETHEUS_MULTIPROC_DIR` must be set
before it is imported, in the process that forks the uvicorn workers.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
_RUN_DIR = re.compile(r"^api-\d+-(\d+)$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_multiprocess_dir(port: int) -> Path | None:
    """Set `PROMETHEUS_MULTIPROC_DIR` for this run; the folder it created (remove it at exit), or None
    when the operator set the variable (that folder is emptied of metric files, never removed).

    The folder is `<tmp>/hcd-metrics-<uid>/api-<port>-<pid>`: local to the host (never on a shared data
    directory), new for each run; folders of runs that died without cleaning up are removed here.
    """
    given = os.environ.get(MULTIPROC_ENV)
    if given:
        folder = Path(given)
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.db"):
            stale.unlink(missing_ok=True)
        return None
    base = Path(tempfile.gettempdir()) / f"hcd-metrics-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    for old in base.iterdir():
        match = _RUN_DIR.match(old.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            shutil.rmtree(old, ignore_errors=True)
    folder = base / f"api-{port}-{os.getpid()}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(mode=0o700)
    os.environ[MULTIPROC_ENV] = str(folder)
    return folder


def remove_multiprocess_dir(folder: Path | None) -> None:
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)
