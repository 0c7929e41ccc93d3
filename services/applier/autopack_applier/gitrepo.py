"""Thin wrapper over the git command line, isolated from the user's git configuration.

Every call is an explicit argument vector (no shell). The environment drops the
caller's global and system git config (no surprise hooks, signing, aliases or
credential helpers) and makes pathspecs literal, so a file named "*.py" is that file.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from autopack_common.errors import DomainError

# The identity savepoints are committed with; set in each workspace, never globally.
IDENTITY_NAME = "autopack"
IDENTITY_EMAIL = "autopack@localhost"
BRANCH = "autopack"

# Tool caches that checks leave behind; kept out of savepoints (.git/info/exclude).
WORKSPACE_EXCLUDES = (
    "__pycache__/",
    "*.py[cod]",
    ".pytest_cache/",
    ".mypy_cache/",
    ".ruff_cache/",
    ".venv/",
    "node_modules/",
    ".autopack/",
)

_DEFAULT_TIMEOUT = 120.0
_PASSTHROUGH = ("PATH", "HOME", "TMPDIR", "SYSTEMROOT")


class GitError(DomainError):
    """git failed where it should not have; an internal error with git's own message."""

    def __init__(self, args: Sequence[str], returncode: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-3:] if stderr.strip() else ["(no output)"]
        super().__init__(f"git {args[0] if args else ''} failed ({returncode}): {' | '.join(detail)}")
        self.returncode = returncode
        self.stderr = stderr


def git_environment() -> dict[str, str]:
    """A minimal environment for git: no user/system config, no prompts, literal pathspecs."""
    env = {key: os.environ[key] for key in _PASSTHROUGH if key in os.environ}
    env.update(
        {
            "LANG": "C",
            "LC_ALL": "C",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_LITERAL_PATHSPECS": "1",
            "GIT_OPTIONAL_LOCKS": "0",
        }
    )
    return env


@dataclass(frozen=True)
class NumStat:
    """What a commit range changed: paths and lines added/removed (binary files count 0)."""

    paths: tuple[str, ...]
    lines_added: int
    lines_removed: int


class Git:
    """git commands run in one directory."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd

    def run(
        self,
        *args: str,
        check: bool = True,
        stdin: bytes | None = None,
        timeout: float = _DEFAULT_TIMEOUT,
        extra_env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``git <args>`` here; raise GitError on a non-zero exit when ``check``."""
        result = subprocess.run(
            ["git", *args],
            cwd=self.cwd,
            env={**git_environment(), **(extra_env or {})},
            input=stdin,
            stdin=None if stdin is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise GitError(args, result.returncode, result.stderr.decode("utf-8", "replace"))
        return result

    def text(self, *args: str) -> str:
        """stdout of a git command, stripped."""
        return self.run(*args).stdout.decode("utf-8", "replace").strip()

    def head(self) -> str:
        return self.text("rev-parse", "--verify", "HEAD^{commit}")

    def resolve_commit(self, revision: str) -> str | None:
        """Full id of the commit ``revision`` names, or None."""
        result = self.run("rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}", check=False)
        if result.returncode != 0:
            return None
        return result.stdout.decode().strip() or None

    def toplevel(self) -> Path | None:
        """Root of the work tree containing cwd, or None (not a repository, or git refuses it)."""
        result = self.run("rev-parse", "--show-toplevel", check=False)
        if result.returncode != 0:
            return None
        return Path(result.stdout.decode("utf-8", "surrogateescape").strip())

    def list_files(self, pathspec: str = "") -> list[str]:
        """Tracked and untracked, not ignored files (relative to cwd), under ``pathspec``."""
        args = ["ls-files", "-z", "--cached", "--others", "--exclude-standard"]
        if pathspec:
            args += ["--", pathspec]
        output = self.run(*args).stdout.decode("utf-8", "surrogateescape")
        return sorted({entry for entry in output.split("\0") if entry})

    def configure_workspace(self) -> None:
        """Local identity and safety settings; the global config is never touched."""
        settings = {
            "user.name": IDENTITY_NAME,
            "user.email": IDENTITY_EMAIL,
            "commit.gpgsign": "false",
            "core.autocrlf": "false",
            "core.hooksPath": os.devnull,
            "gc.autoDetach": "false",
        }
        for key, value in settings.items():
            self.run("config", "--local", key, value)
        exclude = self.cwd / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("# written by autopack-applier\n" + "\n".join(WORKSPACE_EXCLUDES) + "\n")

    def commit_all(
        self, message: str, force_paths: Sequence[str] = (), leave_out: Callable[[str], bool] | None = None
    ) -> str:
        """Stage everything (plus ``force_paths`` even if ignored), commit, return the id.

        Untracked files for which ``leave_out(path)`` is true stay untracked unless they are
        in ``force_paths``: a ``.env`` or database a check created must not enter a savepoint,
        where a later rollback to an older savepoint would delete it.
        """
        forced = set(force_paths)
        left: list[str] = []
        if leave_out is not None:
            left = [path for path in self.untracked() if path not in forced and leave_out(path)]
        self.run("add", "-A")
        for paths, options in ((force_paths, ("add", "-f")), (left, ("reset", "-q"))):
            if paths:
                self.run(
                    *options,
                    "--pathspec-from-file=-",
                    "--pathspec-file-nul",
                    stdin="\0".join(paths).encode("utf-8", "surrogateescape"),
                )
        self.run("commit", "-q", "--allow-empty", "--no-verify", "-m", message)
        return self.head()

    def untracked(self) -> list[str]:
        """Untracked, not ignored files (a nested repository is listed as "dir/")."""
        output = self.run("ls-files", "-z", "--others", "--exclude-standard").stdout
        return [entry for entry in output.decode("utf-8", "surrogateescape").split("\0") if entry]

    def restore(self, commit: str, keep: Callable[[str], bool] | None = None) -> None:
        """Make the work tree ``commit``: tracked files reset, untracked (not ignored) ones removed.

        Untracked files for which ``keep(path)`` is true (protected: env/secret files,
        databases, run state) survive; the seeds' rollback lost a ``.env`` to ``git clean``.
        """
        self.run("reset", "-q", "--hard", commit)
        if keep is None:
            self.run("clean", "-q", "-f", "-d")
            return
        untracked = self.untracked()
        if not any(keep(path) for path in untracked):
            self.run("clean", "-q", "-f", "-d")
            return
        directories: set[Path] = set()
        for path in untracked:
            if path.endswith("/") or keep(path):  # a nested repository, or protected
                continue
            target = self.cwd / path
            with contextlib.suppress(FileNotFoundError):
                target.unlink()
            directories.update(parent for parent in target.parents if self.cwd in parent.parents)
        for directory in sorted(directories, key=lambda item: len(item.parts), reverse=True):
            with contextlib.suppress(OSError):
                directory.rmdir()  # only when empty

    def numstat(self, old: str, new: str) -> NumStat:
        """Paths and line counts changed between two commits."""
        output = self.run("diff", "--numstat", "-z", "--no-renames", old, new).stdout
        paths: list[str] = []
        added = removed = 0
        for entry in output.decode("utf-8", "surrogateescape").split("\0"):
            if not entry:
                continue
            plus, minus, path = entry.split("\t", 2)
            paths.append(path)
            added += int(plus) if plus.isdigit() else 0
            removed += int(minus) if minus.isdigit() else 0
        return NumStat(tuple(sorted(paths)), added, removed)

    def is_commit_in_history(self, commit: str) -> bool:
        """True when ``commit`` exists in this repository as a commit object."""
        return self.run("cat-file", "-e", f"{commit}^{{commit}}", check=False).returncode == 0

    def export(self, commit: str, destination: Path, timeout: float = 600.0) -> None:
        """Write the tree of ``commit`` into ``destination`` without touching this repository.

        ``read-tree`` into a throw-away index file, then ``checkout-index --prefix``: the
        workspace's own index, refs and objects stay as they are, and unlike ``git archive``
        no ``export-ignore`` attribute can leave files (a test suite) out.
        """
        with tempfile.TemporaryDirectory(prefix="export-index-") as temporary:
            index = {"GIT_INDEX_FILE": str(Path(temporary, "index"))}
            self.run("read-tree", commit, extra_env=index, timeout=timeout)
            self.run(
                "checkout-index", "-a", "-f", f"--prefix={destination}/", extra_env=index, timeout=timeout
            )


def apply_unified_diff(scratch_root: Path, objects: Path | None, path: str, text: str, patch: str) -> str:
    """``text`` (the content of ``path``) with ``patch`` applied, computed in a scratch repository.

    ``git apply --check`` first; when the hunks do not apply and the patch names its
    preimage blob (an ``index`` line), ``git apply --3way`` merges against that blob, read
    from ``objects`` (the workspace's object store, as an alternate, so nothing is written
    to it). Returns the new text or raises DiffNotApplied with git's reason.
    """
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diff-", dir=scratch_root) as temporary:
        tree = Path(temporary, "tree")
        tree.mkdir()
        git = Git(tree)
        git.run("init", "-q")
        if objects is not None:
            Path(tree, ".git", "objects", "info", "alternates").write_text(f"{objects}\n")
        target = tree / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(text.encode("utf-8"))
        patch_file = Path(temporary, "edit.patch")
        patch_file.write_bytes(patch.encode("utf-8"))
        options = ("--recount", "--whitespace=nowarn", str(patch_file))
        checked = git.run("apply", "--check", *options, check=False)
        if checked.returncode == 0:
            git.run("apply", *options)
            return target.read_bytes().decode("utf-8")
        reason = _last_lines(checked.stderr)
        if objects is not None and "\nindex " in patch:
            git.run("add", "--", path)
            merged = git.run("apply", "--3way", *options, check=False)
            if merged.returncode == 0:
                return target.read_bytes().decode("utf-8")
            reason = f"{reason}; 3-way merge: {_last_lines(merged.stderr)}"
        malformed = any(
            marker in reason for marker in ("corrupt patch", "No valid patches", "without header")
        )
        raise DiffNotApplied(reason, malformed=malformed)


class DiffNotApplied(ValueError):
    """A unified diff does not apply; ``malformed`` when it is not a valid patch at all."""

    def __init__(self, reason: str, *, malformed: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.malformed = malformed


def _last_lines(stderr: bytes, count: int = 2) -> str:
    lines = [line for line in stderr.decode("utf-8", "replace").strip().splitlines() if line.strip()]
    return " | ".join(lines[-count:]) or "git apply failed without a message"
