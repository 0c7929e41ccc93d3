"""The builder's own table: one row per LLM call, with usage exactly as the provider reported it.

Unknown input/output counts are NULL, never guessed; ``total_tokens`` is always set, so
"where did the tokens of this run go" sums one non-null column (seed 004, BUILD-144).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from autopack_common.errors import Unavailable
from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Engine,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    insert,
    select,
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
    # 1-based call within the attempt (2 = the empty-files retry).
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
    Index("ix_llm_calls_run_phase", "run_id", "phase_id"),
)


@dataclass(frozen=True)
class StoredCall:
    """A row of ``llm_calls``."""

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
    ) -> int:
        """Store one finished call and return its id."""
        values = {
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
        }
        try:
            with self._engine.begin() as connection:
                result = connection.execute(insert(llm_calls).values(**values))
                return int(result.inserted_primary_key[0])
        except OperationalError as error:
            raise Unavailable(f"builder database unavailable: {type(error.orig).__name__}") from error

    def list_calls(self, *, run_id: str | None = None, phase_id: str | None = None) -> list[StoredCall]:
        """Calls in the order they were made, optionally for one run and/or phase."""
        query = select(llm_calls).order_by(llm_calls.c.id)
        if run_id is not None:
            query = query.where(llm_calls.c.run_id == run_id)
        if phase_id is not None:
            query = query.where(llm_calls.c.phase_id == phase_id)
        with self._engine.connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [StoredCall(**{**row, "created_at": _aware(row["created_at"])}) for row in rows]


def _aware(value: datetime) -> datetime:
    """SQLite hands back naive datetimes; they were written in UTC."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
