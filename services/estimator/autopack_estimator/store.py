"""Persistence of the estimator: estimates, telemetry events, escalations and model versions.

SQLAlchemy 2 typed ORM tables with their own Alembic history (``alembic_version_estimator``).
Telemetry uses Core inserts on the mapped tables, estimates (one per Estimate call) one prepared
INSERT per batch; everything is UTC.
Tables carry an ``estimator_`` prefix so the services can share one PostgreSQL database.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

import orjson
from autopack_common.database import UtcDateTime, as_utc, utcnow
from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    and_,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

log = logging.getLogger(__name__)

MODEL_CANDIDATE = "candidate"
MODEL_PROMOTED = "promoted"
MODEL_RETIRED = "retired"
MODEL_REJECTED = "rejected"  # stored, refused by the promotion guard (PromoteModel needs force)

SOURCE_OUTCOME = "outcome"
SOURCE_IMPORT = "import"

T = TypeVar("T")


# Ids need uniqueness, not secrecy: 64 random bits from a generator seeded once from the OS avoid a
# getrandom() system call per id, which was a third of the Estimate RPC's own cost.
_id_bits = random.Random(uuid.uuid4().int)
os.register_at_fork(after_in_child=lambda: _id_bits.seed(uuid.uuid4().int))  # no shared sequence


def new_id(prefix: str) -> str:
    """Readable, collision-free identifiers: the prefix says what kind of thing it names.

    The first 16 hex digits are the creation time in nanoseconds and the last 16 are random (as in
    a UUIDv7): new ids sort after older ones, so their primary-key index grows at its right edge.
    Random ids dirtied a different index page per row, so every batch of estimates wrote about a
    page per estimate: a third of the cost of storing one at 24k rows, growing with the table.
    """
    return f"{prefix}_{time.time_ns():016x}{_id_bits.getrandbits(64):016x}"


_BigIntId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class EstimateRow(Base):
    """One Estimate call: the phase features it saw and what it answered."""

    __tablename__ = "estimator_estimates"

    estimate_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String, nullable=False, default="")
    phase_id: Mapped[str] = mapped_column(String, nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False)
    category: Mapped[str] = mapped_column(String, nullable=False)
    complexity: Mapped[str] = mapped_column(String, nullable=False)
    deliverables: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    scope_paths: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    read_only_context: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    model: Mapped[str] = mapped_column(String, nullable=False, default="")
    deliverable_count: Mapped[int] = mapped_column(Integer, nullable=False)
    predicted_output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    selected_budget: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_max_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    confidence: Mapped[float] = mapped_column(Float, nullable=False)
    buffer_multiplier: Mapped[float] = mapped_column(Float, nullable=False)
    breakdown: Mapped[list[dict[str, Any]]] = mapped_column(JSON, nullable=False)
    model_version: Mapped[str] = mapped_column(String, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (Index("ix_estimator_estimates_run_phase", "run_id", "phase_id"),)


class TelemetryEventRow(Base):
    """One LLM call outcome with the TokenEstimationV2 columns (from RecordOutcome or an import)."""

    __tablename__ = "estimator_telemetry_events"

    id: Mapped[int] = mapped_column(_BigIntId, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    estimate_id: Mapped[str | None] = mapped_column(
        String(64), ForeignKey("estimator_estimates.estimate_id"), nullable=True, index=True
    )
    run_id: Mapped[str] = mapped_column(String, nullable=False, default="")
    phase_id: Mapped[str] = mapped_column(String, nullable=False)
    category: Mapped[str] = mapped_column(String, nullable=False, default="")
    complexity: Mapped[str] = mapped_column(String, nullable=False, default="")
    deliverable_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    deliverables: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    description: Mapped[str | None] = mapped_column(Text, nullable=True)
    predicted_output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_output_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    selected_budget: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_max_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    success: Mapped[bool] = mapped_column(Boolean, nullable=False)
    truncated: Mapped[bool] = mapped_column(Boolean, nullable=False)
    stop_reason: Mapped[str] = mapped_column(String, nullable=False, default="")
    model: Mapped[str] = mapped_column(String, nullable=False, default="")
    input_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    smape: Mapped[float | None] = mapped_column(Float, nullable=True)
    waste_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_version: Mapped[str | None] = mapped_column(String, nullable=True)
    source: Mapped[str] = mapped_column(String(16), nullable=False)
    timestamp: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)

    __table_args__ = (Index("ix_estimator_telemetry_events_timestamp_id", "timestamp", "id"),)


class EscalationRow(Base):
    """A retry budget handed out after truncation or high utilisation (the seeds' P10 event)."""

    __tablename__ = "estimator_escalation_events"

    escalation_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    estimate_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("estimator_estimates.estimate_id"), nullable=False, index=True
    )
    reason: Mapped[str] = mapped_column(String(32), nullable=False)
    tokens_used: Mapped[int] = mapped_column(Integer, nullable=False)
    was_truncated: Mapped[bool] = mapped_column(Boolean, nullable=False)
    base_budget: Mapped[int] = mapped_column(Integer, nullable=False)
    retry_budget: Mapped[int] = mapped_column(Integer, nullable=False)
    actual_max_tokens: Mapped[int] = mapped_column(Integer, nullable=False)
    detail: Mapped[str] = mapped_column(Text, nullable=False)
    model_version: Mapped[str] = mapped_column(String, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class ModelVersionRow(Base):
    """A model version: parameters, lifecycle and the calibration report that produced it."""

    __tablename__ = "estimator_model_versions"

    version: Mapped[str] = mapped_column(String(100), primary_key=True)
    params_json: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    promoted_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)
    parent_version: Mapped[str] = mapped_column(String(100), nullable=False, default="")
    summary: Mapped[str] = mapped_column(Text, nullable=False, default="")
    report_json: Mapped[str | None] = mapped_column(Text, nullable=True)

    __table_args__ = (
        # At most one promoted version, whatever replicas race to promote.
        Index(
            "ux_estimator_model_versions_one_promoted",
            "status",
            unique=True,
            postgresql_where=text("status = 'promoted'"),
            sqlite_where=text("status = 'promoted'"),
        ),
    )


metadata = Base.metadata


class EstimateRecord(NamedTuple):
    """One Estimate call as stored (the columns of ``estimator_estimates``).

    A named tuple, not a dataclass: one is built on every Estimate call, and the writer passes a
    batch to ``executemany`` as positional rows without building a dict per row.
    """

    estimate_id: str
    run_id: str
    phase_id: str
    description: str
    category: str
    complexity: str
    deliverables: Sequence[str]  # JSON arrays: lists when read, any sequence when written
    scope_paths: Sequence[str]
    read_only_context: Sequence[str]
    model: str
    deliverable_count: int
    predicted_output_tokens: int
    selected_budget: int
    actual_max_tokens: int
    confidence: float
    buffer_multiplier: float
    breakdown: Sequence[dict[str, Any]]
    model_version: str
    created_at: datetime


@dataclass(frozen=True)
class TelemetryRecord:
    """A TokenEstimationV2 event plus where it came from."""

    run_id: str
    phase_id: str
    category: str
    complexity: str
    deliverable_count: int
    deliverables: list[str]
    predicted_output_tokens: int
    actual_output_tokens: int
    selected_budget: int
    actual_max_tokens: int | None
    success: bool
    truncated: bool
    stop_reason: str
    model: str
    smape: float | None
    waste_ratio: float | None
    timestamp: datetime
    description: str | None = None
    estimate_id: str | None = None
    input_tokens: int | None = None
    model_version: str | None = None
    source: str = SOURCE_IMPORT
    event_id: str = field(default_factory=lambda: new_id("evt"))


@dataclass(frozen=True)
class EscalationRecord:
    escalation_id: str
    estimate_id: str
    reason: str
    tokens_used: int
    was_truncated: bool
    base_budget: int
    retry_budget: int
    actual_max_tokens: int
    detail: str
    model_version: str
    created_at: datetime


@dataclass(frozen=True)
class ModelVersionRecord:
    version: str
    params_json: str
    status: str
    created_at: datetime
    promoted_at: datetime | None = None
    parent_version: str = ""
    summary: str = ""
    report_json: str | None = None


@dataclass(frozen=True)
class EventFilter:
    """Which telemetry events a query covers; empty values do not filter."""

    category: str = ""
    complexity: str = ""
    model: str = ""
    run_id: str = ""
    since: datetime | None = None


def _encode_json(value: Any) -> str:
    """Compact JSON text of a column value: orjson, ~10x the standard encoder on the estimate path."""
    return orjson.dumps(value).decode()


def _values(record: Any) -> dict[str, Any]:
    """Column values of a record dataclass (its instance dict: cheap on the hot path)."""
    return dict(record.__dict__)


def _record(cls: type[T], row: Any) -> T:
    names = getattr(cls, "_fields", None) or [f.name for f in fields(cls)]  # type: ignore[arg-type]
    return cls(**{name: getattr(row, name) for name in names})


class Store:
    """Repository functions over one engine; every method is its own short transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._estimate_insert_cache: tuple[str | None, list[tuple[int, Callable[[Any], Any]]]] | None = None

    # -- estimates ---------------------------------------------------------------------------

    def add_estimates(self, records: Sequence[EstimateRecord]) -> None:
        """Insert estimates in one transaction (all or nothing).

        Every Estimate call ends here (through ``EstimateWriter``), so this skips Core's per-row
        parameter compilation, which cost more than the insert: one prepared INSERT, positional
        rows, and only the bind processors of the column types that have one (JSON, timestamps).
        """
        if not records:
            return
        statement, processors = self._estimate_insert()
        if statement is None:  # a driver without positional parameters: the general Core path
            with self.engine.begin() as connection:
                connection.execute(insert(EstimateRow), [record._asdict() for record in records])
            return
        rows = []
        for record in records:
            row = list(record)
            for index, process in processors:
                row[index] = process(row[index])
            rows.append(tuple(row))
        with self.engine.begin() as connection:
            connection.exec_driver_sql(statement, rows)

    def _estimate_insert(self) -> tuple[str | None, list[tuple[int, Callable[[Any], Any]]]]:
        """The INSERT of ``add_estimates`` for this engine's dialect and its bind processors, built once."""
        if self._estimate_insert_cache is None:
            dialect = self.engine.dialect
            table = EstimateRow.__table__
            columns = [table.c[name] for name in EstimateRecord._fields]  # the record's order
            placeholder = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
            statement = None
            if placeholder is not None:
                quote = dialect.identifier_preparer
                statement = (
                    f"INSERT INTO {quote.format_table(table)} "  # type: ignore[arg-type]
                    f"({', '.join(quote.format_column(column) for column in columns)}) "
                    f"VALUES ({', '.join([placeholder] * len(columns))})"
                )
            processors = []
            for index, column in enumerate(columns):
                if isinstance(column.type, JSON):
                    # JSON text suits both backends (PostgreSQL casts it on insert); orjson instead of
                    # json.dumps (four JSON columns cost more than the insert itself) or psycopg's wrapper.
                    processors.append((index, _encode_json))
                    continue
                process = column.type.dialect_impl(dialect).bind_processor(dialect)
                if process is not None:
                    processors.append((index, process))
            self._estimate_insert_cache = (statement, processors)
        return self._estimate_insert_cache

    def get_estimate(self, estimate_id: str) -> EstimateRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(EstimateRow.__table__).where(EstimateRow.estimate_id == estimate_id)
            ).one_or_none()
        return None if row is None else _record(EstimateRecord, row)

    def count_estimates(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.execute(select(func.count()).select_from(EstimateRow)).scalar_one())

    # -- telemetry ---------------------------------------------------------------------------

    def add_events(self, records: Sequence[TelemetryRecord]) -> None:
        """Insert events in one transaction (all or nothing)."""
        if not records:
            return
        now = utcnow()
        rows = [{**_values(record), "recorded_at": now} for record in records]
        with self.engine.begin() as connection:
            connection.execute(insert(TelemetryEventRow), rows)

    def iter_events(
        self, event_filter: EventFilter | None = None, batch_size: int = 500
    ) -> Iterator[TelemetryRecord]:
        """Matching events, oldest first, read in keyset pages so no transaction stays open."""
        conditions = _filter_conditions(event_filter or EventFilter())
        table = TelemetryEventRow.__table__
        columns = [table.c[f.name] for f in fields(TelemetryRecord)]
        last: tuple[datetime, int] | None = None
        while True:
            query = select(table.c.id, *columns).where(*conditions)
            if last is not None:
                query = query.where(
                    or_(
                        table.c.timestamp > last[0],
                        and_(table.c.timestamp == last[0], table.c.id > last[1]),
                    )
                )
            query = query.order_by(table.c.timestamp, table.c.id).limit(batch_size)
            with self.engine.connect() as connection:
                rows = connection.execute(query).all()
            for row in rows:
                yield _record(TelemetryRecord, row)
            if len(rows) < batch_size:
                return
            last = (rows[-1].timestamp, rows[-1].id)

    def list_events(self, event_filter: EventFilter | None = None) -> list[TelemetryRecord]:
        return list(self.iter_events(event_filter))

    def count_events(self, event_filter: EventFilter | None = None) -> int:
        conditions = _filter_conditions(event_filter or EventFilter())
        with self.engine.connect() as connection:
            query = select(func.count()).select_from(TelemetryEventRow).where(*conditions)
            return int(connection.execute(query).scalar_one())

    # -- escalations -------------------------------------------------------------------------

    def add_escalation(self, record: EscalationRecord) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(EscalationRow), [_values(record)])

    def escalations_for(self, estimate_id: str) -> list[EscalationRecord]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(EscalationRow.__table__)
                .where(EscalationRow.estimate_id == estimate_id)
                .order_by(EscalationRow.created_at)
            ).all()
        return [_record(EscalationRecord, row) for row in rows]

    # -- model versions ----------------------------------------------------------------------

    def ensure_default_model(self, version: str, params_json: str, summary: str) -> str:
        """Store the shipped model and promote it if nothing is promoted; returns the served version.

        Safe when several replicas start together: inserts tolerate the row already existing
        and the partial unique index lets only one promotion win.
        """

        def attempt() -> str:
            with self.engine.begin() as connection:
                exists = connection.execute(
                    select(ModelVersionRow.version).where(ModelVersionRow.version == version)
                ).first()
                if exists is None:
                    connection.execute(
                        insert(ModelVersionRow),
                        [
                            {
                                "version": version,
                                "params_json": params_json,
                                "status": MODEL_CANDIDATE,
                                "created_at": utcnow(),
                                "parent_version": "",
                                "summary": summary,
                                "report_json": None,
                            }
                        ],
                    )
            promoted = self.promoted_version()
            if promoted is not None:
                return promoted
            self.promote(version)
            return version

        return _retry_on_conflict(attempt)

    def add_model_version(self, record: ModelVersionRecord) -> None:
        with self.engine.begin() as connection:
            connection.execute(insert(ModelVersionRow), [_values(record)])

    def get_model(self, version: str) -> ModelVersionRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ModelVersionRow.__table__).where(ModelVersionRow.version == version)
            ).one_or_none()
        return None if row is None else _record(ModelVersionRecord, row)

    def promoted_version(self) -> str | None:
        with self.engine.connect() as connection:
            return connection.execute(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.status == MODEL_PROMOTED)
                .order_by(ModelVersionRow.promoted_at.desc())
                .limit(1)
            ).scalar_one_or_none()

    def newest_candidate(self) -> str | None:
        """The most recently stored version still waiting to be promoted."""
        with self.engine.connect() as connection:
            return connection.execute(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.status == MODEL_CANDIDATE)
                .order_by(ModelVersionRow.created_at.desc())
                .limit(1)
            ).scalar_one_or_none()

    def list_models(self) -> list[ModelVersionRecord]:
        """Every version, newest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ModelVersionRow.__table__).order_by(
                    ModelVersionRow.created_at.desc(), ModelVersionRow.version.desc()
                )
            ).all()
        return [_record(ModelVersionRecord, row) for row in rows]

    def promote(self, version: str) -> tuple[ModelVersionRecord, str | None] | None:
        """Serve ``version``: the previous promoted one is retired. None if the version is unknown.

        Returns the promoted record and the version served before (None if none was).
        Promoting an older version is how a rollback is done.
        """

        def attempt() -> tuple[ModelVersionRecord, str | None] | None:
            now = utcnow()
            with self.engine.begin() as connection:
                target = connection.execute(
                    select(ModelVersionRow.status).where(ModelVersionRow.version == version)
                ).one_or_none()
                if target is None:
                    return None
                previous = connection.execute(
                    select(ModelVersionRow.version).where(ModelVersionRow.status == MODEL_PROMOTED)
                ).scalar_one_or_none()
                if previous != version:
                    connection.execute(
                        update(ModelVersionRow)
                        .where(ModelVersionRow.status == MODEL_PROMOTED)
                        .values(status=MODEL_RETIRED)
                    )
                connection.execute(
                    update(ModelVersionRow)
                    .where(ModelVersionRow.version == version)
                    .values(status=MODEL_PROMOTED, promoted_at=now)
                )
            record = self.get_model(version)
            assert record is not None
            return record, previous

        return _retry_on_conflict(attempt)


class EstimateWriter:
    """Write-behind batching of estimates, so an Estimate costs a prediction, not a commit.

    Estimates are queued and inserted in one transaction every ``flush_interval`` seconds by a
    background thread. Anything that needs an estimate persisted (an outcome or escalation that
    references it) goes through ``get``, which flushes first, so foreign keys always hold. Other
    replicas see an estimate once its batch commits (within ``flush_interval`` plus a commit).
    The price: a process that crashes (not one that stops: ``close`` flushes) loses at most the
    last ``flush_interval`` of estimates. ``flush_interval=0`` writes every estimate synchronously.
    """

    def __init__(self, store: Store, flush_interval: float = 0.02, max_pending: int = 5000) -> None:
        self._store = store
        self.flush_interval = flush_interval
        self._max_pending = max_pending
        self._pending: dict[str, EstimateRecord] = {}
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)  # notified when the queue stops being empty
        self._flush_lock = threading.Lock()
        self._stop = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        if flush_interval > 0:
            self._thread = threading.Thread(target=self._run, name="estimate-writer", daemon=True)
            self._thread.start()

    def add(self, record: EstimateRecord) -> None:
        if self._thread is None:
            self._store.add_estimates([record])
            return
        with self._lock:
            if self._closed:
                raise RuntimeError("estimate writer is closed")
            if not self._pending:
                self._queued.notify()  # only the first of a batch wakes the writer: no per-call signal
            self._pending[record.estimate_id] = record
            backlog = len(self._pending)
        if backlog > self._max_pending:
            self.flush()  # back-pressure: the caller waits (or fails) while the database is slow

    def get(self, estimate_id: str) -> EstimateRecord | None:
        """The estimate, persisted (flushed first if it is still queued); None if unknown."""
        with self._lock:
            queued = estimate_id in self._pending
        if queued:
            self.flush()
        return self._store.get_estimate(estimate_id)

    def flush(self) -> None:
        """Insert everything queued now; raises if the database is unreachable (rows stay queued)."""
        with self._flush_lock:
            with self._lock:
                batch = list(self._pending.values())
            if not batch:
                return
            try:
                self._store.add_estimates(batch)
            except OperationalError:
                raise
            except DBAPIError:
                # One bad row must not block every other estimate: insert them one by one.
                batch = self._insert_individually(batch)
            with self._lock:
                for record in batch:
                    self._pending.pop(record.estimate_id, None)

    def _insert_individually(self, batch: list[EstimateRecord]) -> list[EstimateRecord]:
        for record in batch:
            try:
                self._store.add_estimates([record])
            except OperationalError:
                raise
            except DBAPIError:
                log.exception("dropping estimate %s that the database refuses", record.estimate_id)
        return batch

    def close(self) -> None:
        """Stop the writer after flushing everything queued (graceful shutdown)."""
        with self._lock:
            self._closed = True
            self._queued.notify_all()
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        try:
            self.flush()
        except Exception:
            # Shutdown must go on (other resources still need releasing): say what is lost.
            log.exception("could not write %d queued estimates on shutdown", len(self._pending))

    def _run(self) -> None:
        failures = 0
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._queued.wait()
                if self._closed:
                    return  # close() flushes what is left
            self._stop.wait(self.flush_interval)  # let a batch gather
            try:
                self.flush()
                failures = 0
            except Exception:
                failures += 1
                log.warning("could not write estimates (attempt %d); will retry", failures, exc_info=True)
                self._stop.wait(min(5.0, 0.1 * 2**failures))


def _filter_conditions(event_filter: EventFilter) -> list[Any]:
    columns = TelemetryEventRow.__table__.c
    conditions: list[Any] = []
    for name in ("category", "complexity", "model", "run_id"):
        value = getattr(event_filter, name)
        if value:
            conditions.append(columns[name] == value)
    if event_filter.since is not None:
        conditions.append(TelemetryEventRow.timestamp >= as_utc(event_filter.since))
    return conditions


def _retry_on_conflict(action: Callable[[], T], attempts: int = 5) -> T:
    """Re-run a short transaction that lost a race (unique index, serialisation, SQLite busy)."""
    for attempt in range(attempts):
        try:
            return action()
        except (IntegrityError, OperationalError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.02 * (attempt + 1))
    raise AssertionError("unreachable")
