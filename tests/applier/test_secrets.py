"""Secret files never leave the applier: ReadFiles withholds them, check output is redacted,
DetectToolchain and CheckDeliverables do not report on their content, Apply refuses edits
that would. Over a real gRPC channel, with an allowed subtree that covers the secrets (an
allowed subtree is writable, never readable)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from autopack.applier.v1 import applier_pb2, applier_pb2_grpc
from autopack.common.v1 import common_pb2
from autopack_applier.settings import ApplierSettings
from autopack_applier.store import ApplierStore
from autopack_applier.toolchain import Language, detect_workspace_toolchains
from autopack_applier.withholding import MARKER, redact, secret_values

from .conftest import git, make_repo, serve, state

TIMEOUT = 30
API_KEY = "sk-live-0123456789abcdef"
DB_PASSWORD = "hunter2-local-pw"
KEY_BODY = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7"
SECRETS = (API_KEY, DB_PASSWORD, KEY_BODY)
PEM = f"-----BEGIN PRIVATE KEY-----\n{KEY_BODY}\n-----END PRIVATE KEY-----\n"
FILES = {
    "calc.py": "def add(a, b):\n    return a + b\n",
    "README.md": "# demo\n",
    ".env": f'API_KEY="{API_KEY}"\nDEBUG=1\n',
    ".env.example": "API_KEY=\nDEBUG=1\n",
    "config/settings.py": "TIMEOUT = 3\n",
    "config/.env.local": f"DB_PASSWORD={DB_PASSWORD}\n",
    "deploy/server.key": PEM,
    "deploy/README.md": "how to deploy\n",
}
WITHHELD_UNDER_ROOT = [".env", "config/.env.local", "deploy/server.key", "settings.txt"]


@pytest.fixture
def source(tmp_path: Path) -> Path:
    """A repository with env files, a key and a symlink to .env, all committed."""
    root = make_repo(tmp_path / "source", FILES)
    os.symlink(".env", root / "settings.txt")
    os.symlink("config", root / "linked")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "links")
    return root


@pytest.fixture
def stub(tmp_path: Path, store: ApplierStore) -> Iterator[applier_pb2_grpc.ApplierServiceStub]:
    """An applier whose allowed subtrees cover both secret directories."""
    settings = ApplierSettings(
        AUTOPACK_APPLIER_WORKSPACE_ROOT=tmp_path / "workspaces",
        AUTOPACK_APPLIER_ALLOWED_PATHS="config/,deploy/",
    )
    with serve(settings, store) as served:
        yield served


@pytest.fixture
def workspace(stub: applier_pb2_grpc.ApplierServiceStub, source: Path) -> Path:
    reply = stub.PrepareWorkspace(
        applier_pb2.PrepareWorkspaceRequest(run_id="run-1", source_repo=str(source)), timeout=TIMEOUT
    )
    return Path(reply.workspace_path)


def read(stub: applier_pb2_grpc.ApplierServiceStub, *paths: str) -> applier_pb2.ReadFilesResponse:
    return stub.ReadFiles(applier_pb2.ReadFilesRequest(run_id="run-1", paths=list(paths)), timeout=TIMEOUT)


def apply_request(operation: common_pb2.FileOperation, *scope: str) -> applier_pb2.ApplyRequest:
    return applier_pb2.ApplyRequest(
        run_id="run-1", phase_id="p1", scope=common_pb2.Scope(paths=list(scope)), operations=[operation]
    )


def assert_no_secret(message: object) -> None:
    """No secret value anywhere in a reply, whatever field it might hide in."""
    wire = message.SerializeToString()  # type: ignore[attr-defined]
    for secret in SECRETS:
        assert secret.encode() not in wire


@pytest.mark.parametrize(
    ("path", "reported", "rule"),
    [
        (".env", ".env", "'.env*'"),
        ("config/.env.local", "config/.env.local", "'.env*'"),
        ("./deploy//server.key", "deploy/server.key", "'*.key'"),
        ("settings.txt", "settings.txt", "symlink to the secret file '.env'"),
        ("linked/.env.local", "linked/.env.local", "'.env*'"),
    ],
)
def test_a_secret_asked_for_directly_is_withheld(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path, path: str, reported: str, rule: str
) -> None:
    before = state(workspace)
    reply = read(stub, path)
    assert list(reply.files) == [] and list(reply.missing) == []
    assert [item.path for item in reply.withheld] == [reported]
    assert rule in reply.withheld[0].reason and "never leaves the applier" in reply.withheld[0].reason
    assert_no_secret(reply)
    assert state(workspace) == before


def test_a_directory_prefix_returns_everything_but_the_secrets(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    before = state(workspace)
    reply = read(stub, "./")
    returned = {item.path: item.content for item in reply.files}
    assert sorted(returned) == [
        ".env.example",
        "README.md",
        "calc.py",
        "config/settings.py",
        "deploy/README.md",
    ]
    assert returned[".env.example"] == FILES[".env.example"]  # a template is not a secret
    assert [item.path for item in reply.withheld] == WITHHELD_UNDER_ROOT
    assert_no_secret(reply)

    nested = read(stub, "config/", "deploy/")
    assert [item.path for item in nested.files] == ["config/settings.py", "deploy/README.md"]
    assert [item.path for item in nested.withheld] == ["config/.env.local", "deploy/server.key"]
    assert_no_secret(nested)
    assert state(workspace) == before


def test_an_allowed_subtree_is_writable_but_its_secrets_never_readable(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    """ALLOWED_PATHS lets an Apply write config/.env.local without approval; reading stays closed."""
    operation = common_pb2.FileOperation(
        path="config/.env.local",
        mode=common_pb2.FILE_MODE_MODIFY,
        new_content="DB_PASSWORD=rotated-by-phase-1\n",
    )
    stub.Apply(apply_request(operation, "config/"), timeout=TIMEOUT)
    assert (workspace / "config/.env.local").read_text() == "DB_PASSWORD=rotated-by-phase-1\n"
    reply = read(stub, "config/.env.local")
    assert [item.path for item in reply.withheld] == ["config/.env.local"] and not reply.files
    assert b"rotated-by-phase-1" not in reply.SerializeToString()


def test_a_secret_a_check_created_is_withheld_even_when_git_ignores_it(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    (workspace / ".gitignore").write_text(".env.test\n")
    (workspace / ".env.test").write_text(f"TOKEN={API_KEY}\n")
    reply = read(stub, ".env.test")
    assert [item.path for item in reply.withheld] == [".env.test"] and not reply.files
    assert_no_secret(reply)


def test_check_output_shows_no_secret_values(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    """A check that prints the secret files gets their values replaced, the rest of its output kept."""
    printer = "for name in ['.env', 'config/.env.local', 'deploy/server.key']: print(open(name).read())"
    before = state(workspace)
    reply = stub.RunChecks(
        applier_pb2.RunChecksRequest(run_id="run-1", command=["python", "-c", printer]), timeout=TIMEOUT
    )
    assert reply.passed
    assert_no_secret(reply)
    marker = MARKER.decode()
    assert f'API_KEY="{marker}"' in reply.output_tail
    assert f"DB_PASSWORD={marker}" in reply.output_tail
    assert "DEBUG=1" in reply.output_tail  # short values are not treated as secrets
    assert "-----BEGIN PRIVATE KEY-----" in reply.output_tail
    assert state(workspace) == before


def test_values_are_found_in_every_kind_of_secret_file(tmp_path: Path) -> None:
    files = {
        ".env": "# API_KEY=commented-out\nexport TOKEN='tok-123456' # rotate monthly\nDEBUG=1\n",
        ".pgpass": "db.example.com:5432:app:alice:pg-pass-77\n",
        ".netrc": "machine example.com login alice-netrc password netrc-pass-1\n",
        "keys/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA==\n"
        "-----END OPENSSH PRIVATE KEY-----\n",
        "notes.txt": "not-a-secret-at-all\n",
    }
    for relative, content in files.items():
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text(content)
    values = secret_values(tmp_path)
    for expected in (
        "tok-123456",
        "pg-pass-77",
        "alice-netrc",
        "netrc-pass-1",
        "b3BlbnNzaC1rZXktdjEAAAAA==",
    ):
        assert expected in values
    assert "not-a-secret-at-all" not in values and "1" not in values
    assert redact(b"token is tok-123456!", values) == b"token is " + MARKER + b"!"
    # One pass, longest first: a value inside another is not replaced twice or in part.
    assert redact(b"x tok-123456-long y", ["tok-123456", "tok-123456-long"]) == b"x " + MARKER + b" y"


@pytest.mark.parametrize("link", ["secret", "outside"])
def test_detect_toolchain_does_not_read_a_manifest_that_links_to_a_secret_or_out(
    tmp_path: Path, link: str
) -> None:
    scripts = '{"scripts": {"test": "jest", "build": "tsc"}}'
    (tmp_path / "outside.json").write_text(scripts)
    root = make_repo(tmp_path / "repo", {".env.json": scripts, "index.js": ""})
    os.symlink(".env.json" if link == "secret" else str(tmp_path / "outside.json"), root / "package.json")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "link")
    (node,) = [
        item for item in detect_workspace_toolchains(root, {"npm", "node"}) if item.language is Language.NODE
    ]
    # The manifest is seen by name, not read: no command derived from its scripts.
    assert node.evidence == ("package.json",)
    assert [command.argv for command in node.commands] == [("node", "--test")]


def test_check_deliverables_does_not_parse_a_secret(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    (workspace / ".env.json").write_text(f"API_KEY={API_KEY}\n")
    os.symlink(".env.json", workspace / "settings.json")
    (workspace / "plain.json").write_text(f"API_KEY={API_KEY}\n")
    reply = stub.CheckDeliverables(
        applier_pb2.CheckDeliverablesRequest(
            run_id="run-1", deliverables=["settings.json", ".env.json", "plain.json"]
        ),
        timeout=TIMEOUT,
    )
    assert list(reply.present) == ["settings.json", ".env.json"]
    assert [(problem.deliverable, problem.kind) for problem in reply.problems] == [
        ("plain.json", "invalid_json")
    ]
    assert_no_secret(reply)


@pytest.mark.parametrize(
    ("operation", "field"),
    [
        (
            common_pb2.FileOperation(
                path="config/.env.local",
                mode=common_pb2.FILE_MODE_EDIT,
                edits=[
                    common_pb2.Edit(
                        search_replace=common_pb2.SearchReplace(search="DB_PASSWORD=h", replace="X")
                    )
                ],
            ),
            "operations[0].edits",
        ),
        (
            common_pb2.FileOperation(
                path="linked/.env.local",
                mode=common_pb2.FILE_MODE_MODIFY,
                new_content="DB_PASSWORD=x\n",
                base_sha256="0" * 64,
            ),
            "operations[0].base_sha256",
        ),
    ],
)
def test_apply_refuses_edits_that_would_report_on_a_secret(
    stub: applier_pb2_grpc.ApplierServiceStub,
    workspace: Path,
    operation: common_pb2.FileOperation,
    field: str,
) -> None:
    """A search block or a stale hash would say whether a guess matches: refused before reading."""
    before = state(workspace)
    with pytest.raises(grpc.RpcError) as error:
        stub.Apply(apply_request(operation, "config/", "linked/"), timeout=TIMEOUT)
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = error.value.details() or ""
    assert details.startswith(field) and "secret file" in details and "FILE_MODE_MODIFY" in details
    assert DB_PASSWORD not in details
    assert state(workspace) == before


def test_test_ids_parametrized_with_a_secret_do_not_name_it(
    stub: applier_pb2_grpc.ApplierServiceStub, workspace: Path
) -> None:
    """A new failing test whose id carries the key: newly_failing and the verdict mask it."""
    test = (
        "import pytest\n\n"
        "KEY = open('.env').read().split('\\n')[0].split('=', 1)[1].strip('\"')\n\n\n"
        "@pytest.mark.parametrize('key', [KEY])\n"
        "def test_key_is_rotated(key):\n"
        "    assert key == 'rotated'\n"
    )
    operation = common_pb2.FileOperation(
        path="tests/test_key.py", mode=common_pb2.FILE_MODE_CREATE, new_content=test
    )
    stub.Apply(apply_request(operation, "tests/"), timeout=TIMEOUT)
    reply = stub.RunChecks(
        applier_pb2.RunChecksRequest(run_id="run-1", command=["python", "-m", "pytest", "-q", "tests"]),
        timeout=60,
    )
    assert reply.verdict == applier_pb2.CHECK_VERDICT_NEW_FAILURES, reply.verdict_reason
    assert list(reply.newly_failing) == [f"tests/test_key.py::test_key_is_rotated[{MARKER.decode()}]"]
    assert MARKER.decode() in reply.verdict_reason
    assert_no_secret(reply)
