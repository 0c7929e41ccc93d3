"""Governance of an Apply: which changes need a human, and the fingerprint approvals bind to.

Two things stop an otherwise valid Apply until someone approves it: a write to a protected
path (other than VCS internals, which nothing may write) and a net deletion beyond the block
threshold. The tiers and numbers are the original system's Deletion Safeguards (net deletion
= lines removed - lines added): from 50 lines a git tag marks the state before the
deletion, from 100 the caller is notified, above 200 the apply is blocked. An approval is
bound to the exact request (run, scope, deliverables, operations), so an approved Apply lets
those operations through once and nothing else.
"""

from __future__ import annotations

import enum
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from autopack_common.errors import FailedPrecondition

from autopack_applier.paths import Risk

PROTECTED_PATH_VIOLATION = "protected_path_violation"
LARGE_DELETION = "large_deletion"


class DeletionTier(enum.Enum):
    NONE = "none"
    SAVEPOINT = "savepoint"  # tag the previous state first
    NOTIFY = "notify"  # tag, and tell the caller
    BLOCK = "block"  # needs approval


@dataclass(frozen=True)
class DeletionThresholds:
    """Net deleted lines at which each tier starts (the seeds' numbers by default)."""

    savepoint: int = 50
    notify: int = 100
    block: int = 200

    def tier(self, net_deleted: int) -> DeletionTier:
        if net_deleted > self.block:
            return DeletionTier.BLOCK
        if net_deleted >= self.notify:
            return DeletionTier.NOTIFY
        if net_deleted >= self.savepoint:
            return DeletionTier.SAVEPOINT
        return DeletionTier.NONE


@dataclass(frozen=True)
class Violation:
    """One path that needs approval and why."""

    path: str
    kind: str  # PROTECTED_PATH_VIOLATION or LARGE_DELETION
    risk: Risk
    description: str


@dataclass(frozen=True)
class GovernanceDecision:
    """What governance says about a planned Apply."""

    violations: tuple[Violation, ...]
    net_deleted: int
    tier: DeletionTier

    @property
    def blocked(self) -> bool:
        return bool(self.violations)

    @property
    def reason(self) -> str:
        kinds = {violation.kind for violation in self.violations}
        return PROTECTED_PATH_VIOLATION if PROTECTED_PATH_VIOLATION in kinds else LARGE_DELETION

    @property
    def risk(self) -> Risk:
        order = [Risk.MEDIUM, Risk.HIGH, Risk.CRITICAL]
        return max((violation.risk for violation in self.violations), key=order.index, default=Risk.MEDIUM)


class GovernanceBlocked(FailedPrecondition):
    """An Apply that needs approval; carries what the structured status detail reports."""

    def __init__(self, decision: GovernanceDecision, request_id: str, status: str = "created") -> None:
        """``status``: "created" (a new request), "pending" (asked before) or "denied"."""
        paths = ", ".join(violation.path for violation in decision.violations[:10])
        if status == "denied":
            message = f"operations: approval request {request_id} for this change was denied ({paths})"
        else:
            state = "was created" if status == "created" else "is still pending"
            message = (
                f"operations: {decision.reason.replace('_', ' ')} ({decision.risk.value} risk): "
                + "; ".join(f"{v.path} {v.description}" for v in decision.violations[:10])
                + f"; approval request {request_id} {state}: approve it and apply again"
            )
        super().__init__(message)
        self.decision = decision
        self.request_id = request_id
        self.requires_approval = status != "denied"


def assess(
    protected: Sequence[tuple[str, Risk, str]],
    deletions: Sequence[tuple[str, int]],
    net_deleted: int,
    thresholds: DeletionThresholds,
) -> GovernanceDecision:
    """Governance of a planned Apply.

    ``protected``: (path, risk, reason) of approvable protected writes; ``deletions``:
    (path, net lines it loses) per file, named when the total crosses the block threshold.
    """
    violations = [Violation(path, PROTECTED_PATH_VIOLATION, risk, reason) for path, risk, reason in protected]
    tier = thresholds.tier(net_deleted)
    if tier is DeletionTier.BLOCK:
        losing = sorted((item for item in deletions if item[1] > 0), key=lambda item: -item[1])
        for path, lines in losing:
            violations.append(
                Violation(
                    path,
                    LARGE_DELETION,
                    Risk.HIGH,
                    f"loses {lines} line(s); the apply deletes {net_deleted} net lines, over the "
                    f"{thresholds.block}-line block threshold",
                )
            )
    return GovernanceDecision(tuple(violations), net_deleted, tier)


@dataclass(frozen=True)
class RequestFingerprint:
    """What an approval is bound to: the run and the exact change requested."""

    run_id: str
    scope: tuple[str, ...]
    deliverables: tuple[str, ...]
    operations: tuple[object, ...] = field(default_factory=tuple)

    def digest(self) -> str:
        payload = json.dumps(
            [self.run_id, list(self.scope), list(self.deliverables), [repr(op) for op in self.operations]],
            sort_keys=True,
        )
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()
