"""``autopack runs``, ``cancel``, ``resume`` and ``drain`` against a real orchestrator over gRPC.

The orchestrator's dependencies are unreachable (closed ports): these commands only need the
orchestrator itself; a resumed run then fails at its first dependency, which is fine here.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from autopack.common.v1 import common_pb2
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc
from autopack_cli.main import app
from autopack_common.server import create_server
from autopack_orchestrator.clients import ServiceClients
from autopack_orchestrator.service import create_orchestrator
from autopack_orchestrator.settings import OrchestratorSettings
from typer.testing import CliRunner

UNREACHABLE = {name: "127.0.0.1:1" for name in ("estimator", "builder", "applier", "memory")}


@pytest.fixture
def orchestrator(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> Iterator[orchestrator_pb2_grpc.OrchestratorServiceStub]:
    settings = OrchestratorSettings(
        database_url=sqlite_url, rpc_timeout_seconds=5, transient_backoff_seconds=0.01
    )
    running = create_orchestrator(settings, clients=ServiceClients(UNREACHABLE))
    server = create_server([running.binding()], "127.0.0.1:0")
    monkeypatch.setenv("AUTOPACK_ORCHESTRATOR_ADDR", server.address)
    channel = grpc.insecure_channel(server.address)
    stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
    for run_id in ("first", "second"):
        phase = common_pb2.PhaseSpec(phase_id="p1", description="Do it.", deliverables=["a.py"])
        plan = pb.Plan(
            run_id=run_id,
            name=run_id,
            source_repo="/nowhere",
            tiers=[pb.TierSpec(tier_id="t", phases=[phase])],
        )
        stub.CreateRun(pb.CreateRunRequest(plan=plan), timeout=10)
    yield stub
    channel.close()
    server.stop(0)
    running.close()


def test_runs_lists_newest_first_and_refuses_an_unknown_state(orchestrator) -> None:
    runner = CliRunner()
    listed = runner.invoke(app, ["runs"])
    assert listed.exit_code == 0, listed.output
    assert listed.output.index("second") < listed.output.index("first")
    assert "QUEUED" in listed.output and "0/1" in listed.output
    bad = runner.invoke(app, ["runs", "--state", "sleepy"])
    assert bad.exit_code == 2 and "--state" in bad.output


def test_cancel_then_resume_and_unknown_runs(orchestrator) -> None:
    runner = CliRunner()
    cancelled = runner.invoke(app, ["cancel", "first", "--reason", "later"])
    assert (
        cancelled.exit_code == 0
        and "cancelled" in cancelled.output
        and "autopack resume first" in cancelled.output
    )
    run = orchestrator.GetRun(pb.GetRunRequest(run_id="first"), timeout=10).run
    assert run.state == pb.STATE_CANCELLED and run.failure_reason == "later"
    resumed = runner.invoke(app, ["resume", "first", "--no-watch"])
    assert resumed.exit_code == 0 and "run first resumed from p1" in resumed.output
    missing = runner.invoke(app, ["cancel", "ghost"])
    assert missing.exit_code == 2 and "NOT_FOUND" in missing.output


def test_drain_dry_run_shows_the_plan_and_changes_nothing(orchestrator) -> None:
    result = CliRunner().invoke(app, ["drain", "--dry-run", "--skip", "second/p1"])
    assert result.exit_code == 0, result.output
    assert "first" in result.output and "skipped: listed in skip_phases" in result.output
    assert "dry run: nothing was executed" in result.output
    for run_id in ("first", "second"):
        assert orchestrator.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10).run.state == pb.STATE_QUEUED
