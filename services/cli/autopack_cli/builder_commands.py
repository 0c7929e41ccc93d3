"""Builder commands: ``show-call ID`` (what the model saw and said), ``builder models``, ``builder usage``.

They talk to the builder over gRPC (``AUTOPACK_BUILDER_ADDR`` or ``--address``). The raw answer
is printed only here, on request: the builder keeps it in its database, never in logs or spans.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import grpc
import typer
from autopack.builder.v1 import builder_pb2, builder_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_common.clients import open_channel
from rich.markup import escape
from rich.table import Table

from autopack_cli.output import console, rpc_failure

DEFAULT_TIMEOUT = 30.0
AddressOption = Annotated[
    str | None,
    typer.Option("--address", help="Builder address (default: AUTOPACK_BUILDER_ADDR or 127.0.0.1:50053)."),
]
GROUP_BY = {
    "provider": builder_pb2.USAGE_GROUP_BY_PROVIDER,
    "model": builder_pb2.USAGE_GROUP_BY_MODEL,
    "run": builder_pb2.USAGE_GROUP_BY_RUN,
    "phase": builder_pb2.USAGE_GROUP_BY_PHASE,
}

builder_app = typer.Typer(help="Inspect the builder's routing table and token usage.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the builder commands to the main app."""
    app.command("show-call")(show_call)
    app.add_typer(builder_app, name="builder")


@contextmanager
def _stub(address: str | None) -> Iterator[builder_pb2_grpc.BuilderServiceStub]:
    channel = open_channel("builder", address)
    try:
        yield builder_pb2_grpc.BuilderServiceStub(channel)
    except grpc.RpcError as error:
        raise rpc_failure(error, "builder", address) from None
    finally:
        channel.close()


def _count(usage: common_pb2.TokenUsage, name: str) -> str:
    return f"{getattr(usage, name):,}" if usage.HasField(name) else "?"


def _cost(message: builder_pb2.LlmCall | builder_pb2.UsageRow) -> str:
    return f"${message.cost_usd:.4f}" if message.HasField("cost_usd") else "?"


def show_call(
    call_id: Annotated[int, typer.Argument(help="Call id (LlmCall.call_id, in build errors as call_ids).")],
    raw: Annotated[bool, typer.Option("--raw", help="Print only the raw answer.")] = False,
    address: AddressOption = None,
) -> None:
    """What one LLM call saw (prompt hash, sizes) and said (raw answer, parse outcome)."""
    with _stub(address) as stub:
        record = stub.GetCall(builder_pb2.GetCallRequest(call_id=call_id), timeout=DEFAULT_TIMEOUT)
    if raw:
        console.print(record.raw_answer, markup=False, highlight=False, soft_wrap=True, end="")
        return
    call = record.call
    table = Table(title=f"LLM call {call_id}", show_header=False)
    rows = [
        (
            "run / phase / attempt",
            f"{record.run_id} / {record.phase_id} / {record.attempt} (request {record.call_index})",
        ),
        ("role / format", f"{call.role} / {call.output_format or '-'}"),
        ("provider / model", f"{call.provider} / {call.model}"),
        ("max_tokens / stop", f"{call.max_tokens:,} / {call.stop_reason or '-'}"),
        (
            "tokens in / out / total",
            f"{_count(call.usage, 'input_tokens')} / {_count(call.usage, 'output_tokens')} / {call.usage.total_tokens:,}",
        ),
        (
            "cache read / write / reasoning",
            f"{_count(call.usage, 'cache_read_input_tokens')} / {_count(call.usage, 'cache_creation_input_tokens')}"
            f" / {_count(call.usage, 'reasoning_output_tokens')}",
        ),
        ("cost", _cost(call)),
        ("parse outcome", f"{call.parse_outcome or '-'} (salvaged {record.salvaged_operations})"),
        ("error", call.error or "-"),
        ("prompt", f"sha256 {record.prompt_sha256 or '?'}, {record.prompt_chars:,} chars"),
        ("answer", f"{record.answer_chars:,} chars" + ("" if record.answer_retained else " (not retained)")),
        ("note", record.note or "-"),
        ("made at", record.created_at),
    ]
    for name, value in rows:
        table.add_row(name, escape(value))
    console.print(table)
    if record.answer_retained:
        console.rule("raw answer")
        console.print(record.raw_answer, markup=False, highlight=False, soft_wrap=True)


@builder_app.command("models")
def models(address: AddressOption = None) -> None:
    """The routing table: models, ceilings and prices; chains per role x category x complexity."""
    with _stub(address) as stub:
        table_reply = stub.ListModels(builder_pb2.ListModelsRequest(), timeout=DEFAULT_TIMEOUT)
    model_table = Table(title=f"models (providers: {', '.join(table_reply.providers)})")
    for column in ("model", "provider", "max output", "$/M in", "$/M out", "$/M cache read", "available"):
        model_table.add_column(column)
    for model in table_reply.models:
        prices = [
            f"{getattr(model, name):g}" if model.HasField(name) else "?"
            for name in ("input_price", "output_price", "cache_read_price")
        ]
        model_table.add_row(
            model.model,
            model.provider,
            f"{model.max_output_tokens:,}",
            *prices,
            "yes" if model.available else "no",
        )
    console.print(model_table)
    routes = Table(
        title=f"routes (from {table_reply.source}; doctor min confidence {table_reply.doctor_min_confidence:g})"
    )
    for column in ("role", "category", "complexity", "chain", "escalate after", "fail-over"):
        routes.add_column(column)
    for route in table_reply.routes:
        routes.add_row(
            route.role,
            route.category,
            route.complexity,
            " -> ".join(route.chain),
            str(route.escalate_after),
            ", ".join(route.failover) or "-",
        )
    console.print(routes)


@builder_app.command("usage")
def usage(
    period: Annotated[str, typer.Option("--period", help="e.g. 30m, 24h, 7d; empty = everything.")] = "",
    group_by: Annotated[str, typer.Option("--group-by", help="provider, model, run or phase.")] = "model",
    run_id: Annotated[str, typer.Option("--run-id", help="Only this run.")] = "",
    address: AddressOption = None,
) -> None:
    """Token usage and cost per provider, model, run or phase ('?' = not reported by every call)."""
    if group_by not in GROUP_BY:
        console.print(f"--group-by must be one of {', '.join(GROUP_BY)}")
        raise typer.Exit(2)
    with _stub(address) as stub:
        reply = stub.GetUsage(
            builder_pb2.GetUsageRequest(period=period, group_by=GROUP_BY[group_by], run_id=run_id),
            timeout=DEFAULT_TIMEOUT,
        )
    table = Table(title=f"usage by {group_by}" + (f" over {period}" if period else ""))
    for column in (
        group_by,
        "requests",
        "failed",
        "input",
        "output",
        "cache read",
        "reasoning",
        "total",
        "cost",
    ):
        table.add_column(column)
    for row in [*reply.rows, reply.total]:
        key = row.key if row is not reply.total else "total"
        table.add_row(
            key,
            str(row.requests),
            str(row.failed_requests),
            _count(row.usage, "input_tokens"),
            _count(row.usage, "output_tokens"),
            _count(row.usage, "cache_read_input_tokens"),
            _count(row.usage, "reasoning_output_tokens"),
            f"{row.usage.total_tokens:,}",
            _cost(row),
        )
    console.print(table)
