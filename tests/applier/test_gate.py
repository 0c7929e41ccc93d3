"""The CI gate: pytest reports, baselines, deltas, flaky suspects and collection errors.

Unit tests for the pure parts (report parsing, node ids, the verdict rules) and service tests
that run real pytest in real workspaces over a real gRPC channel.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from autopack.applier.v1 import applier_pb2, applier_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_applier.checks import CheckResult
from autopack_applier.gate import Verdict, judge
from autopack_applier.service import binding, build_servicer
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore, CheckBaseline
from autopack_applier.testreport import (
    Outcome,
    TestReport,
    is_pytest_command,
    node_id,
    parse_junit,
    reporting_command,
    rerun_command,
)
from autopack_common.clients import open_channel
from autopack_common.server import create_server

from .conftest import make_repo

TIMEOUT = 120
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]

# -- report parsing ----------------------------------------------------------------------

JUNIT = b"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="1" failures="2" skipped="1" tests="6">
<testcase classname="tests.test_a" name="test_ok" file="tests/test_a.py" line="1" />
<testcase classname="tests.test_a" name="test_bad" file="tests/test_a.py" line="2">
  <failure message="assert 0">boom</failure></testcase>
<testcase classname="tests.test_a.TestK" name="test_p[a b::c]" file="tests/test_a.py" line="5">
  <failure message="assert">x</failure></testcase>
<testcase classname="tests.test_a" name="test_err" file="tests/test_a.py" line="9">
  <error message="failed on setup">x</error></testcase>
<testcase classname="tests.test_a" name="test_skip" file="tests/test_a.py" line="11">
  <skipped message="skip" /></testcase>
<testcase classname="" name="tests.sub.test_c" file="tests/sub/test_c.py">
  <error message="collection failure">ImportError</error></testcase>
</testsuite></testsuites>"""


def test_parse_junit_separates_outcomes_and_collection_errors() -> None:
    report = parse_junit(JUNIT)
    assert report.outcomes == {
        "tests/test_a.py::test_ok": Outcome.PASSED,
        "tests/test_a.py::test_bad": Outcome.FAILED,
        "tests/test_a.py::TestK::test_p[a b::c]": Outcome.FAILED,
        "tests/test_a.py::test_err": Outcome.ERROR,
        "tests/test_a.py::test_skip": Outcome.SKIPPED,
    }
    assert report.collection_errors == ("tests/sub/test_c.py",)
    counts = report.counts
    assert (counts.passed, counts.failed, counts.errors, counts.skipped, counts.collection_errors) == (
        1,
        2,
        1,
        1,
        1,
    )


def test_a_teardown_error_after_a_pass_counts_as_failing() -> None:
    data = b"""<testsuites><testsuite>
    <testcase classname="t" name="x" file="t.py" />
    <testcase classname="t" name="x" file="t.py"><error message="failed on teardown">x</error></testcase>
    </testsuite></testsuites>"""
    assert parse_junit(data).outcomes == {"t.py::x": Outcome.ERROR}


def test_node_id_falls_back_without_a_file_attribute() -> None:
    assert node_id(None, "tests.test_a", "test_x") == "tests.test_a::test_x"
    assert (
        node_id("pkg/test_m.py", "pkg.test_m.TestA.TestB", "test_y") == "pkg/test_m.py::TestA::TestB::test_y"
    )


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["pytest", "-q"], True),
        (["python", "-m", "pytest"], True),
        (["python3", "-m", "pytest", "tests"], True),
        (["python", "-m", "unittest"], False),
        (["make", "test"], False),
        ([], False),
    ],
)
def test_is_pytest_command(command: list[str], expected: bool) -> None:
    assert is_pytest_command(command) is expected


def test_the_cache_provider_is_switched_back_on_for_the_rerun() -> None:
    first = reporting_command(["pytest", "-p", "no:cacheprovider", "-q"], Path("/r.xml"), Path("/c"))
    assert first[:2] == ["pytest", "-q"] and "--last-failed" not in first
    argv = rerun_command(
        ["pytest", "-p", "no:cacheprovider", "-pno:cacheprovider", "-q"], Path("/r.xml"), Path("/c")
    )
    assert "no:cacheprovider" not in argv and "-pno:cacheprovider" not in argv
    assert argv[:2] == ["pytest", "-q"]
    assert "--last-failed" in argv and "--junitxml=/r.xml" in argv and "cache_dir=/c" in argv


# -- verdict rules -----------------------------------------------------------------------


def result(exit_code: int, timed_out: bool = False) -> CheckResult:
    return CheckResult(exit_code, exit_code == 0 and not timed_out, 10, "", timed_out)


def report(**outcomes: Outcome) -> TestReport:
    return TestReport({f"t.py::{name}": outcome for name, outcome in outcomes.items()})


def baseline(**outcomes: Outcome) -> CheckBaseline:
    return CheckBaseline(
        "run", ("pytest",), "a" * 40, {}, {f"t.py::{name}": o.value for name, o in outcomes.items()}, ()
    )


F, P, E = Outcome.FAILED, Outcome.PASSED, Outcome.ERROR


def test_old_failures_only_give_no_new_failures_and_fixed_ones_are_listed() -> None:
    judgement = judge(result(1), report(a=F, b=P, c=P), baseline=baseline(a=F, b=F, c=P))
    assert judgement.verdict is Verdict.NO_NEW_FAILURES
    assert judgement.fixed == ("t.py::b",)
    assert judgement.newly_failing == ()
    assert "already failing in the baseline" in judgement.reason


def test_a_test_failing_that_passed_or_was_absent_is_new() -> None:
    judgement = judge(result(1), report(a=F, b=E, d=F), baseline=baseline(a=F, b=P))
    assert judgement.verdict is Verdict.NEW_FAILURES
    assert judgement.newly_failing == ("t.py::b", "t.py::d")
    assert "t.py::b" in judgement.reason


def test_a_failure_that_passes_on_rerun_is_a_flaky_suspect_not_a_new_failure() -> None:
    judgement = judge(result(1), report(a=F, b=F), baseline=baseline(a=P, b=P), rerun=report(a=P, b=F))
    assert judgement.verdict is Verdict.NEW_FAILURES
    assert judgement.newly_failing == ("t.py::b",)
    assert judgement.flaky_suspects == ("t.py::a",)
    only_flaky = judge(result(1), report(a=F), baseline=baseline(a=P), rerun=report(a=P))
    assert only_flaky.verdict is Verdict.NO_NEW_FAILURES
    assert only_flaky.flaky_suspects == ("t.py::a",)


def test_collection_errors_block_even_when_the_baseline_had_them() -> None:
    broken = TestReport({}, ("tests/test_x.py",))
    known = CheckBaseline("run", ("pytest",), "a" * 40, {}, {}, ("tests/test_x.py",))
    judgement = judge(result(2), broken, baseline=known)
    assert judgement.verdict is Verdict.COLLECTION_ERROR
    assert "tests/test_x.py" in judgement.reason and "already so in the baseline" in judgement.reason


@pytest.mark.parametrize(
    ("check", "test_report", "expected"),
    [
        (result(0), None, Verdict.PASSED),
        (result(2), None, Verdict.FAILED),
        (result(-1, timed_out=True), None, Verdict.TIMED_OUT),
        (result(0), report(a=P), Verdict.PASSED),
        (result(5), report(), Verdict.FAILED),
        (result(1), report(a=P), Verdict.FAILED),
    ],
)
def test_exit_codes_without_a_comparison(
    check: CheckResult, test_report: TestReport | None, expected: Verdict
) -> None:
    assert judge(check, test_report, baseline=baseline(a=P)).verdict is expected


def test_without_a_baseline_every_failure_is_new() -> None:
    judgement = judge(result(1), report(a=F))
    assert judgement.verdict is Verdict.NEW_FAILURES
    assert judgement.newly_failing == ("t.py::a",)
    assert "no baseline" in judgement.reason


# -- over a real channel -----------------------------------------------------------------

FAILING_REPO = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "tests/test_calc.py": (
        "from calc import add\n\n\n"
        "def test_add():\n    assert add(2, 3) == 5\n\n\n"
        "def test_known_bug_one():\n    assert add(1, 1) == 3\n\n\n"
        "def test_known_bug_two():\n    assert add(0, 0) == 1\n"
    ),
}


@pytest.fixture
def stub(tmp_path: Path, store: ApplierStore) -> Iterator[applier_pb2_grpc.ApplierServiceStub]:
    settings = ApplierSettings(AUTOPACK_APPLIER_WORKSPACE_ROOT=tmp_path / "workspaces")
    running = create_server([binding(build_servicer(settings, store))], "127.0.0.1:0")
    channel = open_channel("applier", running.address)
    yield applier_pb2_grpc.ApplierServiceStub(channel)
    channel.close()
    running.stop(0)


def prepare(stub: applier_pb2_grpc.ApplierServiceStub, source: Path, run_id: str = "run-1") -> Path:
    reply = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id=run_id, source_repo=str(source)), timeout=TIMEOUT
    )
    return Path(reply.workspace_path)


def apply(stub: applier_pb2_grpc.ApplierServiceStub, files: dict[str, str], run_id: str = "run-1") -> None:
    stub.Apply(
        applier_pb2.ApplyRequest(
            run_id=run_id,
            phase_id="p1",
            scope=common_pb2.Scope(paths=["./"]),
            operations=[
                common_pb2.FileOperation(path=path, mode=common_pb2.FILE_MODE_MODIFY, new_content=content)
                if path in FAILING_REPO
                else common_pb2.FileOperation(
                    path=path, mode=common_pb2.FILE_MODE_CREATE, new_content=content
                )
                for path, content in files.items()
            ],
        ),
        timeout=TIMEOUT,
    )


def run_checks(
    stub: applier_pb2_grpc.ApplierServiceStub, run_id: str = "run-1"
) -> applier_pb2.RunChecksResponse:
    return stub.RunChecks(applier_pb2.RunChecksRequest(run_id=run_id, command=PYTEST), timeout=TIMEOUT)


def test_two_failing_tests_complete_a_phase_that_adds_no_new_failure(
    stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path
) -> None:
    workspace = prepare(stub, make_repo(tmp_path / "source", FAILING_REPO))
    apply(
        stub,
        {"tests/test_more.py": "from calc import add\n\n\ndef test_more():\n    assert add(2, 2) == 4\n"},
    )
    reply = run_checks(stub)
    assert not reply.passed and reply.exit_code == 1
    assert reply.verdict == applier_pb2.CHECK_VERDICT_NO_NEW_FAILURES, reply.verdict_reason
    # The baseline was measured at the base commit, not on the phase's change.
    assert not reply.is_baseline
    assert reply.baseline_commit
    assert (reply.baseline_counts.passed, reply.baseline_counts.failed) == (1, 2)
    assert (reply.counts.passed, reply.counts.failed, reply.counts.collection_errors) == (2, 2, 0)
    assert list(reply.newly_failing) == [] and list(reply.flaky_suspects) == []
    assert "already failing in the baseline" in reply.verdict_reason
    # Nothing the gate did is left in the workspace.
    assert not (workspace / ".pytest_cache").exists()
    assert not list(workspace.rglob("*.xml"))


def test_a_new_failure_and_a_fix_are_named(stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path) -> None:
    prepare(stub, make_repo(tmp_path / "source", FAILING_REPO))
    first = run_checks(stub)  # at the base commit: this run is the baseline
    assert first.is_baseline and first.verdict == applier_pb2.CHECK_VERDICT_NO_NEW_FAILURES
    assert "baseline recorded" in first.verdict_reason
    apply(stub, {"calc.py": "def add(a, b):\n    return a + b + (a == 0) - (a == 2)\n"})
    reply = run_checks(stub)
    assert not reply.is_baseline
    assert reply.verdict == applier_pb2.CHECK_VERDICT_NEW_FAILURES
    assert list(reply.newly_failing) == ["tests/test_calc.py::test_add"]
    assert list(reply.fixed) == ["tests/test_calc.py::test_known_bug_two"]
    assert "tests/test_calc.py::test_add" in reply.verdict_reason


def test_a_phase_that_breaks_collection_is_blocked(
    stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path
) -> None:
    prepare(stub, make_repo(tmp_path / "source", FAILING_REPO))
    apply(
        stub,
        {
            "tests/test_new.py": "from calc import subtract\n\n\ndef test_sub():\n    assert subtract(2, 1) == 1\n"
        },
    )
    reply = run_checks(stub)
    assert reply.verdict == applier_pb2.CHECK_VERDICT_COLLECTION_ERROR
    assert list(reply.collection_errors) == ["tests/test_new.py"]
    assert reply.counts.collection_errors == 1
    assert "always block" in reply.verdict_reason


def test_a_test_that_fails_once_is_a_flaky_suspect(
    stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path
) -> None:
    marker = tmp_path / "ran-once"
    prepare(stub, make_repo(tmp_path / "source", FAILING_REPO))
    flaky = (
        "from pathlib import Path\n\n\n"
        "def test_sometimes():\n"
        f"    marker = Path({str(marker)!r})\n"
        "    first = not marker.exists()\n"
        "    marker.touch()\n"
        "    assert not first\n"
    )
    apply(stub, {"tests/test_flaky.py": flaky})
    reply = run_checks(stub)
    assert list(reply.flaky_suspects) == ["tests/test_flaky.py::test_sometimes"]
    assert reply.verdict == applier_pb2.CHECK_VERDICT_NO_NEW_FAILURES, reply.verdict_reason
    assert "flaky" in reply.verdict_reason


def test_a_command_that_is_not_pytest_is_judged_by_its_exit_code(
    stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path
) -> None:
    prepare(stub, make_repo(tmp_path / "source", FAILING_REPO))
    ok = stub.RunChecks(
        applier_pb2.RunChecksRequest(run_id="run-1", command=["python", "-V"]), timeout=TIMEOUT
    )
    assert ok.verdict == applier_pb2.CHECK_VERDICT_PASSED and not ok.HasField("counts")
    bad = stub.RunChecks(
        applier_pb2.RunChecksRequest(run_id="run-1", command=["python", "-c", "raise SystemExit(3)"]),
        timeout=TIMEOUT,
    )
    assert bad.verdict == applier_pb2.CHECK_VERDICT_FAILED and "exited 3" in bad.verdict_reason


def test_detect_toolchain(stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path) -> None:
    source = make_repo(
        tmp_path / "source",
        {
            "pyproject.toml": "[project]\nname = 'x'\n",
            "web/package.json": '{"scripts": {"test": "vitest", "build": "vite build"}}',
            "web/src/app.js": "export {}\n",
            "cmd/main.go": "package main\n",
        },
    )
    prepare(stub, source)
    reply = stub.DetectToolchain(applier_pb2.DetectToolchainRequest(run_id="run-1"), timeout=TIMEOUT)
    by_language = {toolchain.language: toolchain for toolchain in reply.toolchains}
    assert [toolchain.language for toolchain in reply.toolchains] == [
        applier_pb2.TOOLCHAIN_LANGUAGE_PYTHON,
        applier_pb2.TOOLCHAIN_LANGUAGE_NODE,
        applier_pb2.TOOLCHAIN_LANGUAGE_GO,
    ]
    python = by_language[applier_pb2.TOOLCHAIN_LANGUAGE_PYTHON]
    assert python.confidence >= 0.9 and list(python.evidence) == ["pyproject.toml"]
    assert list(python.commands[0].argv) == ["python", "-m", "pytest", "-q"] and python.commands[0].allowed
    node = by_language[applier_pb2.TOOLCHAIN_LANGUAGE_NODE]
    assert 0.5 < node.confidence < 0.9
    commands = {command.purpose: list(command.argv) for command in node.commands}
    assert commands[applier_pb2.TOOLCHAIN_COMMAND_PURPOSE_TEST] == ["npm", "--prefix", "web", "test"]
    assert commands[applier_pb2.TOOLCHAIN_COMMAND_PURPOSE_BUILD] == ["npm", "--prefix", "web", "run", "build"]
    go = by_language[applier_pb2.TOOLCHAIN_LANGUAGE_GO]
    assert go.confidence == 0.5 and list(go.evidence) == ["cmd/main.go"]


def test_detect_toolchain_needs_a_workspace(stub: applier_pb2_grpc.ApplierServiceStub) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.DetectToolchain(applier_pb2.DetectToolchainRequest(run_id="ghost"), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert "run_id" in (error.value.details() or "")
