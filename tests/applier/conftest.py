"""Applier test kit: tiny source repositories, a migrated store and a workspace manager."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from autopack.applier.v1 import applier_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_applier.service import binding, build_servicer
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore
from autopack_applier.workspace import WorkspaceManager
from autopack_common.clients import open_channel
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_common.server import create_server

# Commits made by the tests themselves carry an identity on the command line, so nothing
# depends on (or changes) the machine's git configuration.
_TEST_GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "commit.gpgsign=false"]


CREATE, MODIFY, DELETE, EDIT = (
    common_pb2.FILE_MODE_CREATE,
    common_pb2.FILE_MODE_MODIFY,
    common_pb2.FILE_MODE_DELETE,
    common_pb2.FILE_MODE_EDIT,
)


@contextmanager
def serve(settings: ApplierSettings, store: ApplierStore) -> Iterator[applier_pb2_grpc.ApplierServiceStub]:
    """An applier server on a free port and a stub on a real channel to it."""
    running = create_server([binding(build_servicer(settings, store))], "127.0.0.1:0")
    channel = open_channel("applier", running.address)
    try:
        yield applier_pb2_grpc.ApplierServiceStub(channel)
    finally:
        channel.close()
        running.stop(0)


def git(cwd: Path, *args: str) -> str:
    """Run git in ``cwd`` for test setup or inspection; returns stripped stdout."""
    result = subprocess.run([*_TEST_GIT, *args], cwd=cwd, capture_output=True, text=True, check=True)
    return result.stdout.strip()


def write(root: Path, files: dict[str, str]) -> None:
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)


SOURCE_FILES = {
    "README.md": "# demo\n",
    "src/app.py": "def add(a, b):\n    return a + b\n",
    "src/util/strings.py": "def shout(text):\n    return text.upper()\n",
    "tests/test_app.py": "from src.app import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n",
    "docs/guide.md": "guide\n",
    "config.py": "DEBUG = False\n",
}


def make_repo(root: Path, files: dict[str, str] | None = None) -> Path:
    """A git repository with one commit of ``files`` on branch main."""
    root.mkdir(parents=True, exist_ok=True)
    write(root, SOURCE_FILES if files is None else files)
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "initial")
    return root


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "source")


@pytest.fixture
def store(sqlite_url: str) -> Iterator[ApplierStore]:
    engine = create_db_engine(sqlite_url)
    upgrade_schema(engine, "autopack_applier.migrations", "alembic_version_applier")
    yield ApplierStore(engine)
    engine.dispose()


@pytest.fixture
def manager(tmp_path: Path, store: ApplierStore) -> WorkspaceManager:
    return WorkspaceManager(tmp_path / "workspaces", store, protected=("config.py", "secrets/", "*.pem"))


@pytest.fixture
def stub(tmp_path: Path, store: ApplierStore) -> Iterator[applier_pb2_grpc.ApplierServiceStub]:
    """A stub of an applier with default settings (workspaces under ``tmp_path``)."""
    with serve(ApplierSettings(AUTOPACK_APPLIER_WORKSPACE_ROOT=tmp_path / "workspaces"), store) as served:
        yield served


@pytest.fixture
def workspace(manager: WorkspaceManager, source_repo: Path) -> Path:
    """A prepared workspace of run "run-1" cloned from ``source_repo``."""
    return manager.prepare("run-1", str(source_repo)).path


def tree_digest(root: Path) -> dict[str, str]:
    """Every file and link under ``root`` (.git included): content hash, link target and mode."""
    digest: dict[str, str] = {}
    for directory, subdirectories, names in os.walk(root):
        subdirectories.sort()
        for name in sorted([*names, *subdirectories]):
            path = Path(directory, name)
            relative = path.relative_to(root).as_posix()
            status = path.lstat()
            if path.is_symlink():
                digest[relative] = f"link:{os.readlink(path)}"
            elif path.is_file():
                digest[relative] = f"{status.st_mode:o}:{hashlib.sha256(path.read_bytes()).hexdigest()}"
            else:
                digest[relative] = f"dir:{status.st_mode:o}"
    return digest


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` except .git, with its bytes: "nothing changed" is equality."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink() and ".git" not in path.relative_to(root).parts
    }


def state(root: Path) -> tuple[str, str, dict[str, bytes]]:
    """HEAD, porcelain status and file contents of a workspace."""
    return git(root, "rev-parse", "HEAD"), git(root, "status", "--porcelain"), snapshot(root)
