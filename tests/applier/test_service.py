"""ApplierService over a real gRPC channel: every RPC, its errors, and its span attributes."""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from autopack.applier.v1 import applier_pb2, applier_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_applier.service import SERVICE_NAME, ApplierServicer, binding, build_servicer
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore
from autopack_common.clients import open_channel
from autopack_common.server import create_server
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from .conftest import make_repo, state, write

TIMEOUT = 30
CREATE, MODIFY, DELETE = common_pb2.FILE_MODE_CREATE, common_pb2.FILE_MODE_MODIFY, common_pb2.FILE_MODE_DELETE


@pytest.fixture
def servicer(tmp_path: Path, store: ApplierStore) -> ApplierServicer:
    settings = ApplierSettings(
        AUTOPACK_APPLIER_WORKSPACE_ROOT=tmp_path / "workspaces",
        AUTOPACK_APPLIER_PROTECTED_PATHS="config.py",
    )
    return build_servicer(settings, store)


@pytest.fixture
def stub(servicer: ApplierServicer) -> Iterator[applier_pb2_grpc.ApplierServiceStub]:
    running = create_server([binding(servicer)], "127.0.0.1:0")
    channel = open_channel("applier", running.address)
    yield applier_pb2_grpc.ApplierServiceStub(channel)
    channel.close()
    running.stop(0)


@pytest.fixture
def source(tmp_path: Path) -> Path:
    return make_repo(
        tmp_path / "example",
        {
            "calc.py": "def add(a, b):\n    return a + b\n",
            "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n",
            "README.md": "# example\n",
            "config.py": "SECRET_MODE = False\n",
        },
    )


@pytest.fixture
def workspace(stub: applier_pb2_grpc.ApplierServiceStub, source: Path) -> Path:
    reply = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-1", source_repo=str(source)), timeout=TIMEOUT
    )
    return Path(reply.workspace_path)


def op(path: str, mode: int, content: str = "") -> common_pb2.FileOperation:
    return common_pb2.FileOperation(path=path, mode=mode, new_content=content)


def apply_request(
    *operations: common_pb2.FileOperation, paths: tuple[str, ...] = ("calc.py", "tests/")
) -> applier_pb2.ApplyRequest:
    return applier_pb2.ApplyRequest(
        run_id="run-1",
        phase_id="p1-fix",
        attempt=1,
        scope=common_pb2.Scope(paths=list(paths), read_only_context=["README.md"]),
        operations=list(operations),
    )


def expect_error(code: grpc.StatusCode, call, request, *fragments: str) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as error:
        call(request, timeout=TIMEOUT)
    assert error.value.code() == code, error.value.details()
    details = error.value.details() or ""
    for fragment in fragments:
        assert fragment in details
    return details


def test_a_phase_end_to_end(stub: applier_pb2_grpc.ApplierServiceStub, source: Path) -> None:
    prepared = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-1", source_repo=str(source)), timeout=TIMEOUT
    )
    assert prepared.created and len(prepared.base_commit) == 40
    again = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-1", source_repo=str(source)), timeout=TIMEOUT
    )
    assert (again.created, again.base_commit, again.workspace_path) == (
        False,
        prepared.base_commit,
        prepared.workspace_path,
    )

    read = stub.ReadFiles(
        applier_pb2.ReadFilesRequest(run_id="run-1", paths=["calc.py", "tests/", "nope.py"]), timeout=TIMEOUT
    )
    assert [item.path for item in read.files] == ["calc.py", "tests/test_calc.py"]
    assert read.files[0].line_count == 2 and list(read.missing) == ["nope.py"]
    hashes = stub.ReadFiles(
        applier_pb2.ReadFilesRequest(run_id="run-1", paths=["calc.py", "tests/"], hashes_only=True),
        timeout=TIMEOUT,
    )
    assert [(f.path, f.content, f.line_count) for f in hashes.files] == [
        (f.path, "", f.line_count) for f in read.files
    ]
    assert (
        [f.content_sha256 for f in hashes.files]
        == [f.content_sha256 for f in read.files]
        == [hashlib.sha256(f.content.encode()).hexdigest() for f in read.files]
    )

    applied = stub.Apply(
        apply_request(
            op("calc.py", MODIFY, "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"),
            op(
                "tests/test_sub.py",
                CREATE,
                "from calc import sub\n\n\ndef test_sub():\n    assert sub(5, 3) == 2\n",
            ),
        ),
        timeout=TIMEOUT,
    )
    assert applied.previous_savepoint == prepared.base_commit
    assert list(applied.changed_paths) == ["calc.py", "tests/test_sub.py"]
    assert (applied.lines_added, applied.lines_removed) == (9, 0)

    checks = applier_pb2.RunChecksRequest(
        run_id="run-1", command=["python", "-m", "pytest", "-q"], timeout_seconds=60
    )
    result = stub.RunChecks(checks, timeout=TIMEOUT + 60)
    assert (result.exit_code, result.passed, result.timed_out) == (0, True, False), result.output_tail
    assert "2 passed" in result.output_tail and result.duration_ms > 0

    broken = stub.Apply(
        apply_request(
            op("calc.py", MODIFY, "def add(a, b):\n    return 0\n\n\ndef sub(a, b):\n    return a - b\n")
        ),
        timeout=TIMEOUT,
    )
    assert list(broken.changed_paths) == ["calc.py"]  # the check's .pytest_cache stays out of savepoints
    failing = stub.RunChecks(checks, timeout=TIMEOUT + 60)
    assert not failing.passed and failing.exit_code == 1 and "failed" in failing.output_tail

    rolled = stub.Rollback(
        applier_pb2.RollbackRequest(run_id="run-1", savepoint=applied.savepoint), timeout=TIMEOUT
    )
    assert (rolled.head, rolled.previous_head) == (applied.savepoint, broken.savepoint)
    assert stub.RunChecks(checks, timeout=TIMEOUT + 60).passed


def test_write_outside_scope_is_invalid_argument_and_changes_nothing(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    before = state(workspace)
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Apply,
        apply_request(op("calc.py", MODIFY, "x = 1\n"), op("README.md", MODIFY, "pwned\n")),
        "operations[1].path",
        "'README.md' is read-only context",
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Apply,
        apply_request(op("../outside.py", CREATE, "x\n")),
        "operations[0].path",
        "'..'",
    )
    expect_error(
        grpc.StatusCode.FAILED_PRECONDITION,
        stub.Apply,
        apply_request(op("config.py", MODIFY, "SECRET_MODE = True\n"), paths=("./",)),
        "config.py is a protected path (configured, rule 'config.py')",
        "approval request",
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Apply,
        apply_request(op("calc.py", common_pb2.FILE_MODE_UNSPECIFIED, "x\n")),
        "operations[0].mode",
    )
    assert state(workspace) == before
    assert not (workspace.parent / "outside.py").exists()


def test_unknown_runs_are_not_found_for_every_rpc(stub: applier_pb2_grpc.ApplierServiceStub) -> None:
    calls = [
        (stub.ReadFiles, applier_pb2.ReadFilesRequest(run_id="ghost", paths=["a.py"])),
        (
            stub.Apply,
            applier_pb2.ApplyRequest(run_id="ghost", phase_id="p1", scope=common_pb2.Scope(paths=["a"])),
        ),
        (stub.RunChecks, applier_pb2.RunChecksRequest(run_id="ghost", command=["python", "-V"])),
        (stub.Rollback, applier_pb2.RollbackRequest(run_id="ghost", savepoint="a" * 40)),
        (stub.DetectToolchain, applier_pb2.DetectToolchainRequest(run_id="ghost")),
        (stub.ListApprovalRequests, applier_pb2.ListApprovalRequestsRequest(run_id="ghost")),
        (stub.CheckDeliverables, applier_pb2.CheckDeliverablesRequest(run_id="ghost", deliverables=["a.py"])),
        (stub.CleanupWorkspace, applier_pb2.CleanupWorkspaceRequest(run_id="ghost")),
    ]
    for call, request in calls:
        expect_error(grpc.StatusCode.NOT_FOUND, call, request, "run_id", "'ghost'")


def test_bad_input_is_invalid_argument_naming_the_field(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PrepareWorkspace,
        applier_pb2.PrepareWorkspaceRequest(run_id="../../etc", source_repo="/tmp"),
        "run_id",
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.PrepareWorkspace,
        applier_pb2.PrepareWorkspaceRequest(run_id="run-2", source_repo="/definitely/not/here"),
        "source_repo",
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.ReadFiles,
        applier_pb2.ReadFilesRequest(run_id="run-1", paths=["/etc/passwd"]),
        "paths[0]",
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.Rollback,
        applier_pb2.RollbackRequest(run_id="run-1", savepoint="HEAD~1"),
        "savepoint",
    )
    expect_error(
        grpc.StatusCode.NOT_FOUND,
        stub.Rollback,
        applier_pb2.RollbackRequest(run_id="run-1", savepoint="f" * 40),
        "savepoint",
    )
    expect_error(
        grpc.StatusCode.INVALID_ARGUMENT,
        stub.RunChecks,
        applier_pb2.RunChecksRequest(run_id="run-1", command=[]),
        "command",
    )


def test_disallowed_command_is_permission_denied_and_nothing_runs(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stub.RunChecks,
        applier_pb2.RunChecksRequest(run_id="run-1", command=["bash", "-c", "touch pwned"]),
        "command[0]",
        "'bash'",
    )
    expect_error(
        grpc.StatusCode.PERMISSION_DENIED,
        stub.RunChecks,
        applier_pb2.RunChecksRequest(run_id="run-1", command=["git", "reset", "--hard", "HEAD~1"]),
        "'git'",
    )
    assert not (workspace / "pwned").exists()


def test_a_check_past_its_timeout_is_killed(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    result = stub.RunChecks(
        applier_pb2.RunChecksRequest(
            run_id="run-1",
            command=["python", "-c", "import time; print('waiting', flush=True); time.sleep(60)"],
            timeout_seconds=1,
        ),
        timeout=TIMEOUT,
    )
    assert (result.exit_code, result.passed, result.timed_out) == (-1, False, True)
    assert "waiting" in result.output_tail


def test_health_reports_the_applier_serving(servicer: ApplierServicer) -> None:
    running = create_server([binding(servicer)], "127.0.0.1:0")
    try:
        with grpc.insecure_channel(running.address) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=TIMEOUT
            )
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        running.stop(0)


class _Context:
    """Just enough ServicerContext for calling the servicer inside a test span."""

    def time_remaining(self) -> float | None:
        return None


def test_server_span_gets_counts_ids_and_exit_codes_but_no_contents(
    servicer: ApplierServicer, source: Path
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    context = _Context()
    servicer.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-1", source_repo=str(source)), context
    )
    secret = "TOP_SECRET_CONTENT = 42\n"
    with tracer.start_as_current_span("Apply"):
        applied = servicer.Apply(apply_request(op("tests/test_more.py", CREATE, secret)), context)
    with tracer.start_as_current_span("RunChecks"):
        servicer.RunChecks(
            applier_pb2.RunChecksRequest(run_id="run-1", command=["python", "-c", "exit(4)"]), context
        )
    apply_span, checks_span = exporter.get_finished_spans()
    assert apply_span.attributes is not None and checks_span.attributes is not None
    assert apply_span.attributes["autopack.applier.changed_files"] == 1
    assert apply_span.attributes["autopack.applier.savepoint"] == applied.savepoint
    assert checks_span.attributes["autopack.checks.exit_code"] == 4
    assert checks_span.attributes["autopack.checks.executable"] == "python"
    assert not any("TOP_SECRET" in str(value) for value in apply_span.attributes.values())


def test_settings_parse_comma_separated_lists(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPACK_APPLIER_ALLOWED_COMMANDS", "python, pytest,ruff")
    monkeypatch.setenv("AUTOPACK_APPLIER_PROTECTED_PATHS", "config.py,secrets/")
    monkeypatch.setenv("AUTOPACK_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AUTOPACK_APPLIER_WORKSPACE_ROOT", raising=False)
    settings = ApplierSettings()
    assert settings.allowed_commands == ["python", "pytest", "ruff"]
    assert settings.protected_paths == ["config.py", "secrets/"]
    assert settings.resolved_workspace_root() == (tmp_path / "data" / "workspaces").resolve()
    assert ApplierSettings().check_timeout_seconds == 300
    monkeypatch.setenv("AUTOPACK_APPLIER_ALLOWED_PATHS", ".autopack/reports/, docs/db/")
    monkeypatch.setenv("AUTOPACK_APPLIER_DELETION_BLOCK_LINES", "300")
    settings = ApplierSettings()
    assert settings.allowed_paths == [".autopack/reports/", "docs/db/"]
    assert (
        settings.deletion_savepoint_lines,
        settings.deletion_notify_lines,
        settings.deletion_block_lines,
    ) == (
        50,
        100,
        300,
    )
    assert settings.savepoint_retention == 3
    monkeypatch.setenv("AUTOPACK_APPLIER_DELETION_BLOCK_LINES", "80")
    with pytest.raises(ValueError, match="DELETION_NOTIFY_LINES <= AUTOPACK_APPLIER_DELETION_BLOCK_LINES"):
        ApplierSettings()
    monkeypatch.setenv("AUTOPACK_APPLIER_DELETION_BLOCK_LINES", "200")
    monkeypatch.setenv("AUTOPACK_APPLIER_SAVEPOINT_RETENTION", "1")
    with pytest.raises(ValueError, match="SAVEPOINT_RETENTION"):
        ApplierSettings()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_module_entry_point_migrates_serves_and_stops_on_sigterm(tmp_path: Path, source: Path) -> None:
    address = f"127.0.0.1:{_free_port()}"
    env = {
        **os.environ,
        "AUTOPACK_APPLIER_ADDR": address,
        "AUTOPACK_DATA_DIR": str(tmp_path / "data"),
        "AUTOPACK_TRACE_DIR": str(tmp_path / "traces"),
    }
    env.pop("DATABASE_URL", None)
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "autopack_applier"], env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL
    )
    try:
        channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(channel).result(timeout=30)
        stub = applier_pb2_grpc.ApplierServiceStub(channel)
        reply = stub.PrepareWorkspace(
            applier_pb2.PrepareWorkspaceRequest(run_id="run-main", source_repo=str(source)), timeout=TIMEOUT
        )
        assert Path(reply.workspace_path) == (tmp_path / "data" / "workspaces" / "run-main").resolve()
        assert (tmp_path / "data" / "applier.db").exists()
        channel.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            assert process.wait(timeout=20) == 0
        finally:
            if process.poll() is None:
                process.kill()
            stderr = process.stderr.read().decode() if process.stderr else ""
    assert "stopped" in stderr


def test_prepare_from_a_subdirectory_and_read_everything(
    stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "mono",
        {"apps/api/main.py": "print(1)\n", "apps/api/.env": "TOKEN=x\n", ".gitignore": ".env\n"},
    )
    write(repo, {"apps/api/new.py": "N = 1\n"})
    reply = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-sub", source_repo=str(repo / "apps/api")),
        timeout=TIMEOUT,
    )
    read = stub.ReadFiles(applier_pb2.ReadFilesRequest(run_id="run-sub", paths=["./"]), timeout=TIMEOUT)
    assert reply.created and [item.path for item in read.files] == ["main.py", "new.py"]
