"""Run workspaces: one isolated git repository per run, where phases' changes land.

A workspace is a clone (or a copy plus ``git init``) of the source at ``<root>/<run_id>``,
so nothing a phase does can touch the user's checkout. Every Apply is validated as a
whole before a byte is written (path form, symlinks, protected paths, scope, file modes)
and then committed as a savepoint, which Rollback can restore. Calls on one run are
serialised by a file lock, so concurrent RPCs (or two applier processes sharing the
volume) never interleave their git operations.
"""

from __future__ import annotations

import codecs
import enum
import errno
import fcntl
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from autopack_common.database import utcnow
from autopack_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

from autopack_applier.gitrepo import BRANCH, Git, GitError
from autopack_applier.paths import (
    BUILTIN_PROTECTED,
    PathRejected,
    ScopeRules,
    normalize_path,
    normalize_protected,
    protected_reason,
)
from autopack_applier.store import ACCEPTED, REJECTED, ApplierStore, ApplyLogEntry, WorkspaceRecord

log = logging.getLogger(__name__)

RUN_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
PHASE_ID_MAX_LENGTH = 200
REF_MAX_LENGTH = 256
DEFAULT_MAX_BYTES_PER_FILE = 200 * 1024
# Never copied into a workspace from a plain directory: VCS data, environments, caches.
COPY_SKIP = frozenset(
    {".git", ".venv", "__pycache__", ".autopack", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
)
_BINARY_SNIFF_BYTES = 8192
_MAX_VIOLATIONS_SHOWN = 10


class Mode(enum.Enum):
    """What a file operation does to its path."""

    CREATE = "create"
    MODIFY = "modify"
    DELETE = "delete"


@dataclass(frozen=True)
class FileOperation:
    """One requested change; ``mode`` None means the caller left it unspecified."""

    path: str
    mode: Mode | None
    new_content: str = ""


@dataclass(frozen=True)
class PreparedWorkspace:
    path: Path
    base_commit: str
    created: bool


@dataclass(frozen=True)
class WorkspaceFile:
    path: str
    content: str
    line_count: int
    size_bytes: int
    truncated: bool


@dataclass(frozen=True)
class ReadResult:
    files: tuple[WorkspaceFile, ...]
    missing: tuple[str, ...]


@dataclass(frozen=True)
class ApplyResult:
    savepoint: str
    previous_savepoint: str
    changed_paths: tuple[str, ...]
    lines_added: int
    lines_removed: int


@dataclass(frozen=True)
class RollbackResult:
    head: str
    previous_head: str


@dataclass(frozen=True)
class PlannedOperation:
    """A validated operation: where it really writes and what was there before."""

    index: int
    path: str  # as requested, normalised
    target: Path  # absolute, symlinks resolved (for a deleted symlink: the link itself)
    relative: str  # ``target`` relative to the workspace
    mode: Mode
    content: bytes
    original: bytes | None  # None when the file did not exist; a link's target for a symlink
    symlink: bool = False  # the path was a symlink (only kept for DELETE)

    @property
    def changes(self) -> bool:
        if self.mode is Mode.DELETE:
            return True
        return self.original != self.content


def validate_run_id(run_id: str) -> str:
    """Run ids name directories, so only a safe alphabet and no traversal is accepted."""
    if not run_id:
        raise InvalidArgument("run_id", "is required")
    if not RUN_ID_PATTERN.fullmatch(run_id) or ".." in run_id:
        raise InvalidArgument(
            "run_id",
            f"{run_id!r} must be 1-128 characters of A-Z a-z 0-9 . _ -, start with a letter or digit "
            "and not contain '..'",
        )
    return run_id


def validate_phase_id(phase_id: str) -> str:
    """Phase ids go into savepoint messages: one printable line."""
    if not phase_id:
        raise InvalidArgument("phase_id", "is required")
    if len(phase_id) > PHASE_ID_MAX_LENGTH or any(ord(char) < 0x20 or char == "\x7f" for char in phase_id):
        raise InvalidArgument(
            "phase_id", f"must be at most {PHASE_ID_MAX_LENGTH} printable characters on one line"
        )
    return phase_id


def is_inside(path: Path, root: Path) -> bool:
    """True when absolute ``path`` is ``root`` or below it (both already symlink-resolved)."""
    return path == root or root in path.parents


def plan_operations(
    workspace: Path,
    operations: Sequence[FileOperation],
    scope: ScopeRules,
    protected: Sequence[str] = BUILTIN_PROTECTED,
) -> list[PlannedOperation]:
    """Validate every operation against every rule without writing anything.

    ``workspace`` must be symlink-free (``Path.resolve()``d). All violations are collected
    and raised as one InvalidArgument naming the first offending field, so a Builder can
    fix them in one retry.
    """
    violations: list[tuple[str, str]] = []
    planned: list[PlannedOperation] = []
    owners: dict[str, int] = {}
    for index, operation in enumerate(operations):
        field = f"operations[{index}].path"
        try:
            path = normalize_path(operation.path)
        except PathRejected as error:
            violations.append((field, f"{operation.path!r} {error}"))
            continue
        if operation.mode is None:
            violations.append(
                (
                    f"operations[{index}].mode",
                    "is required: FILE_MODE_CREATE, FILE_MODE_MODIFY or FILE_MODE_DELETE",
                )
            )
            continue
        if operation.mode is Mode.DELETE and operation.new_content:
            violations.append((f"operations[{index}].new_content", "must be empty for FILE_MODE_DELETE"))
            continue
        try:
            content = operation.new_content.encode("utf-8")
        except UnicodeEncodeError:
            violations.append((f"operations[{index}].new_content", "is not valid UTF-8 text"))
            continue
        reason = protected_reason(path, protected) or scope.write_rejection(path)
        if reason:
            violations.append((field, f"{path!r} {reason}"))
            continue
        try:
            target = _effective_target(workspace, path, operation.mode)
        except PathRejected as error:
            violations.append((field, f"{path!r} {error}"))
            continue
        relative = target.relative_to(workspace).as_posix()
        if relative != path:
            reason = protected_reason(relative, protected) or scope.write_rejection(relative)
            if reason:
                violations.append(
                    (field, f"{path!r} resolves through a symlink to {relative!r}, which {reason}")
                )
                continue
        if relative in owners:
            violations.append((field, f"{path!r} is also changed by operations[{owners[relative]}]"))
            continue
        owners[relative] = index
        try:
            original, symlink = _existing_content(target, operation.mode)
        except PathRejected as error:
            violations.append((field, f"{path!r} {error}"))
            continue
        if operation.mode is Mode.CREATE and original is not None and original != content:
            violations.append(
                (field, f"{path!r} already exists with different content; use FILE_MODE_MODIFY")
            )
            continue
        if operation.mode is not Mode.CREATE and original is None:
            action = "modify" if operation.mode is Mode.MODIFY else "delete"
            violations.append(
                (field, f"{path!r} does not exist, nothing to {action}; use FILE_MODE_CREATE to add it")
            )
            continue
        planned.append(
            PlannedOperation(index, path, target, relative, operation.mode, content, original, symlink)
        )
    for relative, index in owners.items():
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            ancestor = "/".join(parts[:depth])
            if ancestor in owners:
                violations.append(
                    (
                        f"operations[{index}].path",
                        f"{relative!r} lies under {ancestor!r}, which operations[{owners[ancestor]}] "
                        "treats as a file",
                    )
                )
                break
    if violations:
        raise _combined(violations)
    return planned


def _combined(violations: list[tuple[str, str]]) -> InvalidArgument:
    field, problem = violations[0]
    others = [f"{other_field}: {other_problem}" for other_field, other_problem in violations[1:]]
    if others:
        shown = others[: _MAX_VIOLATIONS_SHOWN - 1]
        extra = len(others) - len(shown)
        problem += "; also " + "; ".join(shown) + (f"; and {extra} more" if extra else "")
    return InvalidArgument(field, problem)


def _effective_target(workspace: Path, path: str, mode: Mode) -> Path:
    """Where an operation really lands once symlinks are followed; must stay in the workspace."""
    candidate = workspace / path
    if mode is Mode.DELETE and candidate.is_symlink():
        # Deleting a link removes the link, not what it points to.
        target = Path(os.path.realpath(candidate.parent)) / candidate.name
    else:
        target = Path(os.path.realpath(candidate))
    if not is_inside(target, workspace) or target == workspace:
        raise PathRejected("resolves outside the workspace (through a symlink)")
    return target


def _existing_content(target: Path, mode: Mode) -> tuple[bytes | None, bool]:
    """Bytes at ``target`` (None if absent) and whether it is a symlink being deleted.

    Directories and special files are rejected; so is a new file whose parent is a file.
    """
    if mode is Mode.DELETE and target.is_symlink():
        return os.fsencode(os.readlink(target)), True
    if not os.path.lexists(target):
        if mode is Mode.CREATE:
            ancestor = target.parent
            while not os.path.lexists(ancestor):
                ancestor = ancestor.parent
            if not ancestor.is_dir():
                raise PathRejected(f"cannot be created: {ancestor.name!r} on its path is a file")
        return None, False
    if target.is_dir():
        raise PathRejected("is a directory")
    if not target.is_file():
        raise PathRejected("is not a regular file")
    return target.read_bytes(), False


def write_operations(planned: Sequence[PlannedOperation]) -> None:
    """Carry out validated operations; each file is replaced atomically (temp file + rename)."""
    for operation in planned:
        if not operation.changes:
            continue
        if operation.mode is Mode.DELETE:
            os.unlink(operation.target)
            continue
        operation.target.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(operation.target, operation.content)


def _atomic_write(target: Path, content: bytes) -> None:
    descriptor, temporary = tempfile.mkstemp(prefix=".autopack-", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
        if target.exists():
            shutil.copymode(target, temporary)  # keep an executable bit
        else:
            os.chmod(temporary, 0o644)
        os.replace(temporary, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


def _undo_writes(planned: Sequence[PlannedOperation]) -> None:
    """Put back what git cannot restore (ignored or untracked files) after a failed apply."""
    for operation in planned:
        with suppress(OSError):
            target, original = operation.target, operation.original
            if original is None:
                if os.path.lexists(target):
                    os.unlink(target)
            elif operation.symlink:
                if not os.path.lexists(target):
                    os.symlink(os.fsdecode(original), target)
            elif not target.is_file() or target.read_bytes() != original:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(original)


def read_workspace_file(path: Path, relative: str, limit: int) -> WorkspaceFile | None:
    """A text file's content (cut at ``limit`` bytes on a character boundary), or None if binary."""
    with open(path, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        data = handle.read(limit)
        rest = handle.read(1)
        truncated = bool(rest)
        if b"\x00" in data[:_BINARY_SNIFF_BYTES]:
            return None
        try:
            content = codecs.getincrementaldecoder("utf-8")().decode(data, final=not truncated)
        except UnicodeDecodeError:
            return None
        newlines = data.count(b"\n")
        last = data[-1:]
        while rest:
            newlines += rest.count(b"\n")
            last = rest[-1:]
            rest = handle.read(1024 * 1024)
    line_count = newlines + (1 if last and last != b"\n" else 0)
    return WorkspaceFile(relative, content, line_count, size, truncated)


class WorkspaceManager:
    """Creates, reads, changes and restores run workspaces under one root directory."""

    def __init__(
        self,
        root: Path,
        store: ApplierStore,
        *,
        protected: Sequence[str] = BUILTIN_PROTECTED,
        source_roots: Sequence[Path] = (),
        lock_timeout_seconds: float = 60.0,
        max_read_files: int = 5000,
    ) -> None:
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks = self.root / ".locks"
        self._locks.mkdir(exist_ok=True)
        self.store = store
        self.protected = normalize_protected(protected)
        self.source_roots = tuple(Path(allowed).expanduser().resolve() for allowed in source_roots)
        self.lock_timeout = lock_timeout_seconds
        self.max_read_files = max_read_files

    # -- locking and lookup -------------------------------------------------------------

    @contextmanager
    def locked(self, run_id: str, deadline: float | None = None) -> Iterator[None]:
        """Hold the run's lock; Unavailable (retryable) if it stays busy past the deadline."""
        run_id = validate_run_id(run_id)  # it names the lock file
        limit = time.monotonic() + self.lock_timeout
        if deadline is not None:
            limit = min(limit, deadline)
        with open(self._locks / f"{run_id}.lock", "a") as handle:
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= limit:
                        raise Unavailable(
                            f"run_id: the workspace of run {run_id!r} is busy with another apply, "
                            "rollback or check; retry later"
                        ) from None
                    time.sleep(0.02)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def record(self, run_id: str) -> WorkspaceRecord:
        """The run's workspace; NotFound naming run_id when it has none."""
        record = self.store.get_workspace(validate_run_id(run_id))
        if record is None:
            raise NotFound(f"run_id: run {run_id!r} has no workspace; call PrepareWorkspace first")
        if not Path(record.path, ".git").is_dir():
            raise FailedPrecondition(
                f"run_id: the workspace of run {run_id!r} is missing at {record.path} (lost volume or "
                "another replica's disk)"
            )
        return record

    # -- PrepareWorkspace ---------------------------------------------------------------

    def prepare(
        self, run_id: str, source_repo: str, ref: str = "", deadline: float | None = None
    ) -> PreparedWorkspace:
        """Create the run's workspace from ``source_repo``, or return the one it already has."""
        run_id = validate_run_id(run_id)
        source = self._validate_source(source_repo)
        if ref and (
            ref.startswith("-")
            or len(ref) > REF_MAX_LENGTH
            or any(ord(char) <= 0x20 or char == "\x7f" for char in ref)
        ):
            raise InvalidArgument("ref", f"{ref!r} is not a valid git revision")
        with self.locked(run_id, deadline):
            existing = self.store.get_workspace(run_id)
            if existing is not None:
                if Path(existing.source_repo) != source:
                    raise FailedPrecondition(
                        f"source_repo: run {run_id!r} already has a workspace prepared from "
                        f"{existing.source_repo}, not {source}"
                    )
                self.record(run_id)  # still on disk?
                return PreparedWorkspace(Path(existing.path), existing.base_commit, created=False)
            destination = self.root / run_id
            if os.path.lexists(destination):
                raise FailedPrecondition(
                    f"run_id: {destination} exists but is not a recorded workspace; remove it or use another run id"
                )
            staging = Path(tempfile.mkdtemp(prefix=f".staging-{run_id}-", dir=self.root))
            try:
                base_commit = self._populate(staging, source, ref, run_id)
                os.rename(staging, destination)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            try:
                self.store.add_workspace(
                    WorkspaceRecord(run_id, str(destination), str(source), base_commit, utcnow())
                )
            except BaseException:
                shutil.rmtree(destination, ignore_errors=True)
                raise
        log.info("prepared workspace for run %s at %s (base %s)", run_id, destination, base_commit)
        return PreparedWorkspace(destination, base_commit, created=True)

    def _validate_source(self, source_repo: str) -> Path:
        if not source_repo:
            raise InvalidArgument("source_repo", "is required (a local directory or git repository)")
        if "\x00" in source_repo:
            raise InvalidArgument("source_repo", "contains a NUL byte")
        source = Path(source_repo).expanduser().resolve()
        if not source.is_dir():
            raise InvalidArgument("source_repo", f"{source_repo!r} is not a directory on the applier's host")
        if self.source_roots and not any(is_inside(source, root) for root in self.source_roots):
            allowed = ", ".join(str(root) for root in self.source_roots)
            raise PermissionDenied(f"source_repo: {source} is outside the allowed source roots ({allowed})")
        if is_inside(source, self.root):
            raise InvalidArgument("source_repo", f"{source} is inside the applier's workspace root")
        return source

    def _populate(self, staging: Path, source: Path, ref: str, run_id: str) -> str:
        """Fill ``staging`` from ``source``; returns the base commit."""
        source_git = Git(source)
        toplevel = source_git.toplevel()
        if toplevel is not None and toplevel.resolve() == source:
            commit = source_git.resolve_commit(ref or "HEAD")
            if commit is None and ref:
                raise InvalidArgument("ref", f"{ref!r} is not a commit of {source}")
            if commit is not None:
                return self._clone(source, commit, staging)
        if ref:
            raise InvalidArgument("ref", "applies only when source_repo is the root of a git repository")
        files: list[str] | None = None
        if toplevel is not None:
            try:  # inside a repository: copy what git would (tracked + untracked, not ignored)
                files = source_git.list_files()
            except GitError:
                files = None
        self._copy(source, staging, files)
        git = Git(staging)
        git.run("init", "-q", "-b", BRANCH)
        git.configure_workspace()
        return git.commit_all(f"autopack: {run_id} base (copy of {source})")

    def _clone(self, source: Path, commit: str, staging: Path) -> str:
        # A plain local path clones "locally" (hard-linked objects) and, unlike an explicit
        # --local, falls back to copying when the workspace root is on another filesystem.
        Git(self.root).run("clone", "-q", "--no-checkout", "--", str(source), str(staging), timeout=600)
        git = Git(staging)
        git.configure_workspace()
        git.run("checkout", "-q", "-B", BRANCH, commit)
        # Nothing in the workspace should be able to push back into the user's repository.
        git.run("remote", "remove", "origin")
        return git.head()

    def _copy(self, source: Path, destination: Path, files: list[str] | None) -> None:
        if files is None:

            def ignore(directory: str, names: list[str]) -> set[str]:
                return {
                    name
                    for name in names
                    if name in COPY_SKIP
                    or is_inside(Path(os.path.realpath(Path(directory, name))), self.root)
                }

            shutil.copytree(source, destination, symlinks=True, ignore=ignore, dirs_exist_ok=True)
            return
        for relative in files:
            if COPY_SKIP.intersection(relative.split("/")):
                continue
            origin = source / relative
            if not os.path.lexists(origin) or is_inside(Path(os.path.abspath(origin)), self.root):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            if origin.is_symlink():
                os.symlink(os.readlink(origin), target)
            elif origin.is_file():
                shutil.copy2(origin, target)

    # -- ReadFiles -----------------------------------------------------------------------

    def read_files(self, run_id: str, paths: Sequence[str], max_bytes_per_file: int = 0) -> ReadResult:
        """Text files under ``paths`` (files or directory prefixes), sorted; binaries are skipped."""
        run_id = validate_run_id(run_id)
        if max_bytes_per_file < 0:
            raise InvalidArgument("max_bytes_per_file", "must not be negative (0 means the default, 200 KB)")
        limit = max_bytes_per_file or DEFAULT_MAX_BYTES_PER_FILE
        requested: list[tuple[str, str]] = []
        for index, raw in enumerate(paths):
            try:
                normalized = normalize_path(raw, allow_directory=True)
            except PathRejected as error:
                raise InvalidArgument(f"paths[{index}]", f"{raw!r} {error}") from None
            if ".git" in normalized.casefold().split("/"):
                raise InvalidArgument(f"paths[{index}]", f"{raw!r} is inside a .git directory")
            requested.append((raw, normalized))
        workspace = Path(self.record(run_id).path).resolve()
        git = Git(workspace)
        found: dict[str, Path] = {}
        missing: list[str] = []
        for index, (raw, normalized) in enumerate(requested):
            candidate = workspace / normalized if normalized else workspace
            if not os.path.lexists(candidate):
                missing.append(raw)
                continue
            real = Path(os.path.realpath(candidate))
            if not is_inside(real, workspace):
                raise InvalidArgument(f"paths[{index}]", f"{raw!r} resolves outside the workspace")
            if real.is_dir():
                prefix = "" if real == workspace else real.relative_to(workspace).as_posix() + "/"
                for relative in git.list_files(prefix):
                    file_real = Path(os.path.realpath(workspace / relative))
                    if is_inside(file_real, workspace) and file_real.is_file():
                        found[relative] = file_real
                    if len(found) > self.max_read_files:
                        break
            elif real.is_file():
                found[normalized.rstrip("/")] = real
            else:
                missing.append(raw)
            if len(found) > self.max_read_files:
                raise ResourceExhausted(
                    f"paths: more than {self.max_read_files} files match; request narrower paths"
                )
        files: list[WorkspaceFile] = []
        for relative in sorted(found):
            try:
                item = read_workspace_file(found[relative], relative, limit)
            except OSError as error:
                log.warning("skipping unreadable %s in run %s: %s", relative, run_id, error.strerror)
                continue
            if item is not None:
                files.append(item)
        return ReadResult(tuple(files), tuple(missing))

    # -- Apply ---------------------------------------------------------------------------

    def apply(
        self,
        run_id: str,
        phase_id: str,
        scope_paths: Sequence[str],
        read_only_context: Sequence[str],
        operations: Sequence[FileOperation],
        attempt: int = 0,
        deadline: float | None = None,
    ) -> ApplyResult:
        """Validate all operations, write them and commit a savepoint; all or nothing.

        The savepoint records the whole work tree, so a file a check changed since the last
        savepoint is part of it too (tool caches are excluded); ``changed_paths`` and the line
        counts are what the savepoint changed.
        """
        run_id = validate_run_id(run_id)
        phase_id = validate_phase_id(phase_id)
        if attempt < 0:
            raise InvalidArgument("attempt", "must not be negative")
        workspace = Path(self.record(run_id).path).resolve()
        with self.locked(run_id, deadline):
            git = Git(workspace)
            previous = git.head()

            def reject(reason: str) -> None:
                self._log_rejection(run_id, phase_id, attempt, previous, reason)

            try:
                scope = ScopeRules.parse(scope_paths, read_only_context)
                planned = plan_operations(workspace, operations, scope, self.protected)
            except InvalidArgument as error:
                reject(error.message)
                raise
            try:
                write_operations(planned)
                savepoint = git.commit_all(
                    f"autopack: {run_id}/{phase_id} attempt {attempt}",
                    force_paths=[op.relative for op in planned if op.mode is not Mode.DELETE],
                )
                stat = git.numstat(previous, savepoint)
            except (OSError, GitError) as error:
                self._restore_after_failure(git, previous, planned)
                reason = f"writing failed, workspace restored to {previous}: {_describe(error)}"
                reject(reason)
                if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise ResourceExhausted(f"operations: {reason}") from error
                raise DomainError(f"operations: {reason}") from error
            try:
                self.store.log_apply(
                    ApplyLogEntry(run_id, phase_id, attempt, savepoint, previous, stat.paths, ACCEPTED, None)
                )
            except Exception as error:
                # An unrecorded savepoint could never be rolled back to: undo the apply.
                self._restore_after_failure(git, previous, planned)
                raise Unavailable(
                    f"could not record the apply (undone, retry): {type(error).__name__}"
                ) from error
        return ApplyResult(savepoint, previous, stat.paths, stat.lines_added, stat.lines_removed)

    def _restore_after_failure(self, git: Git, previous: str, planned: Sequence[PlannedOperation]) -> None:
        try:
            git.restore(previous)
        finally:
            _undo_writes(planned)

    def _log_rejection(self, run_id: str, phase_id: str, attempt: int, previous: str, reason: str) -> None:
        log.info("rejected apply of run %s phase %s attempt %d: %s", run_id, phase_id, attempt, reason)
        try:
            self.store.log_apply(
                ApplyLogEntry(run_id, phase_id, attempt, None, previous, (), REJECTED, reason)
            )
        except Exception:
            log.exception("could not record a rejected apply of run %s", run_id)

    # -- Rollback ------------------------------------------------------------------------

    def rollback(self, run_id: str, savepoint: str, deadline: float | None = None) -> RollbackResult:
        """Restore the workspace to one of the run's savepoints (its base or an accepted apply)."""
        run_id = validate_run_id(run_id)
        wanted = savepoint.strip().lower()
        if not wanted:
            raise InvalidArgument("savepoint", "is required")
        if not re.fullmatch(r"[0-9a-f]{7,64}", wanted):
            raise InvalidArgument("savepoint", f"{savepoint!r} is not a commit id (7-64 hex digits)")
        workspace = Path(self.record(run_id).path)
        with self.locked(run_id, deadline):
            matches = sorted(commit for commit in self.store.savepoints(run_id) if commit.startswith(wanted))
            if len(matches) > 1:
                raise InvalidArgument("savepoint", f"{savepoint!r} is ambiguous; give the full commit id")
            git = Git(workspace)
            if not matches or not git.is_commit_in_history(matches[0]):
                raise NotFound(f"savepoint: {savepoint!r} is not a savepoint of run {run_id!r}")
            previous = git.head()
            git.restore(matches[0])
            head = git.head()
        log.info("rolled back run %s from %s to %s", run_id, previous, head)
        return RollbackResult(head=head, previous_head=previous)

    # -- RunChecks support ---------------------------------------------------------------

    @contextmanager
    def exclusive(self, run_id: str, deadline: float | None = None) -> Iterator[Path]:
        """The run's workspace, held so no apply or rollback changes it meanwhile."""
        workspace = Path(self.record(run_id).path)
        with self.locked(run_id, deadline):
            yield workspace


def _describe(error: BaseException) -> str:
    if isinstance(error, OSError):
        return f"{error.strerror or type(error).__name__}" + (
            f" ({error.filename})" if error.filename else ""
        )
    return str(error)
