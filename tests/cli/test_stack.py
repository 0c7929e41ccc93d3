import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from autopack_cli.stack import (
    StackError,
    StackPaths,
    read_pid,
    record_stack,
    service_environment,
    start_service,
    wait_until_serving,
)


def test_each_service_gets_absolute_shared_dirs_and_every_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("AUTOPACK_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("AUTOPACK_DATA_DIR", raising=False)
    monkeypatch.delenv("AUTOPACK_TRACE_DIR", raising=False)
    monkeypatch.setenv("AUTOPACK_BUILDER_ADDR", "127.0.0.1:61000")
    env = service_environment("estimator", StackPaths.from_env())
    assert env["AUTOPACK_DATA_DIR"] == str(tmp_path / "data")
    assert env["AUTOPACK_TRACE_DIR"] == str(tmp_path / "traces")
    assert env["AUTOPACK_BUILDER_ADDR"] == "127.0.0.1:61000"
    assert env["AUTOPACK_ORCHESTRATOR_ADDR"] == "127.0.0.1:50051"


def test_a_service_specific_database_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared")
    monkeypatch.setenv("AUTOPACK_ESTIMATOR_DATABASE_URL", "postgresql://own")
    paths = StackPaths.from_env()
    assert service_environment("estimator", paths)["DATABASE_URL"] == "postgresql://own"
    assert service_environment("builder", paths)["DATABASE_URL"] == "postgresql://shared"


def _write_pid(paths: StackPaths, service: str, pid: int) -> None:
    paths.pid_file(service).parent.mkdir(parents=True, exist_ok=True)
    paths.pid_file(service).write_text(str(pid))


@pytest.fixture
def no_explicit_state_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.delenv("AUTOPACK_STATE_DIR", raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg-state"))
    return tmp_path


def test_a_running_stack_is_found_from_a_subdirectory(
    no_explicit_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = StackPaths(no_explicit_state_dir / "project" / ".autopack")
    _write_pid(stack, "estimator", os.getpid())  # a live process stands in for the service
    nested = no_explicit_state_dir / "project" / "src" / "deep"
    nested.mkdir(parents=True)
    monkeypatch.chdir(nested)
    assert StackPaths.from_env().root == stack.root


def test_the_stack_up_recorded_is_found_from_an_unrelated_directory(
    no_explicit_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stack = StackPaths(no_explicit_state_dir / "project" / ".autopack")
    _write_pid(stack, "orchestrator", os.getpid())
    record_stack(stack)
    elsewhere = no_explicit_state_dir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert StackPaths.from_env().root == stack.root


def test_a_stopped_stack_is_not_found_and_the_local_default_applies(
    no_explicit_state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped = StackPaths(no_explicit_state_dir / "project" / ".autopack")
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    _write_pid(stopped, "estimator", finished.pid)
    record_stack(stopped)
    elsewhere = no_explicit_state_dir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert StackPaths.from_env().root == elsewhere / ".autopack"


def test_an_exited_child_that_was_not_reaped_counts_as_stopped(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / ".autopack")
    child = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, still a zombie
    _write_pid(paths, "builder", child.pid)
    assert read_pid(paths, "builder") is None


def test_up_reports_a_service_that_exits_during_start_up_instead_of_waiting(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("AUTOPACK_ESTIMATOR_ADDR", f"127.0.0.1:{port}")
    monkeypatch.setenv("AUTOPACK_ESTIMATOR_DATABASE_URL", "nosuchdriver://nowhere")
    paths = StackPaths(tmp_path / ".autopack")
    start_service("estimator", paths)
    with pytest.raises(StackError, match="estimator exited during start-up"):
        wait_until_serving("estimator", paths, timeout=300)
