"""Deliverables: sanitising entries, derived scope, and the cumulative check against files."""

from __future__ import annotations

from autopack_applier.deliverables import check_deliverables, derived_scope
from autopack_common.deliverables import sanitize_deliverables


def test_sanitize_cleans_annotations_quotes_prefixes_buckets_and_duplicates() -> None:
    result = sanitize_deliverables(
        [
            "pkg/x.py (new)",
            " ./a.py ",
            "`src/b.py`",
            '"c.json"',
            "pkg/",
            "pkg/x.py",
            "- tests/test_x.py: unit tests",
            "code: src/d.py, src/e.py",
            "docs/guide.md - the guide",
            "src\\win.py",
            "Makefile",
            "Logging configuration",
            "../etc/passwd",
            "/abs/path.py",
            "   ",
        ]
    )
    assert result.paths == (
        "pkg/x.py",
        "a.py",
        "src/b.py",
        "c.json",
        "pkg/",
        "tests/test_x.py",
        "src/d.py",
        "src/e.py",
        "docs/guide.md",
        "src/win.py",
        "Makefile",
    )
    assert [reason for _, reason in result.dropped] == [
        "is prose, not a path",
        "leaves the repository ('..')",
        "is an absolute path",
        "empty",
    ]


def test_derived_scope_is_the_deliverables_directories() -> None:
    assert derived_scope(["pkg/x.py", "pkg/y.py", "docs/", "README.md", "a/b/c.txt"]) == (
        "pkg/",
        "docs/",
        "README.md",
        "a/b/",
    )


def test_check_is_cumulative_and_explains_what_is_missing() -> None:
    files = {
        "src/x.py": b"x = 1\n",
        "pkg/__init__.py": b"",
        "data/config.json": b'{"a": 1}',
        "data/empty.json": b"{}",
        "data/broken.json": b"{",
        "docs/a.md": b"# a\n",
    }
    report = check_deliverables(
        [
            "pkg/__init__.py",
            "pkg/x.py (new)",
            "data/config.json",
            "data/empty.json",
            "data/broken.json",
            "docs/",
            "out/",
        ],
        sorted(files),
        files.get,
    )
    assert report.present == ("pkg/__init__.py", "data/config.json", "docs/")
    assert [(problem.deliverable, problem.kind) for problem in report.problems] == [
        ("pkg/x.py", "missing"),
        ("data/empty.json", "empty_json"),
        ("data/broken.json", "invalid_json"),
        ("out/", "empty_directory"),
    ]
    assert report.hints == ("`src/x.py` exists, `pkg/x.py` expected",)
    assert "`src/x.py` exists" in report.problems[0].message
