"""Workspace domain: preparing, reading, applying (all or nothing) and rolling back."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from pathlib import Path

import pytest
from autopack_applier import workspace as workspace_module
from autopack_applier.governance import GovernanceBlocked
from autopack_applier.store import ApplierStore
from autopack_applier.workspace import FileOperation, Mode, WorkspaceManager
from autopack_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

from .conftest import git, make_repo, snapshot, state, write

SCOPE = ["src/", "tests/", "docs/guide.md"]


def create(path: str, content: str = "x = 1\n") -> FileOperation:
    return FileOperation(path, Mode.CREATE, content)


def modify(path: str, content: str) -> FileOperation:
    return FileOperation(path, Mode.MODIFY, content)


def delete(path: str) -> FileOperation:
    return FileOperation(path, Mode.DELETE, "")


def apply(manager: WorkspaceManager, *operations: FileOperation, scope=SCOPE, read_only=(), attempt=1):  # type: ignore[no-untyped-def]
    return manager.apply("run-1", "p1", list(scope), list(read_only), list(operations), attempt)


def rejected(
    manager: WorkspaceManager, workspace: Path, *operations: FileOperation, **kwargs
) -> InvalidArgument:  # type: ignore[no-untyped-def]
    """Apply must fail with InvalidArgument and leave HEAD, status and files exactly as they were."""
    before = state(workspace)
    with pytest.raises(InvalidArgument) as error:
        apply(manager, *operations, **kwargs)
    assert state(workspace) == before
    return error.value


# -- PrepareWorkspace -------------------------------------------------------------------------


def test_prepare_clones_a_repository_with_a_local_identity(
    manager: WorkspaceManager, source_repo: Path
) -> None:
    prepared = manager.prepare("run-1", str(source_repo))
    path = prepared.path
    assert prepared.created
    assert path == manager.root / "run-1"
    assert prepared.base_commit == git(source_repo, "rev-parse", "HEAD")
    assert git(path, "rev-parse", "HEAD") == prepared.base_commit
    assert git(path, "status", "--porcelain") == ""
    assert snapshot(path) == snapshot(source_repo)
    assert git(path, "config", "--local", "user.name") == "autopack"
    assert git(path, "remote") == ""  # nothing in the workspace can push back to the source
    assert git(path, "branch", "--show-current") == "autopack"


def test_git_never_reads_or_writes_the_users_global_config(
    manager: WorkspaceManager, source_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    (home / ".gitconfig").write_text("[user]\n\tname = Real Person\n[commit]\n\tgpgsign = true\n")
    monkeypatch.setenv("HOME", str(home))
    workspace = manager.prepare("run-1", str(source_repo)).path
    apply(manager, create("src/new.py"))
    assert git(workspace, "log", "-1", "--format=%an <%ae>") == "autopack <autopack@localhost>"
    assert (home / ".gitconfig").read_text().startswith("[user]\n\tname = Real Person")


def test_prepare_is_idempotent(manager: WorkspaceManager, source_repo: Path) -> None:
    first = manager.prepare("run-1", str(source_repo))
    apply(manager, create("src/new.py"))
    again = manager.prepare("run-1", str(source_repo))
    assert not again.created
    assert (again.path, again.base_commit) == (first.path, first.base_commit)
    assert (again.path / "src/new.py").exists()  # returned as is, not re-created


def test_prepare_refuses_a_different_source_for_an_existing_run(
    manager: WorkspaceManager, source_repo: Path, tmp_path: Path
) -> None:
    manager.prepare("run-1", str(source_repo))
    other = make_repo(tmp_path / "other")
    with pytest.raises(FailedPrecondition, match="source_repo"):
        manager.prepare("run-1", str(other))


def test_prepare_checks_out_a_ref_and_ignores_uncommitted_changes(
    manager: WorkspaceManager, source_repo: Path
) -> None:
    git(source_repo, "checkout", "-q", "-b", "feature")
    write(source_repo, {"src/feature.py": "FEATURE = True\n"})
    git(source_repo, "add", "-A")
    git(source_repo, "commit", "-q", "-m", "feature")
    feature = git(source_repo, "rev-parse", "HEAD")
    git(source_repo, "checkout", "-q", "main")
    (source_repo / "README.md").write_text("uncommitted edit\n")

    on_main = manager.prepare("run-main", str(source_repo))
    assert not (on_main.path / "src/feature.py").exists()
    assert (on_main.path / "README.md").read_text() == "# demo\n"

    on_feature = manager.prepare("run-feature", str(source_repo), ref="feature")
    assert on_feature.base_commit == feature
    assert (on_feature.path / "src/feature.py").exists()

    with pytest.raises(InvalidArgument, match=r"^ref: 'no-such-branch' is not a commit"):
        manager.prepare("run-bad", str(source_repo), ref="no-such-branch")
    with pytest.raises(InvalidArgument, match=r"^ref:"):
        manager.prepare("run-bad", str(source_repo), ref="--upload-pack=evil")
    assert not (manager.root / "run-bad").exists()
    assert not list(manager.root.glob(".staging-*"))  # a failed prepare leaves nothing behind
    assert git(source_repo, "status", "--porcelain") == "M README.md"  # the source is never touched


def test_prepare_copies_a_plain_directory_and_skips_environments(
    manager: WorkspaceManager, tmp_path: Path
) -> None:
    plain = tmp_path / "plain"
    write(
        plain,
        {
            "main.py": "print('hi')\n",
            "pkg/mod.py": "X = 1\n",
            ".venv/bin/python": "binary",
            "pkg/__pycache__/mod.cpython-311.pyc": "cache",
            ".autopack/data/applier.db": "db",
            "vendor/lib/.git/HEAD": "ref: refs/heads/main\n",
        },
    )
    prepared = manager.prepare("run-plain", str(plain))
    assert prepared.created
    assert sorted(snapshot(prepared.path)) == ["main.py", "pkg/mod.py"]
    assert git(prepared.path, "rev-parse", "HEAD") == prepared.base_commit
    assert (
        git(prepared.path, "log", "--format=%an %s") == f"autopack autopack: run-plain base (copy of {plain})"
    )
    with pytest.raises(InvalidArgument, match=r"^ref:"):
        manager.prepare("run-plain-ref", str(plain), ref="main")


def test_prepare_copies_a_repository_subdirectory_without_ignored_files(
    manager: WorkspaceManager, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "mono",
        {
            ".gitignore": "*.log\n",
            "apps/web/index.js": "1\n",
            "apps/web/debug.log": "x\n",
            "other/x.py": "\n",
        },
    )
    write(repo, {"apps/web/untracked.js": "2\n", "apps/web/trace.log": "secret\n"})
    prepared = manager.prepare("run-sub", str(repo / "apps/web"))
    assert sorted(snapshot(prepared.path)) == ["index.js", "untracked.js"]


def test_prepare_validates_its_input(
    manager: WorkspaceManager, source_repo: Path, store: ApplierStore
) -> None:
    for bad in ["../escape", "a/b", ".hidden", "", "x" * 200, "run..1"]:
        with pytest.raises(InvalidArgument, match=r"^run_id:"):
            manager.prepare(bad, str(source_repo))
    with pytest.raises(InvalidArgument, match=r"^source_repo:"):
        manager.prepare("run-1", str(source_repo / "missing"))
    with pytest.raises(InvalidArgument, match=r"^source_repo:"):
        manager.prepare("run-1", "")
    restricted = WorkspaceManager(manager.root, store, source_roots=[source_repo / "src"])
    with pytest.raises(PermissionDenied, match=r"^source_repo:"):
        restricted.prepare("run-1", str(source_repo))
    assert sorted(p.name for p in manager.root.iterdir()) == [".locks", ".scratch"]


# -- ReadFiles --------------------------------------------------------------------------------


def test_read_files_and_directory_prefixes(manager: WorkspaceManager, workspace: Path) -> None:
    (workspace / ".pytest_cache").mkdir()
    (workspace / ".pytest_cache/state").write_text("cache\n")
    result = manager.read_files("run-1", ["src/", "README.md", "missing.py", "nope/"])
    assert [item.path for item in result.files] == ["README.md", "src/app.py", "src/util/strings.py"]
    app = result.files[1]
    assert app.content == "def add(a, b):\n    return a + b\n"
    assert (app.line_count, app.size_bytes, app.truncated) == (2, len(app.content), False)
    assert result.missing == ("missing.py", "nope/")
    everything = manager.read_files("run-1", ["./"])
    assert ".pytest_cache/state" not in [item.path for item in everything.files]  # tool caches are ignored
    assert len(everything.files) == 6


def test_read_files_truncates_on_a_character_boundary_and_skips_binaries(
    manager: WorkspaceManager, workspace: Path
) -> None:
    (workspace / "src/big.txt").write_text("é" * 10 + "\nlast line")  # 2-byte characters
    (workspace / "src/blob.bin").write_bytes(b"\x89PNG\x00\x01\x02")
    (workspace / "src/latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    result = manager.read_files("run-1", ["src/big.txt", "src/blob.bin", "src/"], max_bytes_per_file=5)
    paths = [item.path for item in result.files]
    assert "src/blob.bin" not in paths and "src/latin1.txt" not in paths
    big = result.files[paths.index("src/big.txt")]
    assert big.content == "éé"  # 5 bytes would split the third character
    assert big.truncated and big.line_count == 2 and big.size_bytes == 30


def test_read_files_stays_inside_the_workspace(
    manager: WorkspaceManager, workspace: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret\n")
    (workspace / "src/escape").symlink_to(outside)
    (workspace / "src/secret.txt").symlink_to(outside / "secret.txt")
    (workspace / "src/alias.py").symlink_to("app.py")
    for bad in ["../source/README.md", "/etc/passwd", ".git/config", "src/escape/secret.txt"]:
        with pytest.raises(InvalidArgument, match=r"^paths\[0\]:"):
            manager.read_files("run-1", [bad])
    result = manager.read_files("run-1", ["src/"])
    paths = [item.path for item in result.files]
    assert "src/alias.py" in paths  # a link inside the workspace is fine
    assert not any("secret" in path for path in paths)
    with pytest.raises(InvalidArgument, match=r"^max_bytes_per_file:"):
        manager.read_files("run-1", ["src/"], max_bytes_per_file=-1)
    with pytest.raises(NotFound, match=r"^run_id:"):
        manager.read_files("run-unknown", ["src/"])


# -- Apply ------------------------------------------------------------------------------------


def test_apply_writes_and_commits_a_savepoint(
    manager: WorkspaceManager, workspace: Path, store: ApplierStore
) -> None:
    base = git(workspace, "rev-parse", "HEAD")
    result = apply(
        manager,
        create("src/new.py", "a = 1\nb = 2\n"),
        modify("src/app.py", "def add(a, b):\n    return b + a\n"),
        delete("tests/test_app.py"),
        attempt=2,
    )
    assert result.previous_savepoint == base
    assert result.savepoint == git(workspace, "rev-parse", "HEAD") != base
    assert result.changed_paths == ("src/app.py", "src/new.py", "tests/test_app.py")
    assert (result.lines_added, result.lines_removed) == (3, 6)
    assert git(workspace, "log", "-1", "--format=%an|%s") == "autopack|autopack: run-1/p1 attempt 2"
    assert git(workspace, "status", "--porcelain") == ""
    assert (workspace / "src/new.py").read_text() == "a = 1\nb = 2\n"
    assert not (workspace / "tests/test_app.py").exists()
    [entry] = store.apply_log("run-1")
    assert (entry.result, entry.savepoint, entry.previous_savepoint) == ("accepted", result.savepoint, base)
    assert entry.changed_paths == result.changed_paths


def test_apply_without_operations_still_records_a_savepoint(
    manager: WorkspaceManager, workspace: Path
) -> None:
    result = apply(manager)
    assert result.savepoint != result.previous_savepoint and result.changed_paths == ()


def test_apply_outside_scope_changes_nothing_and_is_logged(
    manager: WorkspaceManager, workspace: Path, store: ApplierStore
) -> None:
    error = rejected(manager, workspace, create("src/ok.py"), modify("README.md", "hacked\n"))
    assert error.field == "operations[1].path"
    assert "'README.md' is outside the scope" in error.message
    assert not (workspace / "src/ok.py").exists()  # the valid operation was not written either
    [entry] = store.apply_log("run-1")
    assert entry.result == "rejected" and entry.savepoint is None
    assert entry.reason is not None and "operations[1].path" in entry.reason


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("../source/src/app.py", "'..'"),
        ("src/../../escape.py", "'..'"),
        ("/etc/passwd", "absolute"),
        ("src\\..\\..\\x.py", "backslash"),
        ("src/a\x00.py", "NUL"),
        ("src/", "directory"),
    ],
)
def test_apply_rejects_malformed_paths(
    manager: WorkspaceManager, workspace: Path, path: str, reason: str
) -> None:
    error = rejected(manager, workspace, create(path), scope=["./"])
    assert error.field == "operations[0].path" and reason in error.message


def test_apply_never_writes_vcs_internals(manager: WorkspaceManager, workspace: Path) -> None:
    for path in [".git/config", ".git/hooks/post-commit", "vendor/.git/HEAD", ".hg/hgrc", "x/.svn/entries"]:
        error = rejected(manager, workspace, create(path), scope=["./"])
        assert "VCS directory (protected, never writable)" in error.message, path


def test_protected_writes_need_approval_and_change_nothing(
    manager: WorkspaceManager, workspace: Path
) -> None:
    for path in [".autopack/x", "config.py", ".env", "app/.env.local", "data/app.sqlite3", "deploy/tls.pem"]:
        before = state(workspace)
        with pytest.raises(GovernanceBlocked) as error:
            apply(manager, modify(path, "x\n") if path == "config.py" else create(path), scope=["./"])
        assert state(workspace) == before
        assert error.value.decision.violations[0].path == path
        assert "protected path" in error.value.message and error.value.request_id in error.value.message
    # A template of an env file is not a secret.
    assert apply(manager, create(".env.example", "KEY=\n"), scope=["./"]).changed_paths == (".env.example",)


def test_read_only_context_is_not_writable(manager: WorkspaceManager, workspace: Path) -> None:
    error = rejected(
        manager, workspace, modify("README.md", "x\n"), scope=["src/"], read_only=["README.md", "docs/"]
    )
    assert "read-only context" in error.message
    result = apply(manager, modify("README.md", "x\n"), scope=["README.md"], read_only=["README.md"])
    assert result.changed_paths == ("README.md",)


def test_apply_refuses_to_write_through_symlinks_leaving_scope_or_workspace(
    manager: WorkspaceManager, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim.txt").write_text("keep\n")
    repo = make_repo(tmp_path / "linked")
    (repo / "escape").symlink_to(outside)
    (repo / "alias").symlink_to("src")
    (repo / "cfg").symlink_to("config.py")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "links")
    workspace = manager.prepare("run-1", str(repo)).path

    error = rejected(manager, workspace, create("escape/evil.py"), scope=["escape/"])
    assert "resolves outside the workspace" in error.message
    error = rejected(manager, workspace, modify("escape/victim.txt", "owned\n"), scope=["./"])
    assert "resolves outside the workspace" in error.message
    error = rejected(manager, workspace, modify("alias/app.py", "x\n"), scope=["alias/"])
    assert "resolves through a symlink to 'src/app.py', which is outside the scope" in error.message
    with pytest.raises(GovernanceBlocked) as blocked:
        apply(manager, modify("cfg", "DEBUG = True\n"), scope=["cfg", "config.py"])
    assert [violation.path for violation in blocked.value.decision.violations] == ["config.py"]
    assert (outside / "victim.txt").read_text() == "keep\n" and sorted(os.listdir(outside)) == ["victim.txt"]

    result = apply(manager, modify("alias/app.py", "y = 2\n"), scope=["alias/", "src/"])
    assert result.changed_paths == ("src/app.py",)
    result = apply(manager, delete("escape"), scope=["escape"])  # removes the link, not its target
    assert result.changed_paths == ("escape",) and (outside / "victim.txt").exists()


def test_apply_mode_semantics(manager: WorkspaceManager, workspace: Path) -> None:
    error = rejected(manager, workspace, create("src/app.py", "different\n"))
    assert "already exists with different content; use FILE_MODE_MODIFY" in error.message
    error = rejected(manager, workspace, modify("src/missing.py", "x\n"))
    assert "does not exist, nothing to modify" in error.message
    error = rejected(manager, workspace, delete("src/missing.py"))
    assert "nothing to delete" in error.message
    error = rejected(manager, workspace, FileOperation("src/x.py", None, "x"))
    assert error.field == "operations[0].mode"
    error = rejected(manager, workspace, FileOperation("src/app.py", Mode.DELETE, "content"))
    assert error.field == "operations[0].new_content"
    error = rejected(manager, workspace, create("src/a.py"), modify("./src/a.py", "y\n"))
    assert "also changed by operations[0]" in error.message
    error = rejected(manager, workspace, create("src/pkg"), create("src/pkg/mod.py"))
    assert "lies under 'src/pkg'" in error.message
    error = rejected(manager, workspace, create("src/app.py/inner.py"))
    assert "'app.py' on its path is a file" in error.message
    error = rejected(manager, workspace, modify("src/util", "x"))
    assert "is a directory" in error.message
    # Re-creating a file with identical content is a no-op, not an error (safe retries).
    result = apply(manager, create("src/app.py", "def add(a, b):\n    return a + b\n"))
    assert result.changed_paths == ()


def test_apply_reports_every_violation_at_once(manager: WorkspaceManager, workspace: Path) -> None:
    error = rejected(manager, workspace, create("README2.md"), create("src/ok.py"), create("../x"))
    assert error.field == "operations[0].path"
    assert "also operations[2].path: '../x' contains '..'" in error.message


def test_apply_keeps_explicit_files_even_when_gitignored_and_keeps_modes(
    manager: WorkspaceManager, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "ignoring", {".gitignore": "*.log\n", "run.sh": "#!/bin/sh\n"})
    os.chmod(repo / "run.sh", 0o755)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "exec")
    workspace = manager.prepare("run-1", str(repo)).path
    result = apply(
        manager, create("logs/app.log", "entry\n"), modify("run.sh", "#!/bin/sh\necho hi\n"), scope=["./"]
    )
    assert result.changed_paths == ("logs/app.log", "run.sh")
    assert "logs/app.log" in git(workspace, "ls-files")
    assert stat.S_IMODE((workspace / "run.sh").stat().st_mode) == 0o755


def test_a_failed_write_restores_the_previous_savepoint(
    manager: WorkspaceManager, workspace: Path, store: ApplierStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = state(workspace)
    real_write = workspace_module._atomic_write
    calls = []

    def flaky(target: Path, content: bytes) -> None:
        calls.append(target)
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error", str(target))
        real_write(target, content)

    monkeypatch.setattr(workspace_module, "_atomic_write", flaky)
    with pytest.raises(DomainError, match="writing failed, workspace restored") as error:
        apply(manager, create("src/a.py"), modify("src/app.py", "broken\n"), create("src/b.py"))
    assert type(error.value) is DomainError  # INTERNAL
    assert state(workspace) == before
    assert store.apply_log("run-1")[-1].result == "rejected"

    calls.clear()
    monkeypatch.setattr(
        workspace_module,
        "_atomic_write",
        lambda target, content: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")),
    )
    with pytest.raises(ResourceExhausted):
        apply(manager, create("src/a.py"))
    assert state(workspace) == before


def test_an_unrecordable_apply_is_undone(
    manager: WorkspaceManager, workspace: Path, store: ApplierStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = state(workspace)

    def broken(entry) -> None:  # type: ignore[no-untyped-def]
        raise RuntimeError("database is gone")

    monkeypatch.setattr(store, "log_apply", broken)
    with pytest.raises(Unavailable, match="undone"):
        apply(manager, create("src/a.py"))
    assert state(workspace) == before


def test_apply_validates_ids_and_unknown_runs(manager: WorkspaceManager, workspace: Path) -> None:
    with pytest.raises(NotFound, match=r"^run_id: run 'run-2' has no workspace"):
        manager.apply("run-2", "p1", ["src/"], [], [create("src/a.py")])
    with pytest.raises(InvalidArgument, match=r"^run_id:"):
        manager.apply("../run-1", "p1", ["src/"], [], [create("src/a.py")])
    with pytest.raises(InvalidArgument, match=r"^phase_id:"):
        manager.apply("run-1", "p1\nSigned-off-by: x", ["src/"], [], [create("src/a.py")])
    with pytest.raises(InvalidArgument, match=r"^scope.paths"):
        manager.apply("run-1", "p1", ["/src/"], [], [create("src/a.py")])


def test_concurrent_applies_on_one_run_serialize(manager: WorkspaceManager, workspace: Path) -> None:
    results = []
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            results.append(apply(manager, create(f"src/file_{index}.py", f"n = {index}\n")))
        except BaseException as error:  # pragma: no cover - surfaced below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    assert git(workspace, "status", "--porcelain") == ""
    # Every apply built on the previous one: the savepoints form a single chain.
    chain = {result.previous_savepoint: result.savepoint for result in results}
    head = git(workspace, "rev-list", "--max-parents=0", "HEAD")
    for _ in results:
        head = chain[head]
    assert head == git(workspace, "rev-parse", "HEAD")


def test_a_busy_run_fails_fast_past_the_deadline(manager: WorkspaceManager, workspace: Path) -> None:
    with manager.locked("run-1"):
        started = time.monotonic()
        with pytest.raises(Unavailable, match=r"^run_id: the workspace of run 'run-1' is busy"):
            manager.apply("run-1", "p1", ["src/"], [], [create("src/a.py")], deadline=time.monotonic() + 0.2)
        assert time.monotonic() - started < 2
    assert not (workspace / "src/a.py").exists()


# -- Rollback ---------------------------------------------------------------------------------


def test_rollback_restores_a_savepoint_and_can_roll_forward(
    manager: WorkspaceManager, workspace: Path
) -> None:
    base = git(workspace, "rev-parse", "HEAD")
    first = apply(manager, create("src/one.py", "1\n"))
    second = apply(manager, modify("src/one.py", "2\n"), create("src/two.py", "2\n"))
    (workspace / "src/stray.py").write_text("left by a check\n")
    (workspace / "README.md").write_text("dirty\n")

    back = manager.rollback("run-1", first.savepoint)
    assert (back.head, back.previous_head) == (first.savepoint, second.savepoint)
    assert (workspace / "src/one.py").read_text() == "1\n"
    assert not (workspace / "src/two.py").exists() and not (workspace / "src/stray.py").exists()
    assert git(workspace, "status", "--porcelain") == ""

    forward = manager.rollback("run-1", second.savepoint[:12].upper())  # abbreviated ids work too
    assert forward.head == second.savepoint
    assert manager.rollback("run-1", base).head == base


def test_rollback_only_accepts_the_runs_own_savepoints(manager: WorkspaceManager, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "history")
    older = git(repo, "rev-parse", "HEAD")
    write(repo, {"src/app.py": "changed\n"})
    git(repo, "commit", "-q", "-am", "second")
    workspace = manager.prepare("run-1", str(repo)).path
    before = state(workspace)
    with pytest.raises(NotFound, match=r"^savepoint: .* is not a savepoint of run 'run-1'"):
        manager.rollback("run-1", older)  # in the clone's history, but before the run began
    with pytest.raises(NotFound, match=r"^savepoint:"):
        manager.rollback("run-1", "0" * 40)
    for bad in ["", "HEAD~1", "abc", "--hard"]:
        with pytest.raises(InvalidArgument, match=r"^savepoint:"):
            manager.rollback("run-1", bad)
    with pytest.raises(NotFound, match=r"^run_id:"):
        manager.rollback("run-2", older)
    assert state(workspace) == before
