"""The orchestrator's use of memory, over real servers: project key, recall across runs,
context by reference (with the candidate fallback), goal drift, Qdrant down.

The builder is the real one with the replay provider; a subclass keeps each prompt it was
asked, so the tests assert on what the model would have read.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from autopack.applier.v1 import applier_pb2
from autopack.builder.v1 import builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack.memory.v1 import memory_pb2, memory_pb2_grpc
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc
from autopack_applier.service import binding as applier_binding
from autopack_applier.service import build_servicer as applier_servicer
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore
from autopack_builder.builder import Builder
from autopack_builder.models import ChatRequest, ChatResult
from autopack_builder.providers import ReplayProvider
from autopack_builder.service import SERVICE_FULL_NAME as BUILDER_SERVICE
from autopack_builder.service import BuilderServicer
from autopack_builder.store import LlmCallStore
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.errors import InvalidArgument
from autopack_common.server import RunningServer, ServiceBinding, create_server
from autopack_estimator.service import open_servicer, service_binding
from autopack_memory.__main__ import build_memory
from autopack_memory.service import MemoryServicer, memory_binding
from autopack_memory.settings import MemorySettings
from autopack_orchestrator.clients import ServiceClients
from autopack_orchestrator.events import Outcome, State
from autopack_orchestrator.memory_steps import MemorySteps, PhaseOutcome, _batches, project_records
from autopack_orchestrator.plan import validate_plan
from autopack_orchestrator.project import normalise_remote, project_key
from autopack_orchestrator.service import Orchestrator, create_orchestrator
from autopack_orchestrator.settings import OrchestratorSettings
from autopack_orchestrator.store import AttemptRecord, PhaseRecord, RunRecord, RunStore, utcnow

from tests.orchestrator.conftest import sample_plan

MODULE_ONE = "def one() -> int:\n    return 1\n"
# Large enough that it cannot be kept whole in the small budget below: it comes as an outline.
HELPERS = "".join(
    f'def helper_{i}(value: int) -> int:\n    """Scale by {i}."""\n    return value * {i} + {i}\n\n\n'
    for i in range(60)
)
ALIGNED = "Added module one with a function one() returning 1."
DRIFTED = "Rewrote the billing dashboard colour palette and the marketing banner."


def answer(summary: str, files: list[tuple[str, str]]) -> dict[str, Any]:
    text = json.dumps(
        {"summary": summary, "files": [{"path": p, "mode": "create", "new_content": c} for p, c in files]}
    )
    return {
        "id": "msg_test",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-5-20250929",
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 900, "output_tokens": 120},
    }


def recording(run_id: str, attempt: int, summary: str, files: list[tuple[str, str]]) -> dict[str, Any]:
    return {"run_id": run_id, "phase_id": "p1", "attempt": attempt, "response": answer(summary, files)}


RECORDINGS = [
    # first run of the repository: attempt 1 writes outside the scope (rejected), attempt 2 is fine
    recording("mem-first", 1, ALIGNED, [("src/mod1.py", MODULE_ONE), ("other/evil.py", "x = 1\n")]),
    recording("mem-first", 2, ALIGNED, [("src/mod1.py", MODULE_ONE)]),
    *[
        recording(run_id, 1, ALIGNED, [("src/mod1.py", MODULE_ONE)])
        for run_id in (
            "mem-second",
            "mem-explicit",
            "mem-reference",
            "mem-older",
            "mem-candidates",
            "mem-down-1",
            "mem-down-2",
        )
    ],
    recording("mem-advisory", 1, DRIFTED, [("src/mod1.py", MODULE_ONE)]),
    recording("mem-blocking", 1, DRIFTED, [("src/mod1.py", MODULE_ONE)]),
]


class PromptKeepingReplay(ReplayProvider):
    """The replay provider, keeping the prompt of every call it answers."""

    def __init__(self, directory: Path) -> None:
        super().__init__(directory)
        self.prompts: dict[tuple[str, int], str] = {}

    def chat(self, request: ChatRequest) -> ChatResult:
        self.prompts[(request.run_id, request.attempt)] = request.user
        return super().chat(request)


class OlderMemory(MemoryServicer):
    """A memory server from before workspace indexes: IndexWorkspace answers UNIMPLEMENTED."""

    IndexWorkspace = memory_pb2_grpc.MemoryServiceServicer.IndexWorkspace


@dataclass
class Stack:
    addresses: dict[str, str]
    source_repo: Path
    replay: PromptKeepingReplay


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path) -> Path:
    (path / "src").mkdir(parents=True)
    (path / "src" / "__init__.py").write_text("")
    (path / "lib").mkdir()
    (path / "lib" / "helpers.py").write_text(HELPERS)
    (path / "README.md").write_text("# Sample\n\nA tiny package.\n")
    git(path, "init", "-q")
    git(path, "add", "-A")
    git(path, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "start")
    return path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("memwire")
    recordings = root / "recordings"
    recordings.mkdir()
    (recordings / "memwire.jsonl").write_text("".join(json.dumps(line) + "\n" for line in RECORDINGS))
    servers: list[RunningServer] = []
    cleanups: list[Any] = []

    def serve(binding: ServiceBinding) -> str:
        running = create_server([binding], "127.0.0.1:0")
        servers.append(running)
        return running.address

    def engine(name: str, package: str) -> Any:
        created = create_db_engine(f"sqlite:///{root / name}.db")
        upgrade_schema(
            created, f"{package}.migrations", f"alembic_version_{package.removeprefix('autopack_')}"
        )
        cleanups.append(created.dispose)
        return created

    def memory(name: str, servicer: type[MemoryServicer] = MemoryServicer, **settings: Any) -> str:
        memory_settings = MemorySettings(
            data_dir=root / name, embeddings="none", qdrant_path=root / f"{name}-qdrant", **settings
        )
        domain = build_memory(memory_settings, engine(name, "autopack_memory"), None)
        cleanups.append(domain.close)
        return serve(memory_binding(servicer(domain)))

    estimator, estimator_engine = open_servicer(f"sqlite:///{root / 'estimator.db'}")
    cleanups.append(estimator_engine.dispose)
    replay = PromptKeepingReplay(recordings)
    builder = Builder(replay, LlmCallStore(engine("builder", "autopack_builder")), "claude-sonnet-4-5")
    applier_settings = ApplierSettings(data_dir=root / "applier", workspace_root=root / "workspaces")
    addresses = {
        "estimator": serve(service_binding(estimator)),
        "builder": serve(
            ServiceBinding(
                BUILDER_SERVICE,
                builder_pb2_grpc.add_BuilderServiceServicer_to_server,
                BuilderServicer(builder),
            )
        ),
        "applier": serve(
            applier_binding(
                applier_servicer(applier_settings, ApplierStore(engine("applier", "autopack_applier")))
            )
        ),
        "memory": memory("memory"),
        "memory-blocking": memory("memory-blocking", drift_mode="blocking"),
        "memory-older": memory("memory-older", OlderMemory),
        # Qdrant down: nothing listens on the discard port.
        "memory-down": memory("memory-down", qdrant_url="http://127.0.0.1:9"),
    }
    yield Stack(addresses, make_repo(root / "source"), replay)
    for running in servers:
        running.stop(0)
    replay.close()
    for cleanup in reversed(cleanups):
        cleanup()


@dataclass
class Running:
    orchestrator: Orchestrator
    stub: orchestrator_pb2_grpc.OrchestratorServiceStub


@pytest.fixture
def start(stack: Stack, sqlite_url: str) -> Iterator[Any]:
    started: list[tuple[Orchestrator, RunningServer, grpc.Channel]] = []

    def start_with(memory: str = "memory", **overrides: Any) -> Running:
        settings = OrchestratorSettings(
            database_url=sqlite_url,
            rpc_timeout_seconds=20,
            transient_backoff_seconds=0.01,
            transient_retries=0,
            context_budget_tokens=1200,
            **overrides,
        )
        clients = ServiceClients({**stack.addresses, "memory": stack.addresses[memory]})
        orchestrator = create_orchestrator(settings, clients=clients)
        server = create_server([orchestrator.binding()], "127.0.0.1:0")
        channel = grpc.insecure_channel(server.address)
        started.append((orchestrator, server, channel))
        return Running(orchestrator, orchestrator_pb2_grpc.OrchestratorServiceStub(channel))

    yield start_with
    for orchestrator, server, channel in started:
        channel.close()
        server.stop(0)
        orchestrator.close()


def run_plan(stack: Stack, running: Running, run_id: str, project: str = "") -> tuple[pb.Run, list[str]]:
    """One phase: write src/mod1.py; the task names the helpers module outside its scope."""
    plan = pb.Plan(
        run_id=run_id,
        name=f"memory wiring {run_id}",
        source_repo=str(stack.source_repo),
        project=project,
        tiers=[
            pb.TierSpec(
                tier_id="t1",
                phases=[
                    common_pb2.PhaseSpec(
                        phase_id="p1",
                        description="Add module one with a function one() returning 1, "
                        "in the style of helper_1 in lib/helpers.py.",
                        complexity="low",
                        deliverables=["src/mod1.py"],
                        scope=common_pb2.Scope(paths=["src/"], read_only_context=["README.md"]),
                    )
                ],
            )
        ],
    )
    running.stub.CreateRun(pb.CreateRunRequest(plan=plan), timeout=10)
    running.stub.StartRun(pb.StartRunRequest(run_id=run_id), timeout=10)
    events = [e.message for e in running.stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=60)]
    return running.stub.GetRun(pb.GetRunRequest(run_id=run_id), timeout=10).run, events


def state_of(run: pb.Run) -> str:
    return pb.State.Name(run.state).removeprefix("STATE_")


# -- project key ------------------------------------------------------------------------------


def test_project_key_is_the_root_commit_for_every_clone_and_a_normalised_remote_otherwise(
    tmp_path: Path,
) -> None:
    repo = make_repo(tmp_path / "repo")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    root = git(repo, "rev-list", "--max-parents=0", "HEAD")
    assert project_key(str(repo)) == project_key(str(clone)) == f"git:{root}"
    assert project_key(str(repo), explicit=" team/app ") == "team/app"
    plain = tmp_path / "plain"
    plain.mkdir()
    assert project_key(str(plain) + "/") == f"path:{plain.resolve()}"
    for spelling in (
        "git@github.com:Team/app.git",
        "https://user:token@GitHub.com/Team/app.git/",
        "ssh://git@github.com/Team/app",
    ):
        assert normalise_remote(spelling) == "github.com/Team/app"
        assert project_key(spelling) == "remote:github.com/Team/app"
        assert "token" not in project_key(spelling)


def test_an_explicit_project_key_is_validated_and_stored(store: RunStore) -> None:
    plan = sample_plan("explicit")
    store.create_run(validate_plan(replace(plan, project=" team/app ")))
    assert store.get_run("explicit").project == "team/app"
    for bad in ("x" * 257, "team\napp"):
        with pytest.raises(InvalidArgument) as raised:
            validate_plan(replace(plan, run_id="bad", project=bad))
        assert raised.value.field == "plan.project"


def test_an_explicit_project_key_is_refused_when_bad_and_used_when_given(stack: Stack, start: Any) -> None:
    running = start()
    with pytest.raises(grpc.RpcError) as refused:
        run_plan(stack, running, "mem-bad-project", project="a\tb")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "plan.project" in (refused.value.details() or "")
    with pytest.raises(grpc.RpcError) as missing:
        running.stub.GetRun(pb.GetRunRequest(run_id="mem-bad-project"), timeout=10)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND  # nothing was stored
    run, events = run_plan(stack, running, "mem-explicit", project="team/app")
    assert (state_of(run), run.project) == ("COMPLETE", "team/app")
    assert any(m.endswith("project team/app") for m in events)
    assert any(m.startswith("memory: 2 project record(s) stored for team/app") for m in events)


def test_a_phase_fixed_after_a_failure_leaves_an_error_pattern_and_its_decisions() -> None:
    spec = sample_plan().tiers[0].phases[0]
    now = utcnow()
    failed = AttemptRecord(1, now, Outcome.CHECKS_FAILED, counted=True, fingerprint="CHECKS_FAILED|x")
    passed = AttemptRecord(2, now, Outcome.SUCCESS, check_verdict="PASSED")
    phase = PhaseRecord(
        tier_id="t1",
        position=0,
        spec=spec,
        state=State.COMPLETE,
        attempts=[failed, passed],
        mitigations=[{"pattern": "import_path", "description": "not importable", "hint": "use python -m"}],
    )
    run = RunRecord(run_id="r", name="n", source_repo="/repo", state=State.EXECUTING, created_at=now)
    records = project_records(run, PhaseOutcome(phase, State.COMPLETE, "did it", passed, ("src/mod1.py",)))
    by_kind = {memory_pb2.RecordKind.Name(r.kind): r.text for r in records}
    assert by_kind["RECORD_KIND_RUN_SUMMARY"] == "did it"
    assert "ended COMPLETE after 2 attempt(s)" in by_kind["RECORD_KIND_TASK_OUTCOME"]
    assert "CHECKS_FAILED|x" in by_kind["RECORD_KIND_ERROR_PATTERN"]
    assert "import_path: use python -m" in by_kind["RECORD_KIND_ERROR_PATTERN"]
    assert "mitigation import_path" in by_kind["RECORD_KIND_DECISION_LOG"]
    phase.state, passed.outcome = State.FAILED, Outcome.CHECKS_FAILED
    failed_records = project_records(run, PhaseOutcome(phase, State.FAILED, "did not", passed))
    assert memory_pb2.RECORD_KIND_ERROR_PATTERN not in [r.kind for r in failed_records]  # nothing fixed it


# -- over the flow ----------------------------------------------------------------------------


def test_a_later_run_of_the_same_repository_is_told_what_the_first_one_learned(
    stack: Stack, start: Any
) -> None:
    running = start()
    first, first_events = run_plan(stack, running, "mem-first")
    assert state_of(first) == "COMPLETE"
    key = "git:" + git(stack.source_repo, "rev-list", "--max-parents=0", "HEAD")
    assert any(f"project {key}" in message for message in first_events)
    assert any(message.startswith("memory: 4 project record(s) stored") for message in first_events)
    assert "Earlier" not in stack.replay.prompts[("mem-first", 1)]  # nothing to recall yet
    # Indexed after PrepareWorkspace, and again before attempt 2 (attempt 1's apply was rejected).
    indexed = [m for m in first_events if m.startswith("memory: workspace indexed")]
    assert len(indexed) == 2
    # Content goes only for files memory does not hold yet (another run may have sent them).
    assert indexed[0].startswith("memory: workspace indexed, 3 file(s): 3 new or changed, 0 removed")
    assert (
        indexed[1] == "memory: workspace indexed, 3 file(s): 0 new or changed, 0 removed, content sent for 0"
    )

    second, second_events = run_plan(stack, running, "mem-second")
    assert state_of(second) == "COMPLETE"
    # A new workspace of the same files: memory already holds their content (stored by hash).
    assert (
        "memory: workspace indexed, 3 file(s): 3 new or changed, 0 removed, content sent for 0"
        in second_events
    )
    prompt = stack.replay.prompts[("mem-second", 1)]
    assert "Earlier run summary (run mem-first, phase p1): Phase p1 COMPLETE after 2 attempt(s)" in prompt
    assert "Earlier error pattern (run mem-first, phase p1): Failure APPLY_REJECTED|" in prompt
    assert "was fixed by scope_mismatch: Write ONLY these paths: src/" in prompt


def test_reindexing_after_a_change_reads_only_what_memory_does_not_hold(stack: Stack) -> None:
    """The applier lists hashes; only contents memory lacks are read from it and sent."""
    clients = ServiceClients(stack.addresses)
    reads: list[tuple[list[str], bool]] = []

    def call(service: str, method: str, function: Any, request: Any, timeout: float) -> Any:
        if method == "ReadFiles":
            reads.append((list(request.paths), request.hashes_only))
        return function(request, timeout=timeout)

    settings = OrchestratorSettings(database_url="sqlite://", rpc_timeout_seconds=20)
    steps = MemorySteps(clients, settings, None, call, grpc.RpcError)  # type: ignore[arg-type]
    prepared = clients.applier.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="idx-1", source_repo=str(stack.source_repo)), timeout=20
    )
    first = steps.index_workspace("idx-1", "ws-idx-1")
    assert first.startswith("memory: workspace indexed, 3 file(s): 3 new or changed, 0 removed")
    assert reads[0] == (["./"], True)

    unique = f"def fresh() -> str:\n    return {prepared.workspace_path!r}\n"
    clients.applier.Apply(
        applier_pb2.ApplyRequest(
            run_id="idx-1",
            phase_id="p1",
            attempt=1,
            scope=common_pb2.Scope(paths=["src/"]),
            operations=[
                common_pb2.FileOperation(
                    path="src/fresh.py", mode=common_pb2.FILE_MODE_CREATE, new_content=unique
                )
            ],
        ),
        timeout=20,
    )
    reads.clear()
    again = steps.index_workspace("idx-1", "ws-idx-1")
    assert again == "memory: workspace indexed, 4 file(s): 1 new or changed, 0 removed, content sent for 1"
    assert reads == [(["./"], True), (["src/fresh.py"], False)]
    clients.applier.CleanupWorkspace(applier_pb2.CleanupWorkspaceRequest(run_id="idx-1"), timeout=20)
    clients.close()


def test_index_batches_stay_under_the_byte_limit_and_keep_the_order() -> None:
    sizes = {"a": 5, "b": 5, "c": 30, "d": 1}
    assert list(_batches(["a", "b", "c", "d"], sizes, 10)) == [["a", "b"], ["c"], ["d"]]
    assert list(_batches([], sizes, 10)) == []


def test_context_comes_by_reference_from_the_indexed_workspace_with_outlines(
    stack: Stack, start: Any
) -> None:
    run, events = run_plan(stack, start(), "mem-reference")
    assert state_of(run) == "COMPLETE"
    assert any(m.startswith("memory: workspace indexed, 3 file(s)") for m in events)
    assert any("outline(s) from the indexed workspace" in m for m in events)
    prompt = stack.replay.prompts[("mem-reference", 1)]
    # Outside the phase's scope, too large for the budget: its outline, marked as such.
    assert "lib/helpers.py (summary, not the full file)" in prompt
    assert "def helper_1(value: int) -> int" in prompt
    assert "return value * 1 + 1" not in prompt


def test_an_older_memory_without_workspace_indexes_falls_back_to_candidates(stack: Stack, start: Any) -> None:
    run, events = run_plan(stack, start(memory="memory-older"), "mem-older")
    assert state_of(run) == "COMPLETE"
    assert any("workspace not indexed, context from candidates" in m and "UNIMPLEMENTED" in m for m in events)
    assert any(m.startswith("context: kept") and "candidate(s)" in m for m in events)
    assert "lib/helpers.py (summary" not in stack.replay.prompts[("mem-older", 1)]


def test_the_candidate_path_is_kept_by_a_setting(stack: Stack, start: Any) -> None:
    run, events = run_plan(stack, start(context_by_reference=False), "mem-candidates")
    assert state_of(run) == "COMPLETE"
    assert not any("workspace" in m and m.startswith("memory:") for m in events)
    assert any(m.startswith("context: kept") and "from 2 candidate(s)" in m for m in events)


def test_advisory_drift_is_an_event_and_the_phase_goes_on(stack: Stack, start: Any) -> None:
    run, events = run_plan(stack, start(), "mem-advisory")
    assert state_of(run) == "COMPLETE"
    assert any(m.startswith("goal drift (advisory)") for m in events)


def test_blocking_drift_fails_the_phase_with_the_reason_before_anything_is_applied(
    stack: Stack, start: Any
) -> None:
    run, events = run_plan(stack, start(memory="memory-blocking", max_attempts=1), "mem-blocking")
    assert state_of(run) == "FAILED"
    phase = run.tiers[0].phases[0]
    assert "goal drift (blocking)" in phase.failure_reason
    assert not any(m.startswith("apply:") for m in events)


def test_qdrant_down_never_fails_a_phase_and_records_are_still_recalled(stack: Stack, start: Any) -> None:
    running = start(memory="memory-down")
    first, first_events = run_plan(stack, running, "mem-down-1")
    assert state_of(first) == "COMPLETE"
    assert any("without vectors, embeddings off or Qdrant unavailable" in m for m in first_events)
    # Search found nothing in the vector store, yet drift was measured (the intention goes inline).
    assert any(m.startswith("memory: intention context 0 bytes") for m in first_events)
    # On words (no vectors), against the lexical threshold: this change is on the intention.
    assert any(m.startswith("drift: aligned (similarity") and "threshold 0.20" in m for m in first_events)
    second, _ = run_plan(stack, running, "mem-down-2")
    assert state_of(second) == "COMPLETE"
    assert "Earlier run summary (run mem-down-1, phase p1)" in stack.replay.prompts[("mem-down-2", 1)]
