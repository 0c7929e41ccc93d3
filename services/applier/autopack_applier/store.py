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
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

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
    update,
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
    # Set when CleanupWorkspace removed the directory; the row stays for the audit log.
    removed_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


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
    # Set when savepoint retention (or a cleanup) dropped this savepoint as a rollback target.
    pruned_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


class ApprovalRow(Base):
    """An Apply refused by governance and the human decision on it."""

    __tablename__ = "applier_approval_requests"
    __table_args__ = (
        CheckConstraint(
            "status IN ('pending', 'approved', 'denied', 'consumed')", name="ck_applier_approval_status"
        ),
    )

    request_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    run_id: Mapped[str] = mapped_column(
        String(128), ForeignKey("applier_workspaces.run_id"), nullable=False, index=True
    )
    phase_id: Mapped[str] = mapped_column(String(200), nullable=False)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    reason: Mapped[str] = mapped_column(String(64), nullable=False)
    risk_level: Mapped[str] = mapped_column(String(16), nullable=False)
    paths: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    details: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    decided_by: Mapped[str | None] = mapped_column(String(200), nullable=True)
    note: Mapped[str | None] = mapped_column(Text, nullable=True)
    consumed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, nullable=False)
    decided_at: Mapped[datetime | None] = mapped_column(UtcDateTime, nullable=True)


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
    removed_at: datetime | None = None


APPROVAL_PENDING = "pending"
APPROVAL_APPROVED = "approved"
APPROVAL_DENIED = "denied"
APPROVAL_CONSUMED = "consumed"


@dataclass(frozen=True)
class ApprovalRecord:
    """An approval request; ``fingerprint`` binds it to one exact Apply request."""

    request_id: str
    run_id: str
    phase_id: str
    fingerprint: str
    reason: str
    risk_level: str
    paths: tuple[str, ...]
    details: tuple[str, ...]
    status: str = APPROVAL_PENDING
    decided_by: str | None = None
    note: str | None = None
    consumed_by: str | None = None
    created_at: datetime | None = None
    decided_at: datetime | None = None


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
            removed_at=row.removed_at,
        )

    def mark_removed(self, run_id: str) -> int:
        """Record a workspace's removal; its savepoints stop being rollback targets. Returns their count."""
        now = utcnow()
        with self.engine.begin() as connection:
            connection.execute(
                update(WorkspaceRow).where(WorkspaceRow.run_id == run_id).values(removed_at=now)
            )
            result = connection.execute(
                update(ApplyLogRow)
                .where(
                    ApplyLogRow.run_id == run_id,
                    ApplyLogRow.result == ACCEPTED,
                    ApplyLogRow.pruned_at.is_(None),
                )
                .values(pruned_at=now)
            )
        return result.rowcount or 0

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
        """Every commit Rollback may restore for the run: its base and its accepted, unpruned applies."""
        with self.engine.connect() as connection:
            base = connection.execute(
                select(WorkspaceRow.base_commit).where(WorkspaceRow.run_id == run_id)
            ).scalar_one_or_none()
            commits: Sequence[str | None] = (
                connection.execute(
                    select(ApplyLogRow.savepoint).where(
                        ApplyLogRow.run_id == run_id,
                        ApplyLogRow.result == ACCEPTED,
                        ApplyLogRow.pruned_at.is_(None),
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

    # -- savepoint retention ----------------------------------------------------------------

    def prune_savepoints(self, run_id: str, keep: int) -> list[str]:
        """Drop all but the newest ``keep`` accepted savepoints of a run as rollback targets.

        Returns the savepoints pruned now. The commits stay in the workspace's history (it
        is linear); they are no longer accepted by Rollback.
        """
        with self.engine.begin() as connection:
            rows = connection.execute(
                select(ApplyLogRow.id, ApplyLogRow.savepoint)
                .where(
                    ApplyLogRow.run_id == run_id,
                    ApplyLogRow.result == ACCEPTED,
                    ApplyLogRow.pruned_at.is_(None),
                )
                .order_by(ApplyLogRow.id.desc())
            ).all()
            stale = rows[keep:]
            if stale:
                connection.execute(
                    update(ApplyLogRow)
                    .where(ApplyLogRow.id.in_([row.id for row in stale]))
                    .values(pruned_at=utcnow())
                )
        return [row.savepoint for row in stale if row.savepoint]

    def is_pruned(self, run_id: str, prefix: str) -> bool:
        """True when an accepted savepoint of the run starting with ``prefix`` was dropped by retention."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ApplyLogRow.id).where(
                    ApplyLogRow.run_id == run_id,
                    ApplyLogRow.savepoint.startswith(prefix, autoescape=True),
                    ApplyLogRow.pruned_at.is_not(None),
                )
            ).first()
        return row is not None

    # -- approvals ----------------------------------------------------------------------------

    def add_approval(self, record: ApprovalRecord) -> ApprovalRecord:
        with self.engine.begin() as connection:
            connection.execute(
                insert(ApprovalRow).values(
                    request_id=record.request_id,
                    run_id=record.run_id,
                    phase_id=record.phase_id,
                    fingerprint=record.fingerprint,
                    reason=record.reason,
                    risk_level=record.risk_level,
                    paths=list(record.paths),
                    details=list(record.details),
                    status=record.status,
                    created_at=record.created_at or utcnow(),
                )
            )
        return self.get_approval(record.request_id) or record

    def get_approval(self, request_id: str) -> ApprovalRecord | None:
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ApprovalRow.__table__).where(ApprovalRow.request_id == request_id)
            ).first()
        return None if row is None else _approval(row)

    def latest_approval(self, run_id: str, fingerprint: str) -> ApprovalRecord | None:
        """The newest unconsumed request for this exact change, or None."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(ApprovalRow.__table__)
                .where(
                    ApprovalRow.run_id == run_id,
                    ApprovalRow.fingerprint == fingerprint,
                    ApprovalRow.status != APPROVAL_CONSUMED,
                )
                .order_by(ApprovalRow.created_at.desc())
            ).first()
        return None if row is None else _approval(row)

    def list_approvals(self, run_id: str, pending_only: bool = False) -> list[ApprovalRecord]:
        query = select(ApprovalRow.__table__).where(ApprovalRow.run_id == run_id)
        if pending_only:
            query = query.where(ApprovalRow.status == APPROVAL_PENDING)
        with self.engine.connect() as connection:
            rows = connection.execute(query.order_by(ApprovalRow.created_at.desc())).all()
        return [_approval(row) for row in rows]

    def decide_approval(self, request_id: str, status: str, decided_by: str, note: str | None) -> bool:
        """Approve or deny a pending request; False when it is not pending (any more)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(ApprovalRow)
                .where(ApprovalRow.request_id == request_id, ApprovalRow.status == APPROVAL_PENDING)
                .values(status=status, decided_by=decided_by, note=note, decided_at=utcnow())
            )
        return bool(result.rowcount)

    def consume_approval(self, request_id: str, savepoint: str) -> bool:
        """Use an approved request once; False when it was not approved (or already used)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(ApprovalRow)
                .where(ApprovalRow.request_id == request_id, ApprovalRow.status == APPROVAL_APPROVED)
                .values(status=APPROVAL_CONSUMED, consumed_by=savepoint)
            )
        return bool(result.rowcount)


def new_request_id() -> str:
    """A random, URL-safe approval request id."""
    return secrets.token_hex(12)


def _approval(row: Any) -> ApprovalRecord:
    return ApprovalRecord(
        request_id=row.request_id,
        run_id=row.run_id,
        phase_id=row.phase_id,
        fingerprint=row.fingerprint,
        reason=row.reason,
        risk_level=row.risk_level,
        paths=tuple(row.paths),
        details=tuple(row.details),
        status=row.status,
        decided_by=row.decided_by,
        note=row.note,
        consumed_by=row.consumed_by,
        created_at=row.created_at,
        decided_at=row.decided_at,
    )
