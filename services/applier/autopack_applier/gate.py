"""The CI gate: a check's verdict against the workspace's baseline, not just its exit code.

A repository whose tests already fail could otherwise never complete a phase. For a pytest
command the gate asks pytest for a JUnit report, and compares the failing tests with the
command's baseline in the run: the report of the same command at the workspace's base
commit (before any phase changed it). The baseline is measured once per run and command
and kept in the store: by the first check itself when the workspace is still at its base
commit, otherwise by running the command once on an export of the base commit in a scratch
directory (the workspace is not touched). Failing tests are re-run once (``--last-failed``):
a test that passes on the re-run is a flaky suspect, not a new failure. Collection errors
always block. Any other command is judged by its exit code alone.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from autopack_applier.checks import CheckCommand, CheckResult, CheckRunner
from autopack_applier.gitrepo import Git, GitError
from autopack_applier.store import ApplierStore, CheckBaseline
from autopack_applier.testreport import (
    Outcome,
    ReportUnreadable,
    TestReport,
    is_pytest_command,
    read_report,
    reporting_command,
    rerun_command,
)
from autopack_applier.withholding import redact_text, secret_values

log = logging.getLogger(__name__)

# A re-run or baseline run is skipped when less than this is left before the caller's deadline.
MIN_RUN_SECONDS = 1.0
_SHOWN_TESTS = 5


class Verdict(enum.Enum):
    """What a check means for the phase (mirrors applier.v1.CheckVerdict)."""

    PASSED = "passed"
    NO_NEW_FAILURES = "no_new_failures"
    NEW_FAILURES = "new_failures"
    COLLECTION_ERROR = "collection_error"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class Judgement:
    """The verdict and the test ids behind it."""

    verdict: Verdict
    reason: str
    newly_failing: tuple[str, ...] = ()
    fixed: tuple[str, ...] = ()
    flaky_suspects: tuple[str, ...] = ()


@dataclass(frozen=True)
class GateResult:
    """A check run with its verdict; ``report`` is None when no test report was read."""

    check: CheckResult
    judgement: Judgement
    report: TestReport | None
    is_baseline: bool
    baseline: CheckBaseline | None


def _listed(tests: Sequence[str]) -> str:
    shown = ", ".join(tests[:_SHOWN_TESTS])
    return shown + (f" and {len(tests) - _SHOWN_TESTS} more" if len(tests) > _SHOWN_TESTS else "")


def judge(
    check: CheckResult,
    report: TestReport | None,
    *,
    report_problem: str | None = None,
    baseline: CheckBaseline | None = None,
    rerun: TestReport | None = None,
    is_baseline: bool = False,
) -> Judgement:
    """The verdict of one check: pure, so every rule is testable without running anything.

    ``report`` is the run's test report (None for a non-pytest command or an unreadable
    report, then ``report_problem`` says why); ``rerun`` the report of re-running its
    failing tests; ``baseline`` the command's baseline (None when none could be measured).
    """
    if check.timed_out:
        return Judgement(Verdict.TIMED_OUT, "the check was killed at its timeout")
    if report is None:
        if check.passed:
            return Judgement(Verdict.PASSED, "the command exited 0")
        why = f" and {report_problem}" if report_problem else " (no test report to compare with a baseline)"
        return Judgement(Verdict.FAILED, f"the command exited {check.exit_code}{why}")
    if report.collection_errors:
        known = baseline is not None and set(report.collection_errors) <= set(baseline.collection_errors)
        return Judgement(
            Verdict.COLLECTION_ERROR,
            f"{len(report.collection_errors)} test module(s) could not be collected: "
            f"{_listed(report.collection_errors)}"
            + (" (already so in the baseline)" if known and not is_baseline else "")
            + "; collection errors always block",
        )
    failing = report.failing
    flaky: tuple[str, ...] = ()
    if rerun is not None:
        flaky = tuple(test for test in failing if rerun.outcomes.get(test) is Outcome.PASSED)
    confirmed = [test for test in failing if test not in flaky]
    baseline_failing = (
        {test for test, outcome in baseline.outcomes.items() if Outcome(outcome).failing}
        if baseline is not None
        else set()
    )
    fixed = tuple(sorted(test for test in baseline_failing if report.outcomes.get(test) is Outcome.PASSED))
    flaky_note = f"; {len(flaky)} flaky suspect(s) passed on re-run: {_listed(flaky)}" if flaky else ""
    if check.passed:
        return Judgement(Verdict.PASSED, "all tests passed", fixed=fixed)
    if check.exit_code != 1:
        # pytest: 2 interrupted, 3 internal error, 4 usage error, 5 no tests collected.
        return Judgement(
            Verdict.FAILED,
            f"pytest exited {check.exit_code} ({_PYTEST_EXITS.get(check.exit_code, 'not a test failure')})",
            fixed=fixed,
            flaky_suspects=flaky,
        )
    if is_baseline:
        return Judgement(
            Verdict.NO_NEW_FAILURES,
            f"baseline recorded: {len(confirmed)} test(s) already fail at the base commit" + flaky_note,
            flaky_suspects=flaky,
        )
    if baseline is None:
        return Judgement(
            Verdict.NEW_FAILURES,
            f"{len(confirmed)} test(s) fail and there is no baseline to compare with: {_listed(confirmed)}"
            + flaky_note,
            newly_failing=tuple(confirmed),
            flaky_suspects=flaky,
        )
    newly = tuple(test for test in confirmed if test not in baseline_failing)
    if newly:
        return Judgement(
            Verdict.NEW_FAILURES,
            f"{len(newly)} test(s) fail that did not fail in the baseline at {baseline.commit[:12]}: "
            f"{_listed(newly)}" + flaky_note,
            newly_failing=newly,
            fixed=fixed,
            flaky_suspects=flaky,
        )
    if confirmed:
        reason = (
            f"{len(confirmed)} test(s) fail, all already failing in the baseline at {baseline.commit[:12]}"
        )
    elif flaky:
        reason = "every failing test passed on re-run"
    else:
        return Judgement(Verdict.FAILED, "pytest exited 1 but its report lists no failing test", fixed=fixed)
    return Judgement(Verdict.NO_NEW_FAILURES, reason + flaky_note, fixed=fixed, flaky_suspects=flaky)


_PYTEST_EXITS = {
    2: "interrupted",
    3: "internal error",
    4: "usage error",
    5: "no tests were collected",
}


class CheckGate:
    """Runs checks through a CheckRunner and judges them against the store's baselines."""

    def __init__(self, runner: CheckRunner, store: ApplierStore, scratch_root: Path) -> None:
        self.runner = runner
        self.store = store
        self.scratch_root = scratch_root
        scratch_root.mkdir(parents=True, exist_ok=True)

    def run(
        self,
        run_id: str,
        workspace: Path,
        base_commit: str,
        command: Sequence[str],
        check: CheckCommand,
        deadline: float | None = None,
    ) -> GateResult:
        """Run ``check`` (prepared from ``command``) in ``workspace`` and judge it.

        The caller holds the run's lock, so the workspace does not change meanwhile.
        """
        if not is_pytest_command(command):
            result = self.runner.run(_within(check, deadline), workspace, _secrets_of(workspace))
            return GateResult(result, judge(result, None), None, False, None)
        with tempfile.TemporaryDirectory(prefix=f"check-{run_id}-", dir=self.scratch_root) as scratch:
            scratch_dir = Path(scratch)
            baseline = self.store.get_baseline(run_id, command)
            at_base = Git(workspace).head() == base_commit
            if baseline is None and not at_base:
                baseline = self._measure_baseline(
                    run_id, workspace, base_commit, command, check, scratch_dir, deadline
                )
            result, report, problem = self._run_with_report(check, workspace, scratch_dir, "run", deadline)
            is_baseline = False
            if baseline is None and at_base and report is not None and not result.timed_out:
                baseline = self._record(run_id, command, base_commit, report)
                is_baseline = True
            rerun = None
            if (
                report is not None
                and report.failing
                and not report.collection_errors
                and result.exit_code == 1
            ):
                rerun = self._rerun(check, workspace, scratch_dir, deadline)
        judgement = judge(
            result, report, report_problem=problem, baseline=baseline, rerun=rerun, is_baseline=is_baseline
        )
        if report is not None and (report.outcomes or report.collection_errors):
            # Test ids carry parameters: a test parametrized with a secret would name it.
            values = secret_values(workspace)
            judgement = dataclasses.replace(
                judgement,
                reason=redact_text(judgement.reason, values),
                newly_failing=tuple(redact_text(test, values) for test in judgement.newly_failing),
                fixed=tuple(redact_text(test, values) for test in judgement.fixed),
                flaky_suspects=tuple(redact_text(test, values) for test in judgement.flaky_suspects),
            )
            report = dataclasses.replace(
                report,
                collection_errors=tuple(redact_text(error, values) for error in report.collection_errors),
            )
        return GateResult(result, judgement, report, is_baseline, baseline)

    def _run_with_report(
        self,
        check: CheckCommand,
        cwd: Path,
        scratch: Path,
        name: str,
        deadline: float | None,
        arguments: Sequence[str] | None = None,
    ) -> tuple[CheckResult, TestReport | None, str | None]:
        report_path = scratch / f"{name}.xml"
        if arguments is None:
            arguments = reporting_command(check.argv, report_path, scratch / "cache")
        result = self.runner.run(
            _within(dataclasses.replace(check, argv=tuple(arguments)), deadline), cwd, _secrets_of(cwd)
        )
        if result.timed_out:
            return result, None, "it timed out"
        try:
            return result, read_report(report_path), None
        except ReportUnreadable as error:
            return result, None, str(error)

    def _rerun(
        self, check: CheckCommand, workspace: Path, scratch: Path, deadline: float | None
    ) -> TestReport | None:
        """The report of re-running the last run's failing tests, or None if it could not run."""
        if deadline is not None and deadline - time.monotonic() < MIN_RUN_SECONDS:
            return None
        arguments = rerun_command(check.argv, scratch / "rerun.xml", scratch / "cache")
        result, report, _ = self._run_with_report(check, workspace, scratch, "rerun", deadline, arguments)
        return None if result.timed_out else report

    def _measure_baseline(
        self,
        run_id: str,
        workspace: Path,
        base_commit: str,
        command: Sequence[str],
        check: CheckCommand,
        scratch: Path,
        deadline: float | None,
    ) -> CheckBaseline | None:
        """Run the command on an export of the base commit; None when that gives no report.

        It shares the caller's deadline with the run that follows; when it times out nothing
        is recorded and the next check of the command tries again.
        """
        tree = scratch / "base"
        tree.mkdir()
        try:
            Git(workspace).export(base_commit, tree)
        except GitError as error:
            log.warning("no baseline for run %s: %s", run_id, error)
            return None
        try:
            _, report, problem = self._run_with_report(check, tree, scratch, "baseline", deadline)
        finally:
            shutil.rmtree(tree, ignore_errors=True)
        if report is None:
            log.warning("no baseline for run %s: %s", run_id, problem)
            return None
        return self._record(run_id, command, base_commit, report)

    def _record(self, run_id: str, command: Sequence[str], commit: str, report: TestReport) -> CheckBaseline:
        baseline = CheckBaseline(
            run_id=run_id,
            command=tuple(command),
            commit=commit,
            counts=report.counts.as_dict(),
            outcomes={test: outcome.value for test, outcome in report.outcomes.items()},
            collection_errors=report.collection_errors,
        )
        return self.store.add_baseline(baseline)


def _secrets_of(cwd: Path) -> Callable[[], tuple[str, ...]]:
    """What a check's output must not show: the values of the env/secret files in ``cwd``."""
    return lambda: secret_values(cwd)


def _within(check: CheckCommand, deadline: float | None) -> CheckCommand:
    """``check`` with its timeout cut to what is left before the caller's deadline."""
    if deadline is None:
        return check
    remaining = max(deadline - time.monotonic() - 0.5, MIN_RUN_SECONDS)
    return dataclasses.replace(check, timeout_seconds=min(check.timeout_seconds, remaining))
