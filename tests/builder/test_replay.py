"""Replay lookup: (phase, attempt) with fallback to the highest earlier attempt, run-specific first."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from anthropic.types import Message
from autopack_builder.doctor import parse_diagnosis
from autopack_builder.models import ChatRequest
from autopack_builder.parsing import parse_build_output
from autopack_builder.providers import ReplayProvider, cut_to_budget, load_recordings, select_recording
from autopack_common.errors import FailedPrecondition


def _line(
    phase_id: str, text: str, attempt: int | None = None, run_id: str | None = None, call: int | None = None
) -> dict[str, Any]:
    line: dict[str, Any] = {"phase_id": phase_id, "response": None}
    if attempt is not None:
        line["attempt"] = attempt
    if run_id is not None:
        line["run_id"] = run_id
    if call is not None:
        line["call"] = call
    return line


@pytest.fixture
def recordings(write_recordings: Callable[..., Path], make_message: Callable[..., dict[str, Any]]) -> Path:
    lines = [
        _line("p1", "generic attempt 1"),  # attempt defaults to 1
        _line("p1", "generic attempt 3", attempt=3),
        _line("p1", "generic attempt 3 retry", attempt=3, call=2),
        _line("p1", "run-a attempt 2", attempt=2, run_id="run-a"),
        _line("p2", "p2 attempt 2 only", attempt=2),
    ]
    for line, text in zip(lines, ["g1", "g3", "g3c2", "a2", "p2a2"], strict=True):
        line["response"] = make_message(text)
    return write_recordings(lines)


def _text(directory: Path, **key: Any) -> str | None:
    recording = select_recording(load_recordings(directory), **key)
    return None if recording is None else recording.response.content[0].text  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ({"run_id": "run-x", "phase_id": "p1", "attempt": 1}, "g1"),
        ({"run_id": "run-x", "phase_id": "p1", "attempt": 2}, "g1"),  # falls back to attempt 1
        ({"run_id": "run-x", "phase_id": "p1", "attempt": 3}, "g3"),
        ({"run_id": "run-x", "phase_id": "p1", "attempt": 7}, "g3"),
        ({"run_id": "run-x", "phase_id": "p1", "attempt": 3, "call": 2}, "g3c2"),
        ({"run_id": "run-x", "phase_id": "p1", "attempt": 1, "call": 2}, "g1"),  # retry falls back to call 1
        ({"run_id": "run-a", "phase_id": "p1", "attempt": 5}, "a2"),  # run-specific recordings win
        ({"run_id": "run-a", "phase_id": "p1", "attempt": 1}, None),  # ... and are the only candidates
        ({"run_id": "", "phase_id": "p1", "attempt": 1}, "g1"),
        ({"run_id": "run-x", "phase_id": "p2", "attempt": 1}, None),  # nothing at or before attempt 1
        ({"run_id": "run-x", "phase_id": "p3", "attempt": 1}, None),
    ],
)
def test_lookup(recordings: Path, key: dict[str, Any], expected: str | None) -> None:
    assert _text(recordings, **key) == expected


def _request(phase_id: str, max_tokens: int = 4096, attempt: int = 1) -> ChatRequest:
    return ChatRequest(
        model="claude-sonnet-4-6",
        max_tokens=max_tokens,
        system="s",
        user="u",
        run_id="r",
        phase_id=phase_id,
        attempt=attempt,
    )


def test_missing_recording_is_failed_precondition_naming_the_phase(recordings: Path) -> None:
    with pytest.raises(FailedPrecondition, match="no recorded builder response for phase 'p3'"):
        ReplayProvider(recordings).chat(_request("p3"))


def test_missing_directory_is_failed_precondition(tmp_path: Path) -> None:
    with pytest.raises(FailedPrecondition, match="phase 'p1'"):
        ReplayProvider(tmp_path / "absent").chat(_request("p1"))


def test_replay_returns_the_recorded_usage_exactly(recordings: Path) -> None:
    result = ReplayProvider(recordings).chat(_request("p1"))

    assert (result.provider, result.text, result.stop_reason) == ("replay", "g1", "end_turn")
    assert (result.input_tokens, result.output_tokens, result.total_tokens) == (1500, 600, 2100)


def test_budget_below_recorded_output_truncates_like_a_live_provider(
    make_message: Callable[..., dict[str, Any]],
) -> None:
    message = Message.model_validate(make_message("x" * 1000, output_tokens=500, input_tokens=40))

    cut = cut_to_budget(message, 100)

    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 100 and cut.usage.input_tokens == 40
    assert cut.content[0].text == "x" * 200  # type: ignore[union-attr]
    assert cut_to_budget(message, 500) is message


def test_recordings_are_reloaded_when_files_change(
    write_recordings: Callable[..., Path], make_message: Callable[..., dict[str, Any]]
) -> None:
    directory = write_recordings([{"phase_id": "p1", "response": make_message("first")}])
    provider = ReplayProvider(directory)
    assert provider.chat(_request("p1")).text == "first"

    write_recordings([{"phase_id": "p9", "response": make_message("new")}], name="more.jsonl")

    assert provider.chat(_request("p9")).text == "new"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("not json", "calls.jsonl:2: not JSON"),
        (json.dumps({"response": {}}), "'phase_id' is required"),
        (json.dumps({"phase_id": "p", "response": {}}), "'response' is not a Message"),
        ("ATTEMPT0", "'attempt' must be an integer >= 1"),
        (json.dumps({"phase_id": "p", "response": {"type": "message"}}), "'response' is not a Message"),
    ],
)
def test_bad_recording_lines_fail_loudly_with_their_location(
    tmp_path: Path, make_message: Callable[..., dict[str, Any]], line: str, message: str
) -> None:
    directory = tmp_path / "recordings"
    directory.mkdir()
    good = json.dumps({"phase_id": "p1", "response": make_message("ok")})
    if line == "ATTEMPT0":
        line = json.dumps({"phase_id": "p1", "attempt": 0, "response": make_message("ok")})
    (directory / "calls.jsonl").write_text(f"{good}\n{line}\n", encoding="utf-8")

    with pytest.raises(FailedPrecondition, match=message):
        ReplayProvider(directory).chat(_request("p1"))


def test_shipped_example_recordings_load_and_parse() -> None:
    """The recordings `make run` replays must stay valid for the builder's one parsing path."""
    directory = Path(__file__).resolve().parents[2] / "examples" / "recordings"
    recordings = load_recordings(directory)

    assert recordings
    for recording in recordings:
        text = "".join(block.text for block in recording.response.content if block.type == "text")
        if recording.role == "builder":
            assert parse_build_output(text).operations, recording.source
        else:
            assert parse_diagnosis(text).confidence >= 0.7, recording.source
