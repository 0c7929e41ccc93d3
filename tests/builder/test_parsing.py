"""Parsing is robust to fences and prose, salvages truncated answers and rejects unsafe operations."""

from __future__ import annotations

import json

import pytest
from autopack_builder.models import FileOp
from autopack_builder.parsing import OutputFormatError, parse_build_output, path_problem

ANSWER = {
    "summary": "Added slugify.",
    "files": [
        {"path": "pkg/strings.py", "mode": "create", "new_content": "def slugify(s):\n    return s\n"},
        {"path": "pkg/old.py", "mode": "delete"},
        {"path": "README.md", "mode": "modify", "new_content": "# pkg\n"},
    ],
}
EXPECTED = (
    FileOp("pkg/strings.py", "create", "def slugify(s):\n    return s\n"),
    FileOp("pkg/old.py", "delete", ""),
    FileOp("README.md", "modify", "# pkg\n"),
)


@pytest.mark.parametrize(
    "text",
    [
        json.dumps(ANSWER),
        "```json\n" + json.dumps(ANSWER, indent=2) + "\n```\n",
        "Here is the change you asked for:\n\n```\n" + json.dumps(ANSWER) + "\n```\nLet me know!",
        "Sure. " + json.dumps(ANSWER) + " That is all.",
    ],
    ids=["plain", "json-fence", "prose-and-fence", "prose-around"],
)
def test_answer_is_found_inside_fences_and_prose(text: str) -> None:
    parsed = parse_build_output(text)

    assert parsed.operations == EXPECTED
    assert parsed.summary == "Added slugify."
    assert not parsed.salvaged


def test_files_before_summary_and_raw_newlines_in_strings() -> None:
    text = (
        '{"files": [{"path": "a.py", "mode": "create", "new_content": "x = 1\n\ty = 2\n"}], "summary": "s"}'
    )

    parsed = parse_build_output(text)

    assert parsed.operations == (FileOp("a.py", "create", "x = 1\n\ty = 2\n"),)
    assert parsed.summary == "s"


def test_truncated_answer_keeps_complete_files_and_drops_the_cut_one() -> None:
    full = json.dumps(ANSWER)
    cut = full[: full.index('"README.md"') + 30]  # inside the third file object

    parsed = parse_build_output(cut, allow_partial=True)

    assert parsed.operations == EXPECTED[:2]
    assert parsed.summary == "Added slugify."
    assert parsed.salvaged


def test_truncated_inside_fence_after_prose() -> None:
    full = "I'll write it now.\n```json\n" + json.dumps(ANSWER, indent=2)
    cut = full[: full.index("def slugify") + 5]

    parsed = parse_build_output(cut, allow_partial=True)

    assert parsed.operations == ()
    assert parsed.salvaged


def test_truncated_before_any_json_is_an_empty_salvage() -> None:
    assert parse_build_output("Let me think about th", allow_partial=True).operations == ()


def test_invalid_json_that_ended_normally_is_an_error() -> None:
    cut = json.dumps(ANSWER)[:-20]

    with pytest.raises(OutputFormatError) as caught:
        parse_build_output(cut)

    assert caught.value.reason == "invalid_json"


def test_no_json_at_all_is_an_error() -> None:
    with pytest.raises(OutputFormatError) as caught:
        parse_build_output("I could not find anything to change.")

    assert caught.value.reason == "no_json"


def test_wrapper_with_extra_leading_keys() -> None:
    text = json.dumps({"reasoning": "small change", **ANSWER})

    assert parse_build_output(text).operations == EXPECTED
    with pytest.raises(OutputFormatError) as caught:
        parse_build_output('{"reasoning": "nothing"}')
    assert caught.value.reason == "no_files"


def test_ndjson_lines_are_accepted() -> None:
    text = "\n".join(json.dumps(item) for item in ANSWER["files"])  # type: ignore[union-attr]

    assert parse_build_output(text).operations == EXPECTED


def test_empty_files_array_parses_to_no_operations() -> None:
    parsed = parse_build_output('{"files": [], "summary": "Nothing to do."}')

    assert parsed.operations == ()
    assert parsed.summary == "Nothing to do."


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ({"path": "/etc/passwd", "mode": "modify", "new_content": "x"}, "relative to the repository root"),
        ({"path": "C:/dev/a.py", "mode": "create", "new_content": "x"}, "relative to the repository root"),
        ({"path": "src/../../a.py", "mode": "create", "new_content": "x"}, 'must not contain ".."'),
        ({"path": "src\\a.py", "mode": "create", "new_content": "x"}, "forward slashes"),
        ({"path": "src/", "mode": "create", "new_content": "x"}, "not a directory"),
        ({"path": "src//a.py", "mode": "create", "new_content": "x"}, "normalized"),
        ({"path": "", "mode": "create", "new_content": "x"}, "non-empty"),
        ({"path": "a.py", "mode": "patch", "new_content": "x"}, "must be one of create, modify, delete"),
        ({"path": "a.py", "mode": "create"}, "required string for create"),
        ({"path": "a.py", "mode": "delete", "new_content": "x"}, "must be empty for delete"),
        ("a.py", "must be an object"),
    ],
)
def test_unsafe_or_malformed_operations_are_rejected(item: object, message: str) -> None:
    text = json.dumps({"files": [{"path": "ok.py", "mode": "create", "new_content": ""}, item]})

    with pytest.raises(OutputFormatError) as caught:
        parse_build_output(text)

    assert caught.value.reason == "invalid_operation"
    assert caught.value.problem.startswith("files[1]")
    assert message in caught.value.problem


def test_salvaged_operations_are_validated_too() -> None:
    text = '{"files": [{"path": "../x.py", "mode": "create", "new_content": "x"}, {"path": "b.py", "mo'

    with pytest.raises(OutputFormatError, match=r"files\[0\]\.path"):
        parse_build_output(text, allow_partial=True)


def test_duplicate_paths_are_rejected() -> None:
    item = {"path": "a.py", "mode": "create", "new_content": "x"}

    with pytest.raises(OutputFormatError, match="appears more than once"):
        parse_build_output(json.dumps({"files": [item, item]}))


def test_path_problem_admits_directory_prefixes_only_when_asked() -> None:
    assert path_problem("src/pkg/") == "must name a file, not a directory"
    assert path_problem("src/pkg/", allow_directory=True) is None
    assert path_problem("src/pkg/mod.py") is None
    assert path_problem("../pkg/", allow_directory=True) == 'must not contain ".."'
