"""``autopack show-call``, ``autopack builder models|usage`` against a real builder over gRPC."""

from __future__ import annotations

from autopack_builder.providers import ReplayProvider
from autopack_cli.main import app
from typer.testing import CliRunner

DELIVERABLE = "examples/telemetry_utils/string_helper.py"


def test_show_call_prints_the_record_and_the_raw_answer(
    start_builder, build_request, write_recordings, make_message, make_answer
) -> None:
    answer = make_answer([(DELIVERABLE, "create", "def slug(s):\n    return s\n")])
    directory = write_recordings([{"phase_id": "telemetry-p1-string-util", "response": make_message(answer)}])
    stack = start_builder(ReplayProvider(directory))
    [call] = stack.stub.Build(build_request(), timeout=15).calls
    runner = CliRunner()

    shown = runner.invoke(app, ["show-call", str(call.call_id), "--address", stack.address])
    raw = runner.invoke(app, ["show-call", str(call.call_id), "--raw", "--address", stack.address])
    missing = runner.invoke(app, ["show-call", "999", "--address", stack.address])

    assert shown.exit_code == 0, shown.output
    assert "telemetry-p1-string-util" in shown.output and "full_file_json" in shown.output
    assert "def slug(s):" in shown.output and "raw answer" in shown.output
    assert raw.exit_code == 0 and raw.output == answer
    assert missing.exit_code == 2 and "NOT_FOUND" in missing.output


def test_builder_models_and_usage(
    start_builder, build_request, write_recordings, make_message, make_answer
) -> None:
    directory = write_recordings(
        [
            {
                "phase_id": "telemetry-p1-string-util",
                "response": make_message(make_answer([(DELIVERABLE, "create", "x")])),
            }
        ]
    )
    stack = start_builder(ReplayProvider(directory))
    stack.stub.Build(build_request(), timeout=15)
    runner = CliRunner()

    models = runner.invoke(app, ["builder", "models", "--address", stack.address])
    usage = runner.invoke(app, ["builder", "usage", "--group-by", "phase", "--address", stack.address])
    bad = runner.invoke(app, ["builder", "usage", "--group-by", "day", "--address", stack.address])

    assert models.exit_code == 0 and "claude-opus-4-6" in models.output and "gpt-5" in models.output
    assert (
        usage.exit_code == 0 and "run-1/telemetry-p1-string-util" in usage.output and "2,100" in usage.output
    )
    assert bad.exit_code == 2
