"""Path rules for workspace writes: normalisation, protected paths and scope.

Pure functions over repository-relative strings (no I/O), so every rule is unit-testable
and the same rules can be applied to the path a caller names and to the path a symlink
resolves to. Paths are POSIX-style: forward slashes, no leading slash, no "..".
"""

from __future__ import annotations

import enum
import fnmatch
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from autopack_common.errors import InvalidArgument

# Always protected, whatever the configuration says: git's own data (anywhere, so no
# nested repository can be planted) and Autopack's runtime state. The default categories
# below (VCS internals, env/secret files, databases, run state) come on top.
BUILTIN_PROTECTED: tuple[str, ...] = (".git/", ".autopack/")
VCS_DIRECTORIES = frozenset({".git", ".hg", ".svn"})
RUN_STATE_DIRECTORIES = frozenset({".autopack", ".autonomous_runs"})
SECRET_SUFFIXES = frozenset({".pem", ".key", ".p12", ".pfx", ".jks", ".keystore"})
SECRET_NAMES = frozenset({"id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", ".netrc", ".pgpass", ".htpasswd"})
DATABASE_SUFFIXES = frozenset({".db", ".sqlite", ".sqlite3", ".db3"})
# ".env.example" and friends are templates meant to be edited, not secrets.
ENV_TEMPLATE_SUFFIXES = (".example", ".sample", ".template", ".dist", ".defaults")
SECRET = "secret"  # the category of env/secret files

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


class Risk(enum.Enum):
    """How dangerous a refused change is; decides whether a human may approve it."""

    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


@dataclass(frozen=True)
class ProtectedHit:
    """Why a path is protected: its category, the rule that matched and the risk of writing it."""

    category: str  # "vcs", "run_state", "secret", "database" or "configured"
    rule: str
    risk: Risk

    @property
    def approvable(self) -> bool:
        """VCS internals are never writable: a planted hook or config would outlive any approval."""
        return self.category != "vcs"

    def reason(self) -> str:
        if self.category == "vcs":
            return "is inside a VCS directory (protected, never writable)"
        return f"is a protected path ({self.category.replace('_', ' ')}, rule {self.rule!r})"


def builtin_protection(path: str) -> ProtectedHit | None:
    """The default protection of ``path`` (VCS internals, run state, env/secret files, databases)."""
    parts = path.casefold().split("/")
    vcs = VCS_DIRECTORIES.intersection(parts)
    if vcs:
        return ProtectedHit("vcs", f"{sorted(vcs)[0]}/", Risk.CRITICAL)
    if parts[0] in RUN_STATE_DIRECTORIES:
        return ProtectedHit("run_state", f"{parts[0]}/", Risk.MEDIUM)
    name = parts[-1]
    suffix = PurePosixPath(name).suffix
    if name == ".env" or (name.startswith(".env.") and not name.endswith(ENV_TEMPLATE_SUFFIXES)):
        return ProtectedHit(SECRET, ".env*", Risk.HIGH)
    if suffix in SECRET_SUFFIXES or name in SECRET_NAMES:
        return ProtectedHit(SECRET, f"*{suffix}" if suffix in SECRET_SUFFIXES else name, Risk.HIGH)
    if suffix in DATABASE_SUFFIXES:
        return ProtectedHit("database", f"*{suffix}", Risk.HIGH)
    return None


def secret_protection(path: str) -> ProtectedHit | None:
    """The default rule's hit when ``path`` is an env/secret file, else None.

    Such a file's content must never leave the applier (ReadFiles, check output, error
    messages), whatever ``AUTOPACK_APPLIER_ALLOWED_PATHS`` says: an allowed subtree lets an
    Apply write there, it does not put credentials into a model's context.
    """
    hit = builtin_protection(path)
    return hit if hit is not None and hit.category == SECRET else None


def secret_reason(relative: str, real_relative: str) -> str | None:
    """Why a file's content must not leave the applier (it, or what it links to, is a secret), or None.

    ``relative`` is the path as found, ``real_relative`` the workspace file it resolves to.
    """
    hit = secret_protection(relative)
    if hit is not None:
        return f"secret file (rule {hit.rule!r}); its content never leaves the applier"
    hit = secret_protection(real_relative)
    if hit is not None:
        return (
            f"symlink to the secret file {real_relative!r} (rule {hit.rule!r}); its content never "
            "leaves the applier"
        )
    return None


def rule_matches(path: str, rule: str) -> bool:
    """True when a protected or allowed rule (file, "dir/" prefix or glob) covers ``path``; case-blind."""
    folded, folded_rule = path.casefold(), rule.casefold()
    if is_glob(rule):
        return fnmatch.fnmatchcase(folded, folded_rule)
    if folded_rule.endswith("/"):
        return folded.startswith(folded_rule) or folded == folded_rule[:-1]
    return folded == folded_rule or folded.startswith(f"{folded_rule}/")


@dataclass(frozen=True)
class ProtectionPolicy:
    """Protected defaults plus configured rules, minus explicitly allowed subtrees.

    An allowed entry beats every protection but VCS internals: ``.autopack/reports/`` can be
    opened for writing while the rest of ``.autopack/`` stays protected.
    """

    configured: tuple[str, ...] = ()
    allowed: tuple[str, ...] = ()

    @classmethod
    def from_rules(cls, protected: Iterable[str] = (), allowed: Iterable[str] = ()) -> ProtectionPolicy:
        """Normalised rules; ValueError on a malformed one (stops the service at start-up)."""
        configured = tuple(rule for rule in normalize_protected(protected) if rule not in BUILTIN_PROTECTED)
        return cls(configured, normalize_allowed(allowed))

    def hit(self, path: str) -> ProtectedHit | None:
        """Why ``path`` (normalised, a file) is protected, or None when it may be written."""
        builtin = builtin_protection(path)
        if builtin is not None and not builtin.approvable:
            return builtin
        if any(rule_matches(path, rule) for rule in self.allowed):
            return None
        if builtin is not None:
            return builtin
        for rule in self.configured:
            if rule_matches(path, rule):
                return ProtectedHit("configured", rule, Risk.HIGH)
        return None


def normalize_allowed(rules: Iterable[str]) -> tuple[str, ...]:
    """Allowed-subtree rules in canonical form; VCS directories can never be allowed."""
    normalized = [rule for rule in normalize_protected(rules) if rule not in BUILTIN_PROTECTED]
    for rule in normalized:
        if VCS_DIRECTORIES.intersection(rule.casefold().rstrip("/").split("/")):
            raise ValueError(f"allowed path {rule!r} is inside a VCS directory, which is never writable")
    return tuple(normalized)


def protected_reason(path: str, protected: Sequence[str]) -> str | None:
    """Why ``path`` (normalised, a file) may not be written under ``protected`` rules, or None."""
    hit = ProtectionPolicy(tuple(protected)).hit(path)
    return hit.reason() if hit is not None else None


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
