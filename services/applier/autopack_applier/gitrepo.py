"""Thin wrapper over the git command line, isolated from the user's git configuration.

Every call is an explicit argument vector (no shell). The environment drops the
caller's global and system git config (no surprise hooks, signing, aliases or
credential helpers) and makes pathspecs literal, so a file named "*.py" is that file.
"""

from __future__ import annotations

import os
import subprocess
import tarfile
from collections.abc import Sequence
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
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``git <args>`` here; raise GitError on a non-zero exit when ``check``."""
        result = subprocess.run(
            ["git", *args],
            cwd=self.cwd,
            env=git_environment(),
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

    def commit_all(self, message: str, force_paths: Sequence[str] = ()) -> str:
        """Stage everything (plus ``force_paths`` even if ignored), commit, return the id."""
        self.run("add", "-A")
        if force_paths:
            self.run(
                "add",
                "-f",
                "--pathspec-from-file=-",
                "--pathspec-file-nul",
                stdin="\0".join(force_paths).encode("utf-8", "surrogateescape"),
            )
        self.run("commit", "-q", "--allow-empty", "--no-verify", "-m", message)
        return self.head()

    def restore(self, commit: str) -> None:
        """Make the work tree exactly ``commit``: tracked files reset, untracked ones removed."""
        self.run("reset", "-q", "--hard", commit)
        self.run("clean", "-q", "-f", "-d")

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

        ``git archive`` streams a tar that is unpacked with tarfile's "data" filter, so no
        member can land outside ``destination``; the workspace's index and refs stay as they are.
        """
        process = subprocess.Popen(
            ["git", "archive", "--format=tar", commit],
            cwd=self.cwd,
            env=git_environment(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert process.stdout is not None
        try:
            with tarfile.open(fileobj=process.stdout, mode="r|") as archive:
                archive.extractall(destination, filter="data")
        except (tarfile.TarError, OSError) as error:
            process.kill()
            process.wait()
            raise GitError(("archive",), -1, f"could not unpack commit {commit}: {error}") from None
        finally:
            process.stdout.close()
        assert process.stderr is not None
        with process.stderr:
            stderr = process.stderr.read()
        process.wait(timeout=timeout)
        if process.returncode != 0:
            raise GitError(("archive",), process.returncode, stderr.decode("utf-8", "replace"))
