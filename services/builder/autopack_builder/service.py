"""gRPC servicer of autopack.builder.v1.BuilderService: validate, call the domain, map. Nothing else.

A Build, Diagnose or Replan that fails after LLM calls keeps its token usage visible to the
caller: the error status carries a ``google.rpc.ErrorInfo`` (domain ``builder.autopack``) whose
metadata holds the calls' usage, read with ``grpc_status.rpc_status.from_call``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import grpc
from autopack.builder.v1 import builder_pb2, builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_common.errors import FailedPrecondition, InvalidArgument, NotFound
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from autopack_builder.builder import Builder
from autopack_builder.calls import CallsFailed
from autopack_builder.doctor import Doctor, DoctorTask, FailedAttemptInfo
from autopack_builder.formats import FORMATS
from autopack_builder.models import (
    BuildResult,
    BuildTask,
    ContextFile,
    EditSpec,
    FileOp,
    LineEditSpec,
    LlmCallRecord,
    SearchReplaceSpec,
)
from autopack_builder.parsing import path_problem
from autopack_builder.store import LlmCallStore, StoredCall, UsageRow
from autopack_builder.usage import parse_period

SERVICE_FULL_NAME = builder_pb2.DESCRIPTOR.services_by_name["BuilderService"].full_name
ERROR_DOMAIN = "builder.autopack"
MAX_INTENTION_BYTES = 2048

_MODES = {
    "create": common_pb2.FILE_MODE_CREATE,
    "modify": common_pb2.FILE_MODE_MODIFY,
    "delete": common_pb2.FILE_MODE_DELETE,
    "edit": common_pb2.FILE_MODE_EDIT,
}


def _check_paths(field: str, paths: Sequence[str], *, allow_directory: bool) -> None:
    for index, path in enumerate(paths):
        problem = path_problem(path, allow_directory=allow_directory)
        if problem:
            raise InvalidArgument(f"{field}[{index}]", f"{path!r} {problem}")


def task_from_request(request: builder_pb2.BuildRequest) -> BuildTask:
    """Validate a request (INVALID_ARGUMENT names the field) and turn it into a BuildTask."""
    if not request.HasField("phase"):
        raise InvalidArgument("phase", "is required")
    phase = request.phase
    if not phase.phase_id.strip():
        raise InvalidArgument("phase.phase_id", "is required")
    if not phase.description.strip():
        raise InvalidArgument("phase.description", "is required")
    if request.max_tokens <= 0:
        raise InvalidArgument("max_tokens", f"must be > 0, got {request.max_tokens}")
    if request.attempt < 0:
        raise InvalidArgument("attempt", f"must be >= 1 (0 means 1), got {request.attempt}")
    if request.selected_budget < 0:
        raise InvalidArgument("selected_budget", f"must be >= 0, got {request.selected_budget}")
    if len(request.intention_context.encode("utf-8")) > MAX_INTENTION_BYTES:
        raise InvalidArgument("intention_context", f"must be at most {MAX_INTENTION_BYTES} bytes")
    _check_paths("phase.deliverables", phase.deliverables, allow_directory=False)
    _check_paths("phase.scope.paths", phase.scope.paths, allow_directory=True)
    _check_paths("phase.scope.read_only_context", phase.scope.read_only_context, allow_directory=True)
    for index, context_file in enumerate(request.context_files):
        problem = path_problem(context_file.path)
        if problem:
            raise InvalidArgument(f"context_files[{index}].path", f"{context_file.path!r} {problem}")
    _check_paths("existing_paths", request.existing_paths, allow_directory=False)
    if request.output_format.strip() and request.output_format.strip() not in FORMATS:
        raise InvalidArgument(
            "output_format", f"{request.output_format!r}: must be one of {', '.join(FORMATS)}"
        )
    if request.max_attempts < 0:
        raise InvalidArgument("max_attempts", f"must be >= 0 (0 = unknown), got {request.max_attempts}")
    return BuildTask(
        run_id=request.run_id,
        phase_id=phase.phase_id,
        description=phase.description,
        max_tokens=request.max_tokens,
        attempt=request.attempt or 1,
        category=phase.category,
        complexity=phase.complexity,
        deliverables=tuple(phase.deliverables),
        scope_paths=tuple(phase.scope.paths),
        read_only_paths=tuple(phase.scope.read_only_context),
        context_files=tuple(
            ContextFile(path=f.path, content=f.content, summarized=f.summarized)
            for f in request.context_files
        ),
        estimate_id=request.estimate_id,
        selected_budget=request.selected_budget,
        model=request.model.strip(),
        previous_failure=request.previous_failure,
        intention_context=request.intention_context,
        memory_notes=tuple(request.memory_notes),
        validation_command=tuple(phase.validation_command),
        output_format=request.output_format.strip(),
        existing_paths=tuple(request.existing_paths),
        max_attempts=request.max_attempts,
    )


MAX_FAILURE_DETAIL_BYTES = 16 * 1024
_GROUP_BY = {
    builder_pb2.USAGE_GROUP_BY_PROVIDER: "provider",
    builder_pb2.USAGE_GROUP_BY_MODEL: "model",
    builder_pb2.USAGE_GROUP_BY_RUN: "run",
    builder_pb2.USAGE_GROUP_BY_PHASE: "phase",
}


def doctor_task_from_request(
    request: builder_pb2.DiagnoseRequest | builder_pb2.ReplanRequest,
) -> DoctorTask:
    """Validate a Diagnose or Replan request (INVALID_ARGUMENT names the field)."""
    if not request.run_id.strip():
        raise InvalidArgument("run_id", "is required")
    if not request.HasField("phase"):
        raise InvalidArgument("phase", "is required")
    phase = request.phase
    if not phase.phase_id.strip():
        raise InvalidArgument("phase.phase_id", "is required")
    if not phase.description.strip():
        raise InvalidArgument("phase.description", "is required")
    if not request.failures:
        raise InvalidArgument("failures", "at least one failed attempt is required")
    for index, failure in enumerate(request.failures):
        if failure.attempt < 1:
            raise InvalidArgument(f"failures[{index}].attempt", f"must be >= 1, got {failure.attempt}")
        if not failure.outcome.strip():
            raise InvalidArgument(f"failures[{index}].outcome", "is required")
        if len(failure.detail.encode("utf-8")) > MAX_FAILURE_DETAIL_BYTES:
            raise InvalidArgument(
                f"failures[{index}].detail", f"must be at most {MAX_FAILURE_DETAIL_BYTES} bytes"
            )
    if request.max_tokens < 0:
        raise InvalidArgument("max_tokens", f"must be >= 0 (0 = the default), got {request.max_tokens}")
    if len(request.intention_context.encode("utf-8")) > MAX_INTENTION_BYTES:
        raise InvalidArgument("intention_context", f"must be at most {MAX_INTENTION_BYTES} bytes")
    _check_paths("phase.deliverables", phase.deliverables, allow_directory=False)
    _check_paths("phase.scope.paths", phase.scope.paths, allow_directory=True)
    mitigations = tuple(getattr(request, "mitigations_applied", ()))
    return DoctorTask(
        run_id=request.run_id,
        phase_id=phase.phase_id,
        description=phase.description,
        failures=tuple(
            FailedAttemptInfo(
                attempt=f.attempt, outcome=f.outcome, fingerprint=f.fingerprint, detail=f.detail
            )
            for f in request.failures
        ),
        category=phase.category,
        complexity=phase.complexity,
        deliverables=tuple(phase.deliverables),
        scope_paths=tuple(phase.scope.paths),
        validation_command=tuple(phase.validation_command),
        intention_context=request.intention_context,
        mitigations_applied=mitigations,
        max_tokens=request.max_tokens,
    )


def usage_message(calls: Sequence[LlmCallRecord]) -> common_pb2.TokenUsage:
    """Totals over answered calls: a split stays unset if any did not report it; the total is always set."""
    answered = [call for call in calls if not call.error]
    usage = common_pb2.TokenUsage(total_tokens=sum(call.total_tokens for call in answered))
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "reasoning_output_tokens",
    ):
        values = [getattr(call, name) for call in answered]
        if values and all(value is not None for value in values):
            setattr(usage, name, sum(values))
    return usage


def call_message(call: LlmCallRecord) -> builder_pb2.LlmCall:
    message = builder_pb2.LlmCall(
        provider=call.provider,
        model=call.model,
        max_tokens=call.max_tokens,
        usage=usage_message([call]),
        stop_reason=call.stop_reason,
        duration_ms=call.duration_ms,
        call_id=call.call_id,
        role=call.role,
        error=call.error,
        output_format=call.output_format,
        parse_outcome=call.parse_outcome,
    )
    if call.cost_usd is not None:
        message.cost_usd = call.cost_usd
    return message


_LINE_ACTIONS = {
    "insert": common_pb2.LINE_EDIT_ACTION_INSERT,
    "replace": common_pb2.LINE_EDIT_ACTION_REPLACE,
    "delete": common_pb2.LINE_EDIT_ACTION_DELETE,
    "append": common_pb2.LINE_EDIT_ACTION_APPEND,
    "prepend": common_pb2.LINE_EDIT_ACTION_PREPEND,
}


def _edit_message(edit: EditSpec) -> common_pb2.Edit:
    if isinstance(edit, LineEditSpec):
        return common_pb2.Edit(
            line=common_pb2.LineEdit(
                action=_LINE_ACTIONS[edit.action],
                start_line=edit.start_line,
                end_line=edit.end_line,
                content=edit.content,
            )
        )
    if isinstance(edit, SearchReplaceSpec):
        return common_pb2.Edit(
            search_replace=common_pb2.SearchReplace(search=edit.search, replace=edit.replace)
        )
    return common_pb2.Edit(unified_diff=edit.diff)


def operation_message(op: FileOp) -> common_pb2.FileOperation:
    """common.v1 FileOperation: whole content, delete, or FILE_MODE_EDIT with edits and base_sha256."""
    return common_pb2.FileOperation(
        path=op.path,
        mode=_MODES[op.mode],
        new_content=op.new_content,
        edits=[_edit_message(edit) for edit in op.edits],
        base_sha256=op.base_sha256,
    )


def response_from_result(result: BuildResult) -> builder_pb2.BuildResponse:
    final = result.final_call
    return builder_pb2.BuildResponse(
        operations=[operation_message(op) for op in result.operations],
        usage=usage_message(result.calls),
        provider=final.provider,
        model=final.model,
        stop_reason=final.stop_reason,
        truncated=result.truncated,
        actual_max_tokens=final.max_tokens,
        calls=[call_message(call) for call in result.calls],
        summary=result.summary,
        output_format=result.output_format,
        continuations=result.continuations,
        normalizations=list(result.normalizations),
    )


def failure_metadata(failure: CallsFailed) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata with a google.rpc.Status whose ErrorInfo carries the failed RPC's usage."""
    usage = usage_message(failure.calls)
    answered = [call for call in failure.calls if not call.error]
    # the answered calls spent the tokens: describe the last of them (a failed request if none answered)
    final = answered[-1] if answered else failure.calls[-1]
    details = {
        "provider": final.provider,
        "model": final.model,
        "stop_reason": final.stop_reason,
        "calls": str(len(answered)),
        "failed_requests": str(len(failure.calls) - len(answered)),
        "total_tokens": str(usage.total_tokens),
        "actual_max_tokens": str(final.max_tokens),
        "call_ids": ",".join(str(call.call_id) for call in failure.calls if call.call_id),
    }
    if usage.HasField("input_tokens"):
        details["input_tokens"] = str(usage.input_tokens)
    if usage.HasField("output_tokens"):
        details["output_tokens"] = str(usage.output_tokens)
    details.update(failure.details)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=failure.reason, domain=ERROR_DOMAIN, metadata=details))
    status = status_pb2.Status(
        code=failure.cause.code.value[0], message=failure.cause.message, details=[info]
    )
    return (("grpc-status-details-bin", status.SerializeToString()),)


def stored_call_message(row: StoredCall) -> builder_pb2.GetCallResponse:
    call = row.as_record()
    return builder_pb2.GetCallResponse(
        call=call_message(call),
        run_id=row.run_id,
        phase_id=row.phase_id,
        attempt=row.attempt,
        call_index=row.call_index,
        estimate_id=row.estimate_id,
        prompt_sha256=row.prompt_sha256 or "",
        prompt_chars=row.prompt_chars or 0,
        answer_chars=row.answer_chars or 0,
        raw_answer=row.raw_answer or "",
        answer_retained=row.raw_answer is not None,
        salvaged_operations=row.salvaged_operations or 0,
        created_at=row.created_at.isoformat(),
        note=row.note or "",
    )


def usage_row_message(row: UsageRow) -> builder_pb2.UsageRow:
    usage = common_pb2.TokenUsage(total_tokens=row.total_tokens)
    for name in (
        "input_tokens",
        "output_tokens",
        "cache_read_input_tokens",
        "cache_creation_input_tokens",
        "reasoning_output_tokens",
    ):
        value = getattr(row, name)
        if value is not None:
            setattr(usage, name, value)
    message = builder_pb2.UsageRow(
        key="/".join(row.key), requests=row.requests, failed_requests=row.failed_requests, usage=usage
    )
    if row.cost_usd is not None:
        message.cost_usd = row.cost_usd
    return message


@contextmanager
def _usage_on_failure(context: grpc.ServicerContext) -> Iterator[None]:
    """A failure after LLM calls: its status, with the calls' usage in the trailing ErrorInfo."""
    try:
        yield
    except CallsFailed as failure:
        context.set_trailing_metadata(failure_metadata(failure))
        raise failure.cause from None


class BuilderServicer(builder_pb2_grpc.BuilderServiceServicer):
    """Transport only; the flows live in ``Builder`` and ``Doctor``."""

    def __init__(self, builder: Builder, doctor: Doctor | None = None, routing_source: str = "") -> None:
        self._builder = builder
        self._doctor = doctor or Doctor(builder.runner)
        self._routing_source = routing_source

    @property
    def _store(self) -> LlmCallStore:
        store = self._builder.runner.store
        if store is None:
            raise FailedPrecondition("the builder has no call store configured")
        return store

    def Build(
        self, request: builder_pb2.BuildRequest, context: grpc.ServicerContext
    ) -> builder_pb2.BuildResponse:
        task = task_from_request(request)
        with _usage_on_failure(context):
            result = self._builder.build(task)
        return response_from_result(result)

    def Diagnose(
        self, request: builder_pb2.DiagnoseRequest, context: grpc.ServicerContext
    ) -> builder_pb2.DiagnoseResponse:
        task = doctor_task_from_request(request)
        with _usage_on_failure(context):
            result = self._doctor.diagnose(task)
        diagnosis = result.diagnosis
        return builder_pb2.DiagnoseResponse(
            action=builder_pb2.DoctorAction.Value(f"DOCTOR_ACTION_{diagnosis.action.upper()}"),
            confidence=diagnosis.confidence,
            diagnosis=diagnosis.diagnosis,
            hint=diagnosis.hint,
            calls=[call_message(call) for call in result.calls],
            usage=usage_message(result.calls),
            model=result.model,
        )

    def Replan(
        self, request: builder_pb2.ReplanRequest, context: grpc.ServicerContext
    ) -> builder_pb2.ReplanResponse:
        task = doctor_task_from_request(request)
        with _usage_on_failure(context):
            result = self._doctor.replan(task)
        return builder_pb2.ReplanResponse(
            revised_description=result.replan.revised_description,
            rationale=result.replan.rationale,
            calls=[call_message(call) for call in result.calls],
            usage=usage_message(result.calls),
            model=result.model,
        )

    def GetCall(
        self, request: builder_pb2.GetCallRequest, context: grpc.ServicerContext
    ) -> builder_pb2.GetCallResponse:
        if request.call_id <= 0:
            raise InvalidArgument("call_id", f"must be > 0, got {request.call_id}")
        row = self._store.get_call(request.call_id)
        if row is None:
            raise NotFound(f"no LLM call {request.call_id}")
        return stored_call_message(row)

    def ListModels(
        self, request: builder_pb2.ListModelsRequest, context: grpc.ServicerContext
    ) -> builder_pb2.ListModelsResponse:
        runner = self._builder.runner
        routing = runner.routing
        response = builder_pb2.ListModelsResponse(
            doctor_min_confidence=routing.role("doctor").min_confidence,
            providers=list(runner.providers.names),
            source=self._routing_source,
        )
        for name, spec in routing.models.items():
            model = builder_pb2.ModelInfo(
                model=name,
                provider=spec.provider,
                max_output_tokens=spec.max_output_tokens,
                available=runner.providers.get(spec.provider) is not None,
            )
            for field_name, value in (
                ("input_price", spec.price.input),
                ("output_price", spec.price.output),
                ("cache_read_price", spec.price.cache_read),
                ("cache_write_price", spec.price.cache_write),
            ):
                if value is not None:
                    setattr(model, field_name, value)
            response.models.append(model)
        for role, role_routing in routing.roles.items():
            for route in [*role_routing.routes, None]:
                response.routes.append(
                    builder_pb2.RouteInfo(
                        role=role,
                        category=route.category if route else "*",
                        complexity=route.complexity if route else "*",
                        chain=list(route.chain if route else role_routing.chain),
                        escalate_after=role_routing.escalate_after,
                        failover=list(role_routing.failover),
                    )
                )
        return response

    def GetUsage(
        self, request: builder_pb2.GetUsageRequest, context: grpc.ServicerContext
    ) -> builder_pb2.GetUsageResponse:
        group_by = _GROUP_BY.get(request.group_by)
        if group_by is None:
            raise InvalidArgument("group_by", "must be PROVIDER, MODEL, RUN or PHASE")
        since = parse_period(request.period)
        rows = self._store.usage(since=since, group_by=group_by, run_id=request.run_id)  # type: ignore[arg-type]
        [total] = self._store.usage(since=since, group_by=None, run_id=request.run_id) or [None]
        response = builder_pb2.GetUsageResponse(rows=[usage_row_message(row) for row in rows])
        if total is not None:
            response.total.CopyFrom(usage_row_message(total))
        return response
