"""Builder benchmarks: parse throughput per output format, and the builder's overhead per call.

Parse: a ~1 MB answer in each format (the same files: whole-file formats carry the content,
edit formats an edit per file), parsed in process; the baseline is ``json.loads`` of the 1 MB
full-file JSON answer, measured in the same run. A cut-off copy of each answer measures the
salvage path.

Overhead: a Messages API server on loopback that answers at once (``tests/builder/fake_llm``),
called three ways in the same run: a raw HTTP POST (httpx, the baseline), the anthropic SDK alone,
and ``Build`` over a real gRPC channel (prompt, SDK, parse, normalisation, one SQLite row with the
compressed answer, span). The ratio Build/raw is what the builder adds around one provider call.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import httpx
from autopack.builder.v1 import builder_pb2, builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_builder.builder import Builder
from autopack_builder.calls import CallRunner
from autopack_builder.formats import FORMATS
from autopack_builder.providers import AnthropicProvider, ProviderSet
from autopack_builder.routing import load_routing
from autopack_builder.service import SERVICE_FULL_NAME, BuilderServicer
from autopack_builder.store import LlmCallStore
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import ServiceBinding, create_server

from bench import Section
from tests.builder.fake_llm import TEST_API_KEY, FakeAnthropic, message_payload

TARGET_BYTES = 1_000_000
LINE = "    total = sum(value * weight for value, weight in zip(values, weights, strict=True))\n"


def _files(count: int, lines: int) -> list[tuple[str, str]]:
    return [(f"pkg/module_{index:04d}.py", f"# module {index}\n" + LINE * lines) for index in range(count)]


def answers() -> dict[str, str]:
    """About 1 MB per format, describing the same files."""
    files = _files(count=100, lines=115)
    full = json.dumps(
        {"summary": "bench", "files": [{"path": p, "mode": "create", "new_content": c} for p, c in files]}
    )
    ndjson = "\n".join(
        [json.dumps({"summary": "bench"})]
        + [json.dumps({"path": p, "mode": "create", "new_content": c}) for p, c in files]
    )
    search_replace = "SUMMARY: bench\n" + "".join(
        f"{p}\n<<<<<<< SEARCH\n{c}=======\n{c.replace('weight', 'factor')}>>>>>>> REPLACE\n\n"
        for p, c in files
    )
    original = files[0][1].splitlines(keepends=True)
    line_edits = json.dumps(
        {
            "summary": "bench",
            "files": [
                {
                    "path": p,
                    "mode": "edit",
                    "edits": [
                        {
                            "action": "replace",
                            "start_line": n,
                            "end_line": n,
                            "content": LINE.replace("weight", "w"),
                        }
                        for n in range(2, len(original), 2)
                    ],
                }
                for p, _c in files
            ],
        }
    )
    changed, context = original[1:31], original[31:61]  # 30 lines replaced, 30 of context
    hunk = (
        f"@@ -2,{len(changed) + len(context)} +2,{len(changed) + len(context)} @@\n"
        + "".join(f"-{line}" for line in changed)
        + "".join(f"+{line.replace('weight', 'w')}" for line in changed)
        + "".join(f" {line}" for line in context)
    )
    unified_diff = "SUMMARY: bench\n" + "".join(f"--- a/{p}\n+++ b/{p}\n{hunk}" for p, _ in files)
    return {
        "full_file_json": full,
        "ndjson": ndjson,
        "search_replace": search_replace,
        "line_edits": line_edits,
        "unified_diff": unified_diff,
    }


def _best_seconds(action: Callable[[], object], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        best = min(best, time.perf_counter() - started)
    return best


def parse_section(quick: bool) -> Section:
    repeats = 3 if quick else 10
    texts = answers()
    baseline = _best_seconds(lambda: json.loads(texts["full_file_json"]), repeats)
    section = Section(
        title="Builder: parse a ~1 MB answer (best of runs; baseline json.loads of the full-file answer)",
        columns=["format", "size", "operations", "MB/s", "x baseline", "cut-off: kept ops", "cut-off MB/s"],
    )
    mb = len(texts["full_file_json"]) / 1e6
    section.rows.append(
        ["json.loads (baseline)", f"{mb:.2f} MB", "-", f"{mb / baseline:.0f}", "1.00", "-", "-"]
    )
    for name, text in texts.items():
        parse = FORMATS[name].parse
        seconds = _best_seconds(lambda parse=parse, text=text: parse(text, False), repeats)
        operations = len(parse(text, False).operations)
        cut = text[: int(len(text) * 0.7)]
        cut_seconds = _best_seconds(lambda parse=parse, cut=cut: parse(cut, True), repeats)
        size = len(text) / 1e6
        section.rows.append(
            [
                name,
                f"{size:.2f} MB",
                str(operations),
                f"{size / seconds:.0f}",
                f"{seconds / baseline:.2f}",
                str(len(parse(cut, True).operations)),
                f"{len(cut) / 1e6 / cut_seconds:.0f}",
            ]
        )
    section.notes.append(
        "x baseline = parse time / json.loads time of the full-file answer (lower is faster)"
    )
    return section


def _median_ms(action: Callable[[], object], calls: int) -> float:
    for _ in range(3):
        action()  # warm connections and caches
    samples = []
    for _ in range(calls):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def overhead_section(quick: bool) -> Section:
    calls = 30 if quick else 200
    answer = json.dumps(
        {"summary": "s", "files": [{"path": "examples/pkg/a.py", "mode": "create", "new_content": LINE * 40}]}
    )
    fake = FakeAnthropic()
    fake.reply_messages(message_payload(answer, output_tokens=900))
    saved = {name: os.environ.get(name) for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_BASE_URL")}
    os.environ["ANTHROPIC_API_KEY"] = TEST_API_KEY
    os.environ["ANTHROPIC_BASE_URL"] = fake.base_url
    workdir = tempfile.TemporaryDirectory()
    engine = create_db_engine(f"sqlite:///{Path(workdir.name) / 'builder.db'}")
    upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")
    provider = AnthropicProvider(timeout_seconds=30)
    runner = CallRunner(ProviderSet({"anthropic": provider}), load_routing(), LlmCallStore(engine))
    server = create_server(
        [
            ServiceBinding(
                SERVICE_FULL_NAME,
                builder_pb2_grpc.add_BuilderServiceServicer_to_server,
                BuilderServicer(Builder(runner)),
            )
        ],
        "127.0.0.1:0",
    )
    channel = grpc.insecure_channel(server.address)
    stub = builder_pb2_grpc.BuilderServiceStub(channel)
    request = builder_pb2.BuildRequest(
        run_id="bench",
        phase=common_pb2.PhaseSpec(
            phase_id="p1",
            description="Add a module.",
            deliverables=["examples/pkg/a.py"],
            scope=common_pb2.Scope(paths=["examples/pkg/"]),
        ),
        context_files=[common_pb2.ContextFile(path="README.md", content="# pkg\n" * 50)],
        max_tokens=4096,
    )
    body = {
        "model": "claude-sonnet-4-6",
        "max_tokens": 4096,
        "system": "s" * 2000,
        "messages": [{"role": "user", "content": "u" * 3000}],
    }
    http = httpx.Client(headers={"x-api-key": TEST_API_KEY, "anthropic-version": "2023-06-01"})
    try:
        raw_ms = _median_ms(lambda: http.post(f"{fake.base_url}/v1/messages", json=body).json(), calls)
        sdk_ms = _median_ms(
            lambda: provider._client.messages.create(**body),
            calls,
        )
        build_ms = _median_ms(lambda: stub.Build(request, timeout=30), calls)
    finally:
        http.close()
        channel.close()
        server.stop(0)
        provider.close()
        engine.dispose()
        fake.close()
        workdir.cleanup()
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    section = Section(
        title=f"Builder: overhead per call, zero-latency local Messages API ({calls} calls, median)",
        columns=["path", "median ms", "x raw HTTP"],
    )
    for label, value in (
        ("raw HTTP POST (httpx, baseline)", raw_ms),
        ("anthropic SDK call", sdk_ms),
        ("Build over gRPC (prompt, SDK, parse, store, span)", build_ms),
    ):
        section.rows.append([label, f"{value:.2f}", f"{value / raw_ms:.2f}"])
    section.notes.append(f"builder overhead per call: {build_ms - raw_ms:.2f} ms over the raw round trip")
    return section


def run(quick: bool = False) -> list[Section]:
    return [parse_section(quick), overhead_section(quick)]


if __name__ == "__main__":
    for result in run(quick=bool(os.environ.get("AUTOPACK_BENCH_QUICK"))):
        print(result.title)
        for row in result.rows:
            print("  ", " | ".join(row))
        for note in result.notes:
            print("   ", note)
