"""Pre-apply validation of the text an Apply is about to write.

A model that runs out of tokens, or abbreviates, leaves files that look plausible and break
everything after them: Python that does not compile, JSON that does not parse, or a
placeholder ("rest of file unchanged", a dangling ``...``) where code should be. Each
problem names the line and the rule, so the refusal can say "file, line, rule". A rule the
file already broke before the change is not held against the change (an intentionally
broken fixture stays editable).
"""

from __future__ import annotations

import json
import re
import tomllib
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath

import yaml

# Placeholders a model writes instead of code it did not reproduce.
_TRUNCATION_MARKERS = re.compile(
    r"(rest|remainder) of (the )?(file|code|module|class|function|implementation|content)s?"
    r"( remains?| stays?| is| are)? (unchanged|the same|as before|omitted)"
    r"|(existing|remaining|previous|other|original) (code|content|implementation|methods|functions)"
    r" (remains? |stays? |is |are )?(unchanged|here|omitted|as before|goes here)"
    r"|\.\.\.\s*\(?(unchanged|truncated|omitted)\b"
    r"|\bcode (truncated|omitted) for brevity\b",
    re.IGNORECASE,
)
_PLACEHOLDER_OPENERS = ("#", "//", "/*", "*", "<!--", "--", ";", "...", "\u2026", "[", "(", "{", "'", '"')
# A line that is only an ellipsis, possibly commented: "...", "# ...", "// ...", "/* ... */", "…".
_ELLIPSIS_LINE = re.compile(r"^\s*(#|//|/\*|<!--|--)?\s*(\.\.\.|…)\s*(\*/|-->)?\s*$")
_TOML_POSITION = re.compile(r"line (\d+)")
# Stub files may end in a bare "..." at module level.
_ELLIPSIS_ALLOWED_SUFFIXES = frozenset({".pyi"})


@dataclass(frozen=True)
class Problem:
    """One reason a file's text is refused: where and which rule."""

    line: int
    rule: str
    message: str

    def describe(self, path: str) -> str:
        return f"{path}:{self.line}: {self.rule}: {self.message}"


def content_problems(path: str, text: str) -> list[Problem]:
    """Every rule ``text`` breaks as the content of ``path`` (empty when it is fine)."""
    problems: list[Problem] = []
    syntax = _syntax_problem(path, text)
    if syntax is not None:
        problems.append(syntax)
    problems.extend(_truncation_problems(path, text))
    return problems


def new_problems(path: str, text: str, original: str | None) -> list[Problem]:
    """Problems of ``text`` whose rule ``original`` did not already break."""
    problems = content_problems(path, text)
    if not problems or original is None:
        return problems
    already = {problem.rule for problem in content_problems(path, original)}
    return [problem for problem in problems if problem.rule not in already]


def _syntax_problem(path: str, text: str) -> Problem | None:
    suffix = PurePosixPath(path).suffix.lower()
    if suffix in (".py", ".pyi"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # SyntaxWarning about escapes is not a refusal
                compile(text, path, "exec", dont_inherit=True)
        except SyntaxError as error:
            return Problem(error.lineno or 1, "python-syntax", f"does not compile: {error.msg}")
        except ValueError as error:  # NUL bytes
            return Problem(1, "python-syntax", f"does not compile: {error}")
    elif suffix == ".json":
        try:
            json.loads(text)
        except json.JSONDecodeError as error:
            return Problem(error.lineno, "json-syntax", f"does not parse: {error.msg}")
    elif suffix in (".yaml", ".yml"):
        try:
            for _ in yaml.safe_load_all(text):
                pass
        except yaml.MarkedYAMLError as error:
            line = error.problem_mark.line + 1 if error.problem_mark is not None else 1
            return Problem(line, "yaml-syntax", f"does not parse: {error.problem or error.context}")
        except yaml.YAMLError as error:
            return Problem(1, "yaml-syntax", f"does not parse: {error}")
    elif suffix == ".toml":
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            found = _TOML_POSITION.search(str(error))
            return Problem(int(found.group(1)) if found else 1, "toml-syntax", f"does not parse: {error}")
    return None


def _truncation_problems(path: str, text: str) -> list[Problem]:
    problems: list[Problem] = []
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        found = _TRUNCATION_MARKERS.search(line) if len(line) <= 200 else None
        stripped = line.strip()
        # A placeholder is a comment or a line of its own; prose that merely mentions
        # "the existing implementation is unchanged" is not one.
        if found and (
            stripped.startswith(_PLACEHOLDER_OPENERS) or len(found.group(0)) >= 0.6 * len(stripped)
        ):
            problems.append(
                Problem(number, "truncation-marker", f"placeholder instead of content: {line.strip()[:80]!r}")
            )
            break
    suffix = PurePosixPath(path).suffix.lower()
    if suffix not in _ELLIPSIS_ALLOWED_SUFFIXES:
        last = next((number for number in range(len(lines), 0, -1) if lines[number - 1].strip()), None)
        ending = lines[last - 1] if last is not None else ""
        # In Python an indented "..." is a legitimate body (a Protocol method, a stub).
        python_body = suffix == ".py" and ending[:1].isspace() and ending.strip() in ("...", "…")
        if last is not None and _ELLIPSIS_LINE.match(ending) and not python_body:
            problems.append(
                Problem(last, "dangling-ellipsis", "the file ends with '...' where content should continue")
            )
    return problems
