"""Machine-readable test results of a pytest check: how to ask for them and how to read them.

pytest's built-in JUnit XML writer needs no plugin in the environment the check runs in, so
any pytest the allowlist reaches can report. ``junit_family=xunit1`` adds the ``file``
attribute that lets a test case be mapped back to its pytest node id
(``tests/test_a.py::TestK::test_p[1]``), which is what the baseline compares and what a
re-run selects. Collection errors (modules that cannot be imported) are reported by pytest
as an ``<error message="collection failure">`` on a test case with an empty class name and
are kept apart from test failures: they always block.
"""

from __future__ import annotations

import enum
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from autopack_applier.checks import PYTHON_NAMES

PYTEST_NAMES = frozenset({"pytest", "py.test"})
COLLECTION_FAILURE = "collection failure"
# A report larger than this is not parsed (a runaway suite, or a hostile one).
MAX_REPORT_BYTES = 64 * 1024 * 1024


class Outcome(enum.StrEnum):
    """The result of one test case."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"
    SKIPPED = "skipped"

    @property
    def failing(self) -> bool:
        return self in (Outcome.FAILED, Outcome.ERROR)


@dataclass(frozen=True)
class Counts:
    """Test counts of one report."""

    passed: int = 0
    failed: int = 0
    errors: int = 0
    skipped: int = 0
    collection_errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "passed": self.passed,
            "failed": self.failed,
            "errors": self.errors,
            "skipped": self.skipped,
            "collection_errors": self.collection_errors,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, int]) -> Counts:
        return cls(**{name: int(values.get(name, 0)) for name in cls().as_dict()})


@dataclass(frozen=True)
class TestReport:
    """Outcome per test id, plus the modules that failed to collect."""

    outcomes: Mapping[str, Outcome] = field(default_factory=dict)
    collection_errors: tuple[str, ...] = ()

    __test__ = False  # not a pytest test class, whatever its name says

    @property
    def counts(self) -> Counts:
        values = list(self.outcomes.values())
        return Counts(
            passed=values.count(Outcome.PASSED),
            failed=values.count(Outcome.FAILED),
            errors=values.count(Outcome.ERROR),
            skipped=values.count(Outcome.SKIPPED),
            collection_errors=len(self.collection_errors),
        )

    @property
    def failing(self) -> tuple[str, ...]:
        return tuple(sorted(test for test, outcome in self.outcomes.items() if outcome.failing))


class ReportUnreadable(ValueError):
    """The report file is missing, too large or not JUnit XML; the message says which."""


def is_pytest_command(command: Sequence[str]) -> bool:
    """True for ``pytest ...``, ``py.test ...`` and ``python[3] -m pytest ...``."""
    if not command:
        return False
    if command[0] in PYTEST_NAMES:
        return True
    return command[0] in PYTHON_NAMES and list(command[1:3]) == ["-m", "pytest"]


def reporting_command(command: Sequence[str], report: Path, cache_dir: Path) -> list[str]:
    """``command`` with options appended so pytest writes a report and a private cache.

    Appended last, they win over the same options earlier on the command line or in an ini
    file. The cache lives outside the workspace and records the failures the re-run selects
    (``--last-failed``), so "-p no:cacheprovider", which would switch it off, is dropped.
    """
    kept: list[str] = []
    skip_next = False
    for index, argument in enumerate(command):
        if skip_next:
            skip_next = False
            continue
        if argument == "-p" and index + 1 < len(command) and command[index + 1] == "no:cacheprovider":
            skip_next = True
            continue
        if argument == "-pno:cacheprovider":
            continue
        kept.append(argument)
    return [
        *kept,
        f"--junitxml={report}",
        "-o",
        "junit_family=xunit1",
        "-o",
        f"cache_dir={cache_dir}",
    ]


def rerun_command(command: Sequence[str], report: Path, cache_dir: Path) -> list[str]:
    """The same pytest command, limited to the tests that failed in the run before it."""
    return [*reporting_command(command, report, cache_dir), "--last-failed", "--last-failed-no-failures=none"]


def node_id(file: str | None, classname: str, name: str) -> str:
    """The pytest node id of a JUnit test case (``file::Class::name``), best effort."""
    if not file:
        return f"{classname}::{name}" if classname else name
    module = file.removesuffix(".py").replace("/", ".")
    if classname == module:
        return f"{file}::{name}"
    if classname.startswith(module + "."):
        classes = classname[len(module) + 1 :].split(".")
        return "::".join([file, *classes, name])
    return f"{file}::{name}"


def parse_junit(data: bytes) -> TestReport:
    """Outcomes and collection errors of a pytest JUnit XML report."""
    try:
        root = ElementTree.fromstring(data)
    except ElementTree.ParseError as error:
        raise ReportUnreadable(f"the test report is not valid XML ({error})") from None
    if root.tag not in ("testsuites", "testsuite"):
        raise ReportUnreadable(f"the test report's root element is <{root.tag}>, not <testsuites>")
    outcomes: dict[str, Outcome] = {}
    collection_errors: list[str] = []
    for case in root.iter("testcase"):
        classname = case.get("classname", "")
        name = case.get("name", "")
        file = case.get("file")
        error = case.find("error")
        if not classname and error is not None and error.get("message") == COLLECTION_FAILURE:
            collection_errors.append(file or name)
            continue
        test = node_id(file, classname, name)
        if case.find("failure") is not None:
            outcome = Outcome.FAILED
        elif error is not None:
            outcome = Outcome.ERROR
        elif case.find("skipped") is not None:
            outcome = Outcome.SKIPPED
        else:
            outcome = Outcome.PASSED
        # A test failing in its call and erroring in tear-down appears twice: keep the worse.
        previous = outcomes.get(test)
        if previous is None or (not previous.failing and outcome.failing):
            outcomes[test] = outcome
    return TestReport(outcomes, tuple(dict.fromkeys(collection_errors)))


def read_report(path: Path) -> TestReport:
    """Parse the report a check wrote at ``path``."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ReportUnreadable(
            "pytest wrote no test report (it crashed or stopped before the session)"
        ) from None
    if size > MAX_REPORT_BYTES:
        raise ReportUnreadable(f"the test report is {size} bytes, over the {MAX_REPORT_BYTES} byte limit")
    return parse_junit(path.read_bytes())
