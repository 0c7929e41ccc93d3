"""Pre-apply validation: syntax per file type and truncation placeholders, with line and rule."""

from __future__ import annotations

import pytest
from autopack_applier.validation import content_problems, new_problems


@pytest.mark.parametrize(
    ("path", "text", "line", "rule"),
    [
        ("a.py", "x = 1\ndef f(:\n    pass\n", 2, "python-syntax"),
        ("a.json", '{\n  "a": 1,\n}\n', 3, "json-syntax"),
        ("a.yaml", "a: 1\nb: [1, 2\nc: 3\n", 3, "yaml-syntax"),
        ("a.yml", "a: 1\n  b: 2\n", 2, "yaml-syntax"),
        ("a.toml", "[x]\na = 1\nb = \n", 3, "toml-syntax"),
        ("a.py", "def f():\n    return 1\n\n# ... rest of file unchanged\n", 4, "truncation-marker"),
        ("a.js", "function f() {\n  // existing code remains unchanged\n}\n", 2, "truncation-marker"),
        ("a.py", "def f():\n    return 1\n\n...\n", 4, "dangling-ellipsis"),
        ("a.ts", "export const a = 1;\n// ...\n\n", 2, "dangling-ellipsis"),
        ("notes.md", "# notes\n…\n", 2, "dangling-ellipsis"),
    ],
)
def test_each_problem_names_its_line_and_rule(path: str, text: str, line: int, rule: str) -> None:
    problems = content_problems(path, text)
    assert [(problem.line, problem.rule) for problem in problems] == [(line, rule)]
    assert problems[0].describe(path).startswith(f"{path}:{line}: {rule}: ")


@pytest.mark.parametrize(
    ("path", "text"),
    [
        ("a.py", "class P(Protocol):\n    def f(self) -> int:\n        ...\n"),
        ("a.pyi", "def f() -> int: ...\n...\n"),
        ("a.json", '{"a": [1, 2]}\n'),
        ("a.yaml", "a: 1\n---\nb: 2\n"),
        ("a.toml", "[x]\na = 1\n"),
        ("a.py", 'pattern = "\\d"\n'),  # a SyntaxWarning, not an error
        ("README.md", "Loading...\nDone.\n"),
        ("CHANGELOG.md", "- The existing implementation is unchanged when the flag is off.\n"),
        ("data.bin.txt", ""),
    ],
)
def test_valid_content_passes(path: str, text: str) -> None:
    assert content_problems(path, text) == []


def test_a_rule_the_file_already_broke_is_not_held_against_the_change() -> None:
    broken = '{"a": \n'
    assert new_problems("fixture.json", '{"a": 2,\n', broken) == []
    assert [p.rule for p in new_problems("ok.json", '{"a": 2,\n', '{"a": 1}\n')] == ["json-syntax"]
    assert [p.rule for p in new_problems("new.json", '{"a": 2,\n', None)] == ["json-syntax"]
