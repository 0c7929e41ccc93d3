"""Whole runs against real in-process estimator, builder (replay), applier and memory servers.

The builder answers from recordings written here, so token numbers are exact; the
orchestrator's spans go to an in-memory exporter so the phase span can be inspected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from autopack.applier.v1 import applier_pb2
from autopack.builder.v1 import builder_pb2, builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc
from autopack.memory.v1 import memory_pb2, memory_pb2_grpc
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc
from autopack_applier.service import binding as applier_binding
from autopack_applier.service import build_servicer as applier_servicer
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore
from autopack_builder.builder import Builder
from autopack_builder.providers import ReplayProvider
from autopack_builder.service import SERVICE_FULL_NAME as BUILDER_SERVICE
from autopack_builder.service import BuilderServicer
from autopack_builder.store import LlmCallStore
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import RunningServer, ServiceBinding, create_server
from autopack_common.telemetry import BaggageAttributesProcessor
from autopack_estimator.service import open_servicer, service_binding
from autopack_memory.__main__ import build_memory
from autopack_memory.service import MemoryServicer, memory_binding
from autopack_memory.settings import MemorySettings
from autopack_orchestrator.clients import ServiceClients
from autopack_orchestrator.convert import phase_from_proto, phase_to_proto
from autopack_orchestrator.events import State
from autopack_orchestrator.executor import smape, withheld_notes
from autopack_orchestrator.plan import PhaseSpec, Plan, TierSpec
from autopack_orchestrator.service import Orchestrator, create_orchestrator
from autopack_orchestrator.settings import OrchestratorSettings
from autopack_orchestrator.store import AttemptRecord, RunStore, utcnow
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

RESPONSE_MODEL = "claude-sonnet-4-5-20250929"
MODULE_ONE = "def one() -> int:\n    return 1\n"
MODULE_TWO = "from src.mod1 import one\n\n\ndef two() -> int:\n    return one() + 1\n"


def message(files: list[dict[str, str]], input_tokens: int, output_tokens: int) -> dict[str, Any]:
    """A Messages API response whose text is the builder's JSON files contract."""
    text = json.dumps({"summary": "Did the phase.", "files": files})
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": RESPONSE_MODEL,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": output_tokens},
    }


def create(path: str, content: str) -> dict[str, str]:
    return {"path": path, "mode": "create", "new_content": content}


RECORDINGS_HAPPY: list[dict[str, Any]] = [
    {
        "run_id": "happy",
        "phase_id": "p1",
        "attempt": 1,
        "response": message([create("src/mod1.py", MODULE_ONE)], 1234, 321),
    },
    {
        "run_id": "happy",
        "phase_id": "p2",
        "attempt": 1,
        "response": message([create("src/mod2.py", MODULE_TWO)], 2000, 410),
    },
]

RECORDINGS: list[dict[str, Any]] = [
    # happy: two phases, one attempt each
    *RECORDINGS_HAPPY,
    # retry: attempt 1 writes outside the scope, attempt 2 is fine
    {
        "run_id": "retry",
        "phase_id": "p1",
        "attempt": 1,
        "response": message(
            [create("src/mod1.py", MODULE_ONE), create("other/evil.py", "x = 1\n")], 900, 150
        ),
    },
    {
        "run_id": "retry",
        "phase_id": "p1",
        "attempt": 2,
        "response": message([create("src/mod1.py", MODULE_ONE)], 950, 120),
    },
    # failing: every attempt applies, then the check fails
    {
        "run_id": "failing",
        "phase_id": "p1",
        "attempt": 1,
        "response": message([create("src/mod1.py", "broken = True\n")], 800, 100),
    },
    # the happy run again, for the PostgreSQL variant
    *[{**line, "run_id": "happy-pg"} for line in RECORDINGS_HAPPY],
    # cancelled mid-attempt, then resumed; and three runs a drain picks up
    *[
        {**line, "run_id": run_id}
        for run_id in ("cancel", "drain-a", "drain-b", "drain-c", "drain-t")
        for line in RECORDINGS_HAPPY
    ],
    # resumed after a crash: phase 2 only
    {
        "run_id": "resumed",
        "phase_id": "p2",
        "attempt": 1,
        "response": message([create("src/mod2.py", MODULE_TWO)], 1500, 200),
    },
]


@dataclass
class Stack:
    """The four dependencies on real gRPC servers, plus the orchestrator's tracer."""

    addresses: dict[str, str]
    source_repo: Path
    recordings: Path
    exporter: InMemorySpanExporter
    provider: TracerProvider
    estimator: estimator_pb2_grpc.EstimatorServiceStub
    memory: memory_pb2_grpc.MemoryServiceStub


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("flow")
    recordings = root / "recordings"
    recordings.mkdir()
    (recordings / "flow.jsonl").write_text("".join(json.dumps(line) + "\n" for line in RECORDINGS))
    source = root / "source"
    (source / "src").mkdir(parents=True)
    (source / "src" / "__init__.py").write_text("")
    (source / "README.md").write_text("# Sample\n\nA tiny package.\n")

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(BaggageAttributesProcessor())
    provider.add_span_processor(SimpleSpanProcessor(exporter))

    servers: list[RunningServer] = []
    cleanups: list[Any] = []

    def serve(binding: ServiceBinding) -> str:
        running = create_server([binding], "127.0.0.1:0")
        servers.append(running)
        return running.address

    estimator, estimator_engine = open_servicer(f"sqlite:///{root / 'estimator.db'}")
    cleanups.append(estimator_engine.dispose)

    builder_engine = create_db_engine(f"sqlite:///{root / 'builder.db'}")
    upgrade_schema(builder_engine, "autopack_builder.migrations", "alembic_version_builder")
    replay = ReplayProvider(recordings)
    builder = Builder(
        replay,
        LlmCallStore(builder_engine),
        "claude-sonnet-4-5",
        tracer=provider.get_tracer("test"),
        max_continuations=0,  # cut-off answers reach the orchestrator (its TRUNCATED path is under test)
    )
    cleanups += [builder_engine.dispose, replay.close]

    applier_engine = create_db_engine(f"sqlite:///{root / 'applier.db'}")
    upgrade_schema(applier_engine, "autopack_applier.migrations", "alembic_version_applier")
    applier_settings = ApplierSettings(data_dir=root / "applier", workspace_root=root / "workspaces")
    cleanups.append(applier_engine.dispose)

    memory_engine = create_db_engine(f"sqlite:///{root / 'memory.db'}")
    upgrade_schema(memory_engine, "autopack_memory.migrations", "alembic_version_memory")
    memory_settings = MemorySettings(data_dir=root / "memory", embeddings="none", qdrant_path=root / "qdrant")
    memory = build_memory(memory_settings, memory_engine, None)
    cleanups += [memory_engine.dispose, memory.close]

    addresses = {
        "estimator": serve(service_binding(estimator)),
        "builder": serve(
            ServiceBinding(
                BUILDER_SERVICE,
                builder_pb2_grpc.add_BuilderServiceServicer_to_server,
                BuilderServicer(builder),
            )
        ),
        "applier": serve(applier_binding(applier_servicer(applier_settings, ApplierStore(applier_engine)))),
        "memory": serve(memory_binding(MemoryServicer(memory))),
    }
    estimator_channel = grpc.insecure_channel(addresses["estimator"])
    memory_channel = grpc.insecure_channel(addresses["memory"])
    yield Stack(
        addresses=addresses,
        source_repo=source,
        recordings=recordings,
        exporter=exporter,
        provider=provider,
        estimator=estimator_pb2_grpc.EstimatorServiceStub(estimator_channel),
        memory=memory_pb2_grpc.MemoryServiceStub(memory_channel),
    )
    estimator_channel.close()
    memory_channel.close()
    for running in servers:
        running.stop(0)
    for cleanup in reversed(cleanups):
        cleanup()


@dataclass
class Running:
    orchestrator: Orchestrator
    server: RunningServer
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub


@pytest.fixture
def start_orchestrator(stack: Stack, sqlite_url: str) -> Iterator[Any]:
    started: list[Running] = []

    def start(
        database_url: str = sqlite_url,
        settings_overrides: dict[str, Any] | None = None,
        **address_overrides: str,
    ) -> Running:
        settings = OrchestratorSettings(
            database_url=database_url,
            rpc_timeout_seconds=20,
            lease_seconds=5,
            transient_backoff_seconds=0.01,
            **(settings_overrides or {}),
        )
        clients = ServiceClients({**stack.addresses, **address_overrides})
        orchestrator = create_orchestrator(
            settings, clients=clients, tracer=stack.provider.get_tracer("test")
        )
        server = create_server([orchestrator.binding()], "127.0.0.1:0")
        channel = grpc.insecure_channel(server.address)
        running = Running(orchestrator, server, orchestrator_pb2_grpc.OrchestratorServiceStub(channel))
        started.append(running)
        return running

    stack.exporter.clear()
    yield start
    for running in started:
        running.server.stop(0)
        running.orchestrator.close()


def plan(stack: Stack, run_id: str, check: list[str] | None = None) -> pb.Plan:
    """Two phases in two tiers: p1 writes src/mod1.py, p2 writes src/mod2.py and imports it."""
    return pb.Plan(
        run_id=run_id,
        name=f"flow {run_id}",
        source_repo=str(stack.source_repo),
        tiers=[
            pb.TierSpec(
                tier_id="t1",
                name="core",
                phases=[
                    common_pb2.PhaseSpec(
                        phase_id="p1",
                        description="Add module one with a function one() returning 1.",
                        category="implementation",
                        complexity="low",
                        deliverables=["src/mod1.py"],
                        scope=common_pb2.Scope(paths=["src/"], read_only_context=["README.md"]),
                        validation_command=check or [],
                    )
                ],
            ),
            pb.TierSpec(
                tier_id="t2",
                name="more",
                phases=[
                    common_pb2.PhaseSpec(
                        phase_id="p2",
                        description="Add module two whose two() builds on one().",
                        complexity="low",
                        deliverables=["src/mod2.py"],
                        scope=common_pb2.Scope(paths=["src/mod2.py"], read_only_context=["src/mod1.py"]),
                        validation_command=["python", "-c", "from src.mod2 import two; assert two() == 2"],
                        validation_timeout_seconds=60,
                    )
                ],
            ),
        ],
    )


def run_to_end(running: Running, request_plan: pb.Plan) -> tuple[pb.Run, list[pb.WatchRunResponse]]:
    running.stub.CreateRun(pb.CreateRunRequest(plan=request_plan), timeout=10)
    running.stub.StartRun(pb.StartRunRequest(run_id=request_plan.run_id), timeout=10)
    events = list(running.stub.WatchRun(pb.WatchRunRequest(run_id=request_plan.run_id), timeout=80))
    return running.stub.GetRun(pb.GetRunRequest(run_id=request_plan.run_id), timeout=10).run, events


def phase_spans(stack: Stack, run_id: str) -> dict[str, ReadableSpan]:
    return {
        span.name: span
        for span in stack.exporter.get_finished_spans()
        if span.name.startswith("phase ") and (span.attributes or {}).get("autopack.run_id") == run_id
    }


def phases_of(run: pb.Run) -> list[pb.Phase]:
    return [phase for tier in run.tiers for phase in tier.phases]


def expected_estimate(stack: Stack, phase: common_pb2.PhaseSpec) -> estimator_pb2.EstimateResponse:
    """What the estimator predicts for a phase (its model is deterministic)."""
    return stack.estimator.Estimate(
        estimator_pb2.EstimateRequest(
            run_id="probe",
            phase_id=phase.phase_id,
            description=phase.description,
            category=phase.category,
            complexity=phase.complexity,
            deliverables=list(phase.deliverables),
            scope_paths=list(phase.scope.paths),
            read_only_context=list(phase.scope.read_only_context),
        ),
        timeout=10,
    )


def test_happy_run_completes_every_phase_with_exact_tokens(
    stack: Stack, start_orchestrator: Any, database_url: str
) -> None:
    running = start_orchestrator(database_url)
    run_id = "happy" if "sqlite" in database_url else "happy-pg"
    request_plan = plan(stack, run_id)
    run, events = run_to_end(running, request_plan)

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    assert [tier.state for tier in run.tiers] == [pb.STATE_COMPLETE, pb.STATE_COMPLETE]
    workspace = Path(run.workspace_path)
    assert (workspace / "src" / "mod1.py").read_text() == MODULE_ONE
    assert (workspace / "src" / "mod2.py").read_text() == MODULE_TWO

    p1, p2 = phases_of(run)
    assert [phase.state for phase in (p1, p2)] == [pb.STATE_COMPLETE, pb.STATE_COMPLETE]
    assert [len(p1.attempts), len(p2.attempts)] == [1, 1]
    first, second = p1.attempts[0], p2.attempts[0]
    assert first.outcome == second.outcome == pb.ATTEMPT_OUTCOME_SUCCESS
    assert (first.usage.input_tokens, first.usage.output_tokens, first.usage.total_tokens) == (
        1234,
        321,
        1555,
    )
    assert (second.usage.input_tokens, second.usage.output_tokens, second.usage.total_tokens) == (
        2000,
        410,
        2410,
    )
    assert (first.provider, first.model) == ("replay", RESPONSE_MODEL)
    assert not first.HasField("check_exit_code")
    assert second.check_exit_code == 0
    assert first.savepoint and second.savepoint and first.savepoint != second.savepoint
    assert first.failure_reason == ""
    assert (run.usage.input_tokens, run.usage.output_tokens, run.usage.total_tokens) == (3234, 731, 3965)

    estimate = expected_estimate(stack, request_plan.tiers[0].phases[0])
    assert first.estimate_id
    assert first.predicted_output_tokens == estimate.predicted_output_tokens
    assert first.selected_budget == estimate.selected_budget
    assert first.actual_max_tokens == estimate.actual_max_tokens
    assert first.smape == pytest.approx(smape(estimate.predicted_output_tokens, 321))

    # Every step is an event; the run ends with its terminal event.
    assert [event.sequence for event in events] == list(range(1, len(events) + 1))
    assert events[-1].state == pb.STATE_COMPLETE
    p1_steps = [
        event.message.split(":")[0]
        for event in events
        if event.phase_id == "p1" and event.type == pb.EVENT_TYPE_STEP
    ]
    assert p1_steps[:5] == ["memory", "read", "context", "estimate", "build"]
    assert {"apply", "deliverables", "estimator", "memory"} <= set(p1_steps)
    p2_steps = {event.message.split(":")[0] for event in events if event.phase_id == "p2"}
    assert "checks" in p2_steps
    finished = [event for event in events if event.type == pb.EVENT_TYPE_ATTEMPT_FINISHED]
    assert [event.attempt.outcome for event in finished] == [pb.ATTEMPT_OUTCOME_SUCCESS] * 2
    recorded = [event.message for event in events if event.message.startswith("estimator:")]
    assert recorded == ["estimator: 1 outcome(s) recorded"] * 2

    # The estimator learned from both calls.
    accuracy = stack.estimator.GetAccuracy(
        estimator_pb2.GetAccuracyRequest(filter=estimator_pb2.TelemetryFilter(run_id=run_id)), timeout=10
    )
    assert accuracy.overall.events == 2

    # Memory holds the run's intention and one summary per phase.
    summaries = stack.memory.Search(
        memory_pb2.SearchRequest(
            collection="phase-summaries", query="module", limit=10, filter={"run_id": run_id}
        ),
        timeout=10,
    )
    assert sorted(hit.item.metadata["phase_id"] for hit in summaries.hits) == ["p1", "p2"]
    assert {hit.item.metadata["outcome"] for hit in summaries.hits} == {"COMPLETE"}
    intentions = stack.memory.Search(
        memory_pb2.SearchRequest(collection="intentions", query="module", filter={"run_id": run_id}),
        timeout=10,
    )
    assert len(intentions.hits) == 1
    assert "Add module two" in intentions.hits[0].item.text

    # One trace per phase, rooted at the phase span, with the token story on it.
    spans = phase_spans(stack, run_id)
    assert set(spans) == {"phase p1", "phase p2"}
    span = spans["phase p1"]
    assert span.parent is None
    assert format(span.context.trace_id, "032x") == first.trace_id
    assert format(spans["phase p2"].context.trace_id, "032x") == second.trace_id != first.trace_id
    attributes = dict(span.attributes or {})
    assert attributes["autopack.run_id"] == run_id
    assert attributes["autopack.phase_id"] == "p1"
    assert attributes["autopack.tokens.predicted"] == estimate.predicted_output_tokens
    assert attributes["autopack.tokens.selected_budget"] == estimate.selected_budget
    assert attributes["autopack.tokens.actual_max"] == estimate.actual_max_tokens
    assert attributes["autopack.tokens.input"] == 1234
    assert attributes["autopack.tokens.output"] == 321
    assert attributes["autopack.tokens.smape"] == pytest.approx(first.smape)
    assert attributes["autopack.phase.outcome"] == "COMPLETE"
    assert attributes["autopack.phase.attempts"] == 1
    # The builder's LLM call span is in the phase's trace and carries the baggage.
    chats = [
        s
        for s in stack.exporter.get_finished_spans()
        if s.name.startswith("chat ") and s.context.trace_id == span.context.trace_id
    ]
    assert len(chats) == 1
    assert (chats[0].attributes or {}).get("autopack.phase_id") == "p1"


def test_attempt_outside_scope_is_retried_once_and_completes(stack: Stack, start_orchestrator: Any) -> None:
    running = start_orchestrator()
    request_plan = plan(stack, "retry")
    del request_plan.tiers[1:]
    run, events = run_to_end(running, request_plan)

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    [phase] = phases_of(run)
    assert [attempt.number for attempt in phase.attempts] == [1, 2]
    rejected, accepted = phase.attempts
    assert rejected.outcome == pb.ATTEMPT_OUTCOME_APPLY_REJECTED
    assert "other/evil.py" in rejected.failure_reason
    assert rejected.savepoint == ""
    assert (rejected.usage.input_tokens, rejected.usage.output_tokens) == (900, 150)
    assert accepted.outcome == pb.ATTEMPT_OUTCOME_SUCCESS
    assert (accepted.usage.input_tokens, accepted.usage.output_tokens) == (950, 120)
    assert accepted.trace_id == rejected.trace_id  # both attempts live in the one phase trace
    workspace = Path(run.workspace_path)
    assert not (workspace / "other").exists()
    assert (workspace / "src" / "mod1.py").read_text() == MODULE_ONE
    span = phase_spans(stack, "retry")["phase p1"]
    assert span.attributes["autopack.phase.attempts"] == 2  # type: ignore[index]
    assert span.attributes["autopack.tokens.output"] == 120  # type: ignore[index]
    assert span.attributes["autopack.phase.outcome"] == "COMPLETE"  # type: ignore[index]
    assert [event.attempt.outcome for event in events if event.type == pb.EVENT_TYPE_ATTEMPT_FINISHED] == [
        pb.ATTEMPT_OUTCOME_APPLY_REJECTED,
        pb.ATTEMPT_OUTCOME_SUCCESS,
    ]


def one_phase(stack: Stack, run_id: str, **phase: Any) -> pb.Plan:
    return pb.Plan(
        run_id=run_id,
        name=run_id,
        source_repo=str(stack.source_repo),
        tiers=[pb.TierSpec(tier_id="t1", phases=[common_pb2.PhaseSpec(phase_id="p1", **phase)])],
    )


def record(stack: Stack, name: str, run_id: str, answers: list[list[dict[str, str]]]) -> None:
    lines = [
        {"run_id": run_id, "phase_id": "p1", "attempt": number, "response": message(files, 500, 80)}
        for number, files in enumerate(answers, start=1)
    ]
    (stack.recordings / f"{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def test_deliverables_use_the_applier_check_its_hints_and_its_derived_scope(
    stack: Stack, start_orchestrator: Any
) -> None:
    (stack.source_repo / "pkg").mkdir(exist_ok=True)
    (stack.source_repo / "pkg" / ".env").write_text("API_TOKEN=do-not-leak-this-value\n")
    # Attempt 1 writes the module one directory too deep; attempt 2 writes it where it belongs plus a
    # helper beside it, which only the derived scope (the deliverable's parent directory) allows.
    record(
        stack,
        "deliverables",
        "deliv",
        [
            [create("pkg/sub/mod1.py", "X = 1\n")],
            [create("pkg/mod1.py", "X = 1\n"), create("pkg/helper.py", "Y = 2\n")],
        ],
    )
    running = start_orchestrator()
    request_plan = one_phase(
        stack,
        "deliv",
        description="Add pkg/mod1.py.",
        deliverables=["pkg/mod1.py (new)"],
        scope=common_pb2.Scope(read_only_context=["pkg/"]),
    )
    run, events = run_to_end(running, request_plan)

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    [phase] = phases_of(run)
    missed, done = phase.attempts
    assert missed.outcome == pb.ATTEMPT_OUTCOME_DELIVERABLES_MISSING
    assert missed.failure_reason.startswith("missing deliverables: pkg/mod1.py")
    # The applier's misplaced-file hint is in the reason the next prompt shows.
    assert "`pkg/sub/mod1.py` exists, `pkg/mod1.py` expected" in missed.failure_reason
    assert done.outcome == pb.ATTEMPT_OUTCOME_SUCCESS
    workspace = Path(run.workspace_path)
    assert (workspace / "pkg" / "helper.py").read_text() == "Y = 2\n"
    assert not (workspace / "pkg" / "sub").exists()  # attempt 1 was rolled back
    messages = [event.message for event in events]
    assert "deliverables: all 1 present" in messages
    reads = [m for m in messages if m.startswith("read:")]
    assert reads and all("1 withheld as secret (pkg/.env)" in m for m in reads)
    assert not any("do-not-leak" in m for m in messages)


def test_a_deliverable_is_present_only_when_the_applier_says_so(
    stack: Stack, start_orchestrator: Any
) -> None:
    # The deliverable is a secret file the builder never writes: ReadFiles would not call it missing
    # (it would be withheld if it existed); the applier's check says it does not exist.
    record(stack, "secret-deliverable", "secret-deliv", [[create("pkg2/mod.py", "Z = 1\n")]])
    running = start_orchestrator(settings_overrides={"max_attempts": 1})
    request_plan = one_phase(
        stack,
        "secret-deliv",
        description="Write the module and its settings.",
        deliverables=["pkg2/mod.py", "pkg2/.env"],
    )
    run, _ = run_to_end(running, request_plan)
    assert run.state == pb.STATE_FAILED
    [attempt] = phases_of(run)[0].attempts
    assert attempt.outcome == pb.ATTEMPT_OUTCOME_DELIVERABLES_MISSING
    assert attempt.failure_reason.startswith("missing deliverables: pkg2/.env")


def test_withheld_notes_name_files_never_content() -> None:
    assert withheld_notes([]) == []
    [note] = withheld_notes([applier_pb2.WithheldFile(path="conf/.env", reason="secret file (rule '.env*')")])
    assert "conf/.env (secret file (rule '.env*'))" in note and "withheld" in note


def test_a_missing_declared_dependency_is_installed_only_through_an_allowlisted_pip(
    stack: Stack, start_orchestrator: Any, tmp_path: Path
) -> None:
    source = tmp_path / "dep-source"
    (source / "src").mkdir(parents=True)
    (source / "src" / "__init__.py").write_text("")
    (source / "requirements.txt").write_text("declaredmod==1.0  # used by mod1\n")
    lines = [
        {
            "run_id": run_id,
            "phase_id": "p1",
            "attempt": 1,
            "response": message([create("src/mod1.py", f"import {module}\n")], 600, 60),
        }
        for run_id, module in (("dep-declared", "declaredmod"), ("dep-undeclared", "othermod"))
    ]
    (stack.recordings / "deps.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    running = start_orchestrator(settings_overrides={"max_attempts": 2})
    messages = {}
    for run_id in ("dep-declared", "dep-undeclared"):
        request_plan = one_phase(
            stack,
            run_id,
            description="Add module one.",
            deliverables=["src/mod1.py"],
            scope=common_pb2.Scope(paths=["src/"]),
            validation_command=["python", "-c", "import src.mod1"],
        )
        request_plan.source_repo = str(source)
        run, events = run_to_end(running, request_plan)
        assert run.state == pb.STATE_FAILED
        [messages[run_id]] = [
            e.message for e in events if e.message.startswith("mitigation: python_missing_dep")
        ]
    # The default applier allowlist has no pip: the hint stays, and the event says why nothing was installed.
    assert (
        "no install: 'declaredmod==1.0' is declared in requirements.txt, but pip is not on the applier's allowlist"
        in messages["dep-declared"]
    )
    assert (
        "no install: 'othermod' is not a declared dependency of the workspace" in messages["dep-undeclared"]
    )
    assert all("hint added to the next prompt" in message for message in messages.values())


def test_failed_checks_roll_back_retry_and_fail_the_run(stack: Stack, start_orchestrator: Any) -> None:
    running = start_orchestrator(settings_overrides={"max_attempts": 2})
    check = ["python", "-c", "import sys; print('boom'); sys.exit(3)"]
    run, events = run_to_end(running, plan(stack, "failing", check=check))

    assert run.state == pb.STATE_FAILED
    assert run.failure_reason.startswith("phase p1: ")
    p1, p2 = phases_of(run)
    assert p1.state == pb.STATE_FAILED
    assert p2.state == pb.STATE_QUEUED
    assert p2.attempts == []
    assert [tier.state for tier in run.tiers] == [pb.STATE_FAILED, pb.STATE_QUEUED]
    assert [attempt.outcome for attempt in p1.attempts] == [pb.ATTEMPT_OUTCOME_CHECKS_FAILED] * 2
    for attempt in p1.attempts:
        assert attempt.check_exit_code == 3
        assert "exited 3" in attempt.failure_reason and "boom" in attempt.failure_reason
        assert attempt.savepoint
        assert attempt.counted and attempt.failure_kind == pb.FAILURE_KIND_DETERMINISTIC
        assert attempt.fingerprint.startswith("CHECKS_FAILED|") and "boom" in attempt.fingerprint
    assert p1.attempts[0].fingerprint == p1.attempts[1].fingerprint  # paths and numbers normalised away
    # No known pattern: the doctor was consulted between the two attempts (or said why it could not be).
    recovery = [event.message for event in events if event.type == pb.EVENT_TYPE_RECOVERY]
    assert len(recovery) == 1 and recovery[0].startswith("doctor")
    # Each failed attempt was rolled back: the broken module is gone.
    assert not (Path(run.workspace_path) / "src" / "mod1.py").exists()
    assert sum(event.message.startswith("rollback:") for event in events) == 2
    span = phase_spans(stack, "failing")["phase p1"]
    assert span.attributes["autopack.phase.outcome"] == "FAILED"  # type: ignore[index]
    assert span.attributes["autopack.phase.attempts"] == 2  # type: ignore[index]
    assert events[-1].state == pb.STATE_FAILED
    summaries = stack.memory.Search(
        memory_pb2.SearchRequest(collection="phase-summaries", query="module", filter={"run_id": "failing"}),
        timeout=10,
    )
    assert [hit.item.metadata["outcome"] for hit in summaries.hits] == ["FAILED"]


def test_unavailable_dependency_is_retried_not_counted_and_stopped_by_the_health_budget(
    stack: Stack, start_orchestrator: Any
) -> None:
    running = start_orchestrator(settings_overrides={"max_infra_errors_per_run": 3}, estimator="127.0.0.1:1")
    request_plan = plan(stack, "no-estimator")
    run, events = run_to_end(running, request_plan)

    assert run.state == pb.STATE_FAILED
    [p1, p2] = phases_of(run)
    assert [attempt.outcome for attempt in p1.attempts] == [pb.ATTEMPT_OUTCOME_ERROR] * 3
    for attempt in p1.attempts:
        assert "estimator unavailable (Estimate) after 4 tries" in attempt.failure_reason
        assert not attempt.counted and attempt.failure_kind == pb.FAILURE_KIND_TRANSIENT
    assert "health budget: 3 infrastructure errors in this run (limit 3)" in run.failure_reason
    assert p1.state == pb.STATE_FAILED and p2.state == pb.STATE_QUEUED
    assert any(e.type == pb.EVENT_TYPE_RECOVERY and e.message.startswith("health budget") for e in events)


def test_crashed_run_resumes_from_first_unfinished_phase(
    stack: Stack, start_orchestrator: Any, sqlite_url: str
) -> None:
    # The state a crashed orchestrator leaves: EXECUTING, p1 done, an attempt of p2 half-way, lease expired.
    engine = create_db_engine(sqlite_url)
    upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
    store = RunStore(engine)
    phases = (
        PhaseSpec(phase_id="p1", description="Already done.", deliverables=("src/__init__.py",)),
        PhaseSpec(
            phase_id="p2",
            description="Add module two.",
            deliverables=("src/mod2.py",),
            scope_paths=("src/",),
        ),
    )
    store.create_run(
        Plan(
            run_id="resumed",
            name="resumed",
            source_repo=str(stack.source_repo),
            tiers=(TierSpec(tier_id="t1", phases=phases),),
        )
    )
    store.start_run("resumed", "crashed-process", 0.001)
    store.set_phase_state("resumed", "p1", State.COMPLETE, "phase p1 complete")
    store.set_phase_state("resumed", "p2", State.EXECUTING, "phase p2 started")
    store.save_attempt("resumed", "p2", AttemptRecord(number=1, started_at=utcnow()))
    engine.dispose()

    running = start_orchestrator()
    events = list(running.stub.WatchRun(pb.WatchRunRequest(run_id="resumed"), timeout=80))
    run = running.stub.GetRun(pb.GetRunRequest(run_id="resumed"), timeout=10).run

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    assert any("resumed after an orchestrator restart, from phase p2" in event.message for event in events)
    p1, p2 = phases_of(run)
    assert p1.attempts == []
    assert [(a.number, a.outcome) for a in p2.attempts] == [
        (1, pb.ATTEMPT_OUTCOME_ERROR),
        (2, pb.ATTEMPT_OUTCOME_SUCCESS),
    ]
    assert "interrupted" in p2.attempts[0].failure_reason
    assert (p2.attempts[1].usage.input_tokens, p2.attempts[1].usage.output_tokens) == (1500, 200)
    assert (Path(run.workspace_path) / "src" / "mod2.py").read_text() == MODULE_TWO


def test_tokens_of_an_attempt_killed_mid_build_are_reconciled_from_the_builder(
    stack: Stack, start_orchestrator: Any, sqlite_url: str
) -> None:
    # A replica died while attempt 1's Build ran: the builder answered and recorded the call, the
    # orchestrator never saw the response. The replica that takes the run over must count those tokens.
    lines = [
        {
            "run_id": "killed-build",
            "phase_id": "p1",
            "attempt": 1,
            "response": message([create("src/mod1.py", MODULE_ONE)], 1000, 150),
        },
        {
            "run_id": "killed-build",
            "phase_id": "p1",
            "attempt": 2,
            "response": message([create("src/mod1.py", MODULE_ONE)], 1100, 160),
        },
    ]
    (stack.recordings / "killed-build.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    engine = create_db_engine(sqlite_url)
    upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
    store = RunStore(engine)
    spec = PhaseSpec(
        phase_id="p1", description="Add module one.", deliverables=("src/mod1.py",), scope_paths=("src/",)
    )
    store.create_run(
        Plan(
            run_id="killed-build",
            name="killed-build",
            source_repo=str(stack.source_repo),
            tiers=(TierSpec(tier_id="t1", phases=(spec,)),),
        )
    )
    store.start_run("killed-build", "killed-process", 0.001)
    store.set_phase_state("killed-build", "p1", State.EXECUTING, "phase p1 started")
    store.save_attempt("killed-build", "p1", AttemptRecord(number=1, started_at=utcnow()))
    engine.dispose()
    with grpc.insecure_channel(stack.addresses["builder"]) as channel:
        builder = builder_pb2_grpc.BuilderServiceStub(channel)
        builder.Build(  # the dead replica's build, as the builder served it
            builder_pb2.BuildRequest(
                run_id="killed-build", phase=phase_to_proto(spec), max_tokens=4000, attempt=1
            ),
            timeout=20,
        )

        running = start_orchestrator()
        list(running.stub.WatchRun(pb.WatchRunRequest(run_id="killed-build"), timeout=80))
        run = running.stub.GetRun(pb.GetRunRequest(run_id="killed-build"), timeout=10).run
        spent = builder.GetUsage(
            builder_pb2.GetUsageRequest(group_by=builder_pb2.USAGE_GROUP_BY_RUN, run_id="killed-build"),
            timeout=10,
        ).total.usage

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    cut, done = phases_of(run)[0].attempts
    assert cut.failure_kind == pb.FAILURE_KIND_INTERRUPTED and not cut.counted
    assert (cut.usage.input_tokens, cut.usage.output_tokens, cut.usage.total_tokens) == (1000, 150, 1150)
    assert (done.usage.input_tokens, done.usage.output_tokens) == (1100, 160)
    assert run.usage.total_tokens == spent.total_tokens == 1150 + 1260
    assert (run.usage.input_tokens, run.usage.output_tokens) == (spent.input_tokens, spent.output_tokens)
    # Reconciling again finds nothing left: the totals are not counted twice.
    assert (
        sum(
            1
            for e in running.stub.WatchRun(pb.WatchRunRequest(run_id="killed-build"), timeout=10)
            if e.message.startswith("usage:")
        )
        == 1
    )


def test_truncated_attempt_is_retried_with_an_escalated_budget(stack: Stack, start_orchestrator: Any) -> None:
    request_plan = plan(stack, "trunc")
    del request_plan.tiers[1:]
    estimate = expected_estimate(stack, request_plan.tiers[0].phases[0])
    needed = estimate.actual_max_tokens + 1  # one token more than the first budget allows
    body = "\n".join(f"VALUE_{i} = {i}" for i in range(400)) + "\n"
    line = {
        "run_id": "trunc",
        "phase_id": "p1",
        "attempt": 1,
        "response": message([create("src/mod1.py", MODULE_ONE), create("src/big.py", body)], 700, needed),
    }
    (stack.recordings / "truncation.jsonl").write_text(json.dumps(line) + "\n")

    running = start_orchestrator()
    run, events = run_to_end(running, request_plan)

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    [phase] = phases_of(run)
    cut, retry = phase.attempts
    assert cut.outcome == pb.ATTEMPT_OUTCOME_TRUNCATED
    assert cut.usage.output_tokens == estimate.actual_max_tokens  # the provider stopped at max_tokens
    assert cut.actual_max_tokens == estimate.actual_max_tokens
    assert not cut.HasField("smape")  # a truncated count is only a lower bound
    assert retry.outcome == pb.ATTEMPT_OUTCOME_SUCCESS
    assert retry.estimate_id == cut.estimate_id
    assert retry.actual_max_tokens > estimate.actual_max_tokens
    assert retry.usage.output_tokens == needed
    assert any(event.message.startswith("estimate: escalated") for event in events)
    assert (Path(run.workspace_path) / "src" / "big.py").read_text() == body


def test_cancel_mid_attempt_then_resume_keeps_finished_work_and_does_not_count_the_cut_attempt(
    stack: Stack, start_orchestrator: Any, tmp_path: Path
) -> None:
    running = start_orchestrator()
    release = tmp_path / "release"
    # p1's check waits until the test has asked for the cancel: the attempt is provably in flight.
    wait = f"import pathlib, time\nwhile not pathlib.Path({str(release)!r}).exists(): time.sleep(0.02)"
    request_plan = plan(stack, "cancel", check=["python", "-c", wait])
    running.stub.CreateRun(pb.CreateRunRequest(plan=request_plan), timeout=10)
    running.stub.StartRun(pb.StartRunRequest(run_id="cancel"), timeout=10)
    events = []
    for event in running.stub.WatchRun(pb.WatchRunRequest(run_id="cancel"), timeout=60):
        events.append(event)
        if event.phase_id == "p1" and event.message.startswith("apply:"):
            flagged = running.stub.CancelRun(
                pb.CancelRunRequest(run_id="cancel", reason="user"), timeout=10
            ).run
            assert flagged.state == pb.STATE_EXECUTING and flagged.cancel_requested
            release.write_text("go")
    run = running.stub.GetRun(pb.GetRunRequest(run_id="cancel"), timeout=10).run
    assert run.state == pb.STATE_CANCELLED and events[-1].state == pb.STATE_CANCELLED
    p1, p2 = phases_of(run)
    assert (p1.state, p2.state) == (pb.STATE_CANCELLED, pb.STATE_QUEUED)
    [cut] = p1.attempts
    assert cut.outcome == pb.ATTEMPT_OUTCOME_ERROR and not cut.counted
    assert cut.failure_kind == pb.FAILURE_KIND_INTERRUPTED and "cancelled on request" in cut.failure_reason
    assert (cut.usage.input_tokens, cut.usage.output_tokens) == (1234, 321)  # its tokens stay in the totals
    assert run.usage.total_tokens == 1555
    assert not (Path(run.workspace_path) / "src" / "mod1.py").exists()  # rolled back

    resumed = running.stub.ResumeRun(pb.ResumeRunRequest(run_id="cancel"), timeout=10).run
    assert resumed.state == pb.STATE_EXECUTING
    events = list(running.stub.WatchRun(pb.WatchRunRequest(run_id="cancel"), timeout=60))
    run = running.stub.GetRun(pb.GetRunRequest(run_id="cancel"), timeout=10).run
    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    p1, p2 = phases_of(run)
    assert [(a.number, a.counted, a.outcome) for a in p1.attempts] == [
        (1, False, pb.ATTEMPT_OUTCOME_ERROR),
        (2, True, pb.ATTEMPT_OUTCOME_SUCCESS),
    ]
    assert p1.attempt_floor == 1 and [a.outcome for a in p2.attempts] == [pb.ATTEMPT_OUTCOME_SUCCESS]
    assert run.usage.total_tokens == 1555 * 2 + 2410
    assert any(event.message == "run resumed on request" for event in events)


def test_resume_and_cancel_refuse_runs_in_the_wrong_state(stack: Stack, start_orchestrator: Any) -> None:
    running = start_orchestrator()
    run, _ = run_to_end(running, plan(stack, "drain-c"))
    assert run.state == pb.STATE_COMPLETE
    before = list(running.stub.WatchRun(pb.WatchRunRequest(run_id="drain-c"), timeout=10))
    for call, request in (
        (running.stub.ResumeRun, pb.ResumeRunRequest(run_id="drain-c")),
        (running.stub.CancelRun, pb.CancelRunRequest(run_id="drain-c")),
    ):
        with pytest.raises(grpc.RpcError) as error:
            call(request, timeout=10)
        assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "COMPLETE" in (error.value.details() or "")
    after = list(running.stub.WatchRun(pb.WatchRunRequest(run_id="drain-c"), timeout=10))
    assert len(after) == len(before)  # nothing changed


def test_drain_re_runs_failed_and_queued_phases_across_runs(
    stack: Stack, start_orchestrator: Any, sqlite_url: str
) -> None:
    # drain-a failed at p1 (p2 never ran); drain-b was created but never started.
    engine = create_db_engine(sqlite_url)
    upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
    store = RunStore(engine)
    for run_id in ("drain-a", "drain-b"):
        spec = plan(stack, run_id)
        store.create_run(
            Plan(
                run_id=run_id,
                name=run_id,
                source_repo=str(stack.source_repo),
                tiers=tuple(
                    TierSpec(tier_id=tier.tier_id, phases=tuple(phase_from_proto(p) for p in tier.phases))
                    for tier in spec.tiers
                ),
            )
        )
    store.start_run("drain-a", "gone", 60)
    store.set_phase_state("drain-a", "p1", State.FAILED, "phase p1 failed", "checks failed")
    store.finish_run("drain-a", State.FAILED, "run failed", "phase p1: checks failed")
    engine.dispose()
    running = start_orchestrator(sqlite_url)

    dry = running.stub.StartDrain(
        pb.StartDrainRequest(options=pb.DrainOptions(dry_run=True, skip_phases=["drain-b/p1"])), timeout=10
    ).session
    assert dry.state == pb.STATE_COMPLETE and dry.summary.stop_reason.startswith("dry run")
    assert [(i.run_id, i.phase_id, i.state) for i in dry.planned] == [
        ("drain-a", "p1", pb.STATE_FAILED),
        ("drain-b", "p1", pb.STATE_QUEUED),
    ]
    assert dry.planned[1].reason == "skipped: listed in skip_phases"
    assert running.stub.GetRun(pb.GetRunRequest(run_id="drain-a"), timeout=10).run.state == pb.STATE_FAILED

    session = running.stub.StartDrain(
        pb.StartDrainRequest(options=pb.DrainOptions(batch_size=10)), timeout=10
    )
    session_id = session.session.session_id
    while True:
        found = running.stub.GetDrainSession(
            pb.GetDrainSessionRequest(session_id=session_id), timeout=10
        ).session
        if found.state != pb.STATE_EXECUTING:
            break
        running.orchestrator.executor.wait_idle(1)  # at most a second between looks; returns early when idle
    assert found.state == pb.STATE_COMPLETE, found.summary.stop_reason
    # Sample first: one phase of each run before the second phase of any (two run at once).
    drained = [(i.run_id, i.phase_id) for i in found.results]
    assert sorted(drained[:2]) == [("drain-a", "p1"), ("drain-b", "p1")]
    assert sorted(drained[2:]) == [("drain-a", "p2"), ("drain-b", "p2")]
    assert all(item.state == pb.STATE_COMPLETE and item.attempts == 1 for item in found.results)
    summary = found.summary
    assert (summary.processed, summary.completed, summary.failed, summary.attempts) == (4, 4, 0, 4)
    assert summary.total_tokens == 2 * (1555 + 2410)
    assert summary.completed_per_attempt == 1.0
    assert summary.completed_per_1k_tokens == pytest.approx(4 / 7.93)
    assert summary.zero_yield_reason == "" and summary.stop_reason == "nothing left to drain"
    for run_id in ("drain-a", "drain-b"):
        drained_run = running.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10).run
        assert drained_run.state == pb.STATE_COMPLETE
        assert [len(p.attempts) for p in phases_of(drained_run)] == [1, 1]


def test_a_drain_session_whose_replica_died_is_taken_over_and_finished(
    stack: Stack, start_orchestrator: Any, sqlite_url: str
) -> None:
    (stack.recordings / "drain-orphan.jsonl").write_text(
        "".join(json.dumps({**line, "run_id": "drain-orphan"}) + "\n" for line in RECORDINGS_HAPPY)
    )
    # What a replica leaves when it dies mid-session: the session EXECUTING with an expired lease,
    # one phase it queued still waiting for a replica.
    engine = create_db_engine(sqlite_url)
    upgrade_schema(engine, "autopack_orchestrator.migrations", "alembic_version_orchestrator")
    store = RunStore(engine)
    spec = plan(stack, "drain-orphan")
    store.create_run(
        Plan(
            run_id="drain-orphan",
            name="drain-orphan",
            source_repo=str(stack.source_repo),
            tiers=tuple(
                TierSpec(tier_id=tier.tier_id, phases=tuple(phase_from_proto(p) for p in tier.phases))
                for tier in spec.tiers
            ),
        )
    )
    assert store.queue_drained_phase("drain-orphan", "p1", utcnow() + timedelta(minutes=5), "drain-dead", 2)
    store.save_drain_session(
        {
            "session_id": "drain-dead",
            "state": "EXECUTING",
            "options": {"run_ids": ["drain-orphan"], "batch_size": 10, "phase_timeout_seconds": 300},
            "planned": [],
            "results": [],
            "summary": {},
            "owner": "dead-replica",
            "started_at": utcnow(),
            "finished_at": None,
            "lease_expires_at": utcnow() - timedelta(seconds=1),
        }
    )
    engine.dispose()

    running = start_orchestrator(sqlite_url)
    found = running.stub.GetDrainSession(
        pb.GetDrainSessionRequest(session_id="drain-dead"), timeout=10
    ).session
    while found.state == pb.STATE_EXECUTING:
        running.orchestrator.executor.wait_idle(1)
        found = running.stub.GetDrainSession(
            pb.GetDrainSessionRequest(session_id="drain-dead"), timeout=10
        ).session
    assert found.state == pb.STATE_COMPLETE, found.summary.stop_reason
    # The phase the dead replica queued was waited for, then the session went on to the run's next phase.
    assert [(i.phase_id, i.state) for i in found.results] == [
        ("p1", pb.STATE_COMPLETE),
        ("p2", pb.STATE_COMPLETE),
    ]
    assert found.summary.stop_reason == "nothing left to drain"
    run = running.stub.GetRun(pb.GetRunRequest(run_id="drain-orphan"), timeout=10).run
    assert run.state == pb.STATE_COMPLETE
    assert [len(p.attempts) for p in phases_of(run)] == [1, 1]


def test_a_drained_phase_past_its_timeout_is_stopped_and_explains_the_zero_yield(
    stack: Stack, start_orchestrator: Any
) -> None:
    running = start_orchestrator()
    slow = ["python", "-c", "import time; time.sleep(3)"]  # the check outlasts the drain's 1 s phase limit
    request_plan = plan(stack, "drain-t", check=slow)
    del request_plan.tiers[1:]
    running.stub.CreateRun(pb.CreateRunRequest(plan=request_plan), timeout=10)
    options = pb.DrainOptions(run_ids=["drain-t"], phase_timeout_seconds=1, sample_first=False)
    session_id = running.stub.StartDrain(pb.StartDrainRequest(options=options), timeout=10).session.session_id
    found = running.stub.GetDrainSession(pb.GetDrainSessionRequest(session_id=session_id), timeout=10).session
    while found.state == pb.STATE_EXECUTING:
        running.orchestrator.executor.wait_idle(1)
        found = running.stub.GetDrainSession(
            pb.GetDrainSessionRequest(session_id=session_id), timeout=10
        ).session
    [item] = found.results
    assert item.timed_out and item.state == pb.STATE_FAILED and item.attempts == 0
    assert found.summary.zero_yield_reason == "every phase hit the phase timeout (1s)"
    run = running.stub.GetRun(pb.GetRunRequest(run_id="drain-t"), timeout=10).run
    assert run.state == pb.STATE_FAILED and "phase timeout" in run.failure_reason
    [cut] = phases_of(run)[0].attempts
    assert not cut.counted and cut.failure_kind == pb.FAILURE_KIND_INTERRUPTED
    assert not cut.HasField("check_exit_code")  # the phase limit cut the RunChecks call short
    assert not (Path(run.workspace_path) / "src" / "mod1.py").exists()  # rolled back


def test_an_answer_that_used_95_percent_of_its_budget_escalates_the_next_attempt_once(
    stack: Stack, start_orchestrator: Any
) -> None:
    request_plan = plan(
        stack, "highutil", check=["python", "-c", "from src.mod1 import one; assert one() == 1"]
    )
    del request_plan.tiers[1:]
    estimate = expected_estimate(stack, request_plan.tiers[0].phases[0])
    near_full = int(estimate.selected_budget * 0.96)  # complete (end_turn), but >= 95% of the budget
    lines = [
        {
            "run_id": "highutil",
            "phase_id": "p1",
            "attempt": attempt,
            "response": message([create("src/mod1.py", body)], 800, near_full),
        }
        for attempt, body in ((1, "def one() -> int:\n    return 0\n"), (2, MODULE_ONE))
    ]
    (stack.recordings / "highutil.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    running = start_orchestrator()
    run, events = run_to_end(running, request_plan)

    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    [phase] = phases_of(run)
    first, second = phase.attempts
    assert first.outcome == pb.ATTEMPT_OUTCOME_CHECKS_FAILED and first.usage.output_tokens == near_full
    assert second.estimate_id == first.estimate_id and second.actual_max_tokens > first.actual_max_tokens
    escalated = [e.message for e in events if e.message.startswith("estimate: escalated")]
    assert len(escalated) == 1
    assert f"after {near_full} of {estimate.selected_budget} tokens used" in escalated[0]
    assert not any(e.message.startswith("doctor") for e in events)  # a token problem needs no doctor


def test_tokens_of_an_unusable_diagnosis_still_count_in_the_run(
    stack: Stack, start_orchestrator: Any
) -> None:
    unusable = {**message([], 300, 50), "content": [{"type": "text", "text": "It looks fine to me."}]}
    lines = [
        {
            "run_id": "bad-doctor",
            "phase_id": "p1",
            "attempt": 1,
            "response": message([create("src/mod1.py", "x = 1\n")], 800, 100),
        },
        {"run_id": "bad-doctor", "phase_id": "p1", "attempt": 1, "role": "doctor", "response": unusable},
    ]
    (stack.recordings / "bad-doctor.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    running = start_orchestrator(settings_overrides={"max_attempts": 2})
    request_plan = plan(stack, "bad-doctor", check=["python", "-c", "raise SystemExit(3)"])
    del request_plan.tiers[1:]
    run, events = run_to_end(running, request_plan)

    assert run.state == pb.STATE_FAILED
    [phase] = phases_of(run)
    [doctor] = [e.message for e in events if e.type == pb.EVENT_TYPE_RECOVERY]
    assert doctor.startswith("doctor unavailable: builder Diagnose failed (FAILED_PRECONDITION)")
    attempts_total = sum(a.usage.total_tokens for a in phase.attempts)
    spent = run.usage.total_tokens - attempts_total
    assert spent > 0 and spent % 350 == 0  # every doctor call the builder made (300 in + 50 out each)
    assert phase.doctor_calls == 1 and run.doctor_calls == 1
