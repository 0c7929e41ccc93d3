"""Prompts: the format's contract (system) and the phase (user), continuation and retries.

The wording carries two lessons from the monolith (seed 000): a cautious model read a
scope path like ``examples/utils/`` as "only that exact path" and answered with an
empty ``files`` array, so directory prefixes are spelled out as ALLOWED and the
deliverables are listed with a hard rule that the array must cover them and must
not be empty. The retry after an empty answer says so even more bluntly.
"""

from __future__ import annotations

import re

from autopack_builder.formats import output_format
from autopack_builder.models import BuildTask, FileOp

DIRECTORY_PREFIX_NOTE = "(directory prefix - creating or modifying files under this path is ALLOWED)"
EXACT_FILE_NOTE = "(exact file)"
DELIVERABLES_HEADING = "## REQUIRED DELIVERABLES"
EMPTY_FILES_RULE = 'An empty "files" array is NOT allowed for this phase.'

SYSTEM_PREAMBLE = """\
You are the Builder of Autopack, an autonomous software engineering system. You implement one \
phase of a plan by writing the files it needs.
"""

COMMON_RULES = """\
Rules for every operation:
- "path" is relative to the repository root, uses forward slashes, never starts with "/" and \
never contains "..".
- Write only paths the scope allows. A scope path ending in "/" is a directory prefix: creating \
or modifying any file under it is ALLOWED. Any other scope path is one exact file.
- Read-only context paths may be read but never written unless they are also in the scope.
- Every path under REQUIRED DELIVERABLES must appear in "files". When deliverables are listed, \
an empty "files" array is a failed answer.
"""

# Failures the model cannot fix (sent to the model they only make it "fix" working code): the
# orchestrator's report of a service call that failed for infrastructure reasons, and the builder's
# own provider and configuration errors. Anchored on those shapes, so a test failure that merely
# mentions "429" or "UNAVAILABLE" still reaches the model.
_INFRASTRUCTURE_FAILURE = re.compile(
    r"^\s*\w+ \w+ (?:failed \((?:UNAVAILABLE|RESOURCE_EXHAUSTED|DEADLINE_EXCEEDED|UNKNOWN|INTERNAL|CANCELLED)\)"
    r"|gave no answer within)"
    r"|^\s*(?:anthropic|openai) (?:unavailable|rate limit|timed out|could not be reached)"
    r"|no usable credentials|no credentials configured|rejected the builder's credentials"
    r"|no provider configured|no recorded \w+ response",
    re.IGNORECASE,
)


def build_system_prompt(format_name: str = "full_file_json") -> str:
    """Preamble, the format's output contract and the common rules; identical per format (cacheable)."""
    return f"{SYSTEM_PREAMBLE}\n{output_format(format_name).contract}\n{COMMON_RULES}"


def is_infrastructure_failure(failure: str) -> bool:
    """True when a previous failure is about providers or services, not about the code written."""
    return bool(_INFRASTRUCTURE_FAILURE.search(failure))


def annotate_scope_path(path: str) -> str:
    """One scope line: directory prefixes are explicitly allowed, other paths are exact files."""
    note = DIRECTORY_PREFIX_NOTE if path.endswith("/") else EXACT_FILE_NOTE
    return f"- {path} {note}"


def _annotate_read_only_path(path: str) -> str:
    note = "(directory prefix - read only)" if path.endswith("/") else "(exact file - read only)"
    return f"- {path} {note}"


def _fence_for(content: str) -> str:
    """A backtick fence longer than any run inside the content, so a file cannot close it early."""
    longest = max((len(run) for run in re.findall(r"`+", content)), default=0)
    return "`" * max(3, longest + 1)


def _deliverables_section(task: BuildTask, emphasize: bool) -> list[str]:
    lines = [DELIVERABLES_HEADING]
    lines += [f"- {path}" for path in task.deliverables]
    lines += [
        "",
        'Your "files" array MUST cover every deliverable above: create it if it does not exist, '
        "modify it if it does.",
        f"{EMPTY_FILES_RULE} It MUST contain at least one file.",
    ]
    if emphasize:
        lines += [
            "",
            'CRITICAL: your previous answer to this request had an EMPTY "files" array and was rejected.',
            "Creating the deliverables is explicitly allowed and required: every deliverable lies in "
            "the scope (directory prefixes allow new files under them).",
            f'Answer again with a "files" array containing all {len(task.deliverables)} '
            "deliverable(s) listed above, each with its complete content.",
        ]
    return lines


def build_user_prompt(
    task: BuildTask,
    *,
    emphasize_deliverables: bool = False,
    format_name: str = "full_file_json",
    completed: tuple[FileOp, ...] = (),
    continue_from: str | None = None,
) -> str:
    """The phase, its scope, context and deliverables.

    ``emphasize_deliverables`` is the empty-files retry; ``completed``/``continue_from`` make a
    continuation prompt after a cut-off answer: the finished operations are listed and must
    not be emitted again, and the answer resumes at ``continue_from``.
    """
    lines = [f"# Phase {task.phase_id} (attempt {task.attempt})", "", "## Goal", task.description.strip()]
    hints = [
        f"Category: {task.category}" if task.category else "",
        f"Complexity: {task.complexity}" if task.complexity else "",
    ]
    if any(hints):
        lines += ["", "; ".join(hint for hint in hints if hint)]
    if task.intention_context.strip():
        lines += [
            "",
            "## Project intention (keep the change aligned with it)",
            task.intention_context.strip(),
        ]

    lines += ["", "## Scope: paths you may write"]
    if task.scope_paths:
        lines += [annotate_scope_path(path) for path in task.scope_paths]
    else:
        lines.append("- (no scope paths given: write only the required deliverables)")
    if task.read_only_paths:
        lines += ["", "## Read-only context paths (read, never write)"]
        lines += [_annotate_read_only_path(path) for path in task.read_only_paths]

    if task.memory_notes:
        lines += ["", "## Notes from earlier phases (most relevant first)"]
        lines += [f"- {note.strip()}" for note in task.memory_notes if note.strip()]

    if task.context_files:
        lines += ["", "## Context files"]
        for context_file in task.context_files:
            label = " (summary, not the full file)" if context_file.summarized else ""
            fence = _fence_for(context_file.content)
            lines += ["", f"### {context_file.path}{label}", fence, context_file.content.rstrip("\n"), fence]

    if task.validation_command:
        lines += [
            "",
            "## Validation",
            "After your change is applied this command must pass (run from the repository root):",
            "`" + " ".join(task.validation_command) + "`",
        ]

    failure = task.previous_failure.strip()
    if failure and not is_infrastructure_failure(failure):
        lines += ["", "## Previous attempt failed", failure, "Fix the cause of this failure."]

    if task.deliverables:
        lines += ["", *_deliverables_section(task, emphasize_deliverables)]

    if completed or continue_from:
        lines += ["", "## Continuation", "Your previous answer was cut off at the output limit."]
        if completed:
            lines += ["These operations were complete and are kept - do NOT emit them again:"]
            lines += [f"- {op.path} ({op.mode})" for op in completed]
        if continue_from:
            lines.append(
                f"Continue from file {continue_from}: write its operation completely, then the remaining ones."
            )
        else:
            lines.append("Continue with the remaining operations only.")

    lines += ["", "## Answer", output_format(format_name).answer_instruction]
    return "\n".join(lines) + "\n"
