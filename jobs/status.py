"""A job's lifecycle: one status enum and the table of transitions it may make.

Every other list of statuses (the API schema, the active and terminal sets, the partial-index
predicate, the repository's fences) is derived from `TRANSITIONS`; nothing else spells them out.
"""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # waiting for a worker: new, handed back, or re-queued after a lost lease
    RUNNING = "running"  # an attempt owns the job and renews its lease
    CANCELLING = "cancelling"  # cancel requested while running: the attempt checkpoints and stops
    SUCCEEDED = "succeeded"  # exported; the student's weights can be downloaded
    FAILED = "failed"  # ended with an error {code, message}
    CANCELLED = "cancelled"  # stopped at the user's request


class JobPhase(StrEnum):
    """What a running attempt is doing; while queued, only what the job waits for (NULL: a worker)."""

    WAITING_FOR_TEACHER = "waiting_for_teacher"  # queued until its teacher job succeeds
    LOADING = "loading"
    TRAINING = "training"
    EVALUATING = "evaluating"
    EXPORTING = "exporting"


_S = JobStatus
TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    # claimed by a worker; cancelled by the user before any worker took it; failed when the teacher it
    # waits for failed or was cancelled (`teacher_failed`)
    _S.QUEUED: frozenset({_S.RUNNING, _S.CANCELLED, _S.FAILED}),
    # finished; cancel requested; handed back (worker shutdown, lost lease, storage failure)
    _S.RUNNING: frozenset({_S.SUCCEEDED, _S.FAILED, _S.CANCELLING, _S.QUEUED}),
    # the attempt stopped (or finished first); a lost lease while cancelling ends it too
    _S.CANCELLING: frozenset({_S.CANCELLED, _S.SUCCEEDED, _S.FAILED}),
    _S.SUCCEEDED: frozenset(),
    _S.FAILED: frozenset(),
    _S.CANCELLED: frozenset(),
}

TERMINAL: frozenset[JobStatus] = frozenset(s for s, targets in TRANSITIONS.items() if not targets)
ACTIVE: frozenset[JobStatus] = frozenset(s for s in JobStatus if s not in TERMINAL)
# Statuses in which an attempt owns the job (holds the lease); every attempt's write is fenced by them.
OWNED: frozenset[JobStatus] = frozenset({_S.RUNNING, _S.CANCELLING})


class InvalidTransition(ValueError):
    """A transition the table does not allow."""


def sources(target: JobStatus) -> frozenset[JobStatus]:
    """The statuses from which a job may move to `target`."""
    return frozenset(s for s, targets in TRANSITIONS.items() if target in targets)


def check_transition(current: JobStatus, target: JobStatus) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(f"a {current} job cannot become {target}")


def ordered(statuses: Iterable[JobStatus]) -> list[JobStatus]:
    """In declaration order (stable SQL text, readable messages)."""
    wanted = set(statuses)
    return [s for s in JobStatus if s in wanted]


def sql_in(statuses: Iterable[JobStatus], column: str = "status") -> str:
    """`status IN ('queued', 'running')`: SQL text for predicates that must be literal (partial indexes)."""
    values = ", ".join(f"'{s.value}'" for s in ordered(statuses))
    return f"{column} IN ({values})"


ACTIVE_PREDICATE = sql_in(ACTIVE)
