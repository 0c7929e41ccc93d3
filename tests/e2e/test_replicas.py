"""Two orchestrator replicas on one PostgreSQL: SIGKILL the one executing a run mid-phase.

The killed replica's lease expires, the other claims the run (``FOR UPDATE SKIP LOCKED``),
settles the attempt that was cut short (not counted) and continues from that phase: nothing
is lost, and no phase that had finished runs again. Every service is a real process; the
builder uses the real Anthropic SDK against the scripted Messages API server, which holds
phase p2's build until the replica is dead.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from autopack.builder.v1 import builder_pb2, builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc
from autopack_common.clients import wait_until_serving

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]

API_KEY = "sk-ant-test-0000-not-a-real-key"
PHASES = ("p1", "p2", "p3")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answer(phase_id: str) -> dict[str, Any]:
    content = f"def {phase_id}() -> str:\n    return {phase_id!r}\n"
    files = [{"path": f"pkg/{phase_id}.py", "mode": "create", "new_content": content}]
    return {"text": json.dumps({"summary": f"Added {phase_id}.", "files": files})}


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    """Start ``python -m autopack_<service>`` processes; every one still alive is stopped afterwards."""
    started: list[subprocess.Popen[bytes]] = []

    def start(service: str, env: dict[str, str], name: str) -> subprocess.Popen[bytes]:
        log = (tmp_path / f"{name}.log").open("wb")
        process = subprocess.Popen(
            [sys.executable, "-m", f"autopack_{service}"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in started:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()


def test_sigkilled_replica_loses_nothing_and_runs_nothing_twice(
    tmp_path: Path,
    postgres_url: str,
    scripted_model: Any,
    clean_environment: dict[str, str],
    processes: Callable[..., subprocess.Popen[bytes]],
) -> None:
    gate = threading.Event()
    model = scripted_model({(phase, "build"): [_answer(phase)] for phase in PHASES}, {("p2", "build"): gate})
    source = tmp_path / "source"
    (source / "pkg").mkdir(parents=True)
    (source / "pkg" / "__init__.py").write_text("")
    env = dict(clean_environment)
    env.update(
        {
            "AUTOPACK_DATA_DIR": str(tmp_path / "data"),
            "AUTOPACK_TRACE_DIR": str(tmp_path / "traces"),
            "AUTOPACK_BUILDER_PROVIDER": "anthropic",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": model.base_url,
            "AUTOPACK_MEMORY_EMBEDDINGS": "none",
            "AUTOPACK_ORCHESTRATOR_LEASE_SECONDS": "2",
            "AUTOPACK_ORCHESTRATOR_CLAIM_POLL_SECONDS": "0.2",
        }
    )
    for service in ("estimator", "builder", "applier", "memory"):
        env[f"AUTOPACK_{service.upper()}_ADDR"] = f"127.0.0.1:{_free_port()}"
    dependencies = {
        service: processes(service, env, service) for service in ("estimator", "builder", "applier", "memory")
    }
    replicas: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    for name in ("a", "b"):
        address = f"127.0.0.1:{_free_port()}"
        replica_env = {**env, "AUTOPACK_ORCHESTRATOR_ADDR": address, "DATABASE_URL": postgres_url}
        replicas[name] = (processes("orchestrator", replica_env, f"orchestrator-{name}"), address)
    for service, process in dependencies.items():
        wait_until_serving(
            env[f"AUTOPACK_{service.upper()}_ADDR"], timeout=120, alive=lambda p=process: p.poll() is None
        )
    for process, address in replicas.values():
        wait_until_serving(address, timeout=120, alive=lambda p=process: p.poll() is None)

    plan = pb.Plan(
        run_id="replicas",
        name="kill a replica mid-phase",
        source_repo=str(source),
        tiers=[
            pb.TierSpec(
                tier_id="t1",
                phases=[
                    common_pb2.PhaseSpec(
                        phase_id=phase,
                        description=f"Add pkg/{phase}.py with a function {phase}().",
                        complexity="low",
                        deliverables=[f"pkg/{phase}.py"],
                        scope=common_pb2.Scope(paths=["pkg/"]),
                        validation_command=[
                            "python",
                            "-c",
                            f"from pkg.{phase} import {phase}; assert {phase}()",
                        ],
                    )
                    for phase in PHASES
                ],
            )
        ],
    )
    victim, victim_address = replicas["a"]
    with grpc.insecure_channel(victim_address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        stub.CreateRun(pb.CreateRunRequest(plan=plan), timeout=30)
        stub.StartRun(pb.StartRunRequest(run_id="replicas"), timeout=30)
        model.wait_for("p2")  # replica a is inside phase p2, waiting for the model
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(30)
    gate.set()

    survivor_address = replicas["b"][1]
    with grpc.insecure_channel(survivor_address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        events = list(stub.WatchRun(pb.WatchRunRequest(run_id="replicas"), timeout=180))
        run = stub.GetRun(pb.GetRunRequest(run_id="replicas"), timeout=30).run

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))  # nothing lost
    assert sum("resumed after an orchestrator restart, from phase p2" in e.message for e in events) == 1
    phases = {phase.spec.phase_id: phase for tier in run.tiers for phase in tier.phases}
    assert [a.outcome for a in phases["p1"].attempts] == [pb.ATTEMPT_OUTCOME_SUCCESS]
    assert [a.outcome for a in phases["p3"].attempts] == [pb.ATTEMPT_OUTCOME_SUCCESS]
    cut, finished = phases["p2"].attempts
    assert cut.outcome == pb.ATTEMPT_OUTCOME_ERROR and not cut.counted
    assert cut.failure_kind == pb.FAILURE_KIND_INTERRUPTED and "interrupted" in cut.failure_reason
    assert finished.outcome == pb.ATTEMPT_OUTCOME_SUCCESS and finished.counted
    # The cut attempt's tokens are in the totals: reconciled from what the builder recorded for the run.
    with grpc.insecure_channel(env["AUTOPACK_BUILDER_ADDR"]) as channel:
        spent = (
            builder_pb2_grpc.BuilderServiceStub(channel)
            .GetUsage(
                builder_pb2.GetUsageRequest(group_by=builder_pb2.USAGE_GROUP_BY_RUN, run_id="replicas"),
                timeout=30,
            )
            .total.usage
        )
    assert cut.usage.total_tokens > 0 and cut.usage.output_tokens > 0
    assert run.usage.total_tokens == spent.total_tokens
    assert (run.usage.input_tokens, run.usage.output_tokens) == (spent.input_tokens, spent.output_tokens)
    # The model saw p1 and p3 once each: no finished phase ran again; p2 twice (the cut attempt, the retry).
    assert [len(model.requests(phase)) for phase in PHASES] == [1, 2, 1]
    workspace = Path(run.workspace_path)
    for phase in PHASES:
        assert (
            workspace / "pkg" / f"{phase}.py"
        ).read_text() == f"def {phase}() -> str:\n    return {phase!r}\n"
    events_by_phase = [
        e for e in events if e.type == pb.EVENT_TYPE_PHASE_STATE and e.state == pb.STATE_COMPLETE
    ]
    assert [e.phase_id for e in events_by_phase] == list(PHASES)  # each phase completed exactly once
