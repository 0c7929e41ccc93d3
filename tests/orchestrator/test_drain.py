"""Drain controls and summaries as plain logic (no services)."""

from __future__ import annotations

import pytest
from autopack_common.errors import InvalidArgument
from autopack_orchestrator.drain import DrainItem, DrainOptions, Triage, summarise
from autopack_orchestrator.events import State

COMPLETE, FAILED = State.COMPLETE.value, State.FAILED.value


def test_defaults_are_seed_002s() -> None:
    options = DrainOptions()
    assert (
        options.phase_timeout_seconds,
        options.max_timeouts_per_run,
        options.max_attempts_per_phase,
        options.max_fingerprint_repeats,
        options.batch_size,
        options.sample_first,
    ) == (900, 2, 2, 3, 10, True)


@pytest.mark.parametrize(
    ("options", "field"),
    [
        (DrainOptions(batch_size=-1), "options.batch_size"),
        (DrainOptions(max_attempts_per_phase=11), "options.max_attempts_per_phase"),
        (DrainOptions(skip_phases=("a/b/c",)), "options.skip_phases[0]"),
        (DrainOptions(skip_phases=(" ",)), "options.skip_phases[0]"),
    ],
)
def test_bad_options_name_the_field(options: DrainOptions, field: str) -> None:
    with pytest.raises(InvalidArgument) as error:
        options.validated()
    assert error.value.field == field


def test_skips_are_per_phase_and_per_run_limits_apply() -> None:
    triage = Triage(
        DrainOptions(skip_phases=("r1/p1", "p9"), max_fingerprint_repeats=2, max_timeouts_per_run=1)
    )
    assert triage.refusal("r1", "p1") == "skipped: listed in skip_phases"
    assert triage.refusal("r2", "p1") is None  # the skip names one phase of one run
    assert triage.refusal("r5", "p9") == "skipped: listed in skip_phases"
    triage.learn(DrainItem("r3", "p1", FAILED, timed_out=True))
    assert triage.refusal(
        "r3",
        "p2",
    ).startswith("skipped: 1 phase timeout(s) in this run (limit 1)")
    for run_id in ("r6", "r7"):
        triage.learn(DrainItem(run_id, "p1", FAILED, fingerprint="CHECKS_FAILED|importerror <path>"))
    assert "repeated 2 times" in (triage.refusal("r6", "p2") or "")
    assert triage.refusal("r6", "p1") == "skipped: already drained in this session"


def test_sample_first_orders_unsampled_then_successful_runs() -> None:
    triage = Triage(DrainOptions())
    triage.learn(DrainItem("good", "p1", COMPLETE))
    triage.learn(DrainItem("bad", "p1", FAILED, fingerprint="x"))
    assert [triage.priority(r) for r in ("new", "good", "bad")] == [0, 1, 2]
    assert Triage(DrainOptions(sample_first=False)).priority("anything") == 0


def test_summary_yield_and_zero_yield_reasons() -> None:
    done = DrainItem("r1", "p1", COMPLETE, "completed", attempts=2, total_tokens=4000)
    summary = summarise(
        [done, DrainItem("r2", "p1", FAILED, "skipped: listed in skip_phases")], "batch size", 900
    )
    assert (summary["processed"], summary["completed"], summary["skipped"]) == (1, 1, 1)
    assert summary["completed_per_attempt"] == 0.5 and summary["completed_per_1k_tokens"] == 0.25
    assert summary["zero_yield_reason"] == ""

    def reason(*items: DrainItem) -> str:
        return summarise(list(items), "", 900)["zero_yield_reason"]

    assert reason() == "nothing was drained: no FAILED or QUEUED phase matched the filters"
    assert reason(DrainItem("r", "p", FAILED, "skipped: listed in skip_phases")).startswith(
        "nothing was drained"
    )
    assert reason(DrainItem("r", "p", FAILED, "t", attempts=1, timed_out=True)) == (
        "every phase hit the phase timeout (900s)"
    )
    assert "before its first counted attempt" in reason(DrainItem("r", "p", FAILED, "x"))
    assert "no LLM tokens" in reason(DrainItem("r", "p", FAILED, "x", attempts=1))
    failed = DrainItem("r", "p", FAILED, "x", attempts=2, total_tokens=10, fingerprint="CHECKS_FAILED|boom")
    assert reason(failed, failed) == "every phase failed; most common failure (2x): CHECKS_FAILED|boom"
