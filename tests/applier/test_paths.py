"""Path rules: normalisation, protected paths and scope matching (no I/O)."""

from __future__ import annotations

import pytest
from autopack_applier.paths import (
    PathRejected,
    ScopeRules,
    matches_rule,
    normalize_path,
    normalize_protected,
    protected_reason,
)
from autopack_common.errors import InvalidArgument


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("src/app.py", "src/app.py"),
        ("./src//app.py", "src/app.py"),
        ("src/./app.py", "src/app.py"),
        ("a/...b/c", "a/...b/c"),
        ("..hidden", "..hidden"),
    ],
)
def test_normalize_accepts_relative_paths(raw: str, expected: str) -> None:
    assert normalize_path(raw) == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ("", "empty"),
        ("../outside.py", "'..'"),
        ("src/../../etc/passwd", "'..'"),
        ("src/..", "'..'"),
        ("/etc/passwd", "absolute"),
        ("C:/Windows/win.ini", "Windows drive"),
        ("src\\..\\..\\x.py", "backslash"),
        ("src/a\x00.py", "NUL"),
        ("src/a\n.py", "control character"),
        ("src/", "directory"),
        (".", "directory"),
        ("a/" + "x" * 300, "longer than 255 bytes"),
    ],
)
def test_normalize_rejects_unsafe_paths(raw: str, reason: str) -> None:
    with pytest.raises(PathRejected, match=reason):
        normalize_path(raw)


def test_normalize_keeps_directory_prefixes_when_allowed() -> None:
    assert normalize_path("src/", allow_directory=True) == "src/"
    assert normalize_path("./src/util/", allow_directory=True) == "src/util/"
    assert normalize_path("./", allow_directory=True) == ""
    assert normalize_path(".", allow_directory=True) == ""
    with pytest.raises(PathRejected):
        normalize_path("../", allow_directory=True)


def test_builtin_protected_paths_cannot_be_configured_away() -> None:
    protected = normalize_protected([])
    assert protected_reason(".git/config", protected)
    assert protected_reason(".GIT/hooks/pre-commit", protected)  # case-insensitive filesystems
    assert protected_reason("vendor/lib/.git/HEAD", protected)  # no nested repository either
    assert protected_reason(".autopack/data/applier.db", protected)
    assert protected_reason(".autopack", protected)
    assert protected_reason(".gitignore", protected) is None
    assert protected_reason("src/.github/x.yml", protected) is None


def test_configured_protected_files_prefixes_and_globs() -> None:
    protected = normalize_protected(["./config.py", "secrets/", "*.pem", " "])
    assert protected_reason("config.py", protected) == "is a protected path (configured, rule 'config.py')"
    assert protected_reason("src/config.py", protected) is None  # a file rule is a path from the root
    assert protected_reason("secrets/prod.env", protected)
    assert protected_reason("secrets", protected)
    assert protected_reason("deploy/certs/server.pem", protected)  # "*" crosses "/"
    assert protected_reason("src/app.py", protected) is None


def test_malformed_protected_rule_fails_configuration() -> None:
    with pytest.raises(ValueError, match="protected path"):
        normalize_protected(["../etc"])
    with pytest.raises(ValueError, match="whole workspace"):
        normalize_protected(["./"])


def test_scope_exact_files_and_directory_prefixes() -> None:
    scope = ScopeRules.parse(["src/app.py", "tests/", "./docs/api/"], [])
    assert scope.write_rejection("src/app.py") is None
    assert scope.write_rejection("tests/test_app.py") is None
    assert scope.write_rejection("tests/unit/deep/test_x.py") is None
    assert scope.write_rejection("docs/api/index.md") is None
    assert scope.write_rejection("src/app.pyc")  # exact means exact
    assert scope.write_rejection("src/other.py")
    assert scope.write_rejection("tests")  # the prefix covers files under it, not a file named so
    assert scope.write_rejection("testsuite/x.py")  # "tests/" is not a string prefix of "testsuite"
    assert scope.write_rejection("docs/guide.md")


def test_scope_file_entry_hints_at_directory_form() -> None:
    scope = ScopeRules.parse(["src"], [])
    reason = scope.write_rejection("src/app.py")
    assert reason is not None and "write 'src/' for a directory" in reason


def test_read_only_context_is_not_writable_unless_also_in_paths() -> None:
    scope = ScopeRules.parse(["src/app.py"], ["src/", "README.md"])
    assert scope.write_rejection("src/app.py") is None
    reason = scope.write_rejection("src/util/strings.py")
    assert reason is not None and "read-only context" in reason
    assert "read-only context" in (scope.write_rejection("README.md") or "")


def test_empty_scope_allows_nothing_and_root_scope_allows_everything() -> None:
    assert "scope.paths is empty" in (ScopeRules.parse([], []).write_rejection("a.py") or "")
    everything = ScopeRules.parse(["./"], [])
    assert everything.write_rejection("deep/nested/file.txt") is None
    assert matches_rule("anything", "")


def test_malformed_scope_entry_names_the_field() -> None:
    with pytest.raises(InvalidArgument) as error:
        ScopeRules.parse(["src/", "../elsewhere/"], [])
    assert error.value.field == "scope.paths[1]"
    with pytest.raises(InvalidArgument) as error:
        ScopeRules.parse(["src/"], ["/etc/"])
    assert error.value.field == "scope.read_only_context[0]"
