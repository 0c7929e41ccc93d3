from pathlib import Path

import pytest
from autopack_cli.stack import StackPaths, service_environment


def test_each_service_gets_absolute_shared_dirs_and_every_address(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    monkeypatch.setenv("AUTOPACK_STATE_DIR", str(tmp_path))
    monkeypatch.delenv("AUTOPACK_DATA_DIR", raising=False)
    monkeypatch.delenv("AUTOPACK_TRACE_DIR", raising=False)
    monkeypatch.setenv("AUTOPACK_BUILDER_ADDR", "127.0.0.1:61000")
    env = service_environment("estimator", StackPaths.from_env())
    assert env["AUTOPACK_DATA_DIR"] == str(tmp_path / "data")
    assert env["AUTOPACK_TRACE_DIR"] == str(tmp_path / "traces")
    assert env["AUTOPACK_BUILDER_ADDR"] == "127.0.0.1:61000"
    assert env["AUTOPACK_ORCHESTRATOR_ADDR"] == "127.0.0.1:50051"


def test_a_service_specific_database_url_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPACK_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("DATABASE_URL", "postgresql://shared")
    monkeypatch.setenv("AUTOPACK_ESTIMATOR_DATABASE_URL", "postgresql://own")
    paths = StackPaths.from_env()
    assert service_environment("estimator", paths)["DATABASE_URL"] == "postgresql://own"
    assert service_environment("builder", paths)["DATABASE_URL"] == "postgresql://shared"
