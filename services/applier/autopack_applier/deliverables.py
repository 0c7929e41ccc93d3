"""A phase's deliverables against the workspace: present, missing, empty, or somewhere else.

The check reads the workspace as it is, not one attempt's operations, so deliverables
written by an earlier (truncated) attempt still count: validation is cumulative, which is
what lets a phase converge over several attempts. A directory deliverable ("pkg/") needs
at least one file in it; a JSON deliverable must parse and hold something (not ``{}``,
``[]``, ``null`` or ``""``). A missing file whose name exists elsewhere gets a hint
("`src/x.py` exists, `pkg/x.py` expected"), the usual mistake of a model that guessed the
package layout.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from autopack_common.deliverables import sanitize_deliverables

MISSING = "missing"
EMPTY_DIRECTORY = "empty_directory"
INVALID_JSON = "invalid_json"
EMPTY_JSON = "empty_json"
_MAX_HINTS_PER_DELIVERABLE = 3


@dataclass(frozen=True)
class DeliverableProblem:
    deliverable: str
    kind: str
    message: str


@dataclass(frozen=True)
class DeliverablesReport:
    deliverables: tuple[str, ...]
    dropped: tuple[tuple[str, str], ...]
    present: tuple[str, ...]
    problems: tuple[DeliverableProblem, ...]
    hints: tuple[str, ...]
    derived_scope: tuple[str, ...]


def derived_scope(deliverables: Sequence[str]) -> tuple[str, ...]:
    """Write scope of a phase that has none: each deliverable's parent directory.

    A directory deliverable is its own scope; a file at the repository root is only itself
    (its parent would be the whole workspace).
    """
    scope: list[str] = []
    for deliverable in deliverables:
        if deliverable.endswith("/"):
            entry = deliverable
        else:
            parent = PurePosixPath(deliverable).parent.as_posix()
            entry = deliverable if parent == "." else f"{parent}/"
        if entry not in scope:
            scope.append(entry)
    return tuple(scope)


def check_deliverables(
    entries: Sequence[str],
    files: Sequence[str],
    read_bytes: Callable[[str], bytes | None],
    is_secret: Callable[[str], bool] = lambda path: False,
) -> DeliverablesReport:
    """Check sanitised ``entries`` against the workspace's ``files`` (repository-relative).

    A secret deliverable (``is_secret``: an env/secret file, or a link to one) only has to
    exist: parsing it would report on its content.
    """
    sanitized = sanitize_deliverables(entries)
    present_files = set(files)
    by_name: dict[str, list[str]] = defaultdict(list)
    for path in files:
        by_name[PurePosixPath(path).name].append(path)
    present: list[str] = []
    problems: list[DeliverableProblem] = []
    hints: list[str] = []
    for deliverable in sanitized.paths:
        if deliverable.endswith("/"):
            if any(path.startswith(deliverable) for path in files):
                present.append(deliverable)
            else:
                problems.append(
                    DeliverableProblem(
                        deliverable,
                        EMPTY_DIRECTORY,
                        f"{deliverable} has no file (a directory deliverable needs one)",
                    )
                )
            continue
        if deliverable not in present_files:
            elsewhere = sorted(by_name.get(PurePosixPath(deliverable).name, []))[:_MAX_HINTS_PER_DELIVERABLE]
            found = [f"`{path}` exists, `{deliverable}` expected" for path in elsewhere]
            hints.extend(found)
            message = f"{deliverable} does not exist" + (f" ({'; '.join(found)})" if found else "")
            problems.append(DeliverableProblem(deliverable, MISSING, message))
            continue
        if deliverable.lower().endswith(".json") and not is_secret(deliverable):
            problem = _json_problem(deliverable, read_bytes(deliverable))
            if problem is not None:
                problems.append(problem)
                continue
        present.append(deliverable)
    return DeliverablesReport(
        deliverables=sanitized.paths,
        dropped=sanitized.dropped,
        present=tuple(present),
        problems=tuple(problems),
        hints=tuple(hints),
        derived_scope=derived_scope(sanitized.paths),
    )


def _json_problem(deliverable: str, data: bytes | None) -> DeliverableProblem | None:
    try:
        value = json.loads(data or b"")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        return DeliverableProblem(deliverable, INVALID_JSON, f"{deliverable} is not valid JSON ({error})")
    if value in ({}, [], None, ""):
        return DeliverableProblem(
            deliverable, EMPTY_JSON, f"{deliverable} holds no content ({json.dumps(value)})"
        )
    return None
