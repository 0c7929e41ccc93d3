"""Hostile Applies over a real gRPC channel: each refused with a precise reason, nothing changed.

"Nothing changed" is checked byte for byte over the whole workspace directory, .git included
(refs, index, objects, config), by hashing every file and link before and after.
"""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from autopack.applier.v1 import applier_pb2, applier_pb2_grpc
from autopack.common.v1 import common_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from .conftest import CREATE, DELETE, EDIT, MODIFY, git, make_repo, tree_digest

TIMEOUT = 30
BIG = "".join(f"line {number}\n" for number in range(1, 301))
SOURCE = {
    "app/main.py": "def main():\n    return 1\n",
    "app/big.txt": BIG,
    "config/settings.json": '{"debug": false}\n',
    "README.md": "# demo\n",
}


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    target = tmp_path / "outside"
    target.mkdir()
    (target / "victim.txt").write_text("keep\n")
    return target


@pytest.fixture
def workspace(stub: applier_pb2_grpc.ApplierServiceStub, tmp_path: Path, outside: Path) -> Path:
    source = make_repo(tmp_path / "source", SOURCE)
    (source / "escape").symlink_to(outside)
    git(source, "add", "-A")
    git(source, "commit", "-q", "-m", "a link out")
    reply = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-1", source_repo=str(source)), timeout=TIMEOUT
    )
    return Path(reply.workspace_path)


def request(
    *operations: common_pb2.FileOperation, paths: tuple[str, ...] = ("./",)
) -> applier_pb2.ApplyRequest:
    return applier_pb2.ApplyRequest(
        run_id="run-1",
        phase_id="p1",
        scope=common_pb2.Scope(paths=list(paths)),
        operations=operations,
        attempt=1,
    )


def refused(
    stub: applier_pb2_grpc.ApplierServiceStub,
    workspace: Path,
    apply: applier_pb2.ApplyRequest,
    code: grpc.StatusCode,
    *fragments: str,
) -> grpc.RpcError:
    """The Apply fails with ``code``, its message holds every fragment, the tree is byte-identical."""
    before = tree_digest(workspace)
    with pytest.raises(grpc.RpcError) as error:
        stub.Apply(apply, timeout=TIMEOUT)
    assert error.value.code() == code, error.value.details()
    for fragment in fragments:
        assert fragment in (error.value.details() or ""), error.value.details()
    assert tree_digest(workspace) == before
    return error.value


def line_edit(action: int, start: int = 0, end: int = 0, content: str = "") -> common_pb2.Edit:
    return common_pb2.Edit(
        line=common_pb2.LineEdit(action=action, start_line=start, end_line=end, content=content)
    )


def test_traversal_is_refused(stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path) -> None:
    refused(
        stub,
        workspace,
        request(common_pb2.FileOperation(path="app/../../evil.py", mode=CREATE, new_content="x = 1\n")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "operations[0].path: 'app/../../evil.py' contains '..'",
    )
    assert not (workspace.parent / "evil.py").exists()


def test_symlink_escape_is_refused(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path, outside: Path
) -> None:
    refused(
        stub,
        workspace,
        request(common_pb2.FileOperation(path="escape/victim.txt", mode=MODIFY, new_content="owned\n")),
        grpc.StatusCode.INVALID_ARGUMENT,
        "operations[0].path: 'escape/victim.txt' resolves outside the workspace",
    )
    assert (outside / "victim.txt").read_text() == "keep\n"


def test_protected_file_is_refused_with_a_structured_detail(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    error = refused(
        stub,
        workspace,
        request(common_pb2.FileOperation(path=".env", mode=CREATE, new_content="TOKEN=x\n")),
        grpc.StatusCode.FAILED_PRECONDITION,
        ".env is a protected path (secret",
        "approval request",
    )
    status = rpc_status.from_call(error)
    assert status is not None
    info, failure = error_details_pb2.ErrorInfo(), error_details_pb2.PreconditionFailure()
    assert status.details[0].Unpack(info) and status.details[1].Unpack(failure)
    assert info.reason == "protected_path_violation"
    assert info.metadata["requires_approval"] == "true"
    assert info.metadata["risk_level"] == "high"
    assert info.metadata["violated_paths"] == ".env"
    assert [(v.type, v.subject) for v in failure.violations] == [("protected_path_violation", ".env")]
    pending = stub.ListApprovalRequests(
        applier_pb2.ListApprovalRequestsRequest(run_id="run-1"), timeout=TIMEOUT
    )
    assert [item.request_id for item in pending.requests] == [info.metadata["approval_request_id"]]
    assert pending.requests[0].status == applier_pb2.APPROVAL_STATUS_PENDING


def test_oversized_delete_is_refused(stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path) -> None:
    error = refused(
        stub,
        workspace,
        request(common_pb2.FileOperation(path="app/big.txt", mode=DELETE)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "large deletion",
        "app/big.txt loses 300 line(s)",
        "over the 200-line block threshold",
    )
    info = error_details_pb2.ErrorInfo()
    status = rpc_status.from_call(error)
    assert status is not None and status.details[0].Unpack(info)
    assert info.reason == "large_deletion" and info.metadata["requires_approval"] == "true"


def test_bad_syntax_is_refused(stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path) -> None:
    refused(
        stub,
        workspace,
        request(
            common_pb2.FileOperation(
                path="app/main.py", mode=MODIFY, new_content="def main(:\n    return 1\n"
            ),
            common_pb2.FileOperation(
                path="config/settings.json", mode=MODIFY, new_content='{"debug": tru}\n'
            ),
            # An edit whose result is a placeholder instead of code is refused the same way.
            common_pb2.FileOperation(
                path="app/big.txt",
                mode=EDIT,
                edits=[
                    line_edit(common_pb2.LINE_EDIT_ACTION_REPLACE, 2, 300, "# ... rest of file unchanged\n")
                ],
            ),
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "operations[0].new_content: refused by validation: app/main.py:1: python-syntax",
        "config/settings.json:1: json-syntax",
        "operations[2].edits: refused by validation: app/big.txt:2: truncation-marker",
    )


def test_overlapping_edits_are_refused(stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path) -> None:
    refused(
        stub,
        workspace,
        request(
            common_pb2.FileOperation(
                path="app/big.txt",
                mode=EDIT,
                edits=[
                    line_edit(common_pb2.LINE_EDIT_ACTION_REPLACE, 10, 20, "ten to twenty\n"),
                    line_edit(common_pb2.LINE_EDIT_ACTION_DELETE, 15, 16),
                ],
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "operations[0].edits[1]: 'app/big.txt': overlaps edits[0] (lines 15-16 and 10-20",
    )


def test_stale_search_text_is_refused(stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path) -> None:
    refused(
        stub,
        workspace,
        request(
            common_pb2.FileOperation(
                path="app/main.py",
                mode=EDIT,
                edits=[
                    common_pb2.Edit(
                        search_replace=common_pb2.SearchReplace(
                            search="    return 2\n", replace="    return 3\n"
                        )
                    )
                ],
            ),
            # A valid operation in the same request is not written either: all or nothing.
            common_pb2.FileOperation(path="README.md", mode=MODIFY, new_content="# changed\n"),
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "operations[0].edits[0]: 'app/main.py': search_replace.search is not in the file (first line "
        "'    return 2')",
    )


def test_a_stale_base_sha256_is_refused(stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path) -> None:
    refused(
        stub,
        workspace,
        request(
            common_pb2.FileOperation(
                path="app/main.py",
                mode=EDIT,
                base_sha256="0" * 64,
                edits=[line_edit(common_pb2.LINE_EDIT_ACTION_APPEND, content="# end\n")],
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "operations[0].base_sha256: 'app/main.py' is stale",
    )
