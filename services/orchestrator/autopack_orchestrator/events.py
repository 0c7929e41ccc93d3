"""Run lifecycle vocabulary and the event feed WatchRun follows.

Events are rows in ``run_events`` (so any replica can replay them); the
``EventBus`` only wakes watchers in this process early instead of waiting for
their next database poll.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class State(StrEnum):
    """Lifecycle of runs and phases (orchestrator.v1.State without the prefix)."""

    QUEUED = "QUEUED"
    EXECUTING = "EXECUTING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    SKIPPED = "SKIPPED"

    @property
    def terminal(self) -> bool:
        return self in (State.COMPLETE, State.FAILED, State.CANCELLED, State.SKIPPED)

    @property
    def done(self) -> bool:
        """A phase that needs no more work: completed, or skipped on purpose."""
        return self in (State.COMPLETE, State.SKIPPED)


class Outcome(StrEnum):
    """How an attempt ended (orchestrator.v1.AttemptOutcome without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    SUCCESS = "SUCCESS"
    BUILD_FAILED = "BUILD_FAILED"
    APPLY_REJECTED = "APPLY_REJECTED"
    CHECKS_FAILED = "CHECKS_FAILED"
    DELIVERABLES_MISSING = "DELIVERABLES_MISSING"
    TRUNCATED = "TRUNCATED"
    ERROR = "ERROR"


class EventType(StrEnum):
    """What an event reports (orchestrator.v1.EventType without the prefix)."""

    RUN_STATE = "RUN_STATE"
    PHASE_STATE = "PHASE_STATE"
    ATTEMPT_STARTED = "ATTEMPT_STARTED"
    ATTEMPT_FINISHED = "ATTEMPT_FINISHED"
    STEP = "STEP"
    RECOVERY = "RECOVERY"


class FailureKind(StrEnum):
    """Why an attempt failed, for recovery (orchestrator.v1.FailureKind without the prefix)."""

    UNSPECIFIED = "UNSPECIFIED"
    TRANSIENT = "TRANSIENT"
    DETERMINISTIC = "DETERMINISTIC"
    INTERRUPTED = "INTERRUPTED"


@dataclass(frozen=True)
class RunEvent:
    """One stored event; ``sequence`` increases by one per run, starting at 1."""

    run_id: str
    sequence: int
    type: EventType
    message: str
    time: datetime
    phase_id: str = ""
    state: State | None = None
    attempt: dict[str, Any] | None = field(default=None)

    @property
    def ends_run(self) -> bool:
        """The run's terminal event: nothing follows it."""
        return self.type is EventType.RUN_STATE and self.state is not None and self.state.terminal


class EventBus:
    """Wakes WatchRun streams in this process as soon as an event is committed."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._versions: dict[str, int] = {}

    def version(self, run_id: str) -> int:
        with self._condition:
            return self._versions.get(run_id, 0)

    def publish(self, run_id: str) -> None:
        with self._condition:
            self._versions[run_id] = self._versions.get(run_id, 0) + 1
            self._condition.notify_all()

    def wait(self, run_id: str, seen_version: int, timeout: float) -> int:
        """Block until ``run_id`` has news after ``seen_version`` or ``timeout`` passes."""
        with self._condition:
            self._condition.wait_for(lambda: self._versions.get(run_id, 0) != seen_version, timeout)
            return self._versions.get(run_id, 0)
