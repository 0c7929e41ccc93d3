"""The orchestrator over a real gRPC channel: runs, pages, start, watch and bad input.

The other services are unreachable here (closed ports), so a started run fails
at its first dependency; the full phase flow is in test_flow.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from autopack.common.v1 import common_pb2
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc
from autopack_common.server import RunningServer, create_server
from autopack_orchestrator.clients import ServiceClients
from autopack_orchestrator.events import State
from autopack_orchestrator.service import Orchestrator, create_orchestrator
from autopack_orchestrator.settings import OrchestratorSettings

from .conftest import sample_plan

UNREACHABLE = {name: "127.0.0.1:1" for name in ("estimator", "builder", "applier", "memory")}


@dataclass
class Harness:
    orchestrator: Orchestrator
    server: RunningServer
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub


def start_harness(database_url: str, max_workers: int = 16, **settings: object) -> Harness:
    config = OrchestratorSettings(
        database_url=database_url,
        rpc_timeout_seconds=5,
        lease_seconds=5,
        transient_backoff_seconds=0.01,
        **settings,
    )
    orchestrator = create_orchestrator(config, clients=ServiceClients(UNREACHABLE))
    server = create_server([orchestrator.binding()], "127.0.0.1:0", max_workers=max_workers)
    channel = grpc.insecure_channel(server.address)
    return Harness(orchestrator, server, orchestrator_pb2_grpc.OrchestratorServiceStub(channel))


def stop_harness(harness: Harness) -> None:
    harness.server.stop(0)
    harness.orchestrator.close()


@pytest.fixture
def harness(database_url: str) -> Iterator[Harness]:
    running = start_harness(database_url)
    yield running
    stop_harness(running)


def plan_message(run_id: str = "run-1", phases: int = 2) -> pb.Plan:
    plan = sample_plan(run_id, phases)
    return pb.Plan(
        run_id=plan.run_id,
        name=plan.name,
        source_repo=plan.source_repo,
        tiers=[
            pb.TierSpec(
                tier_id=tier.tier_id,
                name=tier.name,
                phases=[
                    common_pb2.PhaseSpec(
                        phase_id=phase.phase_id,
                        description=phase.description,
                        deliverables=list(phase.deliverables),
                        scope=common_pb2.Scope(paths=list(phase.scope_paths)),
                        validation_command=["python", "-c", "pass"],
                    )
                    for phase in tier.phases
                ],
            )
            for tier in plan.tiers
        ],
    )


def rpc_error(call: object, *args: object, **kwargs: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(*args, **kwargs)  # type: ignore[operator]
    return raised.value


def test_create_and_get_run(harness: Harness) -> None:
    created = harness.stub.CreateRun(pb.CreateRunRequest(plan=plan_message("r1", 3)), timeout=10).run
    assert created.run_id == "r1"
    assert created.state == pb.STATE_QUEUED
    assert [tier.tier_id for tier in created.tiers] == ["t1", "t2"]
    assert [tier.state for tier in created.tiers] == [pb.STATE_QUEUED, pb.STATE_QUEUED]
    assert created.tiers[1].phases[1].spec.phase_id == "p3"
    assert created.tiers[1].phases[1].tier_id == "t2"
    assert list(created.tiers[0].phases[0].spec.validation_command) == ["python", "-c", "pass"]
    assert created.HasField("created_at")
    assert not created.HasField("started_at")
    fetched = harness.stub.GetRun(pb.GetRunRequest(run_id="r1"), timeout=10).run
    assert fetched == created


def test_invalid_plan_names_the_field_and_stores_nothing(harness: Harness) -> None:
    plan = plan_message("bad", 3)
    plan.tiers[1].phases[1].phase_id = "has space"
    error = rpc_error(harness.stub.CreateRun, pb.CreateRunRequest(plan=plan), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "plan.tiers[1].phases[1].phase_id" in error.details()

    plan = plan_message("bad", 1)
    plan.tiers[0].phases[0].deliverables.append("../escape.py")
    error = rpc_error(harness.stub.CreateRun, pb.CreateRunRequest(plan=plan), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "plan.tiers[0].phases[0].deliverables[1]" in error.details()

    error = rpc_error(harness.stub.CreateRun, pb.CreateRunRequest(), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith("plan:")

    assert list(harness.stub.ListRuns(pb.ListRunsRequest(), timeout=10).runs) == []
    error = rpc_error(harness.stub.GetRun, pb.GetRunRequest(run_id="bad"), timeout=10)
    assert error.code() == grpc.StatusCode.NOT_FOUND


def test_duplicate_run_is_already_exists(harness: Harness) -> None:
    harness.stub.CreateRun(pb.CreateRunRequest(plan=plan_message("twice", 1)), timeout=10)
    error = rpc_error(harness.stub.CreateRun, pb.CreateRunRequest(plan=plan_message("twice", 3)), timeout=10)
    assert error.code() == grpc.StatusCode.ALREADY_EXISTS
    assert "twice" in error.details()
    run = harness.stub.GetRun(pb.GetRunRequest(run_id="twice"), timeout=10).run
    assert sum(len(tier.phases) for tier in run.tiers) == 1


def test_unknown_and_missing_run_ids(harness: Harness) -> None:
    for call, request in (
        (harness.stub.GetRun, pb.GetRunRequest(run_id="ghost")),
        (harness.stub.StartRun, pb.StartRunRequest(run_id="ghost")),
    ):
        error = rpc_error(call, request, timeout=10)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "ghost" in error.details()
    error = rpc_error(lambda: list(harness.stub.WatchRun(pb.WatchRunRequest(run_id="ghost"), timeout=10)))
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "ghost" in error.details()
    for call, request in (
        (harness.stub.CancelRun, pb.CancelRunRequest(run_id="ghost")),
        (harness.stub.ResumeRun, pb.ResumeRunRequest(run_id="ghost")),
        (harness.stub.GetDrainSession, pb.GetDrainSessionRequest(session_id="ghost")),
    ):
        error = rpc_error(call, request, timeout=10)
        assert error.code() == grpc.StatusCode.NOT_FOUND
        assert "ghost" in error.details()
    for call, request in (
        (harness.stub.GetRun, pb.GetRunRequest()),
        (harness.stub.StartRun, pb.StartRunRequest(run_id="a/b")),
        (harness.stub.CancelRun, pb.CancelRunRequest(run_id="")),
        (harness.stub.ResumeRun, pb.ResumeRunRequest(run_id="a b")),
    ):
        error = rpc_error(call, request, timeout=10)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith("run_id:")


def test_list_runs_pages_newest_first(harness: Harness) -> None:
    for i in range(5):
        harness.stub.CreateRun(pb.CreateRunRequest(plan=plan_message(f"list-{i}", 1)), timeout=10)
    first = harness.stub.ListRuns(pb.ListRunsRequest(page_size=2), timeout=10)
    assert [run.run_id for run in first.runs] == ["list-4", "list-3"]
    assert first.runs[0].tiers[0].phases[0].spec.phase_id == "p1"
    second = harness.stub.ListRuns(
        pb.ListRunsRequest(page_size=2, page_token=first.next_page_token), timeout=10
    )
    third = harness.stub.ListRuns(
        pb.ListRunsRequest(page_size=2, page_token=second.next_page_token), timeout=10
    )
    assert [run.run_id for run in second.runs] == ["list-2", "list-1"]
    assert [run.run_id for run in third.runs] == ["list-0"]
    assert third.next_page_token == ""
    executing = harness.stub.ListRuns(pb.ListRunsRequest(state=pb.STATE_EXECUTING), timeout=10)
    assert list(executing.runs) == []
    error = rpc_error(harness.stub.ListRuns, pb.ListRunsRequest(page_token="not-a-token"), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in error.details()
    error = rpc_error(harness.stub.ListRuns, pb.ListRunsRequest(page_size=-3), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_size" in error.details()


def test_start_run_executes_in_background_and_watch_follows_to_the_end(harness: Harness) -> None:
    harness.stub.CreateRun(pb.CreateRunRequest(plan=plan_message("go", 2)), timeout=10)
    watched: list[pb.WatchRunResponse] = []
    watcher = threading.Thread(
        target=lambda: watched.extend(harness.stub.WatchRun(pb.WatchRunRequest(run_id="go"), timeout=60))
    )
    watcher.start()
    started = harness.stub.StartRun(pb.StartRunRequest(run_id="go"), timeout=10).run
    assert started.state == pb.STATE_EXECUTING
    assert started.HasField("started_at")

    error = rpc_error(harness.stub.StartRun, pb.StartRunRequest(run_id="go"), timeout=10)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "QUEUED" in error.details()

    watcher.join(60)
    assert not watcher.is_alive()
    assert [event.sequence for event in watched] == list(range(1, len(watched) + 1))
    assert watched[0].type == pb.EVENT_TYPE_RUN_STATE and watched[0].state == pb.STATE_QUEUED
    assert watched[1].type == pb.EVENT_TYPE_RUN_STATE and watched[1].state == pb.STATE_EXECUTING
    assert watched[-1].type == pb.EVENT_TYPE_RUN_STATE and watched[-1].state == pb.STATE_FAILED
    assert all(event.run_id == "go" and event.HasField("time") for event in watched)

    run = harness.stub.GetRun(pb.GetRunRequest(run_id="go"), timeout=10).run
    assert run.state == pb.STATE_FAILED
    assert "applier unavailable" in run.failure_reason
    assert run.HasField("finished_at")
    assert [phase.state for tier in run.tiers for phase in tier.phases] == [pb.STATE_QUEUED, pb.STATE_QUEUED]

    # A finished run replays from any point and ends by itself.
    replay = list(harness.stub.WatchRun(pb.WatchRunRequest(run_id="go", after_sequence=1), timeout=10))
    assert [event.sequence for event in replay] == [event.sequence for event in watched[1:]]
    assert list(harness.stub.WatchRun(pb.WatchRunRequest(run_id="go", after_sequence=99), timeout=10)) == []
    error = rpc_error(
        lambda: list(harness.stub.WatchRun(pb.WatchRunRequest(run_id="go", after_sequence=-1), timeout=10))
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "after_sequence" in error.details()


def test_watch_honours_client_cancellation(sqlite_url: str) -> None:
    # Two server threads: a watch that ignored cancellation would starve the GetRun below.
    harness = start_harness(sqlite_url, max_workers=2)
    try:
        harness.stub.CreateRun(pb.CreateRunRequest(plan=plan_message("idle", 1)), timeout=10)
        for _ in range(4):
            stream = harness.stub.WatchRun(pb.WatchRunRequest(run_id="idle"), timeout=30)
            first = next(stream)
            assert first.state == pb.STATE_QUEUED
            stream.cancel()
            with pytest.raises(grpc.RpcError) as raised:
                next(stream)
            assert raised.value.code() == grpc.StatusCode.CANCELLED
        time.sleep(0.3)
        run = harness.stub.GetRun(pb.GetRunRequest(run_id="idle"), timeout=5).run
        assert run.state == pb.STATE_QUEUED
    finally:
        stop_harness(harness)


def test_abandoned_executing_run_is_resumed_from_first_unfinished_phase(sqlite_url: str) -> None:
    first = start_harness(sqlite_url)
    first.stub.CreateRun(pb.CreateRunRequest(plan=plan_message("crashed", 2)), timeout=10)
    stop_harness(first)
    # Simulate a process that died mid-run: EXECUTING, phase 1 done, lease already expired.
    from autopack_common.database import create_db_engine
    from autopack_orchestrator.store import RunStore

    engine = create_db_engine(sqlite_url)
    store = RunStore(engine)
    store.start_run("crashed", "dead-process", 0.01)
    store.set_phase_state("crashed", "p1", State.COMPLETE, "phase p1 complete")
    engine.dispose()
    time.sleep(0.05)

    second = start_harness(sqlite_url)
    try:
        events = list(second.stub.WatchRun(pb.WatchRunRequest(run_id="crashed"), timeout=60))
        resumed = [event for event in events if "resumed" in event.message]
        assert len(resumed) == 1
        assert "from phase p2" in resumed[0].message
        assert resumed[0].state == pb.STATE_EXECUTING
        assert events[-1].state == pb.STATE_FAILED
        run = second.stub.GetRun(pb.GetRunRequest(run_id="crashed"), timeout=10).run
        assert [phase.state for tier in run.tiers for phase in tier.phases] == [
            pb.STATE_COMPLETE,
            pb.STATE_QUEUED,
        ]
    finally:
        stop_harness(second)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_ORCHESTRATOR_CONTEXT_BUDGET_TOKENS", "3000")
    monkeypatch.setenv("AUTOPACK_ORCHESTRATOR_BUILD_TIMEOUT_SECONDS", "42")
    monkeypatch.setenv("AUTOPACK_ORCHESTRATOR_MAX_ATTEMPTS", "3")
    settings = OrchestratorSettings()
    assert (settings.context_budget_tokens, settings.build_timeout_seconds, settings.max_attempts) == (
        3000,
        42,
        3,
    )
    assert OrchestratorSettings.model_fields["context_budget_tokens"].default == 12000
    assert OrchestratorSettings.model_fields["build_timeout_seconds"].default == 600


def test_cancel_a_queued_run_and_resume_rules(harness: Harness) -> None:
    harness.stub.CreateRun(pb.CreateRunRequest(plan=plan_message("queued", 1)), timeout=10)
    error = rpc_error(harness.stub.ResumeRun, pb.ResumeRunRequest(run_id="queued"), timeout=10)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "QUEUED" in error.details()
    cancelled = harness.stub.CancelRun(pb.CancelRunRequest(run_id="queued", reason="not now"), timeout=10).run
    assert cancelled.state == pb.STATE_CANCELLED and cancelled.failure_reason == "not now"
    error = rpc_error(harness.stub.CancelRun, pb.CancelRunRequest(run_id="queued"), timeout=10)
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION and "CANCELLED" in error.details()
    events = list(harness.stub.WatchRun(pb.WatchRunRequest(run_id="queued"), timeout=10))
    assert [(e.message, e.state) for e in events] == [
        ("run created", pb.STATE_QUEUED),
        ("run cancelled: not now", pb.STATE_CANCELLED),
    ]


def test_bad_drain_options_name_the_field_and_start_nothing(harness: Harness) -> None:
    harness.stub.CreateRun(pb.CreateRunRequest(plan=plan_message("idle", 1)), timeout=10)
    for options, field in (
        (pb.DrainOptions(batch_size=-1), "options.batch_size"),
        (pb.DrainOptions(max_attempts_per_phase=11), "options.max_attempts_per_phase"),
        (pb.DrainOptions(skip_phases=["a/b/c"]), "options.skip_phases[0]"),
    ):
        error = rpc_error(harness.stub.StartDrain, pb.StartDrainRequest(options=options), timeout=10)
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.details().startswith(f"{field}:")
    error = rpc_error(harness.stub.GetDrainSession, pb.GetDrainSessionRequest(), timeout=10)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and error.details().startswith("session_id:")
    run = harness.stub.GetRun(pb.GetRunRequest(run_id="idle"), timeout=10).run
    assert run.state == pb.STATE_QUEUED  # nothing was drained
    dry = harness.stub.StartDrain(pb.StartDrainRequest(options=pb.DrainOptions(dry_run=True)), timeout=10)
    assert [(item.run_id, item.phase_id) for item in dry.session.planned] == [("idle", "p1")]
    stored = harness.stub.GetDrainSession(
        pb.GetDrainSessionRequest(session_id=dry.session.session_id), timeout=10
    ).session
    assert stored.state == pb.STATE_COMPLETE and stored.options.batch_size == 10
    assert harness.stub.GetRun(pb.GetRunRequest(run_id="idle"), timeout=10).run.state == pb.STATE_QUEUED
