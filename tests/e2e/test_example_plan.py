"""The example plan through five real service processes, traced to an in-test OTLP receiver.

This is `make run` as a user would do it (the `autopack` CLI in subprocesses), with
spans exported over OTLP/gRPC to a receiver this test runs, so the trace of every
phase can be checked across all five services.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from autopack.orchestrator.v1 import orchestrator_pb2, orchestrator_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AUTOPACK = str(Path(sys.executable).parent / "autopack")
PLAN = REPO / "examples" / "plan.yaml"
PHASES = ("p1-wordfreq-module", "p2-wordfreq-tests", "p3-wordfreq-docs")
SERVICES = ("orchestrator", "estimator", "builder", "applier", "memory")
RUN_ID = "e2e-example"


def _value(any_value: common_pb2.AnyValue) -> object:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


@dataclass
class ReceivedSpan:
    service: str
    name: str
    trace_id: str
    attributes: dict[str, object]


@dataclass
class OtlpReceiver(trace_service_pb2_grpc.TraceServiceServicer):
    """A minimal OTLP/gRPC trace collector that keeps what it receives."""

    spans: list[ReceivedSpan] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                resource = {kv.key: _value(kv.value) for kv in resource_spans.resource.attributes}
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.spans.append(
                            ReceivedSpan(
                                service=str(resource.get("service.name")),
                                name=span.name,
                                trace_id=span.trace_id.hex(),
                                attributes={kv.key: _value(kv.value) for kv in span.attributes},
                            )
                        )
        return trace_service_pb2.ExportTraceServiceResponse()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Stack:
    env: dict[str, str]
    receiver: OtlpReceiver
    orchestrator_address: str

    def autopack(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AUTOPACK, *args], env=self.env, cwd=REPO, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    receiver = OtlpReceiver()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(receiver, server)
    receiver_port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    state = tmp_path_factory.mktemp("stack")
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANTHROPIC_", "OPENAI_", "OTEL_", "AUTOPACK_", "DATABASE_URL", "QDRANT_"))
    }
    env.update(
        {
            "AUTOPACK_STATE_DIR": str(state),
            "AUTOPACK_DATA_DIR": str(state / "data"),
            "AUTOPACK_TRACE_DIR": str(state / "traces"),
            "AUTOPACK_REPLAY_DIR": str(REPO / "examples" / "recordings"),
            "AUTOPACK_BUILDER_PROVIDER": "replay",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver_port}",
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
        }
    )
    for service in SERVICES:
        env[f"AUTOPACK_{service.upper()}_ADDR"] = f"127.0.0.1:{_free_port()}"
    running = Stack(env, receiver, env["AUTOPACK_ORCHESTRATOR_ADDR"])
    started = running.autopack("up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield running
    finally:
        running.autopack("down")
        server.stop(1)


@pytest.fixture(scope="module")
def finished_run(stack: Stack) -> tuple[subprocess.CompletedProcess[str], orchestrator_pb2.Run]:
    result = stack.autopack("run", str(PLAN), "--run-id", RUN_ID)
    with grpc.insecure_channel(stack.orchestrator_address) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        run = stub.GetRun(orchestrator_pb2.GetRunRequest(run_id=RUN_ID), timeout=10).run
    return result, run


def test_example_plan_completes_and_writes_the_deliverables(finished_run) -> None:
    result, run = finished_run
    assert result.returncode == 0, result.stdout + result.stderr
    assert run.state == orchestrator_pb2.STATE_COMPLETE
    phases = {phase.spec.phase_id: phase for tier in run.tiers for phase in tier.phases}
    assert set(phases) == set(PHASES)
    assert all(phase.state == orchestrator_pb2.STATE_COMPLETE for phase in phases.values())
    # The recorded first attempt of p2 expects a wrong count: one failed check, one retry.
    retried = phases["p2-wordfreq-tests"].attempts
    assert [attempt.outcome for attempt in retried] == [
        orchestrator_pb2.ATTEMPT_OUTCOME_CHECKS_FAILED,
        orchestrator_pb2.ATTEMPT_OUTCOME_SUCCESS,
    ]
    first = phases["p1-wordfreq-module"].attempts[0]
    assert first.usage.input_tokens == 2214 and first.usage.output_tokens == 235
    assert first.provider == "replay"
    assert 0 < first.predicted_output_tokens <= first.selected_budget
    workspace = Path(run.workspace_path)
    assert "def top_words" in (workspace / "textkit" / "wordfreq.py").read_text()
    assert "test_ties_are_broken_alphabetically" in (workspace / "tests" / "test_wordfreq.py").read_text()
    assert (workspace / "docs" / "wordfreq.md").is_file()
    assert "textkit.wordfreq" in (workspace / "README.md").read_text()
    for phase_id in PHASES:
        assert phase_id in result.stdout
    assert "replay" in result.stdout


def test_an_invalid_plan_is_refused_and_creates_no_run(stack: Stack, finished_run, tmp_path: Path) -> None:
    bad_plan = tmp_path / "bad.yaml"
    bad_plan.write_text(PLAN.read_text().replace("complexity: low", "complexity: enormous", 1))
    bad_plan.with_name("sample-repo").symlink_to(REPO / "examples" / "sample-repo")
    result = stack.autopack("run", str(bad_plan), "--run-id", "e2e-invalid")
    assert result.returncode == 2
    assert "complexity" in result.stderr
    unknown = stack.autopack("status", "e2e-invalid")
    assert unknown.returncode == 2
    assert "NOT_FOUND" in unknown.stderr


def _spans_by_phase(receiver: OtlpReceiver, timeout: float = 20.0) -> dict[str, list[ReceivedSpan]]:
    """Spans grouped by the phase id baggage copied onto them, once all five services reported."""
    deadline = time.monotonic() + timeout
    while True:
        with receiver.lock:
            grouped: dict[str, list[ReceivedSpan]] = defaultdict(list)
            for span in receiver.spans:
                phase_id = span.attributes.get("autopack.phase_id")
                if phase_id:
                    grouped[str(phase_id)].append(span)
        complete = all(
            {span.service for span in grouped.get(phase_id, [])} >= {f"autopack-{s}" for s in SERVICES}
            for phase_id in PHASES
        )
        if complete or time.monotonic() > deadline:
            return grouped
        time.sleep(0.5)


def test_each_phase_is_one_trace_across_all_five_services(stack: Stack, finished_run) -> None:
    _, run = finished_run
    stack.autopack("down")  # flushes every service's span exporter
    grouped = _spans_by_phase(stack.receiver)
    for phase_id in PHASES:
        spans = grouped[phase_id]
        assert {span.trace_id for span in spans} and len({span.trace_id for span in spans}) == 1, phase_id
        assert {span.service for span in spans} == {f"autopack-{s}" for s in SERVICES}, phase_id
        (phase_span,) = [span for span in spans if span.name == f"phase {phase_id}"]
        assert phase_span.attributes["autopack.run_id"] == RUN_ID
        for attribute in (
            "autopack.tokens.predicted",
            "autopack.tokens.selected_budget",
            "autopack.tokens.input",
            "autopack.tokens.output",
            "autopack.phase.outcome",
        ):
            assert attribute in phase_span.attributes, (phase_id, attribute)
        assert phase_span.attributes["autopack.phase.outcome"] in ("SUCCESS", "COMPLETE")
        llm_spans = [span for span in spans if "gen_ai.request.model" in span.attributes]
        assert llm_spans, phase_id
        for span in llm_spans:
            assert span.service == "autopack-builder"
            assert span.attributes["gen_ai.provider.name"] == "replay"
            for attribute in (
                "gen_ai.request.max_tokens",
                "gen_ai.usage.input_tokens",
                "gen_ai.usage.output_tokens",
                "gen_ai.response.finish_reasons",
            ):
                assert attribute in span.attributes, (phase_id, attribute)
    # The trace ids the report shows are the ones the spans carry.
    phase_traces = {phase.spec.phase_id: phase.attempts[-1].trace_id for t in run.tiers for phase in t.phases}
    for phase_id, trace_id in phase_traces.items():
        assert {span.trace_id for span in grouped[phase_id]} == {trace_id}
