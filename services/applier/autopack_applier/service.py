"""gRPC servicer of the applier: maps messages to the workspace and check domain. Thin.

Domain errors become status codes in the chassis interceptor. The server span gets a few
attributes (counts, ids, exit codes), never file contents or command output.
"""

from __future__ import annotations

import time
from pathlib import Path

import grpc
from autopack.applier.v1 import applier_pb2, applier_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_common.content import text_sha256
from autopack_common.errors import DomainError, InvalidArgument
from autopack_common.server import ServiceBinding
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry import trace

from autopack_applier.checks import CheckRunner, check_environment_names
from autopack_applier.edits import Edit, LineAction, LineEdit, SearchReplace, UnifiedDiff
from autopack_applier.gate import CheckGate, Verdict
from autopack_applier.governance import DeletionThresholds, GovernanceBlocked
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import (
    APPROVAL_APPROVED,
    APPROVAL_CONSUMED,
    APPROVAL_DENIED,
    APPROVAL_PENDING,
    ApplierStore,
    ApprovalRecord,
)
from autopack_applier.testreport import Counts
from autopack_applier.toolchain import Language, Purpose, detect_workspace_toolchains
from autopack_applier.workspace import FileOperation, Mode, WorkspaceManager

SERVICE_NAME = applier_pb2.DESCRIPTOR.services_by_name["ApplierService"].full_name

_MODES = {
    common_pb2.FILE_MODE_CREATE: Mode.CREATE,
    common_pb2.FILE_MODE_MODIFY: Mode.MODIFY,
    common_pb2.FILE_MODE_DELETE: Mode.DELETE,
    common_pb2.FILE_MODE_EDIT: Mode.EDIT,
}
_LINE_ACTIONS = {
    common_pb2.LINE_EDIT_ACTION_INSERT: LineAction.INSERT,
    common_pb2.LINE_EDIT_ACTION_REPLACE: LineAction.REPLACE,
    common_pb2.LINE_EDIT_ACTION_DELETE: LineAction.DELETE,
    common_pb2.LINE_EDIT_ACTION_APPEND: LineAction.APPEND,
    common_pb2.LINE_EDIT_ACTION_PREPEND: LineAction.PREPEND,
}
_APPROVAL_STATUSES = {
    APPROVAL_PENDING: applier_pb2.APPROVAL_STATUS_PENDING,
    APPROVAL_APPROVED: applier_pb2.APPROVAL_STATUS_APPROVED,
    APPROVAL_DENIED: applier_pb2.APPROVAL_STATUS_DENIED,
    APPROVAL_CONSUMED: applier_pb2.APPROVAL_STATUS_CONSUMED,
}
# ErrorInfo.domain of the structured details the applier attaches to its errors.
ERROR_DOMAIN = "applier.autopack"


_VERDICTS = {
    Verdict.PASSED: applier_pb2.CHECK_VERDICT_PASSED,
    Verdict.NO_NEW_FAILURES: applier_pb2.CHECK_VERDICT_NO_NEW_FAILURES,
    Verdict.NEW_FAILURES: applier_pb2.CHECK_VERDICT_NEW_FAILURES,
    Verdict.COLLECTION_ERROR: applier_pb2.CHECK_VERDICT_COLLECTION_ERROR,
    Verdict.FAILED: applier_pb2.CHECK_VERDICT_FAILED,
    Verdict.TIMED_OUT: applier_pb2.CHECK_VERDICT_TIMED_OUT,
}
_LANGUAGES = {
    Language.PYTHON: applier_pb2.TOOLCHAIN_LANGUAGE_PYTHON,
    Language.NODE: applier_pb2.TOOLCHAIN_LANGUAGE_NODE,
    Language.GO: applier_pb2.TOOLCHAIN_LANGUAGE_GO,
    Language.RUST: applier_pb2.TOOLCHAIN_LANGUAGE_RUST,
    Language.JAVA: applier_pb2.TOOLCHAIN_LANGUAGE_JAVA,
}
_PURPOSES = {
    Purpose.TEST: applier_pb2.TOOLCHAIN_COMMAND_PURPOSE_TEST,
    Purpose.BUILD: applier_pb2.TOOLCHAIN_COMMAND_PURPOSE_BUILD,
    Purpose.LINT: applier_pb2.TOOLCHAIN_COMMAND_PURPOSE_LINT,
}


def _edit(edit: common_pb2.Edit) -> Edit | None:
    kind = edit.WhichOneof("kind")
    if kind == "line":
        return LineEdit(
            _LINE_ACTIONS.get(edit.line.action), edit.line.start_line, edit.line.end_line, edit.line.content
        )
    if kind == "search_replace":
        return SearchReplace(edit.search_replace.search, edit.search_replace.replace)
    if kind == "unified_diff":
        return UnifiedDiff(edit.unified_diff)
    return None


def _operation(index: int, operation: common_pb2.FileOperation) -> FileOperation:
    edits: list[Edit] = []
    for number, edit in enumerate(operation.edits):
        converted = _edit(edit)
        if converted is None:
            raise InvalidArgument(
                f"operations[{index}].edits[{number}]", "is empty: set line, search_replace or unified_diff"
            )
        edits.append(converted)
    return FileOperation(
        path=operation.path,
        mode=_MODES.get(operation.mode),
        new_content=operation.new_content,
        edits=tuple(edits),
        base_sha256=operation.base_sha256,
    )


def _approval_message(record: ApprovalRecord) -> applier_pb2.ApprovalRequest:
    return applier_pb2.ApprovalRequest(
        request_id=record.request_id,
        run_id=record.run_id,
        phase_id=record.phase_id,
        reason=record.reason,
        paths=list(record.paths),
        risk_level=record.risk_level,
        details=list(record.details),
        status=_APPROVAL_STATUSES[record.status],
        decided_by=record.decided_by or "",
        note=record.note or "",
        created_at=record.created_at.isoformat() if record.created_at else "",
    )


def governance_status(error: GovernanceBlocked) -> status_pb2.Status:
    """The google.rpc.Status of a governance refusal: ErrorInfo plus a PreconditionFailure per path.

    ErrorInfo.reason is ``protected_path_violation`` or ``large_deletion``; its metadata
    carries ``risk_level``, ``requires_approval`` ("true"/"false"), ``approval_request_id``
    and ``violated_paths`` (comma-separated).
    """
    decision = error.decision
    info = error_details_pb2.ErrorInfo(
        reason=decision.reason,
        domain=ERROR_DOMAIN,
        metadata={
            "risk_level": decision.risk.value,
            "requires_approval": "true" if error.requires_approval else "false",
            "approval_request_id": error.request_id,
            "violated_paths": ",".join(dict.fromkeys(violation.path for violation in decision.violations)),
        },
    )
    failure = error_details_pb2.PreconditionFailure(
        violations=[
            error_details_pb2.PreconditionFailure.Violation(
                type=violation.kind, subject=violation.path, description=violation.description
            )
            for violation in decision.violations
        ]
    )
    detail_info, detail_failure = any_pb2.Any(), any_pb2.Any()
    detail_info.Pack(info)
    detail_failure.Pack(failure)
    return status_pb2.Status(
        code=code_pb2.FAILED_PRECONDITION, message=error.message, details=[detail_info, detail_failure]
    )


def _test_counts(counts: Counts) -> applier_pb2.TestCounts:
    return applier_pb2.TestCounts(**counts.as_dict())


def _deadline(context: grpc.ServicerContext) -> float | None:
    """The caller's deadline on the monotonic clock, so waiting for a lock never outlives it."""
    remaining = context.time_remaining()
    return None if remaining is None else time.monotonic() + remaining


class ApplierServicer(applier_pb2_grpc.ApplierServiceServicer):
    """ApplierService over a WorkspaceManager and a CheckRunner."""

    def __init__(self, workspaces: WorkspaceManager, checks: CheckRunner, gate: CheckGate) -> None:
        self.workspaces = workspaces
        self.checks = checks
        self.gate = gate

    def PrepareWorkspace(
        self, request: applier_pb2.PrepareWorkspaceRequest, context: grpc.ServicerContext
    ) -> applier_pb2.PrepareWorkspaceResponse:
        prepared = self.workspaces.prepare(
            request.run_id, request.source_repo, request.ref, _deadline(context)
        )
        span = trace.get_current_span()
        span.set_attribute("autopack.applier.base_commit", prepared.base_commit)
        span.set_attribute("autopack.applier.created", prepared.created)
        return applier_pb2.PrepareWorkspaceResponse(
            workspace_path=str(prepared.path), base_commit=prepared.base_commit, created=prepared.created
        )

    def ReadFiles(
        self, request: applier_pb2.ReadFilesRequest, context: grpc.ServicerContext
    ) -> applier_pb2.ReadFilesResponse:
        result = self.workspaces.read_files(request.run_id, list(request.paths), request.max_bytes_per_file)
        span = trace.get_current_span()
        span.set_attribute("autopack.applier.files_read", len(result.files))
        span.set_attribute("autopack.applier.files_withheld", len(result.withheld))
        return applier_pb2.ReadFilesResponse(
            files=[
                applier_pb2.WorkspaceFile(
                    path=item.path,
                    content="" if request.hashes_only else item.content,
                    line_count=item.line_count,
                    size_bytes=item.size_bytes,
                    truncated=item.truncated,
                    content_sha256=text_sha256(item.content),
                )
                for item in result.files
            ],
            missing=list(result.missing),
            withheld=[
                applier_pb2.WithheldFile(path=item.path, reason=item.reason) for item in result.withheld
            ],
        )

    def Apply(
        self, request: applier_pb2.ApplyRequest, context: grpc.ServicerContext
    ) -> applier_pb2.ApplyResponse:
        operations = [_operation(index, operation) for index, operation in enumerate(request.operations)]
        span = trace.get_current_span()
        span.set_attribute("autopack.applier.operations", len(operations))
        try:
            result = self.workspaces.apply(
                request.run_id,
                request.phase_id,
                list(request.scope.paths),
                list(request.scope.read_only_context),
                operations,
                request.attempt,
                _deadline(context),
                deliverables=list(request.deliverables),
            )
        except GovernanceBlocked as error:
            span.set_attribute("autopack.applier.rejected", True)
            span.set_attribute("autopack.applier.approval_request_id", error.request_id)
            context.abort_with_status(rpc_status.to_status(governance_status(error)))
            raise  # not reached: abort_with_status raises
        except DomainError:
            span.set_attribute("autopack.applier.rejected", True)
            raise
        span.set_attribute("autopack.applier.changed_files", len(result.changed_paths))
        span.set_attribute("autopack.applier.savepoint", result.savepoint)
        span.set_attribute("autopack.applier.previous_savepoint", result.previous_savepoint)
        span.set_attribute("autopack.applier.lines_added", result.lines_added)
        span.set_attribute("autopack.applier.lines_removed", result.lines_removed)
        span.set_attribute("autopack.applier.net_lines_deleted", result.net_deleted)
        return applier_pb2.ApplyResponse(
            savepoint=result.savepoint,
            previous_savepoint=result.previous_savepoint,
            changed_paths=list(result.changed_paths),
            lines_added=result.lines_added,
            lines_removed=result.lines_removed,
            net_lines_deleted=result.net_deleted,
            deletion_savepoint_tag=result.deletion_tag,
            notices=list(result.notices),
            approval_request_id=result.approval_request_id,
        )

    def RunChecks(
        self, request: applier_pb2.RunChecksRequest, context: grpc.ServicerContext
    ) -> applier_pb2.RunChecksResponse:
        command = list(request.command)
        check = self.checks.prepare(command, request.timeout_seconds)
        span = trace.get_current_span()
        span.set_attribute("autopack.checks.executable", check.executable)
        deadline = _deadline(context)
        base_commit = self.workspaces.record(request.run_id).base_commit
        with self.workspaces.exclusive(request.run_id, deadline) as workspace:
            gated = self.gate.run(request.run_id, workspace, base_commit, command, check, deadline)
        result, judgement = gated.check, gated.judgement
        span.set_attribute("autopack.checks.exit_code", result.exit_code)
        span.set_attribute("autopack.checks.passed", result.passed)
        span.set_attribute("autopack.checks.timed_out", result.timed_out)
        span.set_attribute("autopack.checks.duration_ms", result.duration_ms)
        span.set_attribute("autopack.checks.verdict", judgement.verdict.value)
        span.set_attribute("autopack.checks.is_baseline", gated.is_baseline)
        span.set_attribute("autopack.checks.newly_failing", len(judgement.newly_failing))
        response = applier_pb2.RunChecksResponse(
            exit_code=result.exit_code,
            passed=result.passed,
            duration_ms=result.duration_ms,
            output_tail=result.output_tail,
            timed_out=result.timed_out,
            verdict=_VERDICTS[judgement.verdict],
            is_baseline=gated.is_baseline,
            newly_failing=list(judgement.newly_failing),
            fixed=list(judgement.fixed),
            flaky_suspects=list(judgement.flaky_suspects),
            verdict_reason=judgement.reason,
        )
        if gated.report is not None:
            response.counts.CopyFrom(_test_counts(gated.report.counts))
            response.collection_errors.extend(gated.report.collection_errors)
        if gated.baseline is not None:
            response.baseline_commit = gated.baseline.commit
            response.baseline_counts.CopyFrom(_test_counts(Counts.from_dict(gated.baseline.counts)))
        return response

    def DetectToolchain(
        self, request: applier_pb2.DetectToolchainRequest, context: grpc.ServicerContext
    ) -> applier_pb2.DetectToolchainResponse:
        workspace = Path(self.workspaces.record(request.run_id).path)
        toolchains = detect_workspace_toolchains(workspace, self.checks.allowed)
        trace.get_current_span().set_attribute("autopack.applier.toolchains", len(toolchains))
        return applier_pb2.DetectToolchainResponse(
            toolchains=[
                applier_pb2.Toolchain(
                    language=_LANGUAGES[toolchain.language],
                    confidence=toolchain.confidence,
                    evidence=list(toolchain.evidence),
                    commands=[
                        applier_pb2.ToolchainCommand(
                            purpose=_PURPOSES[command.purpose],
                            argv=list(command.argv),
                            allowed=command.allowed,
                        )
                        for command in toolchain.commands
                    ],
                )
                for toolchain in toolchains
            ]
        )

    def Rollback(
        self, request: applier_pb2.RollbackRequest, context: grpc.ServicerContext
    ) -> applier_pb2.RollbackResponse:
        result = self.workspaces.rollback(request.run_id, request.savepoint, _deadline(context))
        span = trace.get_current_span()
        span.set_attribute("autopack.applier.savepoint", result.head)
        span.set_attribute("autopack.applier.previous_savepoint", result.previous_head)
        return applier_pb2.RollbackResponse(head=result.head, previous_head=result.previous_head)

    def Approve(
        self, request: applier_pb2.ApproveRequest, context: grpc.ServicerContext
    ) -> applier_pb2.ApproveResponse:
        record = self.workspaces.approve(request.request_id, request.decided_by, request.note, request.deny)
        trace.get_current_span().set_attribute("autopack.applier.approval_status", record.status)
        return applier_pb2.ApproveResponse(request=_approval_message(record))

    def ListApprovalRequests(
        self, request: applier_pb2.ListApprovalRequestsRequest, context: grpc.ServicerContext
    ) -> applier_pb2.ListApprovalRequestsResponse:
        records = self.workspaces.approvals(request.run_id, request.pending_only)
        return applier_pb2.ListApprovalRequestsResponse(
            requests=[_approval_message(record) for record in records]
        )

    def CheckDeliverables(
        self, request: applier_pb2.CheckDeliverablesRequest, context: grpc.ServicerContext
    ) -> applier_pb2.CheckDeliverablesResponse:
        report = self.workspaces.check_deliverables(request.run_id, list(request.deliverables))
        span = trace.get_current_span()
        span.set_attribute("autopack.applier.deliverables", len(report.deliverables))
        span.set_attribute("autopack.applier.deliverables_problems", len(report.problems))
        return applier_pb2.CheckDeliverablesResponse(
            deliverables=list(report.deliverables),
            dropped=[f"{entry!r} {reason}" for entry, reason in report.dropped],
            present=list(report.present),
            problems=[
                applier_pb2.DeliverableProblem(
                    deliverable=problem.deliverable, kind=problem.kind, message=problem.message
                )
                for problem in report.problems
            ],
            hints=list(report.hints),
            derived_scope=list(report.derived_scope),
        )

    def CleanupWorkspace(
        self, request: applier_pb2.CleanupWorkspaceRequest, context: grpc.ServicerContext
    ) -> applier_pb2.CleanupWorkspaceResponse:
        path, removed = self.workspaces.cleanup(request.run_id, _deadline(context))
        return applier_pb2.CleanupWorkspaceResponse(workspace_path=str(path), savepoints_removed=removed)


def build_servicer(settings: ApplierSettings, store: ApplierStore) -> ApplierServicer:
    """The servicer a process serves, configured from settings."""
    workspaces = WorkspaceManager(
        settings.resolved_workspace_root(),
        store,
        protected=settings.protected_paths,
        allowed_paths=settings.allowed_paths,
        source_roots=settings.source_roots,
        lock_timeout_seconds=settings.lock_timeout_seconds,
        max_read_files=settings.max_read_files,
        deletion_thresholds=DeletionThresholds(
            savepoint=settings.deletion_savepoint_lines,
            notify=settings.deletion_notify_lines,
            block=settings.deletion_block_lines,
        ),
        savepoint_retention=settings.savepoint_retention,
    )
    checks = CheckRunner(
        settings.allowed_commands,
        default_timeout_seconds=settings.check_timeout_seconds,
        max_timeout_seconds=settings.max_check_timeout_seconds,
        env_passthrough=check_environment_names(settings.check_env),
    )
    gate = CheckGate(checks, store, workspaces.scratch)
    return ApplierServicer(workspaces, checks, gate)


def binding(servicer: ApplierServicer) -> ServiceBinding:
    return ServiceBinding(SERVICE_NAME, applier_pb2_grpc.add_ApplierServiceServicer_to_server, servicer)
