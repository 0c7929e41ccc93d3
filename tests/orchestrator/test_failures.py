"""Fingerprints, similarity and the deterministic failure patterns (no services)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from autopack_orchestrator.events import FailureKind, Outcome, State
from autopack_orchestrator.failures import FailureContext, detect, fingerprint, normalise_error, similarity
from autopack_orchestrator.plan import PhaseSpec
from autopack_orchestrator.recovery import (
    HealthLimits,
    doctor_refusal,
    guidance,
    health_breach,
    needs_escalation,
    similar_streak,
)
from autopack_orchestrator.store import AttemptRecord, PhaseRecord

NOW = datetime(2026, 12, 5, tzinfo=UTC)


def test_normalise_removes_paths_numbers_hex_ids_and_timestamps() -> None:
    first = normalise_error(
        "2026-12-05T08:01:02Z FAILED /tmp/ws-1/tests/test_a.py::test_x line 42 at 0x7f3a9c2b10 "
        "commit 9fceb02d0ae598e95dc970b74767f19372d61af8 run 5c5e8a2e-8f1b-4f5e-9a1c-2d3e4f5a6b7c"
    )
    second = normalise_error(
        "2027-01-01 10:11:12 FAILED /home/u/ws-9/tests/test_a.py::test_x line 7 at 0x55aa33bb99 "
        "commit 0123456789abcdef0123456789abcdef01234567 run 11111111-2222-3333-4444-555555555555"
    )
    assert first == second
    for fragment in ("2026", "/tmp", "42", "0x7f", "9fceb02", "5c5e8a2e"):
        assert fragment not in first


def test_fingerprint_keeps_the_outcome_and_the_end_of_long_text() -> None:
    text = "x" * 1000 + " ImportError: cannot import name 'thing'"
    value = fingerprint("CHECKS_FAILED", text)
    assert value.startswith("CHECKS_FAILED|")
    assert value.endswith("importerror: cannot import name 'thing'")
    assert len(value) <= len("CHECKS_FAILED|") + 300


def test_similarity_is_high_for_the_same_failure_and_zero_across_outcomes() -> None:
    a = fingerprint("CHECKS_FAILED", "AssertionError: expected 3 got 4 in tests/test_math.py line 10")
    b = fingerprint("CHECKS_FAILED", "AssertionError: expected 5 got 9 in tests/test_calc.py line 99")
    c = fingerprint("CHECKS_FAILED", "SyntaxError: invalid syntax (mod.py)")
    assert similarity(a, b) >= 0.8
    assert similarity(a, c) < 0.8
    assert similarity(a, "TRUNCATED|" + a.partition("|")[2]) == 0.0
    assert similarity("CHECKS_FAILED|x", "CHECKS_FAILED|x") == 0.0  # too short to judge


def context(text: str, outcome: str = "CHECKS_FAILED", **kwargs: object) -> FailureContext:
    values: dict[str, object] = {
        "command": ("pytest", "-q"),
        "deliverables": ("src/wordfreq.py", "tests/test_wordfreq.py"),
        "scope_paths": ("src/", "tests/"),
    }
    values.update(kwargs)
    return FailureContext(outcome=outcome, text=text, **values)  # type: ignore[arg-type]


def test_missing_third_party_module_is_a_missing_dependency_with_a_hint() -> None:
    mitigation = detect(context("E   ModuleNotFoundError: No module named 'requests_toolbelt'"))
    assert mitigation is not None and mitigation.pattern == "python_missing_dep"
    assert "requests_toolbelt" in mitigation.hint and mitigation.command is None


def test_missing_workspace_module_is_an_import_path_fixed_in_the_command() -> None:
    mitigation = detect(context("ModuleNotFoundError: No module named 'src'"))
    assert mitigation is not None and mitigation.pattern == "import_path"
    assert mitigation.command == ("python", "-m", "pytest", "-q")


def test_no_tests_collected_points_the_runner_at_the_deliverable_tests() -> None:
    mitigation = detect(context("collected 0 items\n\nno tests ran in 0.01s"))
    assert mitigation is not None and mitigation.pattern == "missing_test_discovery"
    assert mitigation.command == ("pytest", "-q", "tests/test_wordfreq.py")


def test_wrong_path_in_the_command_is_replaced_by_the_deliverable() -> None:
    mitigation = detect(
        context(
            "ERROR: file or directory not found: test_wordfreq.py",
            command=("pytest", "-q", "test_wordfreq.py"),
        )
    )
    assert mitigation is not None and mitigation.pattern == "wrong_working_dir"
    assert mitigation.command == ("pytest", "-q", "tests/test_wordfreq.py")


def test_scope_rejection_lists_the_allowed_paths() -> None:
    text = "applier Apply failed (PERMISSION_DENIED): operations[1].path: 'other/x.py' is outside the phase scope"
    mitigation = detect(context(text, outcome="APPLY_REJECTED"))
    assert mitigation is not None and mitigation.pattern == "scope_mismatch"
    assert "src/" in mitigation.hint


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("Error: Cannot find module 'left-pad'", "node_missing_dep"),
        ("/bin/sh: ./run.sh: Permission denied", "permission_error"),
    ],
)
def test_other_patterns(text: str, pattern: str) -> None:
    mitigation = detect(context(text))
    assert mitigation is not None and mitigation.pattern == pattern


def test_a_pattern_already_applied_is_not_applied_again_and_unknown_text_matches_nothing() -> None:
    text = "ModuleNotFoundError: No module named 'requests_toolbelt'"
    assert detect(context(text), already=["python_missing_dep"]) is None
    assert detect(context("AssertionError: 3 != 4")) is None


def attempt(
    number: int, outcome: Outcome, kind: FailureKind, text: str = "", **kwargs: object
) -> AttemptRecord:
    return AttemptRecord(
        number=number,
        started_at=NOW,
        finished_at=NOW,
        outcome=outcome,
        failure_kind=kind.value,
        counted=kind is FailureKind.DETERMINISTIC,
        fingerprint=fingerprint(outcome.value, text) if text else "",
        **kwargs,  # type: ignore[arg-type]
    )


def test_health_budget_names_the_limit_that_was_reached() -> None:
    limits = HealthLimits(infra_errors=2, patch_failures=3, failures=4)
    infra = [attempt(i, Outcome.ERROR, FailureKind.TRANSIENT) for i in range(2)]
    patch = [attempt(i, Outcome.APPLY_REJECTED, FailureKind.DETERMINISTIC) for i in range(3)]
    checks = [attempt(i, Outcome.CHECKS_FAILED, FailureKind.DETERMINISTIC) for i in range(4)]
    interrupted = [attempt(i, Outcome.ERROR, FailureKind.INTERRUPTED) for i in range(9)]
    assert health_breach(infra[:1] + patch[:2] + interrupted, limits) is None
    assert health_breach(infra, limits) == "health budget: 2 infrastructure errors in this run (limit 2)"
    assert health_breach(patch, limits) == "health budget: 3 patch failures in this run (limit 3)"
    assert health_breach(checks, limits) == "health budget: 4 failed attempts in this run (limit 4)"
    assert HealthLimits() == HealthLimits(10, 15, 25)


def test_escalation_after_truncation_or_95_percent_of_the_budget() -> None:
    assert needs_escalation(attempt(1, Outcome.TRUNCATED, FailureKind.DETERMINISTIC)) == "truncated"
    near = attempt(
        1, Outcome.CHECKS_FAILED, FailureKind.DETERMINISTIC, output_tokens=950, selected_budget=1000
    )
    assert needs_escalation(near) == "high_utilization"
    below = attempt(
        1, Outcome.CHECKS_FAILED, FailureKind.DETERMINISTIC, output_tokens=940, selected_budget=1000
    )
    assert needs_escalation(below) is None


def test_similar_streak_needs_the_last_two_failures_alike() -> None:
    one = attempt(
        1, Outcome.CHECKS_FAILED, FailureKind.DETERMINISTIC, "AssertionError: expected 3 got 4 in x.py"
    )
    two = attempt(
        2, Outcome.CHECKS_FAILED, FailureKind.DETERMINISTIC, "AssertionError: expected 7 got 8 in y.py"
    )
    other = attempt(
        3, Outcome.CHECKS_FAILED, FailureKind.DETERMINISTIC, "SyntaxError: invalid syntax in module"
    )
    assert similar_streak([one, two]) == [one, two]
    assert similar_streak([one, other]) == []
    assert similar_streak([one]) == []


def test_doctor_budgets_and_guidance() -> None:
    assert doctor_refusal(0, 0, 2, 10) is None
    assert doctor_refusal(2, 3, 2, 10) == "doctor budget for the phase used (2 of 2)"
    assert doctor_refusal(1, 10, 2, 10) == "doctor budget for the run used (10 of 10)"
    phase = PhaseRecord(
        tier_id="t",
        position=0,
        spec=PhaseSpec(phase_id="p", description="d"),
        state=State.EXECUTING,
        mitigations=[{"pattern": "import_path", "hint": "Import from the root."}],
        hint="Use a dict.",
    )
    assert guidance(phase) == ["Import from the root.", "Use a dict."]
