"""Failure fingerprints and deterministic failure hardening (no LLM calls).

A fingerprint is a failure message with its variable parts (paths, numbers, hex ids,
timestamps) replaced, so two attempts that failed the same way compare equal or nearly so;
the re-planner and the drain's repeat control compare fingerprints, not raw text.

Hardening recognises the seeds' known failure patterns in check or apply output and
returns a mitigation for the next attempt: a hint for the prompt and, where a safe
rewrite of the validation command fixes the cause (``pytest`` -> ``python -m pytest`` puts
the workspace on ``sys.path``; an explicit test path restores discovery), the new command.
A matched pattern saves a doctor call (the seeds estimate ~10K tokens each).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass

SIMILARITY_THRESHOLD = 0.8
"""Fingerprints at least this similar count as the same failure (seed 004, re-planning)."""
MAX_FINGERPRINT_CHARS = 300
_MIN_COMPARABLE_CHARS = 8

_TIMESTAMP = re.compile(
    r"\d{4}-\d{2}-\d{2}[ t]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(z|[+-]\d{2}:?\d{2})?|\b\d{2}:\d{2}:\d{2}(\.\d+)?\b"
)
_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
_HEX = re.compile(r"\b(?:0x)?[0-9a-f]{7,}\b")
_PATH = re.compile(r"(?:[a-z]:)?(?:[\w.~-]*[/\\])+[\w.-]+")
_NUMBER = re.compile(r"\b\d+(\.\d+)?\b")
_QUOTED = re.compile(r"(['\"])[^'\"]{1,80}\1")
_SPACE = re.compile(r"\s+")


def normalise_error(text: str) -> str:
    """The failure text without what varies between occurrences of the same failure."""
    text = text.lower()
    text = _TIMESTAMP.sub("<ts>", text)
    text = _UUID.sub("<id>", text)
    text = _PATH.sub("<path>", text)
    text = _HEX.sub("<id>", text)
    text = _NUMBER.sub("<n>", text)
    return _SPACE.sub(" ", text).strip()


def fingerprint(outcome: str, text: str) -> str:
    """``OUTCOME|normalised text``, at most 300 characters (the end of the text: errors come last)."""
    body = normalise_error(text)
    if len(body) > MAX_FINGERPRINT_CHARS:
        body = body[-MAX_FINGERPRINT_CHARS:]
    return f"{outcome}|{body}"


def similarity(first: str, second: str) -> float:
    """0..1 similarity of two fingerprints; different outcomes or near-empty texts are 0."""
    outcome_a, _, body_a = first.partition("|")
    outcome_b, _, body_b = second.partition("|")
    if outcome_a != outcome_b or min(len(body_a), len(body_b)) < _MIN_COMPARABLE_CHARS:
        return 0.0
    return difflib.SequenceMatcher(None, body_a, body_b, autojunk=False).ratio()


def similar(first: str, second: str, threshold: float = SIMILARITY_THRESHOLD) -> bool:
    return similarity(first, second) >= threshold


@dataclass(frozen=True)
class Mitigation:
    """What to change before the next attempt; ``command`` is a new validation command or None."""

    pattern: str
    description: str
    hint: str
    command: tuple[str, ...] | None = None
    # The missing module, for ``python_missing_dep`` (an install step may supply it).
    module: str = ""


@dataclass(frozen=True)
class FailureContext:
    """What hardening may look at: the failure text, the outcome and the phase's own paths."""

    outcome: str
    text: str
    command: tuple[str, ...] = ()
    deliverables: tuple[str, ...] = ()
    scope_paths: tuple[str, ...] = ()


_MISSING_MODULE = re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '([\w.]+)'")
_NODE_MISSING = re.compile(r"Cannot find module '([^']+)'")
_NOT_FOUND_ARG = re.compile(
    r"(?:file or directory not found|can't open file|No such file or directory):? '?([\w./-]+)'?"
)
_NO_TESTS = re.compile(r"no tests ran|collected 0 items|no tests collected", re.IGNORECASE)
_OUTSIDE_SCOPE = re.compile(r"outside (?:the |its )?(?:phase )?scope|not in scope", re.IGNORECASE)
_PERMISSION = re.compile(r"Permission denied", re.IGNORECASE)


def _top_modules(paths: Sequence[str]) -> set[str]:
    """Importable top-level names the phase's own files provide (``src/pkg/x.py`` -> src, pkg)."""
    names: set[str] = set()
    for path in paths:
        parts = [part for part in path.split("/") if part]
        for part in parts[:2]:
            names.add(part.removesuffix(".py"))
    return names


def _with_python_m_pytest(command: tuple[str, ...]) -> tuple[str, ...] | None:
    """``pytest ARGS`` -> ``python -m pytest ARGS`` (the working directory goes on sys.path)."""
    if command and command[0] == "pytest":
        return ("python", "-m", "pytest", *command[1:])
    return None


def _is_test_file(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return name.endswith(".py") and (name.startswith("test_") or name.endswith("_test.py"))


def _python_missing_dep(context: FailureContext) -> Mitigation | None:
    match = _MISSING_MODULE.search(context.text)
    if match is None:
        return None
    module = match.group(1).split(".")[0]
    if module in _top_modules([*context.deliverables, *context.scope_paths]):
        return None  # a module of the workspace itself: an import path problem, not a dependency
    return Mitigation(
        pattern="python_missing_dep",
        description=f"module {module!r} is not installed where the checks run",
        hint=(
            f"The Python module '{module}' is NOT installed in the check environment and cannot be "
            "installed. Do not import it: use the standard library or write the needed code yourself."
        ),
        module=match.group(1).split(".")[0],
    )


def _import_path(context: FailureContext) -> Mitigation | None:
    match = _MISSING_MODULE.search(context.text)
    if match is None:
        return None
    module = match.group(1).split(".")[0]
    if module not in _top_modules([*context.deliverables, *context.scope_paths]):
        return None
    command = _with_python_m_pytest(context.command)
    return Mitigation(
        pattern="import_path",
        description=f"workspace module {module!r} not importable from the check's working directory",
        hint=(
            f"'{module}' is a package of this repository: import it by its path from the repository "
            "root (e.g. `from src.mod import name`), and keep an `__init__.py` in each package directory."
        ),
        command=command,
    )


def _missing_test_discovery(context: FailureContext) -> Mitigation | None:
    if not _NO_TESTS.search(context.text):
        return None
    tests = tuple(path for path in context.deliverables if _is_test_file(path))
    command = None
    if tests and context.command and not any(arg in context.command for arg in tests):
        runner = context.command
        if runner[:1] == ("pytest",) or runner[:3] == ("python", "-m", "pytest"):
            options = tuple(arg for arg in runner if arg.startswith("-"))
            head = runner[:1] if runner[0] == "pytest" else runner[:3]
            command = (*head, *options, *tests)
    return Mitigation(
        pattern="missing_test_discovery",
        description="the test runner found no tests",
        hint=(
            "The test runner collected no tests: name test files test_*.py, test functions test_*, "
            "and put them at the deliverable paths" + (f" ({', '.join(tests)})." if tests else ".")
        ),
        command=command,
    )


def _wrong_working_dir(context: FailureContext) -> Mitigation | None:
    match = _NOT_FOUND_ARG.search(context.text)
    if match is None:
        return None
    missing = match.group(1)
    by_name = {path.rsplit("/", 1)[-1]: path for path in context.deliverables}
    replacement = by_name.get(missing.rsplit("/", 1)[-1])
    command = None
    if replacement and replacement != missing and missing in context.command:
        command = tuple(replacement if arg == missing else arg for arg in context.command)
    return Mitigation(
        pattern="wrong_working_dir",
        description=f"{missing!r} not found from the workspace root",
        hint=(
            "Checks run from the repository root: every path (in code, tests and commands) is relative "
            f"to it. '{missing}' did not exist there."
        ),
        command=command,
    )


def _scope_mismatch(context: FailureContext) -> Mitigation | None:
    if context.outcome != "APPLY_REJECTED" or not _OUTSIDE_SCOPE.search(context.text):
        return None
    allowed = ", ".join([*context.scope_paths, *context.deliverables]) or "the deliverables"
    return Mitigation(
        pattern="scope_mismatch",
        description="the change wrote outside the phase's scope",
        hint=f"Write ONLY these paths: {allowed}. Anything else is rejected.",
    )


def _node_missing_dep(context: FailureContext) -> Mitigation | None:
    match = _NODE_MISSING.search(context.text)
    if match is None:
        return None
    return Mitigation(
        pattern="node_missing_dep",
        description=f"Node module {match.group(1)!r} is not installed",
        hint=f"The Node module '{match.group(1)}' is not installed: do not require it.",
    )


def _permission_error(context: FailureContext) -> Mitigation | None:
    if not _PERMISSION.search(context.text):
        return None
    return Mitigation(
        pattern="permission_error",
        description="permission denied while running the checks",
        hint="Do not rely on executable bits or write outside the workspace: run scripts through "
        "their interpreter (`python script.py`).",
    )


# Priority order: the first detector that matches decides.
_DETECTORS = (
    _import_path,
    _python_missing_dep,
    _missing_test_discovery,
    _wrong_working_dir,
    _scope_mismatch,
    _node_missing_dep,
    _permission_error,
)
PATTERNS = (
    "import_path",
    "python_missing_dep",
    "missing_test_discovery",
    "wrong_working_dir",
    "scope_mismatch",
    "node_missing_dep",
    "permission_error",
)


def detect(context: FailureContext, already: Sequence[str] = ()) -> Mitigation | None:
    """The first known pattern in the failure that was not mitigated already, or None."""
    for detector in _DETECTORS:
        mitigation = detector(context)
        if mitigation is not None and mitigation.pattern not in already:
            return mitigation
    return None
