"""Persistence of the applier: one workspace row per run and an audit log of every apply.

The log records rejections as well as accepted applies, so "why did this phase's change
not land?" has an answer after the fact; it is also what Rollback trusts to decide which
commits are savepoints of a run. Tables carry an ``applier_`` prefix so the services can
share one PostgreSQL database; the Alembic history has its own version table
(``alembic_version_applier``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from autopack_common.database import UtcDateTime, utcnow
from autopack_common.errors import AlreadyExists
from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Engine,
    ForeignKey,
    Integer,
    PrimaryKeyConstraint,
    String,
    Text,
    insert,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ApplyResultKind = Literal["accepted", "rejected"]
ACCEPTED: ApplyResultKind = "accepted"
REJECTED: ApplyResultKind = "rejected"


class Base(DeclarativeBase):
    pass


metadata = Base.metadata


class WorkspaceRow(Base):
    __tablename__ = "applier_workspaces"

    run_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    path: Mapped[str] = mapped_column(Text, nullable=False)
    source_repo: Mapped[str] = mapped_column(Text, nullable=False)
    base_commit: Mapped[str] = mapped_column(String(64), nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class ApplyLogRow(Base):
    __tablename__ = "applier_apply_log"
    __table_args__ = (
        CheckConstraint("result IN ('accepted', 'rejected')", name="ck_applier_apply_log_result"),
    )

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer(), "sqlite"), primary_key=True, autoincrement=True
    )
    run_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("applier_workspaces.run_id"), nullable=False, index=True
    )
    phase_id: Mapped[str] = mapped_column(String(200), nullable=False)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False)
    savepoint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_savepoint: Mapped[str | None] = mapped_column(String(64), nullable=True)
    changed_paths: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    result: Mapped[str] = mapped_column(String(16), nullable=False)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


class CheckBaselineRow(Base):
    """The first test report of a command in a run's workspace, measured at its base commit."""

    __tablename__ = "applier_check_baselines"
    __table_args__ = (PrimaryKeyConstraint("run_id", "command_key", name="pk_applier_check_baselines"),)

    run_id: Mapped[str] = mapped_column(String(128), ForeignKey("applier_workspaces.run_id"), nullable=False)
    command_key: Mapped[str] = mapped_column(String(64), nullable=False)
    command: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    commit: Mapped[str] = mapped_column(String(64), nullable=False)
    counts: Mapped[dict[str, int]] = mapped_column(JSON, nullable=False)
    outcomes: Mapped[dict[str, str]] = mapped_column(JSON, nullable=False)
    collection_errors: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)


@dataclass(frozen=True)
class WorkspaceRecord:
    """Where a run's workspace lives and what it started from."""

    run_id: str
    path: str
    source_repo: str
    base_commit: str
    created_at: datetime


@dataclass(frozen=True)
class ApplyLogEntry:
    """One Apply request on a run: its savepoint when accepted, its reason when rejected."""

    run_id: str
    phase_id: str
    attempt: int
    savepoint: str | None
    previous_savepoint: str | None
    changed_paths: tuple[str, ...]
    result: ApplyResultKind
    reason: str | None
    created_at: datetime | None = None


@dataclass(frozen=True)
class CheckBaseline:
    """A command's baseline in a run: outcome per test id at ``commit``."""

    run_id: str
    command: tuple[str, ...]
    commit: str
    counts: dict[str, int]
    outcomes: dict[str, str]
    collection_errors: tuple[str, ...]
    created_at: datetime | None = None

    @property
    def command_key(self) -> str:
        return command_key(self.command)


def command_key(command: Sequence[str]) -> str:
    """A fixed-size key of an argument vector (the same argv is the same command)."""
    return hashlib.sha256(json.dumps(list(command)).encode("utf-8")).hexdigest()


class ApplierStore:
    """Repository functions over the applier's tables; each call is its own transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def add_workspace(self, record: WorkspaceRecord) -> None:
        """Record a new workspace; AlreadyExists when the run already has one."""
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(WorkspaceRow).values(
                        run_id=record.run_id,
                        path=record.path,
                        source_repo=record.source_repo,
                        base_commit=record.base_commit,
                        created_at=record.created_at,
                    )
                )
        except IntegrityError:
            raise AlreadyExists(f"run_id: run {record.run_id!r} already has a workspace") from None

    def get_workspace(self, run_id: str) -> WorkspaceRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(WorkspaceRow.__table__).where(WorkspaceRow.run_id == run_id)
            ).first()
        if row is None:
            return None
        return WorkspaceRecord(
            run_id=row.run_id,
            path=row.path,
            source_repo=row.source_repo,
            base_commit=row.base_commit,
            created_at=row.created_at,
        )

    def log_apply(self, entry: ApplyLogEntry) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                insert(ApplyLogRow).values(
                    run_id=entry.run_id,
                    phase_id=entry.phase_id,
                    attempt=entry.attempt,
                    savepoint=entry.savepoint,
                    previous_savepoint=entry.previous_savepoint,
                    changed_paths=list(entry.changed_paths),
                    result=entry.result,
                    reason=entry.reason,
                    created_at=entry.created_at or utcnow(),
                )
            )

    def apply_log(self, run_id: str) -> list[ApplyLogEntry]:
        """The run's applies, oldest first."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                select(ApplyLogRow.__table__).where(ApplyLogRow.run_id == run_id).order_by(ApplyLogRow.id)
            ).all()
        return [
            ApplyLogEntry(
                run_id=row.run_id,
                phase_id=row.phase_id,
                attempt=row.attempt,
                savepoint=row.savepoint,
                previous_savepoint=row.previous_savepoint,
                changed_paths=tuple(row.changed_paths or ()),
                result=row.result,
                reason=row.reason,
                created_at=row.created_at,
            )
            for row in rows
        ]

    def savepoints(self, run_id: str) -> set[str]:
        """Every commit Rollback may restore for the run: its base and its accepted applies."""
        with self.engine.connect() as connection:
            base = connection.execute(
                select(WorkspaceRow.base_commit).where(WorkspaceRow.run_id == run_id)
            ).scalar_one_or_none()
            commits: Sequence[str | None] = (
                connection.execute(
                    select(ApplyLogRow.savepoint).where(
                        ApplyLogRow.run_id == run_id, ApplyLogRow.result == ACCEPTED
                    )
                )
                .scalars()
                .all()
            )
        found = {commit for commit in commits if commit}
        if base:
            found.add(base)
        return found

    def add_baseline(self, baseline: CheckBaseline) -> CheckBaseline:
        """Record a command's baseline; when one was recorded meanwhile, that one wins."""
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    insert(CheckBaselineRow).values(
                        run_id=baseline.run_id,
                        command_key=baseline.command_key,
                        command=list(baseline.command),
                        commit=baseline.commit,
                        counts=dict(baseline.counts),
                        outcomes=dict(baseline.outcomes),
                        collection_errors=list(baseline.collection_errors),
                        created_at=baseline.created_at or utcnow(),
                    )
                )
        except IntegrityError:
            existing = self.get_baseline(baseline.run_id, baseline.command)
            if existing is None:
                raise
            return existing
        return baseline

    def get_baseline(self, run_id: str, command: Sequence[str]) -> CheckBaseline | None:
        """The baseline of ``command`` in the run, or None before its first check."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(CheckBaselineRow.__table__).where(
                    CheckBaselineRow.run_id == run_id, CheckBaselineRow.command_key == command_key(command)
                )
            ).first()
        if row is None:
            return None
        return CheckBaseline(
            run_id=row.run_id,
            command=tuple(row.command),
            commit=row.commit,
            counts=dict(row.counts),
            outcomes=dict(row.outcomes),
            collection_errors=tuple(row.collection_errors),
            created_at=row.created_at,
        )
