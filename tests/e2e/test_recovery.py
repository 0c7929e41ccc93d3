"""Autonomous recovery end to end: five real service processes, the real builder and Anthropic SDK
against a scripted Messages API server on 127.0.0.1, driven through the ``autopack`` CLI.

The plan's four phases each hit one kind of trouble and the run must still complete without
a human: a missing third-party module (deterministic mitigation: a hint in the next prompt),
a truncated answer (budget escalation), two similar check failures (the doctor, then a
re-plan) and a flaky test (the applier's re-run, then the orchestrator's). The run's events
must show each mitigation, diagnosis and re-plan.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
AUTOPACK = str(Path(sys.executable).parent / "autopack")
SERVICES = ("orchestrator", "estimator", "builder", "applier", "memory")
API_KEY = "sk-ant-test-0000-not-a-real-key"
RUN_ID = "e2e-recovery"
PHASE_HEADER = re.compile(r"# Phase ([\w.-]+)")
FLAKY_MARK = Path(tempfile.gettempdir()) / f"autopack-e2e-flaky-{uuid.uuid4().hex[:8]}"

SLUG_BROKEN = "from unidecode_nowhere import unidecode\n\n\ndef slugify(text):\n    return unidecode(text)\n"
SLUG = 'def slugify(text: str) -> str:\n    return "-".join(text.lower().split())\n'
SLUG_TEST = "from textkit.slug import slugify\n\n\ndef test_slugify():\n    assert slugify('Hello World') == 'hello-world'\n"
STATS_TEST = (
    "from textkit.stats import mean\n\n\ndef test_mean():\n    assert mean([1, 2, 3]) == 2\n\n\n"
    "def test_mean_of_one():\n    assert mean([5]) == 5\n"
)
STATS_WRONG = "def mean(values):\n    return sum(values) / (len(values) + 1)\n"
STATS_WRONG_AGAIN = "def mean(values):\n    return sum(values) // (len(values) + 1)\n"
STATS = "def mean(values):\n    return sum(values) / len(values)\n"
REPORT = "def report(words):\n    return '\\n'.join(f'{i}. {w}' for i, w in enumerate(words, 1))\n"
REPORT_TEST = (
    "import pathlib\n\nfrom textkit.report import report\n\nMARK = pathlib.Path("
    + repr(str(FLAKY_MARK))
    + ")\n\n\ndef test_report():\n    assert report(['a', 'b']) == '1. a\\n2. b'\n\n\n"
    "def test_report_is_stable():\n    if not MARK.exists():  # fails on its first run only: a flaky test\n"
    "        MARK.write_text('seen')\n        assert False, 'flaky: first run'\n"
)
BIG_MODULE = "".join(f"WORD_{i} = {i}\n" for i in range(300))


def files_answer(*files: tuple[str, str]) -> str:
    """The builder's JSON output contract: every file created with its full content."""
    return json.dumps(
        {
            "summary": "Did the phase.",
            "files": [{"path": p, "mode": "create", "new_content": c} for p, c in files],
        }
    )


SCRIPT: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("dep", "build"): [
        {"text": files_answer(("textkit/slug.py", SLUG_BROKEN), ("tests/test_slug.py", SLUG_TEST))},
        {"text": files_answer(("textkit/slug.py", SLUG), ("tests/test_slug.py", SLUG_TEST))},
    ],
    # The builder continues a cut-off answer once (AUTOPACK_BUILDER_MAX_CONTINUATIONS=1); both are cut.
    ("trunc", "build"): [
        {"text": files_answer(("textkit/words.py", BIG_MODULE)), "truncate": True},
        {"text": files_answer(("textkit/words.py", BIG_MODULE)), "truncate": True},
        {"text": files_answer(("textkit/words.py", BIG_MODULE))},
    ],
    ("similar", "build"): [
        {"text": files_answer(("textkit/stats.py", STATS_WRONG), ("tests/test_stats.py", STATS_TEST))},
        {"text": files_answer(("textkit/stats.py", STATS_WRONG_AGAIN), ("tests/test_stats.py", STATS_TEST))},
        {"text": files_answer(("textkit/stats.py", STATS), ("tests/test_stats.py", STATS_TEST))},
    ],
    ("similar", "diagnose"): [
        {
            "text": json.dumps(
                {
                    "action": "retry_with_hint",
                    "confidence": 0.9,
                    "diagnosis": "mean() divides by the wrong count.",
                    "hint": "Divide the sum by len(values), not len(values) + 1.",
                }
            )
        }
    ],
    ("similar", "replan"): [
        {
            "text": json.dumps(
                {
                    "revised_description": "Add textkit/stats.py with mean(values) = sum(values) / len(values) "
                    "(the arithmetic mean, no off-by-one in the count) and tests/test_stats.py.",
                    "rationale": "Both attempts divided by a count one too large; the description now says how.",
                }
            )
        }
    ],
    ("flaky", "build"): [
        {"text": files_answer(("textkit/report.py", REPORT), ("tests/test_report.py", REPORT_TEST))},
    ],
}

SLOW_GATE = threading.Event()
SLOW_PLAN = """\
run_id: e2e-ctrl-c
name: interrupted and resumed
source_repo: {source}
tiers:
  - tier_id: t1
    phases:
      - phase_id: slow
        description: Add textkit/slow.py with slugify(text).
        deliverables: [textkit/slow.py]
        scope: {{paths: [textkit/]}}
"""

PLAN = """\
run_id: {run_id}
name: recovery end to end
source_repo: {source}
tiers:
  - tier_id: t1
    name: Recovery
    phases:
      - phase_id: dep
        description: Add textkit/slug.py with slugify(text) and a test for it.
        category: implementation
        complexity: low
        deliverables: [textkit/slug.py, tests/test_slug.py]
        scope: {{paths: [textkit/, tests/]}}
        validation: {{command: python -m pytest -q tests/test_slug.py, timeout_seconds: 120}}
      - phase_id: trunc
        description: Add textkit/words.py with 300 numbered word constants.
        category: implementation
        complexity: low
        deliverables: [textkit/words.py]
        scope: {{paths: [textkit/]}}
      - phase_id: similar
        description: Add textkit/stats.py with mean(values) and tests for it.
        category: implementation
        complexity: low
        deliverables: [textkit/stats.py, tests/test_stats.py]
        scope: {{paths: [textkit/, tests/]}}
        validation: {{command: python -m pytest -q tests/test_stats.py, timeout_seconds: 120}}
      - phase_id: flaky
        description: Add textkit/report.py with report(words) and tests for it.
        category: implementation
        complexity: low
        deliverables: [textkit/report.py, tests/test_report.py]
        scope: {{paths: [textkit/, tests/]}}
        validation: {{command: python -m pytest -q tests/test_report.py, timeout_seconds: 120}}
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    env: dict[str, str]
    model: Any
    root: Path

    def autopack(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AUTOPACK, *args], env=self.env, cwd=self.root, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def stack(
    tmp_path_factory: pytest.TempPathFactory, scripted_model: Any, clean_environment: dict[str, str]
) -> Iterator[Stack]:

    root = tmp_path_factory.mktemp("recovery")
    source = root / "source"
    (source / "textkit").mkdir(parents=True)
    (source / "textkit" / "__init__.py").write_text("")
    (source / "tests").mkdir()
    (source / "README.md").write_text("# textkit\n")
    subprocess.run(["git", "init", "-q", str(source)], check=True)
    subprocess.run(["git", "-C", str(source), "add", "."], check=True)
    subprocess.run(
        ["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "base"],
        check=True,
    )
    model = scripted_model(
        {**SCRIPT, ("slow", "build"): [{"text": files_answer(("textkit/slow.py", SLUG))}]},
        {("slow", "build"): SLOW_GATE},
    )
    env = dict(clean_environment)
    env.update(
        {
            "AUTOPACK_STATE_DIR": str(root / "state"),
            "AUTOPACK_DATA_DIR": str(root / "state" / "data"),
            "AUTOPACK_TRACE_DIR": str(root / "state" / "traces"),
            "AUTOPACK_BUILDER_PROVIDER": "anthropic",
            "ANTHROPIC_API_KEY": API_KEY,
            "ANTHROPIC_BASE_URL": model.base_url,
            "AUTOPACK_MEMORY_EMBEDDINGS": "none",
            "AUTOPACK_BUILDER_MAX_CONTINUATIONS": "1",
        }
    )
    for service in SERVICES:
        env[f"AUTOPACK_{service.upper()}_ADDR"] = f"127.0.0.1:{_free_port()}"
    (root / "plan.yaml").write_text(PLAN.format(run_id=RUN_ID, source=source))
    (root / "slow.yaml").write_text(SLOW_PLAN.format(source=source))
    running = Stack(env, model, root)
    started = running.autopack("up")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        yield running
    finally:
        running.autopack("down")
        FLAKY_MARK.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def finished(stack: Stack) -> tuple[subprocess.CompletedProcess[str], pb.Run, list[pb.WatchRunResponse]]:
    result = stack.autopack("run", "plan.yaml")
    with grpc.insecure_channel(stack.env["AUTOPACK_ORCHESTRATOR_ADDR"]) as channel:
        stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
        run = stub.GetRun(pb.GetRunRequest(run_id=RUN_ID), timeout=10).run
        events = list(stub.WatchRun(pb.WatchRunRequest(run_id=RUN_ID), timeout=30))
    return result, run, events


def recovery_events(events: list[pb.WatchRunResponse], phase_id: str) -> list[str]:
    return [e.message for e in events if e.phase_id == phase_id and e.type == pb.EVENT_TYPE_RECOVERY]


def test_the_run_completes_without_a_human(finished) -> None:
    result, run, _ = finished
    assert result.returncode == 0, result.stdout + result.stderr
    assert run.state == pb.STATE_COMPLETE, run.failure_reason
    phases = {phase.spec.phase_id: phase for tier in run.tiers for phase in tier.phases}
    assert all(phase.state == pb.STATE_COMPLETE for phase in phases.values())
    workspace = Path(run.workspace_path)
    assert (workspace / "textkit" / "slug.py").read_text() == SLUG
    assert (workspace / "textkit" / "stats.py").read_text() == STATS
    assert (workspace / "textkit" / "words.py").read_text() == BIG_MODULE
    # Doctor and re-plan tokens are in the run's total on top of every attempt's.
    attempts_total = sum(a.usage.total_tokens for p in phases.values() for a in p.attempts)
    assert run.usage.total_tokens > attempts_total


def test_missing_dependency_is_mitigated_with_a_hint_in_the_next_prompt(stack: Stack, finished) -> None:
    _, run, events = finished
    dep = next(p for t in run.tiers for p in t.phases if p.spec.phase_id == "dep")
    assert [a.outcome for a in dep.attempts] == [pb.ATTEMPT_OUTCOME_CHECKS_FAILED, pb.ATTEMPT_OUTCOME_SUCCESS]
    assert dep.attempts[0].check_verdict == "COLLECTION_ERROR"
    assert "unidecode_nowhere" in dep.attempts[0].fingerprint
    assert dep.mitigations == ["python_missing_dep"]
    [mitigation] = recovery_events(events, "dep")
    assert mitigation.startswith("mitigation: python_missing_dep") and "doctor not needed" in mitigation
    second_prompt = stack.model.requests("dep")[1].text
    assert "'unidecode_nowhere' is NOT installed" in second_prompt
    assert dep.doctor_calls == 0


def test_truncation_escalates_the_budget_once(stack: Stack, finished) -> None:
    _, run, events = finished
    trunc = next(p for t in run.tiers for p in t.phases if p.spec.phase_id == "trunc")
    cut, retry = trunc.attempts
    assert cut.outcome == pb.ATTEMPT_OUTCOME_TRUNCATED and retry.outcome == pb.ATTEMPT_OUTCOME_SUCCESS
    assert retry.actual_max_tokens > cut.actual_max_tokens
    budgets = [seen.max_tokens for seen in stack.model.requests("trunc")]
    assert len(budgets) == 3  # attempt 1: the call and its continuation, both cut; attempt 2: one call
    assert budgets[-1] == retry.actual_max_tokens > budgets[0]
    assert any(message.startswith("estimate: escalated") for message in recovery_events(events, "trunc"))


def test_similar_failures_bring_the_doctor_then_a_re_plan(stack: Stack, finished) -> None:
    _, run, events = finished
    similar = next(p for t in run.tiers for p in t.phases if p.spec.phase_id == "similar")
    assert [a.outcome for a in similar.attempts] == [pb.ATTEMPT_OUTCOME_CHECKS_FAILED] * 2 + [
        pb.ATTEMPT_OUTCOME_SUCCESS
    ]
    first, second = similar.attempts[:2]
    assert first.fingerprint and first.fingerprint.split("|")[0] == second.fingerprint.split("|")[0]
    messages = recovery_events(events, "similar")
    doctor = [m for m in messages if m.startswith("doctor: retry_with_hint")]
    replan = [m for m in messages if m.startswith("replan: attempts 1 and 2 failed the same way")]
    assert len(doctor) == 1 and "Divide the sum by len(values)" in doctor[0]
    assert len(replan) == 1 and "no off-by-one" in replan[0]
    assert similar.doctor_calls == 1 and similar.replans == 1
    assert similar.original_description.startswith("Add textkit/stats.py with mean(values) and tests")
    assert "no off-by-one" in similar.spec.description
    builds = [seen.text for seen in stack.model.requests("similar")]
    assert "Divide the sum by len(values)" in builds[1]  # the doctor's hint reached the prompt
    assert "no off-by-one" in builds[2]  # the revised description is what the builder was asked


def test_a_flaky_check_does_not_fail_the_phase(finished) -> None:
    _, run, events = finished
    flaky = next(p for t in run.tiers for p in t.phases if p.spec.phase_id == "flaky")
    assert [a.outcome for a in flaky.attempts] == [pb.ATTEMPT_OUTCOME_SUCCESS]
    assert any("flaky" in message for message in recovery_events(events, "flaky"))


def test_status_shows_every_attempt_with_reason_and_tokens(stack: Stack, finished) -> None:
    result = stack.autopack("status", RUN_ID)
    assert result.returncode == 0, result.stderr
    assert "attempts" in result.stdout and "CHECKS_FAILED" in result.stdout and "TRUNCATED" in result.stdout
    assert "mitigations python_missing_dep" in result.stdout
    listed = stack.autopack("runs")
    assert RUN_ID in listed.stdout and "COMPLETE" in listed.stdout and "4/4" in listed.stdout


def test_ctrl_c_leaves_the_run_going_then_watch_cancel_and_resume(stack: Stack, finished) -> None:
    following = subprocess.Popen(
        [AUTOPACK, "run", "slow.yaml"],
        env=stack.env,
        cwd=stack.root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stack.model.wait_for("slow")  # the run is inside its first attempt, waiting for the model
    following.send_signal(signal.SIGINT)
    _, stderr = following.communicate(timeout=60)
    assert following.returncode == 130
    assert "continues in the background" in stderr and "autopack watch e2e-ctrl-c" in stderr
    assert "EXECUTING" in stack.autopack("runs", "--state", "executing").stdout

    cancel = stack.autopack("cancel", "e2e-ctrl-c", "--reason", "changed my mind")
    assert cancel.returncode == 0 and "cancel requested" in cancel.stdout
    SLOW_GATE.set()
    watched = stack.autopack("watch", "e2e-ctrl-c")
    assert watched.returncode == 1 and "cancel requested: changed my mind" in watched.stdout
    assert "run cancelled" in watched.stdout

    resumed = stack.autopack("resume", "e2e-ctrl-c")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed from slow" in resumed.stdout and "COMPLETE" in resumed.stdout
    with grpc.insecure_channel(stack.env["AUTOPACK_ORCHESTRATOR_ADDR"]) as channel:
        run = (
            orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            .GetRun(pb.GetRunRequest(run_id="e2e-ctrl-c"), timeout=10)
            .run
        )
    [phase] = [p for t in run.tiers for p in t.phases]
    cut, done = phase.attempts
    assert not cut.counted and cut.failure_kind == pb.FAILURE_KIND_INTERRUPTED
    assert cut.usage.total_tokens > 0  # the build answered before the cancel took effect: its tokens count
    assert done.counted and done.outcome == pb.ATTEMPT_OUTCOME_SUCCESS
    assert run.usage.total_tokens == cut.usage.total_tokens + done.usage.total_tokens
