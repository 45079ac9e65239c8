"""API keys: HCD_BOOTSTRAP_API_KEY (validated at start, rotated by a new value) and `hcd keys create|list|revoke`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import uuid

import pytest
from fastapi.testclient import TestClient
from worker_fixtures import HCD, free_port

from api.app import create_app
from jobs.db import database
from jobs.keys import BOOTSTRAP_OWNER, create_key, plausible_key


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HCD_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _run(args: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    """`hcd ARGS` as a subprocess (in its own process group, killed whole if it outlives `timeout`)."""
    proc = subprocess.Popen(HCD + args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"hcd {' '.join(args)} still ran after {timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


@pytest.fixture
def hcd_keys(service_settings):
    """hcd_keys(*args) -> `hcd keys ARGS --database-url <test database>` (no HCD_* in its environment)."""
    def run(*args: str, **env: str) -> subprocess.CompletedProcess:
        return _run(["keys", *args, "--database-url", service_settings.database_url], _clean_env(**env))
    return run


def _status(settings, key: str) -> int:
    """GET /jobs with `key` on a freshly started API (no key cached from an earlier request)."""
    with TestClient(create_app(settings)) as client:
        return client.get("/jobs", headers={"Authorization": f"Bearer {key}"}).status_code


def _row(listing: str, prefix: str) -> str:
    rows = [line for line in listing.splitlines() if prefix + "..." in line]
    assert len(rows) == 1, listing
    return rows[0]


# --------------------------------------------------------------------------- bootstrap key
@pytest.mark.parametrize("command", [["api"], ["worker"], ["up"]])
def test_invalid_bootstrap_key_stops_the_command_with_one_line(command, service_env, tmp_path):
    env = {**service_env, "HCD_BOOTSTRAP_API_KEY": "not-a-valid-key", "PYTHONUNBUFFERED": "1"}
    args = command + (["--port", str(free_port())] if command != ["worker"] else [])
    if command == ["up"]:
        args += ["--data-dir", str(tmp_path / "data")]
    started = time.monotonic()
    result = _run(args, env, timeout=30)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert time.monotonic() - started < 15
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "HCD_BOOTSTRAP_API_KEY" in lines[0] and "hcd_" in lines[0], lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_invalid_bootstrap_key_in_the_environment_is_a_message_for_keys_commands(hcd_keys):
    result = hcd_keys("list", HCD_BOOTSTRAP_API_KEY="not-a-valid-key")
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "HCD_BOOTSTRAP_API_KEY" in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_a_new_bootstrap_key_revokes_only_the_previous_bootstrap_key(service_settings, api_key):
    key_a, key_b = f"hcd_rotate-a-{uuid.uuid4().hex}", f"hcd_rotate-b-{uuid.uuid4().hex}"
    with database(service_settings).session() as session:
        # An ordinary key of the same owner (what `hcd keys create --owner admin` or a first `hcd up` makes).
        admin_key = create_key(session, BOOTSTRAP_OWNER)
    with_a = service_settings.model_copy(update={"bootstrap_api_key": key_a})
    with_b = service_settings.model_copy(update={"bootstrap_api_key": key_b})

    assert _status(with_a, key_a) == 200
    assert _status(with_a, key_b) == 401
    # Started again with B (each start is a new app: nothing is served from a key cache).
    assert _status(with_b, key_b) == 200
    assert _status(with_b, key_a) == 401
    assert _status(service_settings, key_a) == 401  # revoked, not merely unknown to one app
    # A second start with B keeps B; keys that were not bootstrap keys are untouched.
    assert _status(with_b, key_b) == 200
    assert _status(with_b, admin_key) == 200
    assert _status(with_b, api_key) == 200


# --------------------------------------------------------------------------- hcd keys
def test_keys_create_list_and_revoke_by_prefix(hcd_keys, service_settings):
    owner = f"cli-{uuid.uuid4().hex[:8]}"
    created = hcd_keys("create", "--owner", owner)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip()
    assert plausible_key(key) and len(created.stdout.splitlines()) == 1, created.stdout
    assert owner in created.stderr
    assert _status(service_settings, key) == 200
    prefix = key[:12]

    listing = hcd_keys("list")
    assert listing.returncode == 0, listing.stderr
    row = _row(listing.stdout, prefix)
    assert owner in row.split() and "active" in row
    assert key not in listing.stdout and key[:13] not in listing.stdout  # only the 12-character prefix

    revoked = hcd_keys("revoke", prefix)
    assert revoked.returncode == 0, revoked.stderr
    assert "revoked 1 key" in revoked.stdout
    assert prefix not in hcd_keys("list").stdout  # active keys only by default
    row = _row(hcd_keys("list", "--all").stdout, prefix)
    assert owner in row.split() and "revoked" in row and "active" not in row
    assert _status(service_settings, key) == 401

    again = hcd_keys("revoke", prefix)  # nothing active matches any more
    assert again.returncode == 1 and "no active key" in again.stderr, again


def test_keys_revoke_by_full_key_and_by_id_touches_only_that_key(hcd_keys, service_settings):
    owner = f"cli-{uuid.uuid4().hex[:8]}"
    keys = [hcd_keys("create", "--owner", owner).stdout.strip() for _ in range(3)]
    assert all(plausible_key(k) for k in keys), keys
    by_key, by_id, kept = keys

    result = hcd_keys("revoke", by_key)
    assert result.returncode == 0 and "revoked 1 key" in result.stdout, result

    listing = hcd_keys("list", "--owner", owner).stdout
    key_id = _row(listing, by_id[:12]).split()[0]
    uuid.UUID(key_id)  # the ID column
    result = hcd_keys("revoke", key_id)
    assert result.returncode == 0 and "revoked 1 key" in result.stdout, result

    assert [_status(service_settings, k) for k in keys] == [401, 401, 200]
    listing = hcd_keys("list", "--owner", owner).stdout
    assert kept[:12] in listing and by_key[:12] not in listing and by_id[:12] not in listing


def test_keys_revoke_refuses_unknown_and_too_short_references(hcd_keys, service_settings, api_key):
    unknown = hcd_keys("revoke", "hcd_zzzzzzzz")  # a 12-character prefix no key has
    assert unknown.returncode == 1, unknown
    assert "no active key matches" in unknown.stderr
    unknown_key = hcd_keys("revoke", "hcd_" + "z" * 43)  # shaped like a key, but no such key
    assert unknown_key.returncode == 1, unknown_key

    short = hcd_keys("revoke", api_key[:6])
    assert short.returncode == 2, short
    assert "prefix" in short.stderr and "Traceback" not in short.stderr
    assert _status(service_settings, api_key) == 200  # nothing was revoked on the way


@pytest.mark.parametrize("owner", ["", "x" * 129])
def test_keys_create_with_a_bad_owner_is_a_message(hcd_keys, owner):
    result = hcd_keys("create", "--owner", owner)
    assert result.returncode == 2, result
    assert "owner" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not re.search(r"hcd_\S{20,}", result.stdout)  # no key was printed
