"""Check commands: allowlist, clean environment, real pytest, timeouts that kill the whole group."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest
from autopack_applier.checks import (
    DEFAULT_ALLOWED_COMMANDS,
    CheckRunner,
    check_environment_names,
    tail_text,
)
from autopack_common.errors import InvalidArgument, PermissionDenied

from .conftest import write


@pytest.fixture
def runner() -> CheckRunner:
    return CheckRunner()


def test_default_allowlist_excludes_shells_and_git() -> None:
    assert {"python", "python3", "pytest", "ruff", "make"} <= set(DEFAULT_ALLOWED_COMMANDS)
    assert not {"git", "sh", "bash", "curl"} & set(DEFAULT_ALLOWED_COMMANDS)


@pytest.mark.parametrize("command", [["bash", "-c", "id"], ["git", "reset", "--hard"], ["rm", "-rf", "/"]])
def test_disallowed_executables_are_refused_by_name(runner: CheckRunner, command: list[str]) -> None:
    with pytest.raises(PermissionDenied, match=f"^command\\[0\\]: executable '{command[0]}' is not on"):
        runner.prepare(command, 0)


@pytest.mark.parametrize("name", ["/usr/bin/python3", "./pytest", "bin/ruff", ".."])
def test_paths_to_executables_are_refused(runner: CheckRunner, name: str) -> None:
    with pytest.raises(PermissionDenied, match="bare executable name"):
        runner.prepare([name, "--version"], 0)


def test_bad_arguments_and_timeouts(runner: CheckRunner) -> None:
    with pytest.raises(InvalidArgument, match=r"^command:"):
        runner.prepare([], 0)
    with pytest.raises(InvalidArgument, match=r"^command\[1\]:"):
        runner.prepare(["python", "a\x00b"], 0)
    with pytest.raises(InvalidArgument, match=r"^timeout_seconds:"):
        runner.prepare(["python", "-V"], -1)
    with pytest.raises(InvalidArgument, match=r"^timeout_seconds:"):
        runner.prepare(["python", "-V"], 100_000)
    assert runner.prepare(["python", "-V"], 0).timeout_seconds == 300
    assert runner.prepare(["python", "-V"], 7).timeout_seconds == 7


def test_python_means_the_applier_interpreter(runner: CheckRunner) -> None:
    assert runner.prepare(["python3", "-V"], 0).argv == (sys.executable, "-V")


def test_environment_is_sanitized(
    runner: CheckRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-should-not-leak")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-should-not-leak")
    monkeypatch.setenv("DATABASE_URL", "postgresql://user:pw@db/x")
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    script = "import json, os; print(json.dumps(dict(os.environ)))"
    result = runner.run(runner.prepare(["python", "-c", script], 30), tmp_path)
    assert result.passed, result.output_tail
    env = json.loads(result.output_tail)
    assert not {"ANTHROPIC_API_KEY", "OPENAI_API_KEY", "DATABASE_URL"} & set(env)
    assert env["PYTHONDONTWRITEBYTECODE"] == "1" and env["LC_ALL"] == "C.UTF-8"
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)


def test_credential_like_passthrough_names_are_refused() -> None:
    assert "MY_TOOL_HOME" in check_environment_names(["MY_TOOL_HOME"])
    for name in ["ANTHROPIC_BASE_URL", "GITHUB_TOKEN", "DB_PASSWORD", "SERVICE_API_KEY"]:
        with pytest.raises(ValueError, match="credential"):
            check_environment_names([name])


def test_real_pytest_passes_and_fails_on_a_tiny_repository(runner: CheckRunner, tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "calc.py": "def add(a, b):\n    return a + b\n",
            "tests/test_calc.py": "from calc import add\n\n\ndef test_add():\n    assert add(2, 2) == 4\n",
        },
    )
    command = runner.prepare(["python", "-m", "pytest", "-q", "-p", "no:cacheprovider"], 60)
    passed = runner.run(command, tmp_path)
    assert (passed.exit_code, passed.passed, passed.timed_out) == (0, True, False)
    assert "1 passed" in passed.output_tail
    assert not list(tmp_path.rglob("__pycache__"))  # PYTHONDONTWRITEBYTECODE reached the check

    (tmp_path / "calc.py").write_text("def add(a, b):\n    return a - b\n")
    failed = runner.run(command, tmp_path)
    assert failed.exit_code == 1 and not failed.passed
    assert "1 failed" in failed.output_tail and "assert 0 == 4" in failed.output_tail


def test_timeout_kills_the_whole_process_group(runner: CheckRunner, tmp_path: Path) -> None:
    child_pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(child_pid_file)!r}, 'w').write(str(child.pid))\n"
        "print('started', flush=True)\n"
        "time.sleep(60)\n"
    )
    started = time.monotonic()
    result = runner.run(runner.prepare(["python", "-c", script], 1), tmp_path)
    assert time.monotonic() - started < 10
    assert (result.exit_code, result.passed, result.timed_out) == (-1, False, True)
    assert result.output_tail.startswith("started\n") and "killed after the 1 s timeout" in result.output_tail
    assert result.duration_ms >= 1000
    _assert_gone(int(child_pid_file.read_text()))


def test_background_processes_do_not_outlive_a_finished_check(runner: CheckRunner, tmp_path: Path) -> None:
    pid_file = tmp_path / "daemon.pid"
    script = (
        "import subprocess, sys\n"
        "daemon = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(daemon.pid))\n"
    )
    started = time.monotonic()
    result = runner.run(runner.prepare(["python", "-c", script], 30), tmp_path)
    assert result.passed and time.monotonic() - started < 10
    _assert_gone(int(pid_file.read_text()))


def test_output_tail_keeps_the_end(runner: CheckRunner, tmp_path: Path) -> None:
    script = "import sys\nfor i in range(5000): print('line', i)\nprint('boom', file=sys.stderr); sys.exit(3)"
    result = runner.run(runner.prepare(["python", "-c", script], 30), tmp_path)
    lines = result.output_tail.splitlines()
    assert result.exit_code == 3 and len(lines) == 60
    assert lines[-1] == "boom" and lines[-2] == "line 4999"
    assert len(tail_text(b"x" * 20_000)) == 8192
    assert tail_text("é".encode() * 5000, max_bytes=11) == "é" * 5  # cut on a character boundary


def _assert_gone(pid: int) -> None:
    """The process no longer runs (it may linger briefly as a zombie until reaped)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return
        if "\nState:\tZ" in status:
            return
        time.sleep(0.05)
    pytest.fail(f"process {pid} is still running")
