"""Recovery policy: what a failed attempt leads to, in plain Python (no RPCs).

Order of recovery after a counted failure (seed 004): a truncation or near-full output
escalates the budget once; a known failure pattern gets its deterministic mitigation (no
LLM call); two similar failures in a row re-plan the phase; anything else asks the doctor
within its budgets. Infrastructure failures are not attempts at all; the run's health
budget stops a run that keeps failing whatever the cause.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autopack_common.truncation import is_high_utilization

from autopack_orchestrator.events import FailureKind, Outcome
from autopack_orchestrator.failures import similar
from autopack_orchestrator.store import AttemptRecord, PhaseRecord

PATCH_OUTCOMES = frozenset({Outcome.APPLY_REJECTED, Outcome.BUILD_FAILED})


@dataclass(frozen=True)
class HealthLimits:
    """Run-level limits (seed 004: 10 server errors, 15 patch failures, 25 failures in all)."""

    infra_errors: int = 10
    patch_failures: int = 15
    failures: int = 25


def health_breach(failed: Iterable[AttemptRecord], limits: HealthLimits) -> str | None:
    """Why the run must stop, or None while it is within its health budget."""
    failed = [attempt for attempt in failed if attempt.failure_kind != FailureKind.INTERRUPTED.value]
    infra = sum(1 for attempt in failed if attempt.failure_kind == FailureKind.TRANSIENT.value)
    patch = sum(1 for attempt in failed if attempt.outcome in PATCH_OUTCOMES)
    if infra >= limits.infra_errors:
        return f"health budget: {infra} infrastructure errors in this run (limit {limits.infra_errors})"
    if patch >= limits.patch_failures:
        return f"health budget: {patch} patch failures in this run (limit {limits.patch_failures})"
    if len(failed) >= limits.failures:
        return f"health budget: {len(failed)} failed attempts in this run (limit {limits.failures})"
    return None


def needs_escalation(attempt: AttemptRecord) -> str | None:
    """'truncated' or 'high_utilization' when the next attempt needs a bigger budget, else None."""
    if attempt.outcome is Outcome.TRUNCATED:
        return "truncated"
    if attempt.outcome is not Outcome.SUCCESS and is_high_utilization(
        attempt.output_tokens, attempt.selected_budget
    ):
        return "high_utilization"
    return None


def counted_failures(phase: PhaseRecord) -> list[AttemptRecord]:
    """This execution's finished, counted, failed attempts, oldest first."""
    return [
        attempt
        for attempt in phase.current_attempts()
        if attempt.finished and attempt.counted and attempt.outcome is not Outcome.SUCCESS
    ]


def similar_streak(failures: Sequence[AttemptRecord]) -> list[AttemptRecord]:
    """The last two failures when their fingerprints are similar (>= 0.8), else empty."""
    if len(failures) < 2:
        return []
    previous, last = failures[-2], failures[-1]
    if previous.fingerprint and last.fingerprint and similar(previous.fingerprint, last.fingerprint):
        return [previous, last]
    return []


def doctor_refusal(phase_calls: int, run_calls: int, per_phase: int, per_run: int) -> str | None:
    """Why the doctor may not be asked (its budgets), or None."""
    if phase_calls >= per_phase:
        return f"doctor budget for the phase used ({phase_calls} of {per_phase})"
    if run_calls >= per_run:
        return f"doctor budget for the run used ({run_calls} of {per_run})"
    return None


def guidance(phase: PhaseRecord) -> list[str]:
    """Instructions for the next prompt: every mitigation's hint, then the doctor's hint."""
    hints = [str(item.get("hint", "")) for item in phase.mitigations if item.get("hint")]
    if phase.hint:
        hints.append(phase.hint)
    return hints
