"""gRPC servicer of autopack.builder.v1.BuilderService: validate, build, map. Nothing else.

A build that fails after LLM calls keeps its token usage visible to the caller: the
error status carries a ``google.rpc.ErrorInfo`` (domain ``builder.autopack``) whose
metadata holds the calls' usage, read with ``grpc_status.rpc_status.from_call``.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc
from autopack.builder.v1 import builder_pb2, builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_common.errors import InvalidArgument
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from autopack_builder.builder import Builder, BuildFailed
from autopack_builder.models import BuildResult, BuildTask, ContextFile, LlmCallRecord
from autopack_builder.parsing import path_problem

SERVICE_FULL_NAME = builder_pb2.DESCRIPTOR.services_by_name["BuilderService"].full_name
ERROR_DOMAIN = "builder.autopack"
MAX_INTENTION_BYTES = 2048

_MODES = {
    "create": common_pb2.FILE_MODE_CREATE,
    "modify": common_pb2.FILE_MODE_MODIFY,
    "delete": common_pb2.FILE_MODE_DELETE,
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
    )


def usage_message(calls: Sequence[LlmCallRecord]) -> common_pb2.TokenUsage:
    """Totals over calls: a split stays unset if any call did not report it; the total is always set."""
    usage = common_pb2.TokenUsage(total_tokens=sum(call.total_tokens for call in calls))
    if calls and all(call.input_tokens is not None for call in calls):
        usage.input_tokens = sum(call.input_tokens or 0 for call in calls)
    if calls and all(call.output_tokens is not None for call in calls):
        usage.output_tokens = sum(call.output_tokens or 0 for call in calls)
    return usage


def _call_message(call: LlmCallRecord) -> builder_pb2.LlmCall:
    return builder_pb2.LlmCall(
        provider=call.provider,
        model=call.model,
        max_tokens=call.max_tokens,
        usage=usage_message([call]),
        stop_reason=call.stop_reason,
        duration_ms=call.duration_ms,
    )


def response_from_result(result: BuildResult) -> builder_pb2.BuildResponse:
    final = result.final_call
    return builder_pb2.BuildResponse(
        operations=[
            common_pb2.FileOperation(path=op.path, mode=_MODES[op.mode], new_content=op.new_content)
            for op in result.operations
        ],
        usage=usage_message(result.calls),
        provider=final.provider,
        model=final.model,
        stop_reason=final.stop_reason,
        truncated=result.truncated,
        actual_max_tokens=final.max_tokens,
        calls=[_call_message(call) for call in result.calls],
        summary=result.summary,
    )


def failure_metadata(failure: BuildFailed) -> tuple[tuple[str, bytes], ...]:
    """Trailing metadata with a google.rpc.Status whose ErrorInfo carries the failed build's usage."""
    usage = usage_message(failure.calls)
    final = failure.calls[-1]
    details = {
        "provider": final.provider,
        "model": final.model,
        "stop_reason": final.stop_reason,
        "calls": str(len(failure.calls)),
        "total_tokens": str(usage.total_tokens),
        "actual_max_tokens": str(final.max_tokens),
    }
    if usage.HasField("input_tokens"):
        details["input_tokens"] = str(usage.input_tokens)
    if usage.HasField("output_tokens"):
        details["output_tokens"] = str(usage.output_tokens)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=failure.reason, domain=ERROR_DOMAIN, metadata=details))
    status = status_pb2.Status(
        code=failure.cause.code.value[0], message=failure.cause.message, details=[info]
    )
    return (("grpc-status-details-bin", status.SerializeToString()),)


class BuilderServicer(builder_pb2_grpc.BuilderServiceServicer):
    """Transport only; the flow lives in ``Builder``."""

    def __init__(self, builder: Builder) -> None:
        self._builder = builder

    def Build(
        self, request: builder_pb2.BuildRequest, context: grpc.ServicerContext
    ) -> builder_pb2.BuildResponse:
        task = task_from_request(request)
        try:
            result = self._builder.build(task)
        except BuildFailed as failure:
            context.set_trailing_metadata(failure_metadata(failure))
            raise failure.cause from None
        return response_from_result(result)
