"""Persistence of runs, tiers, phases, attempts and run events (SQLAlchemy 2, Core).

Every state change is written together with its event in one transaction, so a
watcher never sees a state without its event or the other way round. Event
sequence numbers come from a per-run counter row that the appending
transaction locks, which keeps them gap-free and in commit order even when
several threads (or replicas) append to the same run at once.

Runs being executed carry a lease (owner, expiry): the executor renews it while
it works, and an EXECUTING run whose lease expired belongs to a crashed process
and may be claimed and resumed by any replica.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from autopack_common.database import UtcDateTime, utcnow
from autopack_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    and_,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from sqlalchemy.sql.elements import ColumnElement

from autopack_orchestrator.events import EventBus, EventType, Outcome, RunEvent, State
from autopack_orchestrator.plan import PhaseSpec, Plan

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
# A run nobody executes: no lease, no pending cancel, no drain limits.
RELEASED: dict[str, Any] = {
    "lease_owner": None,
    "lease_expires_at": None,
    "cancel_requested": False,
    "only_phase": None,
    "max_attempts": None,
    "phase_deadline": None,
}


metadata = MetaData()

runs = Table(
    "runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), nullable=False),
    Column("name", String(512), nullable=False),
    Column("source_repo", Text, nullable=False),
    Column("state", String(16), nullable=False, index=True),
    Column("workspace_path", Text, nullable=False, default=""),
    Column("failure_reason", Text, nullable=False, default=""),
    Column("created_at", UtcDateTime, nullable=False),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("event_sequence", BigInteger, nullable=False, default=0),
    Column("lease_owner", String(128), nullable=True),
    Column("lease_expires_at", UtcDateTime, nullable=True),
    Column("cancel_requested", Boolean, nullable=False, default=False),
    Column("doctor_calls", Integer, nullable=False, default=0),
    # Set by a drain: execute only this phase, then stop.
    Column("only_phase", String(128), nullable=True),
    # Set by a drain: counted attempts the phase gets (instead of the orchestrator's setting).
    Column("max_attempts", Integer, nullable=True),
    # Set by a drain: the executing phase is stopped as a timeout after this time.
    Column("phase_deadline", UtcDateTime, nullable=True),
    Column("recovery_input_tokens", Integer, nullable=True),
    Column("recovery_output_tokens", Integer, nullable=True),
    Column("recovery_total_tokens", Integer, nullable=False, default=0),
    # Set by a drain: the session that last queued one of the run's phases, and that phase (kept
    # after the phase ran, so a session taken over finds what finished while nobody watched).
    Column("drain_session", String(128), nullable=True),
    Column("drain_phase", String(128), nullable=True),
    # The plan's explicit project key for memory; empty = derived from source_repo.
    Column("project", Text, nullable=False, default=""),
    UniqueConstraint("run_id", name="uq_runs_run_id"),
    Index("ix_runs_state_lease", "state", "lease_expires_at"),
)

tiers = Table(
    "tiers",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("tier_id", String(128), nullable=False),
    Column("name", String(512), nullable=False, default=""),
    Column("position", Integer, nullable=False),
    UniqueConstraint("run_id", "tier_id", name="uq_tiers_run_tier"),
)

phases = Table(
    "phases",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("tier_id", String(128), nullable=False),
    Column("phase_id", String(128), nullable=False),
    Column("position", Integer, nullable=False),
    Column("spec", JSON, nullable=False),
    Column("state", String(16), nullable=False),
    Column("failure_reason", Text, nullable=False, default=""),
    Column("started_at", UtcDateTime, nullable=True),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("original_description", Text, nullable=False, default=""),
    Column("doctor_calls", Integer, nullable=False, default=0),
    Column("replans", Integer, nullable=False, default=0),
    Column("escalations", Integer, nullable=False, default=0),
    Column("mitigations", JSON, nullable=True),
    Column("check_command", JSON, nullable=True),
    Column("hint", Text, nullable=False, default=""),
    Column("attempt_floor", Integer, nullable=False, default=0),
    UniqueConstraint("run_id", "phase_id", name="uq_phases_run_phase"),
    Index("ix_phases_run_position", "run_id", "position"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("phase_id", String(128), nullable=False),
    Column("number", Integer, nullable=False),
    Column("outcome", String(32), nullable=False),
    Column("estimate_id", String(128), nullable=False, default=""),
    Column("predicted_output_tokens", Integer, nullable=False, default=0),
    Column("selected_budget", Integer, nullable=False, default=0),
    Column("actual_max_tokens", Integer, nullable=False, default=0),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("total_tokens", Integer, nullable=False, default=0),
    Column("provider", String(64), nullable=False, default=""),
    Column("model", String(128), nullable=False, default=""),
    Column("savepoint", String(64), nullable=False, default=""),
    Column("base_savepoint", String(64), nullable=False, default=""),
    Column("check_exit_code", Integer, nullable=True),
    Column("failure_reason", Text, nullable=False, default=""),
    Column("trace_id", String(32), nullable=False, default=""),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    Column("smape", Float, nullable=True),
    Column("fingerprint", Text, nullable=False, default=""),
    Column("counted", Boolean, nullable=False, default=True),
    Column("failure_kind", String(16), nullable=False, default=""),
    Column("check_verdict", String(32), nullable=False, default=""),
    Column("guidance", Text, nullable=False, default=""),
    UniqueConstraint("run_id", "phase_id", "number", name="uq_attempts_run_phase_number"),
)

run_events = Table(
    "run_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String(128), ForeignKey("runs.run_id", ondelete="CASCADE"), nullable=False),
    Column("sequence", BigInteger, nullable=False),
    Column("type", String(32), nullable=False),
    Column("phase_id", String(128), nullable=False, default=""),
    Column("state", String(16), nullable=True),
    Column("message", Text, nullable=False, default=""),
    Column("attempt", JSON, nullable=True),
    Column("time", UtcDateTime, nullable=False),
    UniqueConstraint("run_id", "sequence", name="uq_run_events_run_sequence"),
)

drain_sessions = Table(
    "drain_sessions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("session_id", String(128), nullable=False),
    Column("state", String(16), nullable=False),
    Column("options", JSON, nullable=False),
    Column("planned", JSON, nullable=False),
    Column("results", JSON, nullable=False),
    Column("summary", JSON, nullable=False),
    Column("owner", String(128), nullable=False),
    Column("started_at", UtcDateTime, nullable=False),
    Column("finished_at", UtcDateTime, nullable=True),
    # Renewed by the replica driving the session; once expired another replica takes it over.
    Column("lease_expires_at", UtcDateTime, nullable=True),
    UniqueConstraint("session_id", name="uq_drain_sessions_session_id"),
)


@dataclass
class AttemptRecord:
    """One try at a phase; filled in step by step by the executor."""

    number: int
    started_at: datetime
    outcome: Outcome = Outcome.UNSPECIFIED
    estimate_id: str = ""
    predicted_output_tokens: int = 0
    selected_budget: int = 0
    actual_max_tokens: int = 0
    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int = 0
    provider: str = ""
    model: str = ""
    savepoint: str = ""
    # Workspace commit before this attempt's apply: what a failed attempt rolls back to.
    base_savepoint: str = ""
    check_exit_code: int | None = None
    failure_reason: str = ""
    trace_id: str = ""
    finished_at: datetime | None = None
    smape: float | None = None
    fingerprint: str = ""
    # False when the attempt does not use up one of the phase's attempts (interrupted, infrastructure).
    counted: bool = True
    failure_kind: str = ""
    check_verdict: str = ""
    guidance: str = ""

    @property
    def finished(self) -> bool:
        return self.finished_at is not None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready copy for event rows."""
        data: dict[str, Any] = {}
        for item in fields(self):
            value = getattr(self, item.name)
            data[item.name] = value.isoformat() if isinstance(value, datetime) else value
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AttemptRecord:
        values = dict(data)
        for key in ("started_at", "finished_at"):
            if values.get(key):
                values[key] = datetime.fromisoformat(values[key])
        values["outcome"] = Outcome(values.get("outcome") or Outcome.UNSPECIFIED)
        known = {item.name for item in fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})


@dataclass
class PhaseRecord:
    tier_id: str
    position: int
    spec: PhaseSpec
    state: State
    failure_reason: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    attempts: list[AttemptRecord] = field(default_factory=list)
    original_description: str = ""
    doctor_calls: int = 0
    replans: int = 0
    escalations: int = 0
    # Deterministic mitigations in force: {"pattern", "description", "hint", "command"}.
    mitigations: list[dict[str, Any]] = field(default_factory=list)
    # Validation command rewritten by a mitigation; None = the plan's.
    check_command: tuple[str, ...] | None = None
    # The doctor's hint for the next attempt.
    hint: str = ""
    # Attempts numbered up to this belong to an earlier execution (before a resume or drain).
    attempt_floor: int = 0

    @property
    def phase_id(self) -> str:
        return self.spec.phase_id

    def current_attempts(self) -> list[AttemptRecord]:
        """Attempts of this execution (after the last resume or drain)."""
        return [attempt for attempt in self.attempts if attempt.number > self.attempt_floor]

    def counted_attempts(self) -> int:
        return sum(1 for attempt in self.current_attempts() if attempt.counted and attempt.finished)


@dataclass
class TierRecord:
    tier_id: str
    name: str
    phases: list[PhaseRecord] = field(default_factory=list)

    @property
    def state(self) -> State:
        """Derived: FAILED if a phase failed, COMPLETE if all did, QUEUED if none began."""
        states = [phase.state for phase in self.phases]
        if any(state is State.FAILED for state in states):
            return State.FAILED
        if all(state.done for state in states):
            return State.COMPLETE
        if any(state is State.CANCELLED for state in states):
            return State.CANCELLED
        if all(state is State.QUEUED for state in states):
            return State.QUEUED
        return State.EXECUTING


@dataclass(frozen=True)
class Usage:
    """Exact token usage summed over attempts; unknown counts stay None."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int = 0


@dataclass
class RunRecord:
    run_id: str
    name: str
    source_repo: str
    state: State
    created_at: datetime
    workspace_path: str = ""
    failure_reason: str = ""
    started_at: datetime | None = None
    finished_at: datetime | None = None
    tiers: list[TierRecord] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    cancel_requested: bool = False
    doctor_calls: int = 0
    only_phase: str | None = None
    max_attempts: int | None = None
    phase_deadline: datetime | None = None
    project: str = ""

    def phases(self) -> list[PhaseRecord]:
        """Every phase in execution order."""
        return [phase for tier in self.tiers for phase in tier.phases]

    def phase(self, phase_id: str) -> PhaseRecord:
        for phase in self.phases():
            if phase.phase_id == phase_id:
                return phase
        raise NotFound(f"run {self.run_id!r} has no phase {phase_id!r}")


def _sum_usage(items: Iterable[AttemptRecord | Usage]) -> Usage:
    items = list(items)
    inputs = [item.input_tokens for item in items if item.input_tokens is not None]
    outputs = [item.output_tokens for item in items if item.output_tokens is not None]
    return Usage(
        input_tokens=sum(inputs) if inputs else None,
        output_tokens=sum(outputs) if outputs else None,
        total_tokens=sum(item.total_tokens for item in items),
    )


def _recovery_usage(row: Any) -> Usage:
    return Usage(
        row["recovery_input_tokens"], row["recovery_output_tokens"], row["recovery_total_tokens"] or 0
    )


def encode_page_token(last_id: int) -> str:
    return base64.urlsafe_b64encode(f"runs:{last_id}".encode()).decode().rstrip("=")


def decode_page_token(token: str) -> int:
    """The row id a page continues after; a token we did not issue is INVALID_ARGUMENT."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        prefix, _, value = raw.partition(":")
        if prefix != "runs":
            raise ValueError(raw)
        last_id = int(value)
    except (ValueError, UnicodeDecodeError, binascii.Error):
        raise InvalidArgument("page_token", "is not a token returned by ListRuns") from None
    if last_id < 1:
        raise InvalidArgument("page_token", "is not a token returned by ListRuns")
    return last_id


class RunStore:
    """Repository of the orchestrator's tables; safe to share between threads."""

    def __init__(
        self,
        engine: Engine,
        bus: EventBus | None = None,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.engine = engine
        self.bus = bus or EventBus()
        self._clock = clock

    # -- runs ---------------------------------------------------------------------------------

    def create_run(self, plan: Plan) -> RunRecord:
        """Store a validated plan as a QUEUED run; ALREADY_EXISTS if the run id is taken."""
        now = self._clock()
        try:
            with self.engine.begin() as conn:
                if conn.execute(select(runs.c.id).where(runs.c.run_id == plan.run_id)).first():
                    raise AlreadyExists(f"run {plan.run_id!r} already exists")
                conn.execute(
                    insert(runs).values(
                        run_id=plan.run_id,
                        name=plan.name,
                        source_repo=plan.source_repo,
                        project=plan.project,
                        state=State.QUEUED.value,
                        workspace_path="",
                        failure_reason="",
                        created_at=now,
                        event_sequence=0,
                    )
                )
                for position, tier in enumerate(plan.tiers):
                    conn.execute(
                        insert(tiers).values(
                            run_id=plan.run_id, tier_id=tier.tier_id, name=tier.name, position=position
                        )
                    )
                phase_rows = [
                    {
                        "run_id": plan.run_id,
                        "tier_id": tier.tier_id,
                        "phase_id": phase.phase_id,
                        "position": position,
                        "spec": phase.to_json(),
                        "state": State.QUEUED.value,
                        "failure_reason": "",
                    }
                    for position, (tier, phase) in enumerate(plan.phases())
                ]
                conn.execute(insert(phases), phase_rows)
                self._append(conn, plan.run_id, EventType.RUN_STATE, "run created", state=State.QUEUED)
        except IntegrityError:
            # Another request stored the same run id between our check and insert.
            raise AlreadyExists(f"run {plan.run_id!r} already exists") from None
        self.bus.publish(plan.run_id)
        return self.get_run(plan.run_id)

    def get_run(self, run_id: str, with_attempts: bool = True) -> RunRecord:
        """A run with its tiers, phases and (optionally) attempts; NOT_FOUND names the run id."""
        with self.engine.connect() as conn:
            row = conn.execute(select(runs).where(runs.c.run_id == run_id)).mappings().first()
            if row is None:
                raise NotFound(f"run_id {run_id!r} not found")
            return self._load_runs(conn, [row], with_attempts)[0]

    def list_runs(
        self, page_size: int = 0, page_token: str = "", state: State | None = None
    ) -> tuple[list[RunRecord], str]:
        """Runs newest first, without attempts; returns the page and the next page's token."""
        if page_size < 0:
            raise InvalidArgument("page_size", "must not be negative")
        size = min(page_size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        query = select(runs).order_by(runs.c.id.desc()).limit(size + 1)
        if page_token:
            query = query.where(runs.c.id < decode_page_token(page_token))
        if state is not None:
            query = query.where(runs.c.state == state.value)
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).mappings())
            page = rows[:size]
            records = self._load_runs(conn, page, with_attempts=False)
        next_token = encode_page_token(page[-1]["id"]) if len(rows) > size else ""
        return records, next_token

    def _load_runs(self, conn: Connection, rows: Sequence[Any], with_attempts: bool) -> list[RunRecord]:
        run_ids = [row["run_id"] for row in rows]
        if not run_ids:
            return []
        tier_rows = conn.execute(
            select(tiers).where(tiers.c.run_id.in_(run_ids)).order_by(tiers.c.run_id, tiers.c.position)
        ).mappings()
        phase_rows = conn.execute(
            select(phases).where(phases.c.run_id.in_(run_ids)).order_by(phases.c.run_id, phases.c.position)
        ).mappings()
        attempts_by_phase: dict[tuple[str, str], list[AttemptRecord]] = {}
        usage_by_run: dict[str, Usage] = {}
        if with_attempts:
            attempt_rows = conn.execute(
                select(attempts)
                .where(attempts.c.run_id.in_(run_ids))
                .order_by(attempts.c.run_id, attempts.c.phase_id, attempts.c.number)
            ).mappings()
            for attempt_row in attempt_rows:
                key = (attempt_row["run_id"], attempt_row["phase_id"])
                attempts_by_phase.setdefault(key, []).append(_attempt_from_row(attempt_row))
        else:
            usage_rows = conn.execute(
                select(
                    attempts.c.run_id,
                    func.sum(attempts.c.input_tokens),
                    func.sum(attempts.c.output_tokens),
                    func.sum(attempts.c.total_tokens),
                )
                .where(attempts.c.run_id.in_(run_ids))
                .group_by(attempts.c.run_id)
            )
            for run_id, input_sum, output_sum, total_sum in usage_rows:
                usage_by_run[run_id] = Usage(
                    input_tokens=None if input_sum is None else int(input_sum),
                    output_tokens=None if output_sum is None else int(output_sum),
                    total_tokens=int(total_sum or 0),
                )
        records: dict[str, RunRecord] = {
            row["run_id"]: RunRecord(
                run_id=row["run_id"],
                name=row["name"],
                source_repo=row["source_repo"],
                state=State(row["state"]),
                created_at=row["created_at"],
                workspace_path=row["workspace_path"],
                failure_reason=row["failure_reason"],
                started_at=row["started_at"],
                finished_at=row["finished_at"],
                cancel_requested=bool(row["cancel_requested"]),
                doctor_calls=row["doctor_calls"] or 0,
                only_phase=row["only_phase"],
                max_attempts=row["max_attempts"],
                phase_deadline=row["phase_deadline"],
                project=row["project"] or "",
                usage=_recovery_usage(row),
            )
            for row in rows
        }
        tier_index: dict[tuple[str, str], TierRecord] = {}
        for tier_row in tier_rows:
            tier = TierRecord(tier_id=tier_row["tier_id"], name=tier_row["name"])
            records[tier_row["run_id"]].tiers.append(tier)
            tier_index[(tier_row["run_id"], tier_row["tier_id"])] = tier
        for phase_row in phase_rows:
            spec = PhaseSpec.from_json(phase_row["spec"])
            tier_index[(phase_row["run_id"], phase_row["tier_id"])].phases.append(
                PhaseRecord(
                    tier_id=phase_row["tier_id"],
                    position=phase_row["position"],
                    spec=spec,
                    state=State(phase_row["state"]),
                    failure_reason=phase_row["failure_reason"],
                    started_at=phase_row["started_at"],
                    finished_at=phase_row["finished_at"],
                    attempts=attempts_by_phase.get((phase_row["run_id"], spec.phase_id), []),
                    original_description=phase_row["original_description"] or "",
                    doctor_calls=phase_row["doctor_calls"] or 0,
                    replans=phase_row["replans"] or 0,
                    escalations=phase_row["escalations"] or 0,
                    mitigations=list(phase_row["mitigations"] or []),
                    check_command=tuple(phase_row["check_command"]) if phase_row["check_command"] else None,
                    hint=phase_row["hint"] or "",
                    attempt_floor=phase_row["attempt_floor"] or 0,
                )
            )
        for record in records.values():
            recovery = record.usage
            if with_attempts:
                attempt_usage = _sum_usage(a for phase in record.phases() for a in phase.attempts)
            else:
                attempt_usage = usage_by_run.get(record.run_id, Usage())
            record.usage = _sum_usage([attempt_usage, recovery])
        return [records[run_id] for run_id in run_ids]

    def run_state(self, run_id: str) -> State:
        with self.engine.connect() as conn:
            value = conn.execute(select(runs.c.state).where(runs.c.run_id == run_id)).scalar_one_or_none()
        if value is None:
            raise NotFound(f"run_id {run_id!r} not found")
        return State(value)

    # -- execution and leases -----------------------------------------------------------------

    def start_run(self, run_id: str, owner: str, lease_seconds: float) -> RunRecord:
        """QUEUED -> EXECUTING under a lease held by ``owner``; anything else is refused."""
        now = self._clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.state == State.QUEUED.value)
                .values(
                    state=State.EXECUTING.value,
                    started_at=now,
                    lease_owner=owner,
                    lease_expires_at=now + timedelta(seconds=lease_seconds),
                )
            )
            if result.rowcount == 0:
                current = conn.execute(
                    select(runs.c.state).where(runs.c.run_id == run_id)
                ).scalar_one_or_none()
                if current is None:
                    raise NotFound(f"run_id {run_id!r} not found")
                raise FailedPrecondition(f"run {run_id!r} is {current}; only a QUEUED run can be started")
            self._append(conn, run_id, EventType.RUN_STATE, "run started", state=State.EXECUTING)
        self.bus.publish(run_id)
        return self.get_run(run_id)

    def claim_runs(self, owner: str, lease_seconds: float, limit: int) -> list[str]:
        """Take up to ``limit`` EXECUTING runs nobody holds (lease empty or expired); returns their ids.

        Unowned runs are work waiting for any replica (a resumed run, a drained phase); an
        expired lease belongs to a replica that died. On PostgreSQL the candidates are locked
        with ``FOR UPDATE SKIP LOCKED``, so racing replicas take different rows instead of
        queueing behind each other; the conditional update makes the claim exact on SQLite too.
        """
        if limit <= 0:
            return []
        now = self._clock()
        claimable = and_(
            runs.c.state == State.EXECUTING.value,
            or_(runs.c.lease_expires_at.is_(None), runs.c.lease_expires_at < now),
        )
        lease = {"lease_owner": owner, "lease_expires_at": now + timedelta(seconds=lease_seconds)}
        with self.engine.begin() as conn:
            return _claim_rows(conn, runs, runs.c.run_id, claimable, lease, limit)

    def renew_leases(self, owner: str, lease_seconds: float, run_ids: Collection[str]) -> int:
        """Extend ``owner``'s leases on the EXECUTING runs it is working on; returns how many.

        Only runs a worker is actually executing are renewed, so a run whose worker died
        inside this process still expires and gets resumed.
        """
        if not run_ids:
            return 0
        now = self._clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs)
                .where(
                    runs.c.lease_owner == owner,
                    runs.c.state == State.EXECUTING.value,
                    runs.c.run_id.in_(list(run_ids)),
                )
                .values(lease_expires_at=now + timedelta(seconds=lease_seconds))
            )
        return result.rowcount

    def holds_lease(self, run_id: str, owner: str) -> bool:
        with self.engine.connect() as conn:
            value = conn.execute(
                select(runs.c.lease_owner).where(runs.c.run_id == run_id)
            ).scalar_one_or_none()
        return value == owner

    def run_control(self, run_id: str) -> tuple[str | None, bool, datetime | None]:
        """What an executing replica checks between steps: lease owner, cancel flag, phase deadline."""
        with self.engine.connect() as conn:
            row = conn.execute(
                select(runs.c.lease_owner, runs.c.cancel_requested, runs.c.phase_deadline).where(
                    runs.c.run_id == run_id
                )
            ).first()
        if row is None:
            raise NotFound(f"run_id {run_id!r} not found")
        return row[0], bool(row[1]), row[2]

    def release_lease(self, run_id: str, owner: str) -> None:
        """Let another process resume the run now instead of after the lease expires."""
        with self.engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id, runs.c.lease_owner == owner)
                .values(lease_owner=None, lease_expires_at=None)
            )

    def set_workspace(self, run_id: str, workspace_path: str, message: str) -> None:
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(workspace_path=workspace_path))
            self._append(conn, run_id, EventType.STEP, message)
        self.bus.publish(run_id)

    def finish_run(self, run_id: str, state: State, message: str, failure_reason: str = "") -> None:
        """Terminal state and the run's last event, together."""
        with self.engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(
                    state=state.value,
                    failure_reason=failure_reason,
                    finished_at=self._clock(),
                    **RELEASED,
                )
            )
            self._append(conn, run_id, EventType.RUN_STATE, message, state=state)
        self.bus.publish(run_id)

    def park_run(self, run_id: str, message: str) -> None:
        """Back to QUEUED after a drained phase, with later phases still to do (StartRun continues it)."""
        with self.engine.begin() as conn:
            conn.execute(
                update(runs)
                .where(runs.c.run_id == run_id)
                .values(
                    state=State.QUEUED.value,
                    failure_reason="",
                    **RELEASED,
                )
            )
            self._append(conn, run_id, EventType.RUN_STATE, message, state=State.QUEUED)
        self.bus.publish(run_id)

    # -- cancel, resume, drain ----------------------------------------------------------------

    def request_cancel(self, run_id: str, reason: str) -> RunRecord:
        """QUEUED, or EXECUTING with no live lease: CANCELLED now; EXECUTING: flagged for its replica."""
        now = self._clock()
        message = "run cancelled" + (f": {reason}" if reason else "")
        with self.engine.begin() as conn:
            row = (
                conn.execute(select(runs).where(runs.c.run_id == run_id).with_for_update()).mappings().first()
            )
            if row is None:
                raise NotFound(f"run_id {run_id!r} not found")
            state = State(row["state"])
            if state not in (State.QUEUED, State.EXECUTING):
                raise FailedPrecondition(
                    f"run {run_id!r} is {state.value}; only a QUEUED or EXECUTING run can be cancelled"
                )
            live = row["lease_expires_at"] is not None and row["lease_expires_at"] >= now
            if state is State.EXECUTING and live:
                conn.execute(update(runs).where(runs.c.run_id == run_id).values(cancel_requested=True))
                self._append(
                    conn,
                    run_id,
                    EventType.RUN_STATE,
                    f"cancel requested{': ' + reason if reason else ''}; stopping at the next step",
                    state=State.EXECUTING,
                )
            else:
                conn.execute(
                    update(phases)
                    .where(phases.c.run_id == run_id, phases.c.state == State.EXECUTING.value)
                    .values(state=State.CANCELLED.value, failure_reason="cancelled", finished_at=now)
                )
                conn.execute(
                    update(runs)
                    .where(runs.c.run_id == run_id)
                    .values(
                        state=State.CANCELLED.value,
                        failure_reason=reason or "cancelled",
                        finished_at=now,
                        **RELEASED,
                    )
                )
                self._append(conn, run_id, EventType.RUN_STATE, message, state=State.CANCELLED)
        self.bus.publish(run_id)
        return self.get_run(run_id)

    def _reopen_phases(self, conn: Connection, run_id: str, phase_ids: Collection[str] | None) -> None:
        """Unfinished phases back to QUEUED with a fresh attempt budget (earlier attempts stay)."""
        query = select(phases.c.phase_id, phases.c.state).where(phases.c.run_id == run_id)
        for phase_id, state in conn.execute(query):
            if State(state).done or (phase_ids is not None and phase_id not in phase_ids):
                continue
            floor = conn.execute(
                select(func.max(attempts.c.number)).where(
                    attempts.c.run_id == run_id, attempts.c.phase_id == phase_id
                )
            ).scalar_one_or_none()
            conn.execute(
                update(phases)
                .where(phases.c.run_id == run_id, phases.c.phase_id == phase_id)
                .values(
                    state=State.QUEUED.value,
                    failure_reason="",
                    finished_at=None,
                    attempt_floor=int(floor or 0),
                    doctor_calls=0,
                    replans=0,
                    escalations=0,
                    hint="",
                )
            )

    def resume_run(self, run_id: str, owner: str, lease_seconds: float) -> RunRecord:
        """FAILED/CANCELLED -> EXECUTING under ``owner``'s lease; finished phases are kept."""
        now = self._clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs)
                .where(
                    runs.c.run_id == run_id,
                    runs.c.state.in_([State.FAILED.value, State.CANCELLED.value]),
                )
                .values(
                    state=State.EXECUTING.value,
                    failure_reason="",
                    started_at=now,
                    finished_at=None,
                    **{
                        **RELEASED,
                        "lease_owner": owner,
                        "lease_expires_at": now + timedelta(seconds=lease_seconds),
                    },
                )
            )
            if result.rowcount == 0:
                current = conn.execute(
                    select(runs.c.state).where(runs.c.run_id == run_id)
                ).scalar_one_or_none()
                if current is None:
                    raise NotFound(f"run_id {run_id!r} not found")
                raise FailedPrecondition(
                    f"run {run_id!r} is {current}; only a FAILED or CANCELLED run can be resumed"
                )
            self._reopen_phases(conn, run_id, None)
            self._append(conn, run_id, EventType.RUN_STATE, "run resumed on request", state=State.EXECUTING)
        self.bus.publish(run_id)
        return self.get_run(run_id)

    def queue_drained_phase(
        self, run_id: str, phase_id: str, deadline: datetime, session_id: str, max_attempts: int | None = None
    ) -> bool:
        """Hand one phase of an idle run to any replica (unowned EXECUTING, only this phase).

        False when the run is no longer idle (someone started, resumed or drained it meanwhile).
        """
        now = self._clock()
        with self.engine.begin() as conn:
            result = conn.execute(
                update(runs)
                .where(
                    runs.c.run_id == run_id,
                    runs.c.state.in_([State.FAILED.value, State.QUEUED.value, State.CANCELLED.value]),
                )
                .values(
                    state=State.EXECUTING.value,
                    failure_reason="",
                    started_at=now,
                    finished_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    cancel_requested=False,
                    only_phase=phase_id,
                    max_attempts=max_attempts,
                    phase_deadline=deadline,
                    drain_session=session_id,
                    drain_phase=phase_id,
                )
            )
            if result.rowcount == 0:
                return False
            self._reopen_phases(conn, run_id, {phase_id})
            self._append(
                conn,
                run_id,
                EventType.RUN_STATE,
                f"drain {session_id}: phase {phase_id} queued for any replica",
                state=State.EXECUTING,
            )
        self.bus.publish(run_id)
        return True

    def update_phase(
        self, run_id: str, phase_id: str, message: str, event: EventType = EventType.RECOVERY, **values: Any
    ) -> None:
        """Change recovery columns of a phase (mitigations, hint, counters, ...) with their event."""
        if "check_command" in values and values["check_command"] is not None:
            values["check_command"] = list(values["check_command"])
        with self.engine.begin() as conn:
            conn.execute(
                update(phases)
                .where(phases.c.run_id == run_id, phases.c.phase_id == phase_id)
                .values(**values)
            )
            self._append(conn, run_id, event, message, phase_id=phase_id)
        self.bus.publish(run_id)

    def replan_phase(self, run_id: str, phase_id: str, spec: PhaseSpec, original: str, message: str) -> None:
        """Store a revised phase spec, keeping the plan's description; one transaction with its event."""
        with self.engine.begin() as conn:
            conn.execute(
                update(phases)
                .where(phases.c.run_id == run_id, phases.c.phase_id == phase_id)
                .values(spec=spec.to_json(), original_description=original, replans=phases.c.replans + 1)
            )
            self._append(conn, run_id, EventType.RECOVERY, message, phase_id=phase_id)
        self.bus.publish(run_id)

    def add_recovery_usage(self, run_id: str, phase_id: str, usage: Usage, doctor: bool) -> None:
        """Tokens of a doctor or re-plan call go into the run's totals (and the doctor budgets)."""
        values: dict[str, Any] = {"recovery_total_tokens": runs.c.recovery_total_tokens + usage.total_tokens}
        if usage.input_tokens is not None:
            values["recovery_input_tokens"] = (
                func.coalesce(runs.c.recovery_input_tokens, 0) + usage.input_tokens
            )
        if usage.output_tokens is not None:
            values["recovery_output_tokens"] = (
                func.coalesce(runs.c.recovery_output_tokens, 0) + usage.output_tokens
            )
        if doctor:
            values["doctor_calls"] = runs.c.doctor_calls + 1
        with self.engine.begin() as conn:
            conn.execute(update(runs).where(runs.c.run_id == run_id).values(**values))
            if doctor:
                conn.execute(
                    update(phases)
                    .where(phases.c.run_id == run_id, phases.c.phase_id == phase_id)
                    .values(doctor_calls=phases.c.doctor_calls + 1)
                )

    def failed_attempts_since(self, run_id: str, since: datetime | None) -> list[AttemptRecord]:
        """Finished, failed attempts of the run that started at or after ``since`` (health budget)."""
        query = select(attempts).where(
            attempts.c.run_id == run_id,
            attempts.c.finished_at.is_not(None),
            attempts.c.outcome != Outcome.SUCCESS.value,
        )
        if since is not None:
            query = query.where(attempts.c.started_at >= since)
        with self.engine.connect() as conn:
            return [_attempt_from_row(row) for row in conn.execute(query).mappings()]

    # -- drain sessions -----------------------------------------------------------------------

    def idle_runs(self, run_ids: Collection[str] = ()) -> list[RunRecord]:
        """Runs nobody executes (QUEUED, FAILED, CANCELLED) with attempts, oldest first: drain input."""
        query = (
            select(runs)
            .where(runs.c.state.in_([State.QUEUED.value, State.FAILED.value, State.CANCELLED.value]))
            .order_by(runs.c.id)
        )
        if run_ids:
            query = query.where(runs.c.run_id.in_(list(run_ids)))
        with self.engine.connect() as conn:
            rows = list(conn.execute(query).mappings())
            return self._load_runs(conn, rows, with_attempts=True)

    def save_drain_session(self, session: dict[str, Any]) -> bool:
        """Insert or replace a drain session (a JSON-ready dict with the table's columns).

        When ``session`` names an owner only that owner may replace it: False (nothing written)
        when another replica took the session over.
        """
        values = {name: session[name] for name in session if name in drain_sessions.c and name != "id"}
        lease = {"lease_expires_at": values.pop("lease_expires_at", None)}  # renewed on its own
        mine = drain_sessions.c.session_id == session["session_id"]
        if "owner" in session:
            mine = and_(mine, drain_sessions.c.owner == session["owner"])
        with self.engine.begin() as conn:
            result = conn.execute(update(drain_sessions).where(mine).values(**values))
            if result.rowcount == 0:
                exists = conn.execute(
                    select(drain_sessions.c.id).where(drain_sessions.c.session_id == session["session_id"])
                ).first()
                if exists is not None:
                    return False
                conn.execute(insert(drain_sessions).values(**values, **lease))
        return True

    def renew_drain_session(self, session_id: str, owner: str, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease on its EXECUTING session; False when it is no longer its own."""
        with self.engine.begin() as conn:
            result = conn.execute(
                update(drain_sessions)
                .where(
                    drain_sessions.c.session_id == session_id,
                    drain_sessions.c.owner == owner,
                    drain_sessions.c.state == State.EXECUTING.value,
                )
                .values(lease_expires_at=self._clock() + timedelta(seconds=lease_seconds))
            )
        return result.rowcount == 1

    def claim_drain_sessions(self, owner: str, lease_seconds: float) -> list[dict[str, Any]]:
        """Take over EXECUTING sessions whose driving replica stopped renewing their lease.

        The same claim as ``claim_runs`` (``_claim_rows``), so exactly one replica adopts each
        orphaned session.
        """
        now = self._clock()
        orphaned = and_(
            drain_sessions.c.state == State.EXECUTING.value,
            or_(drain_sessions.c.lease_expires_at.is_(None), drain_sessions.c.lease_expires_at < now),
        )
        lease = {"owner": owner, "lease_expires_at": now + timedelta(seconds=lease_seconds)}
        with self.engine.begin() as conn:
            taken = _claim_rows(conn, drain_sessions, drain_sessions.c.session_id, orphaned, lease)
            if not taken:
                return []
            rows = conn.execute(
                select(drain_sessions)
                .where(drain_sessions.c.session_id.in_(taken))
                .order_by(drain_sessions.c.id)
            ).mappings()
            return [dict(row) for row in rows]

    def drained_phases(self, session_id: str) -> list[tuple[str, str, datetime | None]]:
        """(run_id, phase_id, started_at) of the phases this session queued, executing or not."""
        query = (
            select(runs.c.run_id, runs.c.drain_phase, runs.c.started_at)
            .where(runs.c.drain_session == session_id, runs.c.drain_phase.is_not(None))
            .order_by(runs.c.id)
        )
        with self.engine.connect() as conn:
            return [(row[0], row[1], row[2]) for row in conn.execute(query)]

    def get_drain_session(self, session_id: str) -> dict[str, Any]:
        with self.engine.connect() as conn:
            row = (
                conn.execute(select(drain_sessions).where(drain_sessions.c.session_id == session_id))
                .mappings()
                .first()
            )
        if row is None:
            raise NotFound(f"session_id {session_id!r} not found")
        return dict(row)

    def set_phase_state(
        self, run_id: str, phase_id: str, state: State, message: str, failure_reason: str = ""
    ) -> None:
        now = self._clock()
        values: dict[str, Any] = {"state": state.value, "failure_reason": failure_reason}
        if state is State.EXECUTING:
            values.update(started_at=now, finished_at=None)
        elif state.terminal:
            values["finished_at"] = now
        with self.engine.begin() as conn:
            conn.execute(
                update(phases)
                .where(phases.c.run_id == run_id, phases.c.phase_id == phase_id)
                .values(**values)
            )
            self._append(conn, run_id, EventType.PHASE_STATE, message, phase_id=phase_id, state=state)
        self.bus.publish(run_id)

    def save_attempt(
        self,
        run_id: str,
        phase_id: str,
        attempt: AttemptRecord,
        event: EventType | None = None,
        message: str = "",
    ) -> None:
        """Insert or update an attempt, optionally with an event carrying a copy of it."""
        values = {item.name: getattr(attempt, item.name) for item in fields(attempt)}
        values["outcome"] = attempt.outcome.value
        with self.engine.begin() as conn:
            result = conn.execute(
                update(attempts)
                .where(
                    attempts.c.run_id == run_id,
                    attempts.c.phase_id == phase_id,
                    attempts.c.number == attempt.number,
                )
                .values(**values)
            )
            if result.rowcount == 0:
                conn.execute(insert(attempts).values(run_id=run_id, phase_id=phase_id, **values))
            if event is not None:
                self._append(conn, run_id, event, message, phase_id=phase_id, attempt=attempt.to_json())
        if event is not None:
            self.bus.publish(run_id)

    # -- events -------------------------------------------------------------------------------

    def append_event(
        self,
        run_id: str,
        type: EventType,
        message: str,
        phase_id: str = "",
        state: State | None = None,
        attempt: dict[str, Any] | None = None,
    ) -> RunEvent:
        with self.engine.begin() as conn:
            event = self._append(conn, run_id, type, message, phase_id=phase_id, state=state, attempt=attempt)
        self.bus.publish(run_id)
        return event

    def _append(
        self,
        conn: Connection,
        run_id: str,
        type: EventType,
        message: str,
        phase_id: str = "",
        state: State | None = None,
        attempt: dict[str, Any] | None = None,
    ) -> RunEvent:
        # Incrementing the counter locks the run row until commit, so concurrent appends to one
        # run are serialised and commit in sequence order.
        sequence = conn.execute(
            update(runs)
            .where(runs.c.run_id == run_id)
            .values(event_sequence=runs.c.event_sequence + 1)
            .returning(runs.c.event_sequence)
        ).scalar_one_or_none()
        if sequence is None:
            raise NotFound(f"run_id {run_id!r} not found")
        event = RunEvent(
            run_id=run_id,
            sequence=int(sequence),
            type=type,
            message=message,
            time=self._clock(),
            phase_id=phase_id,
            state=state,
            attempt=attempt,
        )
        conn.execute(
            insert(run_events).values(
                run_id=run_id,
                sequence=event.sequence,
                type=type.value,
                phase_id=phase_id,
                state=state.value if state else None,
                message=message,
                attempt=attempt,
                time=event.time,
            )
        )
        return event

    def events_after(self, run_id: str, after_sequence: int = 0, limit: int = 500) -> list[RunEvent]:
        """Stored events of a run with a sequence above ``after_sequence``, oldest first."""
        query = (
            select(run_events)
            .where(run_events.c.run_id == run_id, run_events.c.sequence > after_sequence)
            .order_by(run_events.c.sequence)
            .limit(limit)
        )
        with self.engine.connect() as conn:
            return [
                RunEvent(
                    run_id=row["run_id"],
                    sequence=int(row["sequence"]),
                    type=EventType(row["type"]),
                    message=row["message"],
                    time=row["time"],
                    phase_id=row["phase_id"],
                    state=State(row["state"]) if row["state"] else None,
                    attempt=row["attempt"],
                )
                for row in conn.execute(query).mappings()
            ]


def _claim_rows(
    conn: Connection,
    table: Table,
    key: Column[Any],
    claimable: ColumnElement[bool],
    lease: Mapping[str, Any],
    limit: int | None = None,
) -> list[Any]:
    """Take the claimable rows of ``table`` by writing ``lease`` on them; returns their keys.

    Candidates are locked with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so racing replicas
    take different rows instead of queueing behind each other; the update repeats the
    condition, which makes each claim exact on SQLite too (where the lock is a no-op).
    """
    query = select(key).where(claimable).order_by(table.c.id).with_for_update(skip_locked=True)
    if limit is not None:
        query = query.limit(limit)
    claimed = []
    for value in list(conn.execute(query).scalars()):
        if conn.execute(update(table).where(key == value, claimable).values(**lease)).rowcount == 1:
            claimed.append(value)
    return claimed


def _attempt_from_row(row: Any) -> AttemptRecord:
    values = {item.name: row[item.name] for item in fields(AttemptRecord)}
    values["outcome"] = Outcome(values["outcome"])
    return AttemptRecord(**values)
