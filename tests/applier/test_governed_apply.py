"""Governed apply over a real gRPC channel: edits, approvals, deletion tiers, deliverables,
savepoint retention, protected untracked files and workspace cleanup."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from autopack.applier.v1 import applier_pb2, applier_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .conftest import CREATE, DELETE, EDIT, MODIFY, git, make_repo, serve

TIMEOUT = 30
MAIN = "".join(f"value_{number} = {number}\n" for number in range(1, 41))
SOURCE = {
    "app/main.py": MAIN,
    "app/long.txt": "".join(f"row {number}\n" for number in range(1, 161)),
    "README.md": "# demo\n",
}


@pytest.fixture
def stub(tmp_path: Path, store: ApplierStore) -> Iterator[applier_pb2_grpc.ApplierServiceStub]:
    with serve(
        ApplierSettings(
            AUTOPACK_APPLIER_WORKSPACE_ROOT=tmp_path / "workspaces",
            AUTOPACK_APPLIER_ALLOWED_PATHS=".autopack/reports/",
        ),
        store,
    ) as stub:
        yield stub


@pytest.fixture
def workspace(stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path) -> Path:
    source = make_repo(tmp_path / "source", SOURCE)
    reply = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-1", source_repo=str(source)), timeout=TIMEOUT
    )
    return Path(reply.workspace_path)


def apply(
    stub: applier_pb2_grpc.ApplierServiceStub,
    *operations: common_pb2.FileOperation,
    paths: tuple[str, ...] = ("./",),
    deliverables: tuple[str, ...] = (),
) -> applier_pb2.ApplyResponse:
    return stub.Apply(
        applier_pb2.ApplyRequest(
            run_id="run-1",
            phase_id="p1",
            scope=common_pb2.Scope(paths=list(paths)),
            operations=operations,
            attempt=1,
            deliverables=list(deliverables),
        ),
        timeout=TIMEOUT,
    )


def blocked(
    stub: applier_pb2_grpc.ApplierServiceStub, *operations: common_pb2.FileOperation
) -> error_details_pb2.ErrorInfo:
    with pytest.raises(grpc.RpcError) as error:
        apply(stub, *operations)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION, error.value.details()
    status = rpc_status.from_call(error.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    return info


def approve(
    stub: applier_pb2_grpc.ApplierServiceStub, request_id: str, *, deny: bool = False
) -> applier_pb2.ApprovalRequest:
    return stub.Approve(
        applier_pb2.ApproveRequest(request_id=request_id, decided_by="alice", note="ok", deny=deny),
        timeout=TIMEOUT,
    ).request


# -- edits -------------------------------------------------------------------------------


def test_edits_of_every_kind_land_in_one_savepoint(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    readme_sha = hashlib.sha256((workspace / "README.md").read_bytes()).hexdigest()
    diff = "--- a/app/long.txt\n+++ b/app/long.txt\n@@ -9,3 +9,3 @@\n row 9\n-row 10\n+row ten\n row 11\n"
    reply = apply(
        stub,
        common_pb2.FileOperation(
            path="app/main.py",
            mode=EDIT,
            edits=[
                common_pb2.Edit(
                    line=common_pb2.LineEdit(
                        action=common_pb2.LINE_EDIT_ACTION_REPLACE,
                        start_line=2,
                        end_line=3,
                        content="value_2 = 20",
                    )
                ),
                common_pb2.Edit(
                    line=common_pb2.LineEdit(action=common_pb2.LINE_EDIT_ACTION_APPEND, content="total = 0\n")
                ),
            ],
        ),
        common_pb2.FileOperation(
            path="README.md",
            mode=EDIT,
            base_sha256=readme_sha,
            edits=[
                common_pb2.Edit(
                    search_replace=common_pb2.SearchReplace(search="# demo\n", replace="# Demo\n")
                )
            ],
        ),
        common_pb2.FileOperation(path="app/long.txt", mode=EDIT, edits=[common_pb2.Edit(unified_diff=diff)]),
    )
    assert reply.changed_paths == ["README.md", "app/long.txt", "app/main.py"]
    main = (workspace / "app/main.py").read_text().splitlines()
    assert main[:3] == ["value_1 = 1", "value_2 = 20", "value_4 = 4"] and main[-1] == "total = 0"
    assert (workspace / "README.md").read_text() == "# Demo\n"
    assert "row ten\n" in (workspace / "app/long.txt").read_text()
    assert git(workspace, "status", "--porcelain") == ""


def test_a_diff_written_against_an_older_version_merges_three_way(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    base_blob = git(workspace, "rev-parse", "HEAD:app/long.txt")
    moved_on = SOURCE["app/long.txt"].replace("row 7\n", "row seven\n")
    apply(stub, common_pb2.FileOperation(path="app/long.txt", mode=MODIFY, new_content=moved_on))
    hunk = "@@ -7,7 +7,7 @@\n row 7\n row 8\n row 9\n-row 10\n+row ten\n row 11\n row 12\n row 13\n"
    headers = "--- a/app/long.txt\n+++ b/app/long.txt\n"

    def edit(diff: str) -> common_pb2.FileOperation:
        return common_pb2.FileOperation(
            path="app/long.txt", mode=EDIT, edits=[common_pb2.Edit(unified_diff=diff)]
        )

    # "row 7" is context the file no longer has: without the base blob the diff is stale...
    with pytest.raises(grpc.RpcError) as error:
        apply(stub, edit(headers + hunk))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "operations[0].edits[0]: 'app/long.txt': unified_diff does not apply" in (
        error.value.details() or ""
    )
    # ...with it (the "index" line of a git diff), a 3-way merge applies it.
    apply(stub, edit(f"index {base_blob[:12]}..{'0' * 12} 100644\n" + headers + hunk))
    text = (workspace / "app/long.txt").read_text()
    assert "row seven\n" in text and "row ten\n" in text and "row 10\n" not in text
    assert git(workspace, "status", "--porcelain") == ""


# -- approvals ---------------------------------------------------------------------------


def test_an_approved_protected_write_goes_through_once(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    operation = common_pb2.FileOperation(path="config/.env", mode=CREATE, new_content="MODE=dev\n")
    info = blocked(stub, operation)
    request_id = info.metadata["approval_request_id"]
    assert blocked(stub, operation).metadata["approval_request_id"] == request_id  # not duplicated
    # Another change is not covered by the approval of this one.
    other = common_pb2.FileOperation(path="config/.env", mode=CREATE, new_content="MODE=prod\n")
    assert blocked(stub, other).metadata["approval_request_id"] != request_id
    decided = approve(stub, request_id)
    assert decided.status == applier_pb2.APPROVAL_STATUS_APPROVED and decided.decided_by == "alice"
    assert decided.paths == ["config/.env"] and decided.risk_level == "high"
    reply = apply(stub, operation)
    assert reply.approval_request_id == request_id
    assert (workspace / "config/.env").read_text() == "MODE=dev\n"
    assert any("approved by alice" in notice for notice in reply.notices)
    listed = stub.ListApprovalRequests(
        applier_pb2.ListApprovalRequestsRequest(run_id="run-1"), timeout=TIMEOUT
    )
    statuses = {item.request_id: item.status for item in listed.requests}
    assert statuses[request_id] == applier_pb2.APPROVAL_STATUS_CONSUMED
    # Once: the same change to the protected file needs a new approval.
    again = common_pb2.FileOperation(path="config/.env", mode=MODIFY, new_content="MODE=dev2\n")
    assert blocked(stub, again).metadata["approval_request_id"] != request_id
    with pytest.raises(grpc.RpcError) as error:
        approve(stub, request_id)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "consumed" in (
        error.value.details() or ""
    )


def test_a_protected_file_left_as_it_is_needs_no_approval(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    operation = common_pb2.FileOperation(path="config/.env", mode=CREATE, new_content="MODE=dev\n")
    approve(stub, blocked(stub, operation).metadata["approval_request_id"])
    apply(stub, operation)
    # Retrying the same CREATE is a no-op: nothing protected changes, nothing to approve.
    assert apply(stub, operation).changed_paths == []


def test_a_denied_request_keeps_refusing_without_asking_again(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    operation = common_pb2.FileOperation(path="data/app.db", mode=CREATE, new_content="x\n")
    request_id = blocked(stub, operation).metadata["approval_request_id"]
    assert approve(stub, request_id, deny=True).status == applier_pb2.APPROVAL_STATUS_DENIED
    info = blocked(stub, operation)
    assert (
        info.metadata["requires_approval"] == "false" and info.metadata["approval_request_id"] == request_id
    )
    assert not (workspace / "data").exists()


@pytest.mark.parametrize(
    ("request_id", "decided_by", "code"),
    [
        ("", "alice", grpc.StatusCode.INVALID_ARGUMENT),
        ("nope", "alice", grpc.StatusCode.NOT_FOUND),
        ("nope", " ", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
def test_approve_validates_its_input(
    stub: applier_pb2_grpc.ApplierServiceStub, request_id: str, decided_by: str, code: grpc.StatusCode
) -> None:
    with pytest.raises(grpc.RpcError) as error:
        stub.Approve(
            applier_pb2.ApproveRequest(request_id=request_id, decided_by=decided_by), timeout=TIMEOUT
        )
    assert error.value.code() == code


def test_an_allowed_subtree_beats_a_protected_prefix(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    reply = apply(
        stub, common_pb2.FileOperation(path=".autopack/reports/r.md", mode=CREATE, new_content="# r\n")
    )
    assert reply.changed_paths == [".autopack/reports/r.md"]
    info = blocked(
        stub, common_pb2.FileOperation(path=".autopack/state.json", mode=CREATE, new_content="{}\n")
    )
    assert info.reason == "protected_path_violation" and info.metadata["risk_level"] == "medium"


# -- deletion tiers ----------------------------------------------------------------------


def test_deletion_tiers_tag_then_notify(stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path) -> None:
    small = apply(
        stub, common_pb2.FileOperation(path="app/main.py", mode=MODIFY, new_content=MAIN.split("value_11")[0])
    )
    assert small.net_lines_deleted == 30 and small.deletion_savepoint_tag == "" and list(small.notices) == []
    below = apply(stub, common_pb2.FileOperation(path="app/main.py", mode=DELETE))
    assert below.net_lines_deleted == 10 and below.deletion_savepoint_tag == ""
    notified = apply(stub, common_pb2.FileOperation(path="app/long.txt", mode=DELETE))
    assert notified.net_lines_deleted == 160
    tag = notified.deletion_savepoint_tag
    assert tag.startswith("autopack/save-before-deletion/run-1/")
    assert git(workspace, "rev-parse", f"{tag}^{{commit}}") == notified.previous_savepoint
    assert any("deletes 160 net lines (notify tier" in notice for notice in notified.notices)


def test_a_savepoint_tag_marks_a_fifty_line_deletion(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    reply = apply(
        stub,
        common_pb2.FileOperation(
            path="app/long.txt", mode=MODIFY, new_content="".join(f"row {n}\n" for n in range(1, 101))
        ),
    )
    assert reply.net_lines_deleted == 60 and reply.deletion_savepoint_tag and list(reply.notices) == []


# -- deliverables and scope ----------------------------------------------------------------


def test_deliverables_derive_the_scope_and_are_checked_cumulatively(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    deliverables = ("pkg/util.py (new)", " ./pkg/data.json", "docs/")
    reply = apply(
        stub,
        common_pb2.FileOperation(path="pkg/util.py", mode=CREATE, new_content="X = 1\n"),
        common_pb2.FileOperation(
            path="pkg/helper.py", mode=CREATE, new_content="Y = 2\n"
        ),  # beside a deliverable
        paths=(),
        deliverables=deliverables,
    )
    assert any("the write scope is the deliverables' directories (pkg/, docs/)" in n for n in reply.notices)
    with pytest.raises(grpc.RpcError) as error:
        apply(
            stub,
            common_pb2.FileOperation(path="app/x.py", mode=CREATE, new_content="\n"),
            paths=(),
            deliverables=deliverables,
        )
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "outside the scope" in (
        error.value.details() or ""
    )

    check = stub.CheckDeliverables(
        applier_pb2.CheckDeliverablesRequest(
            run_id="run-1", deliverables=[*deliverables, "app/util.py", "Prose entry"]
        ),
        timeout=TIMEOUT,
    )
    assert list(check.deliverables) == ["pkg/util.py", "pkg/data.json", "docs/", "app/util.py"]
    assert list(check.present) == ["pkg/util.py"]
    assert [(p.deliverable, p.kind) for p in check.problems] == [
        ("pkg/data.json", "missing"),
        ("docs/", "empty_directory"),
        ("app/util.py", "missing"),
    ]
    assert list(check.hints) == ["`pkg/util.py` exists, `app/util.py` expected"]
    assert list(check.dropped) == ["'Prose entry' is prose, not a path"]
    assert list(check.derived_scope) == ["pkg/", "docs/", "app/"]

    # A later attempt writes only what is still missing: the earlier one's files count.
    apply(
        stub,
        common_pb2.FileOperation(path="pkg/data.json", mode=CREATE, new_content='{"k": 1}\n'),
        common_pb2.FileOperation(path="docs/index.md", mode=CREATE, new_content="# docs\n"),
        paths=(),
        deliverables=deliverables,
    )
    check = stub.CheckDeliverables(
        applier_pb2.CheckDeliverablesRequest(run_id="run-1", deliverables=list(deliverables)), timeout=TIMEOUT
    )
    assert list(check.present) == ["pkg/util.py", "pkg/data.json", "docs/"] and not check.problems


# -- savepoints, protected untracked files, cleanup ----------------------------------------


def test_only_the_last_savepoints_can_be_restored(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    base = git(workspace, "rev-parse", "HEAD")
    savepoints = [
        apply(
            stub, common_pb2.FileOperation(path="README.md", mode=MODIFY, new_content=f"# v{n}\n")
        ).savepoint
        for n in range(4)
    ]
    with pytest.raises(grpc.RpcError) as error:
        stub.Rollback(applier_pb2.RollbackRequest(run_id="run-1", savepoint=savepoints[0]), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.NOT_FOUND and "pruned by savepoint retention" in (
        error.value.details() or ""
    )
    assert (
        stub.Rollback(
            applier_pb2.RollbackRequest(run_id="run-1", savepoint=savepoints[1]), timeout=TIMEOUT
        ).head
        == savepoints[1]
    )
    assert (
        stub.Rollback(applier_pb2.RollbackRequest(run_id="run-1", savepoint=base), timeout=TIMEOUT).head
        == base
    )


def test_a_rollback_never_removes_protected_untracked_files(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    first = apply(stub, common_pb2.FileOperation(path="README.md", mode=MODIFY, new_content="# v1\n"))
    # What a check might leave behind: a local env file, a database, scratch output.
    (workspace / ".env").write_text("TOKEN=keep\n")
    (workspace / "var").mkdir()
    (workspace / "var/local.sqlite3").write_bytes(b"db")
    (workspace / "var/scratch.txt").write_text("tmp\n")
    (workspace / "junk.txt").write_text("tmp\n")
    stub.Rollback(
        applier_pb2.RollbackRequest(run_id="run-1", savepoint=first.previous_savepoint), timeout=TIMEOUT
    )
    assert (workspace / ".env").read_text() == "TOKEN=keep\n"
    assert (workspace / "var/local.sqlite3").read_bytes() == b"db"
    assert not (workspace / "var/scratch.txt").exists() and not (workspace / "junk.txt").exists()
    assert (workspace / "README.md").read_text() == "# demo\n"


def test_protected_files_a_check_left_stay_out_of_savepoints(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    first = apply(stub, common_pb2.FileOperation(path="README.md", mode=MODIFY, new_content="# v1\n"))
    (workspace / "test.sqlite3").write_bytes(b"db")  # what a test suite might leave behind
    (workspace / "notes.txt").write_text("scratch\n")
    second = apply(stub, common_pb2.FileOperation(path="README.md", mode=MODIFY, new_content="# v2\n"))
    assert list(second.changed_paths) == ["README.md", "notes.txt"]
    assert "test.sqlite3" not in git(workspace, "ls-files")
    stub.Rollback(
        applier_pb2.RollbackRequest(run_id="run-1", savepoint=first.previous_savepoint), timeout=TIMEOUT
    )
    assert (workspace / "test.sqlite3").read_bytes() == b"db" and not (workspace / "notes.txt").exists()


def test_cleanup_removes_a_finished_workspace_but_not_protected_files(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    apply(stub, common_pb2.FileOperation(path="README.md", mode=MODIFY, new_content="# v1\n"))
    (workspace / ".env.local").write_text("TOKEN=keep\n")
    with pytest.raises(grpc.RpcError) as error:
        stub.CleanupWorkspace(applier_pb2.CleanupWorkspaceRequest(run_id="run-1"), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and ".env.local" in (
        error.value.details() or ""
    )
    assert (workspace / "README.md").exists()
    (workspace / ".env.local").unlink()
    reply = stub.CleanupWorkspace(applier_pb2.CleanupWorkspaceRequest(run_id="run-1"), timeout=TIMEOUT)
    assert reply.workspace_path == str(workspace) and reply.savepoints_removed == 1
    assert not workspace.exists()
    with pytest.raises(grpc.RpcError) as error:
        stub.ReadFiles(applier_pb2.ReadFilesRequest(run_id="run-1", paths=["README.md"]), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "cleaned up" in (
        error.value.details() or ""
    )
