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
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any

from autopack_common.database import UtcDateTime, utcnow
from autopack_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from sqlalchemy import (
    JSON,
    BigInteger,
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

from autopack_orchestrator.events import EventBus, EventType, Outcome, RunEvent, State
from autopack_orchestrator.plan import PhaseSpec, Plan

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500


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
    UniqueConstraint("run_id", name="uq_runs_run_id"),
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
        values["outcome"] = Outcome(values.get("outcome", Outcome.UNSPECIFIED))
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

    @property
    def phase_id(self) -> str:
        return self.spec.phase_id


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
        if all(state is State.COMPLETE for state in states):
            return State.COMPLETE
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

    def phases(self) -> list[PhaseRecord]:
        """Every phase in execution order."""
        return [phase for tier in self.tiers for phase in tier.phases]

    def phase(self, phase_id: str) -> PhaseRecord:
        for phase in self.phases():
            if phase.phase_id == phase_id:
                return phase
        raise NotFound(f"run {self.run_id!r} has no phase {phase_id!r}")


def _sum_usage(items: Iterable[AttemptRecord]) -> Usage:
    items = list(items)
    inputs = [item.input_tokens for item in items if item.input_tokens is not None]
    outputs = [item.output_tokens for item in items if item.output_tokens is not None]
    return Usage(
        input_tokens=sum(inputs) if inputs else None,
        output_tokens=sum(outputs) if outputs else None,
        total_tokens=sum(item.total_tokens for item in items),
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
                )
            )
        for record in records.values():
            if with_attempts:
                record.usage = _sum_usage(a for phase in record.phases() for a in phase.attempts)
            else:
                record.usage = usage_by_run.get(record.run_id, Usage())
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

    def claim_abandoned_runs(self, owner: str, lease_seconds: float) -> list[str]:
        """Take over EXECUTING runs whose lease expired (their process died); returns their ids."""
        now = self._clock()
        expired = and_(
            runs.c.state == State.EXECUTING.value,
            or_(runs.c.lease_expires_at.is_(None), runs.c.lease_expires_at < now),
        )
        with self.engine.connect() as conn:
            candidates = list(
                conn.execute(select(runs.c.run_id).where(expired).order_by(runs.c.id)).scalars()
            )
        claimed: list[str] = []
        for run_id in candidates:
            # Conditional update: of several replicas racing for a run, exactly one matches.
            with self.engine.begin() as conn:
                result = conn.execute(
                    update(runs)
                    .where(runs.c.run_id == run_id, expired)
                    .values(lease_owner=owner, lease_expires_at=now + timedelta(seconds=lease_seconds))
                )
            if result.rowcount == 1:
                claimed.append(run_id)
        return claimed

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
                    lease_owner=None,
                    lease_expires_at=None,
                )
            )
            self._append(conn, run_id, EventType.RUN_STATE, message, state=state)
        self.bus.publish(run_id)

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


def _attempt_from_row(row: Any) -> AttemptRecord:
    values = {item.name: row[item.name] for item in fields(AttemptRecord)}
    values["outcome"] = Outcome(values["outcome"])
    return AttemptRecord(**values)
