"""The run store on SQLite and PostgreSQL: runs, pages, events, attempts and leases."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from autopack_orchestrator.events import EventType, Outcome, State
from autopack_orchestrator.store import AttemptRecord, RunStore, utcnow
from sqlalchemy import func, select

from .conftest import sample_plan


def test_create_run_stores_queued_run_with_tiers_and_phases(store: RunStore) -> None:
    run = store.create_run(sample_plan("r1", phases=3))
    assert run.state is State.QUEUED
    assert [tier.tier_id for tier in run.tiers] == ["t1", "t2"]
    assert [phase.phase_id for phase in run.phases()] == ["p1", "p2", "p3"]
    assert all(phase.state is State.QUEUED for phase in run.phases())
    assert run.created_at.tzinfo is not None
    again = store.get_run("r1")
    assert again.phases()[1].spec == sample_plan("r1", phases=3).tiers[1].phases[0]
    events = store.events_after("r1")
    assert [(e.sequence, e.type, e.state) for e in events] == [(1, EventType.RUN_STATE, State.QUEUED)]


def test_duplicate_run_id_is_already_exists_and_changes_nothing(store: RunStore) -> None:
    store.create_run(sample_plan("dup", phases=1))
    with pytest.raises(AlreadyExists, match="dup"):
        store.create_run(sample_plan("dup", phases=3))
    assert len(store.get_run("dup").phases()) == 1
    assert len(store.events_after("dup")) == 1


def test_unknown_run_is_not_found_naming_it(store: RunStore) -> None:
    with pytest.raises(NotFound, match="nope"):
        store.get_run("nope")
    with pytest.raises(NotFound, match="nope"):
        store.run_state("nope")


def test_list_runs_newest_first_with_pages_and_state_filter(store: RunStore) -> None:
    for i in range(7):
        store.create_run(sample_plan(f"run-{i}", phases=1))
    store.start_run("run-2", "me", 30)
    store.start_run("run-5", "me", 30)

    seen: list[str] = []
    token = ""
    while True:
        page, token = store.list_runs(page_size=3, page_token=token)
        assert len(page) <= 3
        seen += [run.run_id for run in page]
        if not token:
            break
    assert seen == [f"run-{i}" for i in reversed(range(7))]

    executing, token = store.list_runs(state=State.EXECUTING)
    assert [run.run_id for run in executing] == ["run-5", "run-2"]
    assert token == ""
    first, token = store.list_runs(page_size=1, state=State.QUEUED)
    assert [run.run_id for run in first] == ["run-6"]
    second, _ = store.list_runs(page_size=1, page_token=token, state=State.QUEUED)
    assert [run.run_id for run in second] == ["run-4"]


def test_list_runs_rejects_bad_tokens_and_sizes(store: RunStore) -> None:
    with pytest.raises(InvalidArgument) as raised:
        store.list_runs(page_token="garbage!")
    assert raised.value.field == "page_token"
    with pytest.raises(InvalidArgument) as raised:
        store.list_runs(page_size=-1)
    assert raised.value.field == "page_size"


def test_start_run_only_from_queued(store: RunStore) -> None:
    store.create_run(sample_plan("s", phases=1))
    run = store.start_run("s", "owner-a", 30)
    assert run.state is State.EXECUTING
    assert run.started_at is not None
    with pytest.raises(FailedPrecondition, match="EXECUTING"):
        store.start_run("s", "owner-b", 30)
    with pytest.raises(NotFound):
        store.start_run("missing", "owner-a", 30)
    assert store.holds_lease("s", "owner-a")


def test_attempts_and_usage_round_trip(store: RunStore) -> None:
    store.create_run(sample_plan("a", phases=2))
    started = datetime(2026, 1, 2, 3, 4, 5, 600000, tzinfo=UTC)
    first = AttemptRecord(number=1, started_at=started, trace_id="ab" * 16)
    store.save_attempt("a", "p1", first, EventType.ATTEMPT_STARTED, "attempt 1 started")
    first.outcome = Outcome.CHECKS_FAILED
    first.input_tokens, first.output_tokens, first.total_tokens = 100, 40, 140
    first.check_exit_code = 1
    first.finished_at = started
    store.save_attempt("a", "p1", first, EventType.ATTEMPT_FINISHED, "attempt 1 CHECKS_FAILED")
    second = AttemptRecord(
        number=2, started_at=started, outcome=Outcome.SUCCESS, total_tokens=50, output_tokens=50, smape=12.5
    )
    store.save_attempt("a", "p1", second)

    run = store.get_run("a")
    attempts = run.phase("p1").attempts
    assert [a.number for a in attempts] == [1, 2]
    assert attempts[0] == first
    assert attempts[1].smape == 12.5
    assert attempts[1].input_tokens is None
    assert run.usage.input_tokens == 100
    assert run.usage.output_tokens == 90
    assert run.usage.total_tokens == 190
    listed, _ = store.list_runs()
    assert listed[0].usage == run.usage
    assert listed[0].phases()[0].attempts == []

    finished = store.events_after("a", after_sequence=2)
    assert finished[0].type is EventType.ATTEMPT_FINISHED
    assert AttemptRecord.from_json(finished[0].attempt or {}) == first


def test_phase_and_run_state_changes_come_with_events(store: RunStore) -> None:
    store.create_run(sample_plan("e", phases=2))
    store.start_run("e", "me", 30)
    store.set_phase_state("e", "p1", State.EXECUTING, "phase p1 started")
    store.set_phase_state("e", "p1", State.FAILED, "phase p1 failed", "checks failed")
    store.finish_run("e", State.FAILED, "run failed", "phase p1: checks failed")
    run = store.get_run("e")
    assert run.state is State.FAILED
    assert run.failure_reason == "phase p1: checks failed"
    assert run.finished_at is not None
    assert run.phase("p1").failure_reason == "checks failed"
    assert run.tiers[0].state is State.FAILED
    assert run.tiers[1].state is State.QUEUED
    events = store.events_after("e")
    assert [e.sequence for e in events] == [1, 2, 3, 4, 5]
    assert events[-1].ends_run
    assert not events[-2].ends_run
    assert [e.sequence for e in store.events_after("e", after_sequence=3)] == [4, 5]
    assert not store.holds_lease("e", "me")


def test_concurrent_event_appends_get_unique_gapless_sequences(store: RunStore) -> None:
    store.create_run(sample_plan("c", phases=1))
    store.create_run(sample_plan("other", phases=1))
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def append(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(10):
                store.append_event("c", EventType.STEP, f"worker {worker} step {i}")
                if i % 3 == 0:
                    store.append_event("other", EventType.STEP, f"worker {worker} step {i}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=append, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [e.sequence for e in store.events_after("c")] == list(range(1, 82))
    assert [e.sequence for e in store.events_after("other")] == list(range(1, 1 + 1 + 8 * 4))


def test_expired_leases_are_claimed_once(store: RunStore) -> None:
    store.create_run(sample_plan("l1", phases=1))
    store.create_run(sample_plan("l2", phases=1))
    store.start_run("l1", "dead", 0.05)
    store.start_run("l2", "alive", 60)
    time.sleep(0.1)
    claims: dict[str, list[str]] = {}
    threads = [
        threading.Thread(target=lambda owner=owner: claims.__setitem__(owner, store.claim_runs(owner, 30, 5)))
        for owner in ("a", "b", "c")
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [owner for owner, claimed in claims.items() if claimed]
    assert len(winners) == 1
    assert claims[winners[0]] == ["l1"]
    assert store.holds_lease("l1", winners[0])
    assert store.claim_runs("d", 30, 5) == []
    assert store.holds_lease("l2", "alive")
    assert store.renew_leases("alive", 60, ["l2"]) == 1
    assert store.renew_leases("alive", 60, ["l1"]) == 0
    assert store.renew_leases("alive", 60, []) == 0


def test_migrations_are_idempotent(database_url: str) -> None:
    engine = create_db_engine(database_url)
    try:
        upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
        upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
        from autopack_orchestrator.store import runs

        with engine.connect() as conn:
            assert conn.execute(select(func.count()).select_from(runs)).scalar_one() == 0
    finally:
        engine.dispose()


def test_unowned_work_is_split_between_claimers_and_limited_by_capacity(store: RunStore) -> None:
    for i in range(5):
        store.create_run(sample_plan(f"w{i}", phases=1))
        store.finish_run(f"w{i}", State.FAILED, "run failed", "boom")
        deadline = utcnow() + timedelta(minutes=5)
        assert store.queue_drained_phase(f"w{i}", "p1", deadline, "drain-x", max_attempts=2)
    assert not store.queue_drained_phase("w0", "p1", utcnow(), "drain-x")  # already queued: not idle
    first = store.claim_runs("one", 30, 2)
    second = store.claim_runs("two", 30, 10)
    assert len(first) == 2 and len(second) == 3 and not set(first) & set(second)
    assert store.claim_runs("three", 30, 10) == []
    run = store.get_run("w0")
    assert (run.state, run.only_phase, run.max_attempts) == (State.EXECUTING, "p1", 2)


def test_cancel_resume_and_drain_sessions(store: RunStore) -> None:
    store.create_run(sample_plan("cr", phases=2))
    store.start_run("cr", "me", 60)
    store.save_attempt("cr", "p1", AttemptRecord(number=1, started_at=utcnow(), finished_at=utcnow()))
    flagged = store.request_cancel("cr", "stop")
    assert flagged.state is State.EXECUTING and flagged.cancel_requested
    assert store.run_control("cr") == ("me", True, None)
    store.set_phase_state("cr", "p1", State.CANCELLED, "phase p1 cancelled")
    store.finish_run("cr", State.CANCELLED, "run cancelled", "stop")
    resumed = store.resume_run("cr", "you", 60)
    assert resumed.state is State.EXECUTING and not resumed.cancel_requested
    assert [(p.state, p.attempt_floor) for p in resumed.phases()] == [(State.QUEUED, 1), (State.QUEUED, 0)]
    assert store.holds_lease("cr", "you")
    with pytest.raises(FailedPrecondition):
        store.resume_run("cr", "you", 60)
    store.save_drain_session(
        {
            "session_id": "drain-1",
            "state": "EXECUTING",
            "options": {"batch_size": 3},
            "planned": [],
            "results": [],
            "summary": {},
            "owner": "me",
            "started_at": utcnow(),
            "finished_at": None,
        }
    )
    store.save_drain_session({"session_id": "drain-1", "state": "COMPLETE", "summary": {"completed": 1}})
    session = store.get_drain_session("drain-1")
    assert (session["state"], session["summary"], session["options"]) == (
        "COMPLETE",
        {"completed": 1},
        {"batch_size": 3},
    )
    with pytest.raises(NotFound):
        store.get_drain_session("drain-2")


def test_an_orphaned_drain_session_is_taken_over_once(store: RunStore) -> None:
    store.create_run(sample_plan("orphan", phases=2))
    assert store.queue_drained_phase("orphan", "p1", utcnow() + timedelta(minutes=5), "drain-o", 2)
    store.save_drain_session(
        {
            "session_id": "drain-o",
            "state": "EXECUTING",
            "options": {"batch_size": 3},
            "planned": [],
            "results": [],
            "summary": {},
            "owner": "dead",
            "started_at": utcnow(),
            "finished_at": None,
            "lease_expires_at": utcnow() + timedelta(seconds=30),
        }
    )
    assert store.claim_drain_sessions("other", 30) == []  # the lease is still fresh
    assert store.renew_drain_session("drain-o", "dead", -1)  # ... until its owner stops renewing
    [claimed] = store.claim_drain_sessions("other", 30)
    assert (claimed["session_id"], claimed["owner"]) == ("drain-o", "other")
    assert store.claim_drain_sessions("third", 30) == []  # exactly one replica adopts it
    assert not store.renew_drain_session("drain-o", "dead", 30)
    assert not store.save_drain_session({"session_id": "drain-o", "owner": "dead", "state": "FAILED"})
    assert store.get_drain_session("drain-o")["state"] == "EXECUTING"  # the old owner wrote nothing
    assert [(run_id, phase) for run_id, phase, _ in store.drained_phases("drain-o")] == [("orphan", "p1")]
    store.park_run("orphan", "p1 done")  # a phase that finished while nobody watched is still found
    assert [(run_id, phase) for run_id, phase, _ in store.drained_phases("drain-o")] == [("orphan", "p1")]
