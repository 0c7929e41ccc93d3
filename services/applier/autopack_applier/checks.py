"""Allowlisted validation commands, run in a workspace with a clean environment.

A check is an argument vector, never a shell line. Its executable must be a bare name on
the allowlist; "python"/"python3" mean the applier's own interpreter, so the tools
installed next to the applier (pytest, ruff) are what a plan's checks get. The allowlist
is a coarse guard against running arbitrary programs, not a sandbox: an allowed tool still
executes the repository's code (conftest.py, Makefiles, package scripts).

``git`` is deliberately not allowed by default: the applier owns the workspace history
(savepoints), and a check that commits, resets or rewrites config would silently break
Rollback's guarantees. Shells are not allowed for the same reason argv is required.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from autopack_common.errors import FailedPrecondition, InvalidArgument, PermissionDenied

from autopack_applier.withholding import redact

DEFAULT_ALLOWED_COMMANDS: tuple[str, ...] = (
    "python",
    "python3",
    "pytest",
    "ruff",
    "mypy",
    "make",
    "npm",
    "node",
    "go",
    "cargo",
)
PYTHON_NAMES = frozenset({"python", "python3"})

# Variables a check inherits; everything else (API keys, DATABASE_URL, OTEL_*, ...) is dropped.
BASE_ENV_PASSTHROUGH: tuple[str, ...] = (
    "PATH",
    "HOME",
    "LANG",
    "LANGUAGE",
    "TZ",
    "TMPDIR",
    "USER",
    "LOGNAME",
    "TERM",
    "XDG_CACHE_HOME",
    "GOPATH",
    "GOCACHE",
    "GOMODCACHE",
    "CARGO_HOME",
    "RUSTUP_HOME",
)
# Names that look like credentials are never passed on, even when configured.
SECRET_NAME = re.compile(
    r"(KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL|AUTH)|^(ANTHROPIC|OPENAI|AWS|AZURE|GOOGLE|GCP|GITHUB)_",
    re.IGNORECASE,
)

TAIL_LINES = 60
TAIL_BYTES = 8 * 1024
_BUFFER_BYTES = 64 * 1024
_READ_CHUNK = 8192


@dataclass(frozen=True)
class CheckCommand:
    """A validated check: the argv to execute (executable resolved) and its time limit."""

    argv: tuple[str, ...]
    executable: str
    timeout_seconds: float


@dataclass(frozen=True)
class CheckResult:
    """How a check ended; ``output_tail`` is the end of combined stdout and stderr."""

    exit_code: int
    passed: bool
    duration_ms: int
    output_tail: str
    timed_out: bool


def check_environment_names(extra: Iterable[str]) -> tuple[str, ...]:
    """Variable names checks inherit: the base list plus ``extra``, refusing credential-like names."""
    names = list(BASE_ENV_PASSTHROUGH)
    for name in extra:
        name = name.strip()
        if not name:
            continue
        if SECRET_NAME.search(name):
            raise ValueError(f"refusing to pass {name!r} to checks: it looks like a credential")
        names.append(name)
    return tuple(dict.fromkeys(names))


class CheckRunner:
    """Validates and runs check commands."""

    def __init__(
        self,
        allowed_commands: Sequence[str] = DEFAULT_ALLOWED_COMMANDS,
        *,
        default_timeout_seconds: float = 300.0,
        max_timeout_seconds: float = 3600.0,
        env_passthrough: Sequence[str] = BASE_ENV_PASSTHROUGH,
    ) -> None:
        self.allowed = frozenset(name.strip() for name in allowed_commands if name.strip())
        self.default_timeout = default_timeout_seconds
        self.max_timeout = max_timeout_seconds
        self.env_passthrough = tuple(env_passthrough)
        # The interpreter's own bin directory first, so "pytest" or a Makefile's "python"
        # finds the tools installed with the applier rather than whatever PATH has.
        self._tool_dir = str(Path(sys.executable).parent)

    def prepare(self, command: Sequence[str], timeout_seconds: int) -> CheckCommand:
        """Validate ``command`` and resolve its executable; nothing runs here."""
        if not command:
            raise InvalidArgument(
                "command", "is required (an argument vector such as ['python', '-m', 'pytest'])"
            )
        for index, argument in enumerate(command):
            if "\x00" in argument:
                raise InvalidArgument(f"command[{index}]", "contains a NUL byte")
        name = command[0]
        if not name or "/" in name or "\\" in name or name in (".", ".."):
            raise PermissionDenied(
                f"command[0]: {name!r} is not allowed: give a bare executable name from the allowlist "
                f"({', '.join(sorted(self.allowed))})"
            )
        if name not in self.allowed:
            raise PermissionDenied(
                f"command[0]: executable {name!r} is not on the applier's allowlist "
                f"({', '.join(sorted(self.allowed))})"
            )
        if timeout_seconds < 0:
            raise InvalidArgument("timeout_seconds", "must not be negative (0 means the default)")
        if timeout_seconds > self.max_timeout:
            raise InvalidArgument("timeout_seconds", f"must be at most {self.max_timeout:g} seconds")
        executable = self._resolve(name)
        return CheckCommand(
            argv=(executable, *command[1:]),
            executable=name,
            timeout_seconds=float(timeout_seconds) if timeout_seconds else self.default_timeout,
        )

    def run(
        self, check: CheckCommand, cwd: Path, withhold: Callable[[], Iterable[str]] | None = None
    ) -> CheckResult:
        """Run ``check`` in ``cwd`` in its own process group; kill the group at the timeout.

        ``withhold`` gives, once the check has ended (so files it created count), the secret
        values to remove from the output before its tail is cut.
        """
        started = time.monotonic()
        try:
            process = subprocess.Popen(
                check.argv,
                cwd=cwd,
                env=self.environment(),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as error:
            raise FailedPrecondition(
                f"command[0]: could not start {check.executable!r}: {error.strerror}"
            ) from None
        assert process.stdout is not None
        buffer = _TailBuffer()
        reader = threading.Thread(target=buffer.drain, args=(process.stdout,), daemon=True)
        reader.start()
        try:
            timed_out = not _wait_unreaped(process.pid, check.timeout_seconds)
        finally:
            # The leader is still unreaped, so its group id cannot have been reused: killing
            # the group also ends what the check left running in the background, which would
            # otherwise hold the output pipe open and outlive the check.
            _kill_group(process.pid)
            process.wait()
        reader.join(timeout=5)
        duration_ms = int((time.monotonic() - started) * 1000)
        output = buffer.snapshot()
        if withhold is not None:
            output = redact(output, withhold())
        tail = tail_text(output)
        if timed_out:
            note = f"[autopack] killed after the {check.timeout_seconds:g} s timeout"
            tail = f"{tail}\n{note}" if tail else note
        exit_code = -1 if timed_out else process.returncode
        return CheckResult(
            exit_code=exit_code,
            passed=exit_code == 0 and not timed_out,
            duration_ms=duration_ms,
            output_tail=tail,
            timed_out=timed_out,
        )

    def environment(self) -> dict[str, str]:
        """The sanitized environment of a check: passthrough names only, plus Python hygiene."""
        env = {name: os.environ[name] for name in self.env_passthrough if name in os.environ}
        env.update({key: value for key, value in os.environ.items() if key.startswith("LC_")})
        env["PATH"] = os.pathsep.join(filter(None, [self._tool_dir, env.get("PATH", os.defpath)]))
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _resolve(self, name: str) -> str:
        if name in PYTHON_NAMES:
            return sys.executable
        search = os.pathsep.join(filter(None, [self._tool_dir, os.environ.get("PATH", os.defpath)]))
        found = shutil.which(name, path=search)
        if found is None:
            raise FailedPrecondition(
                f"command[0]: {name!r} is allowed but not installed where the applier runs"
            )
        return found


def tail_text(output: bytes, max_lines: int = TAIL_LINES, max_bytes: int = TAIL_BYTES) -> str:
    """The last ``max_lines`` lines of ``output``, at most ``max_bytes`` bytes of UTF-8."""
    text = output.decode("utf-8", "replace").rstrip("\n")
    lines = text.splitlines()[-max_lines:]
    tail = "\n".join(lines)
    encoded = tail.encode("utf-8")
    if len(encoded) > max_bytes:
        tail = encoded[-max_bytes:].decode("utf-8", "ignore")
    return tail


def _wait_unreaped(pid: int, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``pid`` to exit without reaping it; False on timeout."""
    deadline = time.monotonic() + timeout
    delay = 0.005
    while True:
        info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if info is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(delay, remaining))
        delay = min(delay * 2, 0.05)


class _TailBuffer:
    """The last ~64 KB of a stream (the tail is all we report), safe to read while it fills.

    A process that escaped the group may keep the pipe open after the check ends, so the
    reader thread can still be appending when the result is assembled.
    """

    def __init__(self) -> None:
        self._chunks: deque[bytes] = deque()
        self._kept = 0
        self._lock = threading.Lock()

    def drain(self, stream: IO[bytes]) -> None:
        descriptor = stream.fileno()
        with stream:
            while chunk := os.read(descriptor, _READ_CHUNK):
                with self._lock:
                    self._chunks.append(chunk)
                    self._kept += len(chunk)
                    while self._kept - len(self._chunks[0]) >= _BUFFER_BYTES:
                        self._kept -= len(self._chunks.popleft())

    def snapshot(self) -> bytes:
        with self._lock:
            return b"".join(self._chunks)


def _kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
