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
import hashlib
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
from autopack_common.deliverables import sanitize_deliverables
from autopack_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
)

from autopack_applier.deliverables import DeliverablesReport, check_deliverables, derived_scope
from autopack_applier.edits import DiffApplier, Edit, EditRejected, normalize_diff, resolve_edits
from autopack_applier.gitrepo import BRANCH, DiffNotApplied, Git, GitError, apply_unified_diff
from autopack_applier.governance import (
    DeletionThresholds,
    DeletionTier,
    GovernanceBlocked,
    GovernanceDecision,
    RequestFingerprint,
    assess,
)
from autopack_applier.paths import (
    BUILTIN_PROTECTED,
    PathRejected,
    ProtectedHit,
    ProtectionPolicy,
    ScopeRules,
    normalize_path,
    secret_reason,
)
from autopack_applier.store import (
    ACCEPTED,
    APPROVAL_APPROVED,
    APPROVAL_DENIED,
    REJECTED,
    ApplierStore,
    ApplyLogEntry,
    ApprovalRecord,
    WorkspaceRecord,
    new_request_id,
)
from autopack_applier.validation import new_problems
from autopack_applier.withholding import is_secret, readable_path

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
_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
DEFAULT_SAVEPOINT_RETENTION = 3
DEFAULT_THRESHOLDS = DeletionThresholds()
DELETION_TAG_PREFIX = "autopack/save-before-deletion/"
# Directories a walk for protected untracked files skips: VCS data and tool caches.
_WALK_SKIP = frozenset(
    {".git", "node_modules", ".venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache"}
)


def _ref_safe(text: str) -> str:
    """``text`` as one git ref component."""
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


_MAX_VIOLATIONS_SHOWN = 10


class Mode(enum.Enum):
    """What a file operation does to its path."""

    CREATE = "create"
    MODIFY = "modify"
    DELETE = "delete"
    EDIT = "edit"


@dataclass(frozen=True)
class FileOperation:
    """One requested change; ``mode`` None means the caller left it unspecified."""

    path: str
    mode: Mode | None
    new_content: str = ""
    edits: tuple[Edit, ...] = ()
    base_sha256: str = ""


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
class WithheldFile:
    """A file ReadFiles found but does not return (an env/secret file), and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class ReadResult:
    files: tuple[WorkspaceFile, ...]
    missing: tuple[str, ...]
    withheld: tuple[WithheldFile, ...] = ()


@dataclass(frozen=True)
class ApplyResult:
    savepoint: str
    previous_savepoint: str
    changed_paths: tuple[str, ...]
    lines_added: int
    lines_removed: int
    net_deleted: int = 0
    deletion_tag: str = ""
    notices: tuple[str, ...] = ()
    approval_request_id: str = ""


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
    protected: ProtectedHit | None = None  # an approvable protection this write needs approval for

    @property
    def changes(self) -> bool:
        if self.mode is Mode.DELETE:
            return True
        return self.original != self.content

    @property
    def net_deleted_lines(self) -> int:
        """Lines this operation removes minus lines it adds (a deleted link counts 0)."""
        before = 0 if self.original is None or self.symlink else _line_count(self.original)
        after = 0 if self.mode is Mode.DELETE else _line_count(self.content)
        return before - after


def _line_count(data: bytes) -> int:
    return data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)


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


class _Violations:
    """Refusals collected over a whole request: malformed ones first, then stale ones."""

    def __init__(self) -> None:
        self.invalid: list[tuple[str, str]] = []
        self.stale: list[tuple[str, str]] = []

    def add(self, field: str, problem: str, *, stale: bool = False) -> None:
        (self.stale if stale else self.invalid).append((field, problem))

    def raise_any(self) -> None:
        if self.invalid:
            raise _combined(self.invalid)
        if self.stale:
            error = _combined(self.stale)
            raise FailedPrecondition(error.message)


def plan_operations(
    workspace: Path,
    operations: Sequence[FileOperation],
    scope: ScopeRules,
    protected: ProtectionPolicy | Sequence[str] = BUILTIN_PROTECTED,
    apply_diff: DiffApplier | None = None,
) -> list[PlannedOperation]:
    """Validate every operation against every rule and compute its content; write nothing.

    ``workspace`` must be symlink-free (``Path.resolve()``d). Malformed operations are
    collected and raised as one InvalidArgument naming the first offending field, so a
    Builder can fix them in one retry; edits written against another version of a file
    (``base_sha256``, search text, a diff that no longer applies) are a FailedPrecondition.
    Writes to approvable protected paths are planned with ``protected`` set: governance
    decides on them afterwards.
    """
    policy = protected if isinstance(protected, ProtectionPolicy) else ProtectionPolicy(tuple(protected))
    violations = _Violations()
    planned: list[PlannedOperation] = []
    owners: dict[str, int] = {}
    for index, operation in enumerate(operations):
        field = f"operations[{index}].path"
        try:
            path = normalize_path(operation.path)
        except PathRejected as error:
            violations.add(field, f"{operation.path!r} {error}")
            continue
        problem = _form_problem(index, operation)
        if problem is not None:
            violations.add(*problem)
            continue
        assert operation.mode is not None
        try:
            content = operation.new_content.encode("utf-8")
        except UnicodeEncodeError:
            violations.add(f"operations[{index}].new_content", "is not valid UTF-8 text")
            continue
        hit = policy.hit(path)
        reason = (hit.reason() if hit is not None and not hit.approvable else None) or scope.write_rejection(
            path
        )
        if reason:
            violations.add(field, f"{path!r} {reason}")
            continue
        try:
            target = _effective_target(workspace, path, operation.mode)
        except PathRejected as error:
            violations.add(field, f"{path!r} {error}")
            continue
        relative = target.relative_to(workspace).as_posix()
        if relative != path:
            hit = policy.hit(relative) or hit
            reason = (
                hit.reason() if hit is not None and not hit.approvable else None
            ) or scope.write_rejection(relative)
            if reason:
                violations.add(field, f"{path!r} resolves through a symlink to {relative!r}, which {reason}")
                continue
        secret = secret_reason(path, relative)
        if secret is not None and (operation.mode is Mode.EDIT or operation.base_sha256):
            # A search block, a line range or a stale hash would tell whether a guess matches.
            content_field = "edits" if operation.mode is Mode.EDIT else "base_sha256"
            violations.add(
                f"operations[{index}].{content_field}",
                f"{path!r}: {secret}, so edits and base_sha256 (which would tell whether a guess "
                "matches it) are refused; send the whole file with FILE_MODE_MODIFY",
            )
            continue
        if relative in owners:
            violations.add(field, f"{path!r} is also changed by operations[{owners[relative]}]")
            continue
        owners[relative] = index
        try:
            original, symlink = _existing_content(target, operation.mode)
        except PathRejected as error:
            violations.add(field, f"{path!r} {error}")
            continue
        if operation.mode is Mode.CREATE and original is not None and original != content:
            violations.add(field, f"{path!r} already exists with different content; use FILE_MODE_MODIFY")
            continue
        if operation.mode is not Mode.CREATE and original is None:
            action = operation.mode.value
            violations.add(
                field, f"{path!r} does not exist, nothing to {action}; use FILE_MODE_CREATE to add it"
            )
            continue
        if operation.mode is not Mode.DELETE:
            resolved = _final_content(
                index, operation, path, relative, content, original, apply_diff, violations
            )
            if resolved is None:
                continue
            content = resolved
        elif not _fresh(index, operation, path, original, symlink, violations):
            continue
        approvable = hit if hit is not None and hit.approvable else None
        planned.append(
            PlannedOperation(
                index, path, target, relative, operation.mode, content, original, symlink, approvable
            )
        )
    for relative, index in owners.items():
        parts = relative.split("/")
        for depth in range(1, len(parts)):
            ancestor = "/".join(parts[:depth])
            if ancestor in owners:
                violations.add(
                    f"operations[{index}].path",
                    f"{relative!r} lies under {ancestor!r}, which operations[{owners[ancestor]}] treats as a file",
                )
                break
    violations.raise_any()
    return planned


def _fresh(
    index: int,
    operation: FileOperation,
    path: str,
    original: bytes | None,
    symlink: bool,
    violations: _Violations,
) -> bool:
    """False (with a stale violation) when ``base_sha256`` names other bytes than the file's."""
    if not operation.base_sha256 or original is None or symlink:
        return True
    current = hashlib.sha256(original).hexdigest()
    if current == operation.base_sha256.lower():
        return True
    violations.add(
        f"operations[{index}].base_sha256",
        f"{path!r} is stale: the edits were written against {operation.base_sha256[:12]}, "
        f"the workspace file is {current[:12]} (read it again)",
        stale=True,
    )
    return False


def _final_content(
    index: int,
    operation: FileOperation,
    path: str,
    relative: str,
    content: bytes,
    original: bytes | None,
    apply_diff: DiffApplier | None,
    violations: _Violations,
) -> bytes | None:
    """The bytes a CREATE/MODIFY/EDIT leaves, edits resolved and validated; None when refused."""
    if not _fresh(index, operation, path, original, False, violations):
        return None
    original_text: str | None = None
    if original is not None:
        try:
            original_text = original.decode("utf-8")
        except UnicodeDecodeError:
            if operation.mode is Mode.EDIT:
                violations.add(
                    f"operations[{index}].path",
                    f"{path!r} is not UTF-8 text, so it cannot be edited; send it whole",
                )
                return None
    if operation.mode is Mode.EDIT:
        assert original_text is not None  # EDIT of a missing file was refused before
        try:
            text = resolve_edits(path, original_text, operation.edits, apply_diff or _no_diffs)
        except EditRejected as error:
            violations.add(
                f"operations[{index}].edits[{error.index}]", f"{path!r}: {error.problem}", stale=error.stale
            )
            return None
        content = text.encode("utf-8")
    if content != original:
        problems = new_problems(relative, content.decode("utf-8"), original_text)
        if problems:
            content_field = "edits" if operation.mode is Mode.EDIT else "new_content"
            violations.add(
                f"operations[{index}].{content_field}",
                "refused by validation: " + "; ".join(problem.describe(relative) for problem in problems),
            )
            return None
    return content


def _form_problem(index: int, operation: FileOperation) -> tuple[str, str] | None:
    """What is wrong with an operation's mode and fields whatever the workspace holds, or None."""
    prefix = f"operations[{index}]"
    if operation.mode is None:
        return (
            f"{prefix}.mode",
            "is required: FILE_MODE_CREATE, FILE_MODE_MODIFY, FILE_MODE_DELETE or FILE_MODE_EDIT",
        )
    if operation.mode is Mode.DELETE and operation.new_content:
        return f"{prefix}.new_content", "must be empty for FILE_MODE_DELETE"
    if operation.mode is Mode.EDIT:
        if operation.new_content:
            return f"{prefix}.new_content", "must be empty for FILE_MODE_EDIT (the edits say what changes)"
        if not operation.edits:
            return f"{prefix}.edits", "FILE_MODE_EDIT needs at least one edit"
    elif operation.edits:
        return f"{prefix}.edits", "apply only to FILE_MODE_EDIT"
    if operation.base_sha256 and not _SHA256.fullmatch(operation.base_sha256):
        return f"{prefix}.base_sha256", "must be 64 hexadecimal digits (SHA-256 of the file's bytes)"
    return None


def _no_diffs(path: str, text: str, diff: str) -> str:
    raise EditRejected(0, "unified diffs are not available here")


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
        allowed_paths: Sequence[str] = (),
        source_roots: Sequence[Path] = (),
        lock_timeout_seconds: float = 60.0,
        max_read_files: int = 5000,
        deletion_thresholds: DeletionThresholds = DEFAULT_THRESHOLDS,
        savepoint_retention: int = DEFAULT_SAVEPOINT_RETENTION,
    ) -> None:
        if savepoint_retention < 2:
            raise ValueError(
                "savepoint retention must keep at least 2 (the last savepoint and the one before it)"
            )
        self.root = root.expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._locks = self.root / ".locks"
        self._locks.mkdir(exist_ok=True)
        self.scratch = self.root / ".scratch"
        self.scratch.mkdir(exist_ok=True)
        self.store = store
        self.policy = ProtectionPolicy.from_rules(protected, allowed_paths)
        self.thresholds = deletion_thresholds
        self.retention = savepoint_retention
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
        if record.removed_at is not None:
            raise FailedPrecondition(
                f"run_id: the workspace of run {run_id!r} was cleaned up at {record.removed_at.isoformat()}; "
                "use a new run id"
            )
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
        """Text files under ``paths`` (files or directory prefixes), sorted; binaries are skipped.

        Env/secret files (the default protection's secret rule, judged on the path and on what
        a symlink resolves to) are listed in ``withheld`` and never read.
        """
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
        withheld: list[WithheldFile] = []
        for relative in sorted(found):
            reason = secret_reason(relative, found[relative].relative_to(workspace).as_posix())
            if reason is not None:
                withheld.append(WithheldFile(relative, reason))
                continue
            try:
                item = read_workspace_file(found[relative], relative, limit)
            except OSError as error:
                log.warning("skipping unreadable %s in run %s: %s", relative, run_id, error.strerror)
                continue
            if item is not None:
                files.append(item)
        if withheld:
            log.info("run %s: %d secret file(s) withheld from ReadFiles", run_id, len(withheld))
        return ReadResult(tuple(files), tuple(missing), tuple(withheld))

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
        deliverables: Sequence[str] = (),
    ) -> ApplyResult:
        """Validate all operations, pass governance, write them and commit a savepoint; all or nothing.

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

            notices: list[str] = []
            try:
                sanitized = sanitize_deliverables(deliverables)
                scope = ScopeRules.parse(scope_paths, read_only_context)
                if not scope.writable and sanitized.paths:
                    scope = ScopeRules(derived_scope(sanitized.paths), scope.read_only)
                    notices.append(
                        "scope.paths is empty: the write scope is the deliverables' directories ("
                        + ", ".join(scope.writable[:10])
                        + ")"
                    )
                planned = plan_operations(
                    workspace, operations, scope, self.policy, self._diff_applier(workspace)
                )
                decision = assess(
                    [
                        (op.relative, op.protected.risk, op.protected.reason())
                        for op in planned
                        if op.protected and op.changes  # a no-op retry needs no approval
                    ],
                    [(op.relative, op.net_deleted_lines) for op in planned],
                    sum(op.net_deleted_lines for op in planned),
                    self.thresholds,
                )
                fingerprint = RequestFingerprint(run_id, scope.writable, sanitized.paths, tuple(operations))
                approval = self._governance_gate(run_id, phase_id, fingerprint.digest(), decision)
            except (InvalidArgument, FailedPrecondition) as error:
                reject(error.message)
                raise
            if approval is not None:
                notices.append(f"approved by {approval.decided_by} (approval request {approval.request_id})")
            tag = ""
            try:
                if decision.tier is not DeletionTier.NONE:
                    tag = self._tag_before_deletion(git, run_id, phase_id, attempt, previous)
                    if decision.tier is not DeletionTier.SAVEPOINT:
                        notices.append(
                            f"deletes {decision.net_deleted} net lines (notify tier from "
                            f"{self.thresholds.notify}); the previous state is tagged {tag}"
                        )
                write_operations(planned)
                savepoint = git.commit_all(
                    f"autopack: {run_id}/{phase_id} attempt {attempt}",
                    force_paths=[op.relative for op in planned if op.mode is not Mode.DELETE],
                    leave_out=self._is_protected,
                )
                stat = git.numstat(previous, savepoint)
            except (OSError, GitError) as error:
                self._restore_after_failure(git, previous, planned, tag)
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
                self._restore_after_failure(git, previous, planned, tag)
                raise Unavailable(
                    f"could not record the apply (undone, retry): {type(error).__name__}"
                ) from error
            if approval is not None:
                self.store.consume_approval(approval.request_id, savepoint)
            self._retain(git, run_id)
        return ApplyResult(
            savepoint,
            previous,
            stat.paths,
            stat.lines_added,
            stat.lines_removed,
            net_deleted=decision.net_deleted,
            deletion_tag=tag,
            notices=tuple(notices),
            approval_request_id=approval.request_id if approval is not None else "",
        )

    def _governance_gate(
        self, run_id: str, phase_id: str, fingerprint: str, decision: GovernanceDecision
    ) -> ApprovalRecord | None:
        """The approval that lets a blocked apply through, or GovernanceBlocked.

        A pending or denied request for the same change is reported again rather than
        duplicated; a new change gets a new request.
        """
        if not decision.blocked:
            return None
        existing = self.store.latest_approval(run_id, fingerprint)
        if existing is not None and existing.status == APPROVAL_APPROVED:
            return existing
        if existing is not None:
            raise GovernanceBlocked(decision, existing.request_id, existing.status)
        record = self.store.add_approval(
            ApprovalRecord(
                request_id=new_request_id(),
                run_id=run_id,
                phase_id=phase_id,
                fingerprint=fingerprint,
                reason=decision.reason,
                risk_level=decision.risk.value,
                paths=tuple(dict.fromkeys(violation.path for violation in decision.violations)),
                details=tuple(
                    f"{violation.path} {violation.description}" for violation in decision.violations
                ),
            )
        )
        log.info(
            "apply of run %s phase %s needs approval %s (%s)",
            run_id,
            phase_id,
            record.request_id,
            record.reason,
        )
        raise GovernanceBlocked(decision, record.request_id)

    def _diff_applier(self, workspace: Path) -> DiffApplier:
        """Applies a unified diff in scratch space, reading 3-way bases from the workspace's objects."""
        objects = workspace / ".git" / "objects"

        def apply_diff(path: str, text: str, diff: str) -> str:
            patch = normalize_diff(path, diff)
            try:
                return apply_unified_diff(self.scratch, objects, path, text, patch)
            except DiffNotApplied as error:
                raise EditRejected(
                    0, f"unified_diff does not apply: {error.reason}", stale=not error.malformed
                ) from None
            except UnicodeDecodeError:
                raise EditRejected(0, "unified_diff leaves the file as non-UTF-8 bytes") from None

        return apply_diff

    def _tag_before_deletion(self, git: Git, run_id: str, phase_id: str, attempt: int, commit: str) -> str:
        """Tag ``commit`` before a large deletion (the seeds' "save-before-deletion" save point)."""
        stamp = utcnow().strftime("%Y%m%dT%H%M%S%f")
        name = f"{DELETION_TAG_PREFIX}{_ref_safe(run_id)}/{stamp}-{_ref_safe(phase_id)[:60]}-a{attempt}"
        git.run("tag", name, commit)
        return name

    def _retain(self, git: Git, run_id: str) -> None:
        """Keep the newest ``retention`` savepoints (and deletion tags) of the run, drop the rest."""
        try:
            pruned = self.store.prune_savepoints(run_id, self.retention)
            tags = git.text("tag", "--list", f"{DELETION_TAG_PREFIX}{_ref_safe(run_id)}/*").split()
            for tag in sorted(tags, reverse=True)[self.retention :]:
                git.run("tag", "-d", tag)
        except Exception:
            log.exception("savepoint retention failed for run %s (the apply itself succeeded)", run_id)
            return
        if pruned:
            log.info("run %s: %d savepoint(s) pruned by retention", run_id, len(pruned))

    def _restore_after_failure(
        self, git: Git, previous: str, planned: Sequence[PlannedOperation], tag: str = ""
    ) -> None:
        try:
            git.restore(previous, keep=self._is_protected)
        finally:
            _undo_writes(planned)
            if tag:
                git.run("tag", "-d", tag, check=False)

    def _is_protected(self, path: str) -> bool:
        return self.policy.hit(path) is not None

    def _log_rejection(self, run_id: str, phase_id: str, attempt: int, previous: str, reason: str) -> None:
        log.info("rejected apply of run %s phase %s attempt %d: %s", run_id, phase_id, attempt, reason)
        try:
            self.store.log_apply(
                ApplyLogEntry(run_id, phase_id, attempt, None, previous, (), REJECTED, reason)
            )
        except Exception:
            log.exception("could not record a rejected apply of run %s", run_id)

    # -- Approvals ------------------------------------------------------------------------

    def approve(self, request_id: str, decided_by: str, note: str = "", deny: bool = False) -> ApprovalRecord:
        """Approve (or deny) a pending request; the same change then passes governance once."""
        if not request_id:
            raise InvalidArgument("request_id", "is required")
        if not decided_by.strip():
            raise InvalidArgument("decided_by", "is required (who takes the decision is recorded)")
        if len(decided_by) > 200:
            raise InvalidArgument("decided_by", "must be at most 200 characters")
        record = self.store.get_approval(request_id)
        if record is None:
            raise NotFound(f"request_id: no approval request {request_id!r}")
        status = APPROVAL_DENIED if deny else APPROVAL_APPROVED
        if not self.store.decide_approval(request_id, status, decided_by.strip(), note or None):
            current = self.store.get_approval(request_id)
            raise FailedPrecondition(
                f"request_id: approval request {request_id!r} is {current.status if current else 'gone'}, not pending"
            )
        decided = self.store.get_approval(request_id)
        assert decided is not None
        log.info("approval request %s %s by %s", request_id, status, decided_by)
        return decided

    def approvals(self, run_id: str, pending_only: bool = False) -> list[ApprovalRecord]:
        """The run's approval requests, newest first (also after its workspace was cleaned up)."""
        if self.store.get_workspace(validate_run_id(run_id)) is None:
            raise NotFound(f"run_id: run {run_id!r} has no workspace")
        return self.store.list_approvals(run_id, pending_only)

    # -- Deliverables ---------------------------------------------------------------------

    def check_deliverables(self, run_id: str, entries: Sequence[str]) -> DeliverablesReport:
        """The deliverables against the workspace as it is now (cumulative across attempts)."""
        workspace = Path(self.record(run_id).path).resolve()
        files = Git(workspace).list_files()

        def read_bytes(path: str) -> bytes | None:
            real = readable_path(workspace, path)
            if real is None or not real.is_file():
                return None
            try:
                return real.read_bytes()
            except OSError:
                return None

        return check_deliverables(
            entries, files, read_bytes, is_secret=lambda path: is_secret(workspace, path)
        )

    # -- Cleanup --------------------------------------------------------------------------

    def cleanup(self, run_id: str, deadline: float | None = None) -> tuple[Path, int]:
        """Remove a finished run's workspace; refused while it holds protected untracked files."""
        workspace = Path(self.record(run_id).path).resolve()
        with self.locked(run_id, deadline):
            kept = self.protected_untracked(workspace)
            if kept:
                shown = ", ".join(kept[:10]) + (f" and {len(kept) - 10} more" if len(kept) > 10 else "")
                raise FailedPrecondition(
                    f"run_id: the workspace of run {run_id!r} holds protected untracked files ({shown}); "
                    "move them out first, nothing was removed"
                )
            shutil.rmtree(workspace)
            removed = self.store.mark_removed(run_id)
        with suppress(OSError):
            os.unlink(self._locks / f"{run_id}.lock")
        log.info("cleaned up the workspace of run %s (%d savepoints)", run_id, removed)
        return workspace, removed

    def protected_untracked(self, workspace: Path) -> list[str]:
        """Untracked files (ignored ones included) under protection: what a clean must never remove."""
        tracked = set(
            Git(workspace).run("ls-files", "-z").stdout.decode("utf-8", "surrogateescape").split("\0")
        )
        found: list[str] = []
        for directory, subdirectories, names in os.walk(workspace):
            subdirectories[:] = [name for name in subdirectories if name not in _WALK_SKIP]
            for name in names:
                relative = Path(directory, name).relative_to(workspace).as_posix()
                if relative not in tracked and self.policy.hit(relative) is not None:
                    found.append(relative)
        return sorted(found)

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
            if not matches and self.store.is_pruned(run_id, wanted):
                raise NotFound(
                    f"savepoint: {savepoint!r} was pruned by savepoint retention (the last {self.retention} "
                    f"of run {run_id!r} are kept)"
                )
            if not matches or not git.is_commit_in_history(matches[0]):
                raise NotFound(f"savepoint: {savepoint!r} is not a savepoint of run {run_id!r}")
            previous = git.head()
            git.restore(matches[0], keep=self._is_protected)
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
