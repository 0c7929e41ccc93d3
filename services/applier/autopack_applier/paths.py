"""Path rules for workspace writes: normalisation, protected paths and scope.

Pure functions over repository-relative strings (no I/O), so every rule is unit-testable
and the same rules can be applied to the path a caller names and to the path a symlink
resolves to. Paths are POSIX-style: forward slashes, no leading slash, no "..".
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from autopack_common.errors import InvalidArgument

# Always protected, whatever the configuration says: git's own data (anywhere, so no
# nested repository can be planted) and Autopack's runtime state.
BUILTIN_PROTECTED: tuple[str, ...] = (".git/", ".autopack/")

MAX_PATH_LENGTH = 4096
_MAX_COMPONENT_BYTES = 255
_DRIVE = re.compile(r"^[A-Za-z]:")
_GLOB_CHARS = frozenset("*?[")


class PathRejected(ValueError):
    """A path breaks a rule; the message is the reason, phrased to follow the path's name."""


def normalize_path(raw: str, *, allow_directory: bool = False) -> str:
    """Canonical repository-relative form of ``raw``, or PathRejected with the reason.

    "." segments and repeated slashes are dropped ("./src//a.py" -> "src/a.py"). With
    ``allow_directory`` a trailing "/" is kept to mark a directory prefix and "." or "./"
    mean the workspace root (returned as ""); otherwise a directory is an error.
    """
    if not raw:
        raise PathRejected("is empty")
    if "\x00" in raw:
        raise PathRejected("contains a NUL byte")
    if any(ord(char) < 0x20 or char == "\x7f" for char in raw):
        raise PathRejected("contains a control character")
    if "\\" in raw:
        raise PathRejected("contains a backslash; use forward slashes")
    if raw.startswith("/"):
        raise PathRejected("is absolute; use a path relative to the repository root")
    if _DRIVE.match(raw):
        raise PathRejected("looks like a Windows drive path; use a path relative to the repository root")
    if len(raw) > MAX_PATH_LENGTH:
        raise PathRejected(f"is longer than {MAX_PATH_LENGTH} characters")
    segments = raw.split("/")
    if ".." in segments:
        raise PathRejected("contains '..'; paths must stay inside the workspace")
    parts = [segment for segment in segments if segment not in ("", ".")]
    if any(len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES for part in parts):
        raise PathRejected(f"has a component longer than {_MAX_COMPONENT_BYTES} bytes")
    is_directory = segments[-1] in ("", ".")
    if is_directory and not allow_directory:
        raise PathRejected("names a directory; a file path is required")
    if not parts:
        return ""
    joined = "/".join(parts)
    return f"{joined}/" if is_directory else joined


def is_glob(rule: str) -> bool:
    """True when a protected-path rule is a shell-style pattern rather than a path."""
    return any(char in _GLOB_CHARS for char in rule)


def normalize_protected(rules: Iterable[str]) -> tuple[str, ...]:
    """Configured protected rules in canonical form (the built-ins always come first).

    A rule is a file ("config.py": that path, and anything under it should it be a
    directory), a directory prefix ("secrets/") or a glob matched against the whole path
    ("*.pem", "**/.env"; "*" also matches "/"). Raises ValueError on a malformed rule so a
    bad configuration stops the service at start-up.
    """
    normalized: list[str] = list(BUILTIN_PROTECTED)
    for rule in rules:
        rule = rule.strip()
        if not rule:
            continue
        if is_glob(rule):
            normalized.append(rule.removeprefix("./"))
            continue
        try:
            value = normalize_path(rule, allow_directory=True)
        except PathRejected as error:
            raise ValueError(f"protected path {rule!r} {error}") from None
        if not value:
            raise ValueError("protected path '.' would protect the whole workspace")
        normalized.append(value)
    return tuple(dict.fromkeys(normalized))


def protected_reason(path: str, protected: Sequence[str]) -> str | None:
    """Why ``path`` (normalised, a file) may not be written, or None when it may.

    Matching ignores case, so ".GIT/config" cannot slip past on a case-insensitive
    filesystem.
    """
    folded = path.casefold()
    if ".git" in folded.split("/"):
        return "is inside a .git directory (protected)"
    for rule in protected:
        folded_rule = rule.casefold()
        if is_glob(rule):
            hit = fnmatch.fnmatchcase(folded, folded_rule)
        elif folded_rule.endswith("/"):
            hit = folded.startswith(folded_rule) or folded == folded_rule[:-1]
        else:
            hit = folded == folded_rule or folded.startswith(f"{folded_rule}/")
        if hit:
            return f"is a protected path (rule {rule!r})"
    return None


def matches_rule(path: str, rule: str) -> bool:
    """Scope matching: "" is the whole workspace, "dir/" a prefix, anything else one file."""
    if rule == "" or (rule.endswith("/") and path.startswith(rule)):
        return True
    return path == rule


@dataclass(frozen=True)
class ScopeRules:
    """A phase's scope, normalised: where it may write and what it may only read."""

    writable: tuple[str, ...]
    read_only: tuple[str, ...]

    @classmethod
    def parse(cls, paths: Sequence[str], read_only_context: Sequence[str]) -> ScopeRules:
        """Normalise both lists; a malformed entry is an InvalidArgument naming it."""
        return cls(
            writable=_normalize_scope(paths, "scope.paths"),
            read_only=_normalize_scope(read_only_context, "scope.read_only_context"),
        )

    def write_rejection(self, path: str) -> str | None:
        """Why ``path`` is outside the writable scope, or None when it is inside."""
        if any(matches_rule(path, rule) for rule in self.writable):
            return None
        if any(matches_rule(path, rule) for rule in self.read_only):
            return "is read-only context (scope.read_only_context) and not in scope.paths"
        if not self.writable:
            return "is outside the scope: scope.paths is empty"
        hint = ""
        for rule in self.writable:
            if not rule.endswith("/") and path.startswith(f"{rule}/"):
                hint = f"; scope entry {rule!r} names a single file, write {rule + '/'!r} for a directory"
                break
        shown = ", ".join(repr(rule) for rule in self.writable[:10])
        more = f" and {len(self.writable) - 10} more" if len(self.writable) > 10 else ""
        return f"is outside the scope (scope.paths: {shown}{more}){hint}"


def _normalize_scope(entries: Sequence[str], field: str) -> tuple[str, ...]:
    normalized: list[str] = []
    for index, entry in enumerate(entries):
        try:
            normalized.append(normalize_path(entry, allow_directory=True))
        except PathRejected as error:
            raise InvalidArgument(f"{field}[{index}]", f"{entry!r} {error}") from None
    return tuple(dict.fromkeys(normalized))
