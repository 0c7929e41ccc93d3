"""Start and stop the five services as local processes (the embedded default stack).

Each service runs as ``python -m autopack_<svc>`` with its log in
``<state>/logs/<svc>.log`` and its pid in ``<state>/run/<svc>.pid``; ``up`` waits
until every one reports SERVING on the standard health service (and says so at once
when a service exits during start-up).

Every command finds the running stack from any directory: ``AUTOPACK_STATE_DIR`` when set,
else the nearest ``.autopack`` with live pids in the current directory or a parent, else the
stack ``up`` last started (its state dir is recorded in the user's state directory).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autopack_common.clients import NotServing
from autopack_common.clients import is_serving as health_check
from autopack_common.clients import wait_until_serving as wait_for_health
from autopack_common.settings import address_env_var, service_address

# Start order: dependencies of the orchestrator first.
STACK_ORDER = ("estimator", "builder", "applier", "memory", "orchestrator")

HEALTH_NAMES = {
    "estimator": "autopack.estimator.v1.EstimatorService",
    "builder": "autopack.builder.v1.BuilderService",
    "applier": "autopack.applier.v1.ApplierService",
    "memory": "autopack.memory.v1.MemoryService",
    "orchestrator": "autopack.orchestrator.v1.OrchestratorService",
}


@dataclass(frozen=True)
class StackPaths:
    """Where the local stack keeps its state; all absolute so every process agrees."""

    root: Path

    @classmethod
    def from_env(cls) -> StackPaths:
        """The stack's state dir: explicit, else the one that is running, else ``./.autopack``."""
        explicit = os.environ.get("AUTOPACK_STATE_DIR")
        if explicit:
            return cls(Path(explicit).resolve())
        default = cls(Path(DEFAULT_STATE_DIR_NAME).resolve())
        for directory in (Path.cwd(), *Path.cwd().parents):
            candidate = cls(directory / DEFAULT_STATE_DIR_NAME)
            if candidate.has_live_service():
                return candidate
        recorded = recorded_stack()
        if recorded is not None and recorded.has_live_service():
            return recorded
        return default

    def has_live_service(self) -> bool:
        """True when any service of this state dir has a live process."""
        return any(read_pid(self, service) is not None for service in STACK_ORDER)

    @property
    def data_dir(self) -> Path:
        return Path(os.environ.get("AUTOPACK_DATA_DIR") or self.root / "data").resolve()

    @property
    def trace_dir(self) -> Path:
        return Path(os.environ.get("AUTOPACK_TRACE_DIR") or self.root / "traces").resolve()

    def pid_file(self, service: str) -> Path:
        return self.root / "run" / f"{service}.pid"

    def log_file(self, service: str) -> Path:
        return self.root / "logs" / f"{service}.log"


DEFAULT_STATE_DIR_NAME = ".autopack"


def stack_pointer_file() -> Path:
    """Where ``up`` records the state dir of the stack it started (XDG state directory)."""
    state_home = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state_home) / "autopack" / "stack"


def record_stack(paths: StackPaths) -> None:
    """Remember ``paths`` so commands run from other directories find this stack."""
    pointer = stack_pointer_file()
    try:
        pointer.parent.mkdir(parents=True, exist_ok=True)
        pointer.write_text(str(paths.root))
    except OSError:
        pass  # a read-only home only costs the convenience; explicit AUTOPACK_STATE_DIR still works


def recorded_stack() -> StackPaths | None:
    try:
        return StackPaths(Path(stack_pointer_file().read_text().strip()))
    except (OSError, ValueError):
        return None


def service_environment(service: str, paths: StackPaths) -> dict[str, str]:
    """The environment of one service process.

    ``AUTOPACK_<SVC>_DATABASE_URL`` gives a service its own database; otherwise
    ``DATABASE_URL`` applies to all (each keeps its own tables and version table),
    and without either every service uses its own SQLite file in the data dir.
    """
    env = dict(os.environ)
    env["AUTOPACK_DATA_DIR"] = str(paths.data_dir)
    env["AUTOPACK_TRACE_DIR"] = str(paths.trace_dir)
    own_database = os.environ.get(f"AUTOPACK_{service.upper()}_DATABASE_URL")
    if own_database:
        env["DATABASE_URL"] = own_database
    for name in STACK_ORDER:
        env[address_env_var(name)] = service_address(name)
    return env


def is_serving(service: str, timeout: float = 1.0) -> bool:
    """True when the service answers SERVING on its health service."""
    return health_check(service_address(service), HEALTH_NAMES[service], timeout)


def _pid_alive(pid: int) -> bool:
    _reap(pid)  # a child of ours that exited is a zombie until reaped, and zombies answer kill(0)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_pid(paths: StackPaths, service: str) -> int | None:
    try:
        pid = int(paths.pid_file(service).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


def start_service(service: str, paths: StackPaths) -> int:
    """Launch one service in its own session (so a Ctrl-C in the shell does not kill it)."""
    paths.log_file(service).parent.mkdir(parents=True, exist_ok=True)
    paths.pid_file(service).parent.mkdir(parents=True, exist_ok=True)
    with paths.log_file(service).open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", f"autopack_{service}"],
            env=service_environment(service, paths),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    paths.pid_file(service).write_text(str(process.pid))
    return process.pid


class StackError(RuntimeError):
    """The stack could not be brought up; the message names the service and its log."""


def wait_until_serving(
    service: str, paths: StackPaths, timeout: float, on_wait: Callable[[], None] | None = None
) -> None:
    try:
        wait_for_health(
            service_address(service),
            HEALTH_NAMES[service],
            timeout,
            alive=lambda: read_pid(paths, service) is not None,
            on_wait=on_wait,
        )
    except NotServing:
        if read_pid(paths, service) is None:
            raise StackError(f"{service} exited during start-up; see {paths.log_file(service)}") from None
        raise StackError(
            f"{service} not SERVING after {timeout:.0f}s; see {paths.log_file(service)}"
        ) from None


def stop_service(service: str, paths: StackPaths, timeout: float = 20.0) -> bool:
    """SIGTERM (graceful: in-flight RPCs finish, spans flush), SIGKILL after ``timeout``."""
    pid = read_pid(paths, service)
    paths_pid = paths.pid_file(service)
    if pid is None:
        paths_pid.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid):
        _reap(pid)
        time.sleep(0.1)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
    paths_pid.unlink(missing_ok=True)
    return True


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie that looks alive."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
