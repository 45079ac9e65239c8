"""The job lifecycle table and everything derived from it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from jobs.status import (
    ACTIVE,
    ACTIVE_PREDICATE,
    OWNED,
    TERMINAL,
    TRANSITIONS,
    InvalidTransition,
    JobStatus,
    check_transition,
    sources,
)

ROOT = Path(__file__).resolve().parents[2]
S = JobStatus


def test_terminal_and_active_sets_come_from_the_table():
    assert TERMINAL == {S.SUCCEEDED, S.FAILED, S.CANCELLED}
    assert ACTIVE == {S.QUEUED, S.RUNNING, S.CANCELLING}
    assert OWNED <= ACTIVE and S.QUEUED not in OWNED
    assert set(TRANSITIONS) == set(JobStatus)


@pytest.mark.parametrize("terminal", sorted(TERMINAL))
def test_terminal_states_never_change(terminal):
    for target in JobStatus:
        with pytest.raises(InvalidTransition):
            check_transition(terminal, target)


def test_every_status_is_reachable_from_queued():
    seen, frontier = {S.QUEUED}, [S.QUEUED]
    while frontier:
        for target in TRANSITIONS[frontier.pop()]:
            if target not in seen:
                seen.add(target)
                frontier.append(target)
    assert seen == set(JobStatus)


def test_sources_invert_the_table():
    assert sources(S.RUNNING) == {S.QUEUED}
    assert sources(S.CANCELLED) == {S.QUEUED, S.CANCELLING}
    assert sources(S.QUEUED) == {S.RUNNING}


def test_partial_index_and_api_schema_are_derived():
    from jobs.tables import Job

    index = next(i for i in Job.__table__.indexes if i.name == "ix_jobs_owner_active")
    assert str(index.dialect_options["postgresql"]["where"]) == ACTIVE_PREDICATE
    assert ACTIVE_PREDICATE == "status IN ('queued', 'running', 'cancelling')"

    from api.schemas import JobOut

    schema = JobOut.model_json_schema()
    assert schema["$defs"]["JobStatus"]["enum"] == [s.value for s in JobStatus]


def test_no_status_literal_outside_the_status_module():
    """Job statuses are spelled once: the service's code uses JobStatus (a habit that keeps the table the
    source). hcd_cli's local sweeps have run statuses of their own."""
    names = {s.value for s in JobStatus}
    offenders = []
    for package in ("api", "worker", "jobs"):
        for path in (ROOT / package).rglob("*.py"):
            if path.name == "status.py" and package == "jobs":
                continue
            tree = ast.parse(path.read_text())
            keys = {id(k) for d in ast.walk(tree) if isinstance(d, ast.Dict) for k in d.keys if k is not None}
            for node in ast.walk(tree):
                if (isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
                        and id(node) not in keys):  # a document's field may be named like a status
                    offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not offenders, offenders
