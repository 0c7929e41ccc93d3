"""What the model saw and said: GetCall, ListModels, GetUsage over gRPC; the store on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from autopack.builder.v1 import builder_pb2
from autopack_builder.calls import prompt_sha256
from autopack_builder.models import LlmCallRecord
from autopack_builder.providers import AnthropicProvider, ReplayProvider
from autopack_builder.routing import RoutingError, load_routing
from autopack_builder.store import LlmCallStore, Transcript, llm_calls
from autopack_common.database import create_db_engine, upgrade_schema
from sqlalchemy import select, update

DELIVERABLE = "examples/telemetry_utils/string_helper.py"
SECRET = "def very_private_helper(): return 42\n"


def test_get_call_returns_the_raw_answer_stored_compressed(
    start_builder, build_request, fake_anthropic, make_message, make_answer, caplog
) -> None:
    answer = make_answer([(DELIVERABLE, "create", SECRET)])
    fake_anthropic.reply_messages(make_message(answer, input_tokens=3000, output_tokens=700))
    stack = start_builder(AnthropicProvider(timeout_seconds=10))

    response = stack.stub.Build(build_request(), timeout=15)
    [call] = response.calls
    record = stack.stub.GetCall(builder_pb2.GetCallRequest(call_id=call.call_id), timeout=5)

    [seen] = fake_anthropic.requests
    assert record.raw_answer == answer and record.answer_retained
    assert record.answer_chars == len(answer)
    assert record.prompt_sha256 == prompt_sha256(seen.system, seen.prompt)
    assert record.prompt_chars == len(seen.system) + len(seen.prompt)
    assert (record.run_id, record.phase_id, record.attempt, record.call_index) == (
        "run-1",
        "telemetry-p1-string-util",
        1,
        1,
    )
    assert (record.call.output_format, record.call.parse_outcome) == ("full_file_json", "ok")
    assert record.call.cost_usd == pytest.approx((3000 * 3 + 700 * 15) / 1e6)
    # stored compressed, and never in logs
    with stack.store._engine.connect() as connection:
        raw = connection.execute(select(llm_calls.c.raw_answer)).scalar_one()
    assert zlib.decompress(raw).decode() == answer and SECRET.encode() not in raw
    assert "very_private_helper" not in caplog.text


def test_get_call_bad_id_and_unknown_id(start_builder) -> None:
    stack = start_builder(ReplayProvider(Path("/nonexistent")))

    with pytest.raises(grpc.RpcError) as bad:
        stack.stub.GetCall(builder_pb2.GetCallRequest(call_id=0), timeout=5)
    with pytest.raises(grpc.RpcError) as missing:
        stack.stub.GetCall(builder_pb2.GetCallRequest(call_id=99), timeout=5)

    assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and bad.value.details().startswith("call_id")
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def test_list_models_shows_the_routing_table(start_builder) -> None:
    stack = start_builder(ReplayProvider(Path("/nonexistent")))

    table = stack.stub.ListModels(builder_pb2.ListModelsRequest(), timeout=5)

    models = {m.model: m for m in table.models}
    assert models["claude-opus-4-6"].provider == "anthropic" and models["gpt-5"].provider == "openai"
    assert (
        models["claude-sonnet-4-6"].max_output_tokens == 64000
        and models["claude-sonnet-4-6"].input_price == 3.0
    )
    assert table.providers == ["replay"] and all(m.available for m in table.models)
    defaults = {(r.role, r.category, r.complexity): list(r.chain) for r in table.routes}
    assert defaults[("builder", "*", "*")] == ["claude-sonnet-4-6", "claude-opus-4-6"]
    assert defaults[("builder", "docs", "low")][0] == "claude-haiku-4-5"
    assert {r.role for r in table.routes} == {"builder", "doctor", "auditor"}
    assert table.doctor_min_confidence == 0.7 and table.source == "test"


def test_escalation_chain_and_routes() -> None:
    routing = load_routing()

    assert [routing.model_for_attempt("builder", n) for n in (1, 2, 3, 9)] == [
        "claude-sonnet-4-6",
        "claude-sonnet-4-6",
        "claude-opus-4-6",
        "claude-opus-4-6",
    ]
    assert routing.model_for_attempt("builder", 1, "docs", "low") == "claude-haiku-4-5"
    assert routing.model_for_attempt("builder", 3, requested="my-model") == "claude-opus-4-6"
    assert routing.model_for_attempt("builder", 1, requested="my-model") == "my-model"
    assert routing.provider_of("gpt-4.1") == "openai" and routing.output_ceiling("claude-opus-4-6") == 32000


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("models: [", "not YAML"),
        ("models: {}\nroles: {}\n", "missing builder"),
        (
            "models: {a: {provider: anthropic, max_output_tokens: 10}}\n"
            "roles: {builder: {chain: [b]}, doctor: {chain: [a]}, auditor: {chain: [a]}}\n",
            "not under models: b",
        ),
        ("models: {a: {provider: google, max_output_tokens: 10}}\nroles: {}\n", "provider"),
    ],
)
def test_routing_file_errors_say_where(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "routing.yaml"
    path.write_text(text)

    with pytest.raises(RoutingError, match=message):
        load_routing(path)


def _record(model: str, provider: str, **overrides: object) -> LlmCallRecord:
    fields: dict[str, object] = {
        "provider": provider,
        "model": model,
        "max_tokens": 4096,
        "input_tokens": 1000,
        "output_tokens": 200,
        "total_tokens": 1200,
        "stop_reason": "end_turn",
        "duration_ms": 10,
        "cost_usd": 0.006,
    }
    fields.update(overrides)
    return LlmCallRecord(**fields)  # type: ignore[arg-type]


@pytest.fixture
def store(database_url: str):
    engine = create_db_engine(database_url)
    upgrade_schema(engine, "autopack_builder.migrations", "alembic_version_builder")
    yield LlmCallStore(engine)
    engine.dispose()


def _put(store: LlmCallStore, run: str, phase: str, record: LlmCallRecord, answer: str | None = "ok") -> int:
    transcript = Transcript(prompt_sha256=hashlib.sha256(b"p").hexdigest(), prompt_chars=1, answer=answer)
    return store.record(
        run_id=run,
        phase_id=phase,
        attempt=1,
        call_index=1,
        estimate_id="",
        call=record,
        transcript=transcript,
    )


def test_usage_is_null_safe_per_group(store: LlmCallStore) -> None:
    _put(store, "r1", "p1", _record("claude-sonnet-4-6", "anthropic"))
    _put(store, "r1", "p1", _record("claude-sonnet-4-6", "anthropic", input_tokens=None, cost_usd=None))
    _put(
        store, "r1", "p2", _record("gpt-5", "openai", cache_read_input_tokens=50, reasoning_output_tokens=20)
    )
    failed = _record("gpt-5", "openai", input_tokens=None, output_tokens=None, total_tokens=0, error="529")
    _put(store, "r2", "p1", failed, answer=None)

    by_provider = {row.key: row for row in store.usage(since=None, group_by="provider")}
    by_phase = {row.key: row for row in store.usage(since=None, group_by="phase")}
    [total] = store.usage(since=None, group_by=None)

    anthropic = by_provider[("anthropic",)]
    assert (anthropic.requests, anthropic.input_tokens, anthropic.output_tokens) == (2, None, 400)
    assert anthropic.total_tokens == 2400 and anthropic.cost_usd is None  # one unknown makes the sum unknown
    openai = by_provider[("openai",)]
    assert (openai.requests, openai.failed_requests, openai.input_tokens) == (
        2,
        1,
        1000,
    )  # a 529 is not unknown
    assert (openai.cache_read_input_tokens, openai.reasoning_output_tokens) == (50, 20)
    assert by_phase[("r2", "p1")].input_tokens == 0 and by_phase[("r2", "p1")].failed_requests == 1
    assert (total.requests, total.total_tokens, total.input_tokens) == (4, 3600, None)
    assert store.usage(since=datetime.now(UTC) + timedelta(hours=1), group_by="model") == []


def test_prune_drops_old_raw_answers_only(store: LlmCallStore) -> None:
    old = _put(store, "r1", "p1", _record("m", "anthropic"), answer="old answer")
    new = _put(store, "r1", "p1", _record("m", "anthropic"), answer="new answer")
    with store._engine.begin() as connection:
        connection.execute(
            update(llm_calls)
            .where(llm_calls.c.id == old)
            .values(created_at=datetime.now(UTC) - timedelta(days=40))
        )

    assert store.prune_answers(datetime.now(UTC) - timedelta(days=30)) == 1

    pruned, kept = store.get_call(old), store.get_call(new)
    assert pruned is not None and pruned.raw_answer is None and pruned.total_tokens == 1200
    assert kept is not None and kept.raw_answer == "new answer"


def test_get_usage_over_grpc(
    start_builder, build_request, write_recordings, make_message, make_answer
) -> None:
    directory = write_recordings(
        [
            {
                "phase_id": "telemetry-p1-string-util",
                "response": make_message(make_answer([(DELIVERABLE, "create", "x\n")])),
            }
        ]
    )
    stack = start_builder(ReplayProvider(directory))
    stack.stub.Build(build_request(), timeout=15)

    usage = stack.stub.GetUsage(
        builder_pb2.GetUsageRequest(period="24h", group_by=builder_pb2.USAGE_GROUP_BY_MODEL), timeout=5
    )
    [row] = usage.rows
    assert row.key == "claude-sonnet-4-5-20250929" and row.requests == 1
    assert (row.usage.input_tokens, row.usage.output_tokens) == (1500, 600)
    assert usage.total.usage.total_tokens == 2100

    for request, field in (
        (builder_pb2.GetUsageRequest(group_by=builder_pb2.USAGE_GROUP_BY_UNSPECIFIED), "group_by"),
        (builder_pb2.GetUsageRequest(period="yesterday", group_by=builder_pb2.USAGE_GROUP_BY_RUN), "period"),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            stack.stub.GetUsage(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert caught.value.details().startswith(field)
