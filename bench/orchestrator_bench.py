"""Orchestrator: per-phase overhead with a zero-latency model, and drain throughput with 1 and 2 replicas.

Every service is a real process (``python -m autopack_<svc>``); the builder answers from the
replay provider, so the model costs nothing and what is left is orchestration. The overhead
of a phase is its ``phase <id>`` span minus the server time of every RPC it made (the SERVER
spans of the other services in the same trace, read from the local JSONL span files).
Throughput is a drain of N single-phase QUEUED runs on PostgreSQL, first with one
orchestrator replica, then with two sharing the database (same machine, same run).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import psycopg
from autopack.common.v1 import common_pb2
from autopack.orchestrator.v1 import orchestrator_pb2 as pb
from autopack.orchestrator.v1 import orchestrator_pb2_grpc
from autopack_common.clients import wait_until_serving

from bench import Section

DEPENDENCIES = ("estimator", "builder", "applier", "memory")
POSTGRES_ADMIN_DSN = os.environ.get(
    "AUTOPACK_TEST_POSTGRES_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
)
MODULE = "def value() -> int:\n    return 1\n"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _environment(root: Path) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("ANTHROPIC_", "OPENAI_", "OTEL_", "AUTOPACK_", "DATABASE_URL", "QDRANT_"))
    }
    recordings = root / "recordings"
    recordings.mkdir(parents=True, exist_ok=True)
    answer = {
        "summary": "Added it.",
        "files": [{"path": "pkg/value.py", "mode": "create", "new_content": MODULE}],
    }
    response = {
        "id": "msg_bench",
        "type": "message",
        "role": "assistant",
        "model": "claude-sonnet-4-6",
        "content": [{"type": "text", "text": json.dumps(answer)}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 900, "output_tokens": 60},
    }
    (recordings / "bench.jsonl").write_text(json.dumps({"phase_id": "p1", "response": response}) + "\n")
    env.update(
        {
            "AUTOPACK_DATA_DIR": str(root / "data"),
            "AUTOPACK_TRACE_DIR": str(root / "traces"),
            "AUTOPACK_BUILDER_PROVIDER": "replay",
            "AUTOPACK_REPLAY_DIR": str(recordings),
            "AUTOPACK_MEMORY_EMBEDDINGS": "none",
            "AUTOPACK_ORCHESTRATOR_CLAIM_POLL_SECONDS": "0.1",
        }
    )
    for service in DEPENDENCIES:
        env[f"AUTOPACK_{service.upper()}_ADDR"] = f"127.0.0.1:{_free_port()}"
    return env


@contextmanager
def _processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    try:
        yield started
    finally:
        for process in started:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in started:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()


def _start(started: list[subprocess.Popen[bytes]], service: str, env: dict[str, str], address: str) -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", f"autopack_{service}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    started.append(process)
    wait_until_serving(address, timeout=180, alive=lambda: process.poll() is None)


@contextmanager
def _postgres_database() -> Iterator[str]:
    name = f"autopack_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    finally:
        with psycopg.connect(POSTGRES_ADMIN_DSN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _plan(run_id: str, source: Path) -> pb.Plan:
    phase = common_pb2.PhaseSpec(
        phase_id="p1",
        description="Add pkg/value.py with value() returning 1.",
        complexity="low",
        deliverables=["pkg/value.py"],
        scope=common_pb2.Scope(paths=["pkg/"]),
    )
    return pb.Plan(
        run_id=run_id, name=run_id, source_repo=str(source), tiers=[pb.TierSpec(tier_id="t1", phases=[phase])]
    )


def _source(root: Path) -> Path:
    source = root / "source"
    (source / "pkg").mkdir(parents=True, exist_ok=True)
    (source / "pkg" / "__init__.py").write_text("")
    return source


def _spans(trace_dir: Path) -> list[dict[str, Any]]:
    spans = []
    for path in trace_dir.glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                spans.append(json.loads(line))
            except ValueError:
                continue
    return spans


def _seconds(span: dict[str, Any]) -> float:
    start = datetime.fromisoformat(span["start_time"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(span["end_time"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def overhead_section(quick: bool) -> Section:
    phases = 8 if quick else 30
    with tempfile.TemporaryDirectory(prefix="orchestrator-bench-") as scratch, _processes() as started:
        root = Path(scratch)
        env = _environment(root)
        source = _source(root)
        for service in DEPENDENCIES:
            _start(started, service, env, env[f"AUTOPACK_{service.upper()}_ADDR"])
        address = f"127.0.0.1:{_free_port()}"
        _start(started, "orchestrator", {**env, "AUTOPACK_ORCHESTRATOR_ADDR": address}, address)
        with grpc.insecure_channel(address) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            for index in range(phases + 1):  # the first run warms every process up and is left out
                run_id = f"overhead-{index}"
                stub.CreateRun(pb.CreateRunRequest(plan=_plan(run_id, source)), timeout=60)
                stub.StartRun(pb.StartRunRequest(run_id=run_id), timeout=60)
                for _ in stub.WatchRun(pb.WatchRunRequest(run_id=run_id), timeout=120):
                    pass
        _stop(started)
        spans = _spans(root / "traces")
    phase_spans = {
        span["context"]["trace_id"]: span
        for span in spans
        if span["name"] == "phase p1" and span["attributes"].get("autopack.run_id") != "overhead-0"
    }
    server_time: dict[str, float] = defaultdict(float)
    rpcs: dict[str, int] = defaultdict(int)
    for span in spans:
        trace_id = span["context"]["trace_id"]
        service = span.get("resource", {}).get("attributes", {}).get("service.name", "")
        if (
            trace_id in phase_spans
            and span.get("kind") == "SpanKind.SERVER"
            and "orchestrator" not in service
        ):
            server_time[trace_id] += _seconds(span)
            rpcs[trace_id] += 1
    totals = [_seconds(span) * 1000 for span in phase_spans.values()]
    servers = [server_time[trace_id] * 1000 for trace_id in phase_spans]
    overheads = [total - server for total, server in zip(totals, servers, strict=True)]
    section = Section(
        title=f"orchestrator: per-phase overhead, zero-latency model ({len(totals)} phases, ms)",
        columns=["measure", "median", "p95"],
    )
    for label, values in (
        ("phase span (wall)", totals),
        ("sum of its RPCs' server time", servers),
        ("orchestration overhead", overheads),
    ):
        section.rows.append([label, f"{statistics.median(values):.1f}", f"{_percentile(values, 0.95):.1f}"])
    share = statistics.median(overheads) / statistics.median(totals) if totals else 0.0
    section.notes += [
        f"RPCs per phase: {statistics.median(rpcs.values()):.0f} (server spans of estimator, builder, applier, memory)",
        f"overhead is {share:.0%} of the phase wall time at the median "
        "(store writes, events, the client side of each RPC, loopback transport)",
    ]
    return section


def _stop(started: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM every process and wait: their span files are complete afterwards."""
    for process in started:
        process.send_signal(signal.SIGTERM)
    for process in started:
        process.wait(30)


def _drain_throughput(replicas: int, runs: int) -> tuple[float, float, int, list[int]]:
    """Seconds to drain ``runs`` single-phase QUEUED runs, phases/s, completed, phases per replica."""
    with (
        tempfile.TemporaryDirectory(prefix="orchestrator-drain-") as scratch,
        _postgres_database() as database_url,
        _processes() as started,
    ):
        root = Path(scratch)
        env = _environment(root)
        source = _source(root)
        for service in DEPENDENCIES:
            _start(started, service, env, env[f"AUTOPACK_{service.upper()}_ADDR"])
        addresses = []
        for replica in range(replicas):
            address = f"127.0.0.1:{_free_port()}"
            replica_env = {
                **env,
                "AUTOPACK_ORCHESTRATOR_ADDR": address,
                "DATABASE_URL": database_url,
                "AUTOPACK_TRACE_DIR": str(root / f"traces-{replica}"),
            }
            _start(started, "orchestrator", replica_env, address)
            addresses.append(address)
        with grpc.insecure_channel(addresses[0]) as channel:
            stub = orchestrator_pb2_grpc.OrchestratorServiceStub(channel)
            for index in range(runs):
                stub.CreateRun(pb.CreateRunRequest(plan=_plan(f"drain-{index:04d}", source)), timeout=60)
            options = pb.DrainOptions(batch_size=runs, parallelism=4 * replicas, phase_timeout_seconds=600)
            began = time.monotonic()
            session = stub.StartDrain(pb.StartDrainRequest(options=options), timeout=60).session
            while session.state == pb.STATE_EXECUTING:
                time.sleep(0.2)
                session = stub.GetDrainSession(
                    pb.GetDrainSessionRequest(session_id=session.session_id), timeout=60
                ).session
            elapsed = time.monotonic() - began
        _stop(started)
        per_replica = [
            sum(1 for span in _spans(root / f"traces-{replica}") if span["name"] == "phase p1")
            for replica in range(replicas)
        ]
        return elapsed, session.summary.completed / elapsed, session.summary.completed, per_replica


def throughput_section(quick: bool) -> Section:
    runs = 40 if quick else 200
    section = Section(
        title=f"orchestrator: drain of {runs} single-phase runs on PostgreSQL (4 workers per replica)",
        columns=["replicas", "completed", "phases per replica", "seconds", "phases/s", "vs 1 replica"],
    )
    baseline = 0.0
    for replicas in (1, 2):
        seconds, rate, completed, per_replica = _drain_throughput(replicas, runs)
        baseline = baseline or rate
        section.rows.append(
            [
                str(replicas),
                str(completed),
                " / ".join(map(str, per_replica)),
                f"{seconds:.1f}",
                f"{rate:.2f}",
                f"{rate / baseline:.2f}x",
            ]
        )
    section.notes.append(
        f"one machine ({os.cpu_count()} cores) runs every process: the shared estimator, builder, applier and "
        "memory processes bound what a second replica can add"
    )
    return section


def run(quick: bool = False) -> list[Section]:
    return [overhead_section(quick), throughput_section(quick)]


if __name__ == "__main__":
    for item in run(quick=bool(os.environ.get("AUTOPACK_BENCH_QUICK"))):
        print(item.title)
        for row in item.rows:
            print("  ", " | ".join(row))
        for note in item.notes:
            print("   ", note)
