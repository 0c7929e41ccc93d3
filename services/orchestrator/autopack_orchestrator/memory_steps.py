"""What the orchestrator asks of memory, and what it leaves there for later runs.

- The run's **project key** (``project.py``) names the repository, so a later run of the same
  repository recalls earlier summaries, fixes and decisions (``Recall``) into its builder prompt.
- The run's **workspace index**: the applier's workspace, read through the applier's
  ``ReadFiles`` (so memory and applier need not share a disk), recorded with ``IndexWorkspace``
  by content hash after ``PrepareWorkspace`` and, once a change was applied (kept or rolled
  back), again before the next selection; then
  ``SelectContext(workspace=...)`` chooses among all of its files. Candidates (the scoped files
  sent in full) remain the fallback when memory answers UNIMPLEMENTED or fails.
- **Goal drift** of each build's summary against the run's intention (``CheckDrift``).

Everything here except context selection is best effort: memory being degraded or down
weakens later context, it never fails a phase.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from autopack.applier.v1 import applier_pb2
from autopack.builder.v1 import builder_pb2
from autopack.common.v1 import common_pb2
from autopack.memory.v1 import memory_pb2
from autopack_common.content import text_sha256

from autopack_orchestrator.events import EventType, State
from autopack_orchestrator.plan import PhaseSpec
from autopack_orchestrator.project import project_key
from autopack_orchestrator.settings import OrchestratorSettings
from autopack_orchestrator.store import AttemptRecord, PhaseRecord, RunRecord, RunStore

log = logging.getLogger(__name__)

MAX_NOTE_BYTES = 2048
RECALLED_NOTES = 5
WORKSPACE_ROOT = "./"
# Contents read and sent per IndexWorkspace call: well under the 64 MiB message limit.
INDEX_BATCH_BYTES = 8 * 1024 * 1024


@dataclass(frozen=True)
class PhaseOutcome:
    """What a finished phase leaves for later runs (built by the executor from its last attempt)."""

    phase: PhaseRecord
    state: State
    summary: str
    deciding_attempt: AttemptRecord | None
    changed_paths: Sequence[str] = ()


def _utf8(text: str, limit: int = MAX_NOTE_BYTES) -> str:
    return text.encode("utf-8")[:limit].decode("utf-8", errors="ignore")


def _batches(paths: Sequence[str], sizes: dict[str, int], limit: int) -> Iterable[list[str]]:
    """``paths`` in order, cut into lists of at most ``limit`` bytes (a larger file goes alone)."""
    batch: list[str] = []
    total = 0
    for path in paths:
        size = sizes.get(path, 0)
        if batch and total + size > limit:
            yield batch
            batch, total = [], 0
        batch.append(path)
        total += size
    if batch:
        yield batch


def _kind_name(kind: int) -> str:
    return memory_pb2.RecordKind.Name(kind).removeprefix("RECORD_KIND_").lower().replace("_", " ")


def recalled_note(hit: memory_pb2.RecordHit) -> str:
    """One earlier run's record as a prompt note that says where it comes from."""
    record = hit.record
    origin = f"run {record.run_id}" + (f", phase {record.phase_id}" if record.phase_id else "")
    return _utf8(f"Earlier {_kind_name(record.kind)} ({origin}): {record.text}")


def project_records(run: RunRecord, outcome: PhaseOutcome) -> list[memory_pb2.ProjectRecord]:
    """The lessons of one phase: summary, outcome, the fix after failures, recovery decisions."""
    phase, spec = outcome.phase, outcome.phase.spec

    def record(kind: int, text: str, **metadata: str) -> memory_pb2.ProjectRecord:
        return memory_pb2.ProjectRecord(
            kind=kind,
            text=_utf8(text),
            run_id=run.run_id,
            phase_id=spec.phase_id,
            metadata={"outcome": outcome.state.value, **metadata},
        )

    attempts = phase.current_attempts()
    records = [
        record(memory_pb2.RECORD_KIND_RUN_SUMMARY, outcome.summary),
        record(
            memory_pb2.RECORD_KIND_TASK_OUTCOME,
            f"Task '{spec.description}' ended {outcome.state.value} after {len(attempts)} attempt(s)"
            + (f"; deliverables: {', '.join(spec.deliverables)}" if spec.deliverables else "")
            + (
                f"; checks {outcome.deciding_attempt.check_verdict}"
                if outcome.deciding_attempt and outcome.deciding_attempt.check_verdict
                else ""
            ),
        ),
    ]
    failures = [attempt for attempt in attempts if attempt.counted and attempt.fingerprint]
    if outcome.state is State.COMPLETE and failures:
        fixes = [f"{item.get('pattern')}: {item.get('hint')}" for item in phase.mitigations]
        if phase.hint:
            fixes.append(f"doctor hint: {phase.hint}")
        if phase.original_description:
            fixes.append(f"re-planned as: {spec.description}")
        fix = "; ".join(fixes) or "a new attempt"
        changed = f" (changed {', '.join(outcome.changed_paths)})" if outcome.changed_paths else ""
        for failure in failures:
            records.append(
                record(
                    memory_pb2.RECORD_KIND_ERROR_PATTERN,
                    f"Failure {failure.fingerprint} in '{spec.description}' was fixed by {fix}{changed}",
                    fingerprint=text_sha256(failure.fingerprint)[:16],
                )
            )
    decisions = [f"mitigation {item.get('pattern')}: {item.get('description')}" for item in phase.mitigations]
    if phase.original_description:
        decisions.append(f"re-planned '{phase.original_description}' as '{spec.description}'")
    if phase.hint:
        decisions.append(f"doctor hint: {phase.hint}")
    if decisions:
        records.append(
            record(
                memory_pb2.RECORD_KIND_DECISION_LOG,
                f"Decisions for '{spec.description}' (phase {outcome.state.value}): " + "; ".join(decisions),
            )
        )
    return records


class MemorySteps:
    """The orchestrator's memory calls for one process; ``call`` is the executor's RPC wrapper."""

    def __init__(
        self,
        clients: Any,
        settings: OrchestratorSettings,
        store: RunStore,
        call: Callable[..., Any],
        step_failed: type[Exception],
    ) -> None:
        self._clients = clients
        self._settings = settings
        self._store = store
        self._call = call
        self._step_failed = step_failed
        self._projects: dict[str, str] = {}
        self._workspaces: dict[str, str] = {}
        # Runs whose workspace may differ from its index (a change was applied, perhaps rolled back).
        self._stale: set[str] = set()

    def project(self, run: RunRecord) -> str:
        """The run's project key: the plan's, or derived once per process from its source."""
        if run.run_id not in self._projects:
            self._projects[run.run_id] = project_key(run.source_repo, run.project)
        return self._projects[run.run_id]

    def _memory(self, method: str, request: Any) -> Any:
        return self._call(
            "memory",
            method,
            getattr(self._clients.memory, method),
            request,
            self._settings.rpc_timeout_seconds,
        )

    def _read(
        self, run_id: str, paths: Iterable[str], hashes_only: bool = False
    ) -> applier_pb2.ReadFilesResponse:
        return self._call(
            "applier",
            "ReadFiles",
            self._clients.applier.ReadFiles,
            applier_pb2.ReadFilesRequest(run_id=run_id, paths=list(paths), hashes_only=hashes_only),
            self._settings.rpc_timeout_seconds,
        )

    # -- the workspace index ----------------------------------------------------------------

    def index_workspace(self, run_id: str, workspace: str) -> str:
        """Bring memory's index of the applier's workspace up to date; the event text says how.

        The applier lists the files with their content hashes (secret files withheld, binaries
        skipped); memory answers which contents it does not hold yet, and only those are read
        and sent, in batches of about ``INDEX_BATCH_BYTES``. After a change that is the changed
        files; for a repository indexed by an earlier run, nothing. Failing leaves the run on
        the candidate path (``context_by_reference`` off has the same effect).
        """
        if not self._settings.context_by_reference:
            return ""
        try:
            listed = self._read(run_id, [WORKSPACE_ROOT], hashes_only=True).files
            response = self._memory(
                "IndexWorkspace",
                memory_pb2.IndexWorkspaceRequest(
                    workspace=workspace,
                    replace=True,
                    files=[
                        memory_pb2.WorkspaceFile(path=f.path, content_sha256=f.content_sha256) for f in listed
                    ],
                ),
            )
            sizes = {f.path: f.size_bytes for f in listed}
            sent = 0
            for batch in _batches(list(response.needs_content), sizes, INDEX_BATCH_BYTES):
                read = self._read(run_id, batch).files
                self._memory(
                    "IndexWorkspace",
                    memory_pb2.IndexWorkspaceRequest(
                        workspace=workspace,
                        files=[
                            memory_pb2.WorkspaceFile(
                                path=f.path, content_sha256=f.content_sha256, content=f.content
                            )
                            for f in read
                        ],
                    ),
                )
                sent += len(read)
        except self._step_failed as failure:
            self._workspaces.pop(run_id, None)
            log.warning("workspace of %s not indexed: %s", run_id, failure)
            return f"memory: workspace not indexed, context from candidates: {failure}"
        self._workspaces[run_id] = workspace
        self._stale.discard(run_id)
        return (
            f"memory: workspace indexed, {len(listed)} file(s): {response.updated + sent} new or changed, "
            f"{response.removed} removed, content sent for {sent}"
        )

    # -- what the builder is told -----------------------------------------------------------

    def recall(self, run: RunRecord, spec: PhaseSpec) -> list[str]:
        """Earlier runs' records of this project that match the phase, as prompt notes."""
        try:
            response = self._memory(
                "Recall",
                memory_pb2.RecallRequest(
                    project=self.project(run),
                    query=spec.description,
                    limit=RECALLED_NOTES,
                    exclude_run_id=run.run_id,
                ),
            )
        except self._step_failed as failure:
            log.warning("recall for %s/%s failed: %s", run.run_id, spec.phase_id, failure)
            return []
        return [recalled_note(hit) for hit in response.hits]

    def select_context(
        self,
        run: RunRecord,
        spec: PhaseSpec,
        files: Sequence[applier_pb2.WorkspaceFile],
        step: Callable[[str], None],
    ) -> list[common_pb2.ContextFile]:
        """The files the builder sees: by reference to the indexed workspace, else from ``files``."""
        query = spec.description
        if spec.deliverables:
            query += "\nDeliverables: " + ", ".join(spec.deliverables)
        request = memory_pb2.SelectContextRequest(
            run_id=run.run_id,
            phase_id=spec.phase_id,
            query=query,
            token_budget=self._settings.context_budget_tokens,
        )
        by_path = {f.path: f for f in files}
        workspace = self._workspaces.get(run.run_id)
        selection = None
        source = f"{len(files)} candidate(s)"
        if workspace and run.run_id in self._stale:
            step(self.index_workspace(run.run_id, workspace))  # a change applied since, kept or rolled back
            workspace = self._workspaces.get(run.run_id)
        if workspace:
            by_reference = memory_pb2.SelectContextRequest()
            by_reference.CopyFrom(request)
            by_reference.workspace = workspace
            by_reference.pinned_paths.extend(p for p in spec.deliverables if p in by_path)
            by_reference.scope_paths.extend([*spec.scope_paths, *spec.read_only_context])
            try:
                selection = self._memory("SelectContext", by_reference)
                source = "the indexed workspace"
            except self._step_failed as failure:
                step(f"context: by reference failed, using candidates: {failure}")
        if selection is None:
            if not files:
                return []
            request.candidates.extend(
                memory_pb2.CandidateFile(path=f.path, content=f.content, pinned=f.path in spec.deliverables)
                for f in files
            )
            selection = self._memory("SelectContext", request)
        unread = [kept.path for kept in selection.kept if kept.path not in by_path]
        if unread:
            by_path.update({f.path: f for f in self._read(run.run_id, unread).files})
        context = [
            common_pb2.ContextFile(
                path=kept.path, content=by_path[kept.path].content, summarized=by_path[kept.path].truncated
            )
            for kept in selection.kept
            if kept.path in by_path
        ]
        context += [
            common_pb2.ContextFile(path=outline.path, content=outline.summary, summarized=True)
            for outline in selection.summarized
            if outline.summary
        ]
        mode = memory_pb2.SelectionMode.Name(selection.mode).removeprefix("SELECTION_MODE_").lower()
        step(
            f"context: kept {len(context) - len(selection.summarized)} file(s) and "
            f"{len(selection.summarized)} outline(s) from {source}, {selection.used_tokens} tokens ({mode})"
        )
        return context

    # -- after the build, after the phase ---------------------------------------------------

    def check_drift(self, run_id: str, intention: str, build: builder_pb2.BuildResponse) -> tuple[str, bool]:
        """(event text, blocking) for the build's change against the run's intention.

        The intention is sent inline, so the check does not depend on Qdrant holding it. Called
        right before the change is applied: the workspace index is refreshed before the next selection.
        """
        self._stale.add(run_id)
        paths = ", ".join(op.path for op in build.operations)
        change = _utf8(f"{build.summary.strip()}\nFiles: {paths}", 4 * MAX_NOTE_BYTES)
        try:
            response = self._memory(
                "CheckDrift",
                memory_pb2.CheckDriftRequest(run_id=run_id, intention=intention, change_summary=change),
            )
        except self._step_failed as failure:
            return f"drift: not checked ({failure})", False
        verdict = memory_pb2.DriftVerdict.Name(response.verdict).removeprefix("DRIFT_VERDICT_").lower()
        figures = f"similarity {response.similarity:.2f}, threshold {response.threshold:.2f}"
        if response.verdict == memory_pb2.DRIFT_VERDICT_BLOCKING:
            return f"goal drift (blocking): the change drifted from the run's intention ({figures})", True
        if response.verdict == memory_pb2.DRIFT_VERDICT_ADVISORY:
            return (
                f"goal drift (advisory): the change may have drifted from the run's intention ({figures})",
                False,
            )
        return f"drift: {verdict} ({figures})", False

    def remember_phase(self, run: RunRecord, outcome: PhaseOutcome) -> None:
        """Store the phase's records under the project key (best effort) and say so in an event."""
        project = self.project(run)
        stored, unindexed, errors = 0, 0, []
        for record in project_records(run, outcome):
            record.project = project
            if not record.text.strip():
                continue
            try:
                response = self._memory("Remember", memory_pb2.RememberRequest(record=record))
            except self._step_failed as failure:
                errors.append(str(failure))
                continue
            stored += 1
            unindexed += 0 if response.indexed else 1
        message = f"memory: {stored} project record(s) stored for {project}"
        if unindexed:
            message += (
                f" ({unindexed} without vectors, embeddings off or Qdrant unavailable: recalled lexically)"
            )
        if errors:
            log.warning(
                "project records of %s/%s not stored: %s", run.run_id, outcome.phase.phase_id, errors[0]
            )
            message += f"; {len(errors)} not stored: {errors[0]}"
        self._store.append_event(run.run_id, EventType.STEP, message, phase_id=outcome.phase.phase_id)
