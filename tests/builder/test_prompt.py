"""The prompt removes the ambiguity that made the model answer with an empty files array (seed 000)."""

from __future__ import annotations

from autopack_builder.models import BuildTask, ContextFile
from autopack_builder.prompt import (
    DELIVERABLES_HEADING,
    DIRECTORY_PREFIX_NOTE,
    EXACT_FILE_NOTE,
    annotate_scope_path,
    build_system_prompt,
    build_user_prompt,
)


def _task(**overrides: object) -> BuildTask:
    fields: dict[str, object] = {
        "run_id": "run-1",
        "phase_id": "telemetry-p1-string-util",
        "description": "Add a string helper module.",
        "max_tokens": 8192,
        "deliverables": ("examples/telemetry_utils/string_helper.py",),
        "scope_paths": ("examples/telemetry_utils/", "setup.cfg"),
    }
    fields.update(overrides)
    return BuildTask(**fields)  # type: ignore[arg-type]


def test_directory_prefix_is_annotated_as_allowed_and_files_as_exact() -> None:
    prompt = build_user_prompt(_task())

    assert (
        "- examples/telemetry_utils/ (directory prefix - creating or modifying files under this path is ALLOWED)"
        in prompt
    )
    assert "- setup.cfg (exact file)" in prompt
    assert annotate_scope_path("src/") == f"- src/ {DIRECTORY_PREFIX_NOTE}"
    assert annotate_scope_path("src/app.py") == f"- src/app.py {EXACT_FILE_NOTE}"


def test_required_deliverables_are_listed_with_the_no_empty_files_rule() -> None:
    task = _task(deliverables=("pkg/a.py", "tests/test_a.py"))
    prompt = build_user_prompt(task)

    section = prompt[prompt.index(DELIVERABLES_HEADING) :]
    assert "- pkg/a.py\n- tests/test_a.py\n" in section
    assert "MUST cover every deliverable" in section
    assert 'An empty "files" array is NOT allowed for this phase.' in section
    assert "CRITICAL" not in prompt  # the stronger wording is for the retry only


def test_no_deliverables_section_without_deliverables() -> None:
    assert "REQUIRED DELIVERABLES" not in build_user_prompt(_task(deliverables=()))


def test_retry_prompt_emphasises_the_rejected_empty_answer() -> None:
    prompt = build_user_prompt(_task(), emphasize_deliverables=True)

    assert 'CRITICAL: your previous answer to this request had an EMPTY "files" array' in prompt
    assert "all 1 deliverable(s)" in prompt


def test_context_intention_notes_and_previous_failure_are_included() -> None:
    task = _task(
        read_only_paths=("docs/", "README.md"),
        context_files=(
            ContextFile("README.md", "Use ```fences``` like this\n"),
            ContextFile("big.py", "x", True),
        ),
        intention_context="Ship a tiny, dependency-free utils package.",
        memory_notes=("p0 created examples/telemetry_utils/__init__.py",),
        previous_failure="pytest: NameError: slugify is not defined",
        attempt=2,
    )
    prompt = build_user_prompt(task)

    assert "# Phase telemetry-p1-string-util (attempt 2)" in prompt
    assert "- docs/ (directory prefix - read only)" in prompt
    assert "- README.md (exact file - read only)" in prompt
    # the fence is longer than any backtick run inside the file, so the file cannot close it
    assert "````\nUse ```fences``` like this\n````" in prompt
    assert "### big.py (summary, not the full file)" in prompt
    assert "Ship a tiny, dependency-free utils package." in prompt
    assert "- p0 created examples/telemetry_utils/__init__.py" in prompt
    assert "pytest: NameError: slugify is not defined" in prompt
    # the deliverables come after the (long) context so they stay in view
    assert prompt.index("REQUIRED DELIVERABLES") > prompt.index("## Context files")


def test_optional_sections_are_left_out_when_empty() -> None:
    prompt = build_user_prompt(_task())

    for heading in ("Project intention", "Notes from earlier phases", "Context files", "Previous attempt"):
        assert heading not in prompt


def test_system_prompt_states_the_output_contract() -> None:
    system = build_system_prompt()

    assert '"files"' in system and '"new_content"' in system and '"summary"' in system
    assert '"create"' in system and '"modify"' in system and '"delete"' in system
    assert 'A scope path ending in "/" is a directory prefix' in system
    assert 'an empty "files" array is a failed answer' in system


def test_infrastructure_failures_are_recognised_by_shape_not_by_words() -> None:
    from autopack_builder.prompt import is_infrastructure_failure

    for infra in (
        "builder Build failed (UNAVAILABLE): anthropic unavailable (529 overloaded_error)",
        "builder Build failed (RESOURCE_EXHAUSTED): anthropic rate limit (429 rate_limit_error)",
        "applier RunChecks gave no answer within 600s",
        "builder Build failed (FAILED_PRECONDITION): replay: no recorded builder response for phase 'p1'",
        "anthropic could not be reached",
    ):
        assert is_infrastructure_failure(infra), infra
    for about_the_code in (
        "pytest: assert response.status == 429, got 200",
        "E   grpc.RpcError: StatusCode.UNAVAILABLE expected from the retry helper",
        "builder Build failed (FAILED_PRECONDITION): phase p1: unusable model output: no JSON",
    ):
        assert not is_infrastructure_failure(about_the_code), about_the_code
