"""The builder's own table: one row per LLM request, with usage exactly as the provider reported it.

Unknown counts are NULL, never guessed; ``total_tokens`` is always set, so "where did the tokens
of this run go" sums one non-null column (seed 004, BUILD-144). A request that got no answer
(429, 529, 5xx) is a row too, with ``error`` set and zero tokens: it is what fail-over counts.

What the model saw and said is kept here and nowhere else (never in logs or spans): the prompt's
SHA-256 and size, the raw answer compressed with zlib, the parse outcome and how many operations
were salvaged. ``prune_answers`` drops raw answers older than the retention period; the usage
columns stay.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from autopack_common.errors import InvalidArgument, Unavailable
from autopack_common.truncation import is_truncating_stop_reason
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.exc import OperationalError

from autopack_builder.models import LlmCallRecord

metadata = MetaData()

llm_calls = Table(
    "llm_calls",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("run_id", String, nullable=False),
    Column("phase_id", String, nullable=False),
    Column("attempt", Integer, nullable=False),
    # 1-based request within the attempt (continuations, retries and fail-overs count up).
    Column("call_index", Integer, nullable=False),
    Column("estimate_id", String, nullable=False),
    Column("provider", String, nullable=False),
    Column("model", String, nullable=False),
    Column("max_tokens", Integer, nullable=False),
    Column("input_tokens", Integer, nullable=True),
    Column("output_tokens", Integer, nullable=True),
    Column("total_tokens", Integer, nullable=False),
    Column("stop_reason", String, nullable=False),
    Column("duration_ms", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("role", String, nullable=False, server_default="builder"),
    Column("output_format", String, nullable=True),
    Column("prompt_sha256", String, nullable=True),
    Column("prompt_chars", Integer, nullable=True),
    Column("answer_chars", Integer, nullable=True),
    Column("raw_answer", LargeBinary, nullable=True),
    Column("parse_outcome", String, nullable=True),
    Column("salvaged_operations", Integer, nullable=True),
    Column("cache_read_input_tokens", Integer, nullable=True),
    Column("cache_creation_input_tokens", Integer, nullable=True),
    Column("reasoning_output_tokens", Integer, nullable=True),
    Column("cost_usd", Float, nullable=True),
    Column("error", String, nullable=True),
    Column("note", String, nullable=True),
    Index("ix_llm_calls_run_phase", "run_id", "phase_id"),
    Index("ix_llm_calls_created_at", "created_at"),
)

GroupBy = Literal["provider", "model", "run", "phase"]
_GROUP_COLUMNS = {
    "provider": (llm_calls.c.provider,),
    "model": (llm_calls.c.model,),
    "run": (llm_calls.c.run_id,),
    "phase": (llm_calls.c.run_id, llm_calls.c.phase_id),
}


@dataclass(frozen=True)
class Transcript:
    """What the model saw and said in one request (stored compressed, never logged)."""

    prompt_sha256: str
    prompt_chars: int
    answer: str | None = None
    output_format: str = ""
    note: str = ""


@dataclass(frozen=True)
class StoredCall:
    """A row of ``llm_calls`` (``raw_answer`` decompressed; None when absent or pruned)."""

    id: int
    run_id: str
    phase_id: str
    attempt: int
    call_index: int
    estimate_id: str
    provider: str
    model: str
    max_tokens: int
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int
    stop_reason: str
    duration_ms: int
    created_at: datetime
    role: str = "builder"
    output_format: str | None = None
    prompt_sha256: str | None = None
    prompt_chars: int | None = None
    answer_chars: int | None = None
    raw_answer: str | None = None
    parse_outcome: str | None = None
    salvaged_operations: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    reasoning_output_tokens: int | None = None
    cost_usd: float | None = None
    error: str | None = None
    note: str | None = None

    def as_record(self) -> LlmCallRecord:
        """The row as the builder's in-memory call record."""
        return LlmCallRecord(
            provider=self.provider,
            model=self.model,
            max_tokens=self.max_tokens,
            input_tokens=self.input_tokens,
            output_tokens=self.output_tokens,
            total_tokens=self.total_tokens,
            stop_reason=self.stop_reason,
            duration_ms=self.duration_ms,
            cache_read_input_tokens=self.cache_read_input_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens,
            reasoning_output_tokens=self.reasoning_output_tokens,
            cost_usd=self.cost_usd,
            error=self.error or "",
            call_id=self.id,
            role=self.role,
            output_format=self.output_format or "",
            parse_outcome=self.parse_outcome or "",
        )


@dataclass(frozen=True)
class UsageRow:
    """Usage of one group; a split is None when any request of the group did not report it."""

    key: tuple[str, ...]
    requests: int
    failed_requests: int
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int
    cache_read_input_tokens: int | None
    cache_creation_input_tokens: int | None
    reasoning_output_tokens: int | None
    cost_usd: float | None


class LlmCallStore:
    """Repository for ``llm_calls``; the schema comes from the Alembic migrations."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def record(
        self,
        *,
        run_id: str,
        phase_id: str,
        attempt: int,
        call_index: int,
        estimate_id: str,
        call: LlmCallRecord,
        transcript: Transcript | None = None,
    ) -> int:
        """Store one finished request and return its id."""
        values: dict[str, object] = {
            "run_id": run_id,
            "phase_id": phase_id,
            "attempt": attempt,
            "call_index": call_index,
            "estimate_id": estimate_id,
            "provider": call.provider,
            "model": call.model,
            "max_tokens": call.max_tokens,
            "input_tokens": call.input_tokens,
            "output_tokens": call.output_tokens,
            "total_tokens": call.total_tokens,
            "stop_reason": call.stop_reason,
            "duration_ms": call.duration_ms,
            "created_at": datetime.now(UTC),
            "role": call.role,
            "cache_read_input_tokens": call.cache_read_input_tokens,
            "cache_creation_input_tokens": call.cache_creation_input_tokens,
            "reasoning_output_tokens": call.reasoning_output_tokens,
            "cost_usd": call.cost_usd,
            "error": call.error or None,
            "output_format": call.output_format or None,
        }
        if transcript is not None:
            values.update(
                prompt_sha256=transcript.prompt_sha256,
                prompt_chars=transcript.prompt_chars,
                output_format=transcript.output_format or call.output_format or None,
                note=transcript.note or None,
            )
            if transcript.answer is not None:
                values["answer_chars"] = len(transcript.answer)
                values["raw_answer"] = zlib.compress(transcript.answer.encode("utf-8"), 6)
        try:
            with self._engine.begin() as connection:
                result = connection.execute(insert(llm_calls).values(**values))
                return int(result.inserted_primary_key[0])
        except OperationalError as error:
            raise Unavailable(f"builder database unavailable: {type(error.orig).__name__}") from error

    def set_outcome(self, call_id: int, *, parse_outcome: str, salvaged_operations: int | None) -> None:
        """The parse outcome of a stored answer (known only after parsing it)."""
        try:
            with self._engine.begin() as connection:
                connection.execute(
                    update(llm_calls)
                    .where(llm_calls.c.id == call_id)
                    .values(parse_outcome=parse_outcome, salvaged_operations=salvaged_operations)
                )
        except OperationalError as error:
            raise Unavailable(f"builder database unavailable: {type(error.orig).__name__}") from error

    def list_calls(self, *, run_id: str | None = None, phase_id: str | None = None) -> list[StoredCall]:
        """Requests in the order they were made, optionally for one run and/or phase."""
        query = select(llm_calls).order_by(llm_calls.c.id)
        if run_id is not None:
            query = query.where(llm_calls.c.run_id == run_id)
        if phase_id is not None:
            query = query.where(llm_calls.c.phase_id == phase_id)
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [_stored(row) for row in rows]

    def format_trouble(self, run_id: str, phase_id: str, attempt: int) -> str | None:
        """The output format of the attempt's last builder answer when it was cut off or malformed."""
        query = (
            select(llm_calls.c.output_format, llm_calls.c.parse_outcome, llm_calls.c.stop_reason)
            .where(
                llm_calls.c.run_id == run_id,
                llm_calls.c.phase_id == phase_id,
                llm_calls.c.attempt == attempt,
                llm_calls.c.role == "builder",
                llm_calls.c.error.is_(None),
            )
            .order_by(llm_calls.c.id.desc())
            .limit(1)
        )
        with self._engine.connect() as connection:
            row = connection.execute(query).first()
        if row is None or not row.output_format:
            return None
        troubled = (row.parse_outcome or "").startswith("invalid") or is_truncating_stop_reason(
            row.stop_reason
        )
        return row.output_format if troubled else None

    def has_note(self, run_id: str, phase_id: str, note: str) -> bool:
        """Whether any request of the phase carries ``note`` (e.g. its one empty-files retry)."""
        query = (
            select(llm_calls.c.id)
            .where(llm_calls.c.run_id == run_id, llm_calls.c.phase_id == phase_id, llm_calls.c.note == note)
            .limit(1)
        )
        with self._engine.connect() as connection:
            return connection.execute(query).first() is not None

    def get_call(self, call_id: int) -> StoredCall | None:
        """One request by id, or None."""
        with self._engine.connect() as connection:
            row = connection.execute(select(llm_calls).where(llm_calls.c.id == call_id)).mappings().first()
        return _stored(row) if row is not None else None

    def prune_answers(self, older_than: datetime) -> int:
        """Drop raw answers stored before ``older_than``; usage and outcomes stay. Returns rows pruned."""
        with self._engine.begin() as connection:
            result = connection.execute(
                update(llm_calls)
                .where(llm_calls.c.created_at < older_than, llm_calls.c.raw_answer.is_not(None))
                .values(raw_answer=None)
            )
            return int(result.rowcount or 0)

    def usage(
        self,
        *,
        since: datetime | None,
        group_by: GroupBy | None,
        run_id: str = "",
        until: datetime | None = None,
    ) -> list[UsageRow]:
        """Usage per group (one total row for ``group_by=None``, none when nothing matched) over
        [since, until); a split is None when any answered request of the group lacks it."""
        if group_by is not None and group_by not in _GROUP_COLUMNS:
            raise InvalidArgument("group_by", f"must be one of {', '.join(_GROUP_COLUMNS)}")
        keys = _GROUP_COLUMNS[group_by] if group_by is not None else ()
        answered = llm_calls.c.error.is_(None)
        measured = (
            llm_calls.c.input_tokens,
            llm_calls.c.output_tokens,
            llm_calls.c.cache_read_input_tokens,
            llm_calls.c.cache_creation_input_tokens,
            llm_calls.c.reasoning_output_tokens,
            llm_calls.c.cost_usd,
        )
        columns: list[object] = [
            *keys,
            func.count().label("requests"),
            func.count(llm_calls.c.error).label("failed"),
            func.coalesce(func.sum(llm_calls.c.total_tokens), 0).label("total"),
        ]
        for index, column in enumerate(measured):
            columns.append(func.sum(column).label(f"sum_{index}"))
            # answered requests whose value is unknown: any of them makes the group's sum unknown
            columns.append(func.count().filter(answered, column.is_(None)).label(f"unknown_{index}"))
        query = select(*columns)
        if keys:
            query = query.group_by(*keys).order_by(*keys)
        if since is not None:
            query = query.where(llm_calls.c.created_at >= since)
        if until is not None:
            query = query.where(llm_calls.c.created_at < until)
        if run_id:
            query = query.where(llm_calls.c.run_id == run_id)
        with self._engine.connect() as connection:
            rows = connection.execute(query).all()
        result: list[UsageRow] = []
        for row in rows:
            mapping = row._mapping
            if not mapping["requests"]:
                continue  # the total over no rows
            values = [
                None if mapping[f"unknown_{index}"] else mapping[f"sum_{index}"]
                for index in range(len(measured))
            ]
            answered_count = int(mapping["requests"]) - int(mapping["failed"])
            if answered_count == 0:  # only failed requests: nothing was billed, nothing is unknown
                values = [0, 0, 0, 0, 0, 0.0]
            result.append(
                UsageRow(
                    key=tuple(str(row[index]) for index in range(len(keys))),
                    requests=int(mapping["requests"]),
                    failed_requests=int(mapping["failed"]),
                    input_tokens=_int(values[0]),
                    output_tokens=_int(values[1]),
                    total_tokens=int(mapping["total"]),
                    cache_read_input_tokens=_int(values[2]),
                    cache_creation_input_tokens=_int(values[3]),
                    reasoning_output_tokens=_int(values[4]),
                    cost_usd=None if values[5] is None else float(values[5]),
                )
            )
        return result


def _int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[call-overload]


def _stored(row: object) -> StoredCall:
    data = dict(row)  # type: ignore[call-overload]
    data["created_at"] = _aware(data["created_at"])
    raw = data.pop("raw_answer")
    data["raw_answer"] = zlib.decompress(raw).decode("utf-8") if raw is not None else None
    return StoredCall(**data)


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
