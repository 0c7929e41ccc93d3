"""Memory settings from the environment."""

from __future__ import annotations

from pathlib import Path

import pytest
from autopack_memory.settings import MemorySettings
from pydantic import ValidationError


def test_defaults_are_the_embedded_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("AUTOPACK_MEMORY_EMBEDDINGS", "AUTOPACK_MEMORY_QDRANT_PATH", "QDRANT_URL", "DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AUTOPACK_DATA_DIR", str(tmp_path))
    settings = MemorySettings()
    assert settings.embeddings == "local"
    assert settings.qdrant_url is None
    assert settings.resolved_qdrant_path() == tmp_path / "qdrant"
    assert settings.resolved_database_url("memory") == f"sqlite:///{(tmp_path / 'memory.db').resolve()}"
    assert settings.max_embeddings_per_call == 64
    assert (settings.drift_threshold, settings.drift_lexical_threshold, settings.drift_mode) == (
        0.5,
        0.2,
        "advisory",
    )


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("AUTOPACK_MEMORY_EMBEDDINGS", " None ")
    monkeypatch.setenv("AUTOPACK_MEMORY_QDRANT_PATH", str(tmp_path / "vectors"))
    monkeypatch.setenv("QDRANT_URL", "http://qdrant:6333")
    monkeypatch.setenv("QDRANT_API_KEY", "not-a-real-key")
    monkeypatch.setenv("AUTOPACK_MEMORY_MAX_EMBEDDINGS_PER_CALL", "-1")
    monkeypatch.setenv("AUTOPACK_MEMORY_DRIFT_MODE", " Blocking ")
    monkeypatch.setenv("AUTOPACK_MEMORY_DRIFT_THRESHOLD", "0.3")
    monkeypatch.setenv("AUTOPACK_MEMORY_DRIFT_LEXICAL_THRESHOLD", "0.05")
    settings = MemorySettings()
    assert (settings.drift_threshold, settings.drift_lexical_threshold, settings.drift_mode) == (
        0.3,
        0.05,
        "blocking",
    )
    assert settings.embeddings == "none"
    assert settings.resolved_qdrant_path() == tmp_path / "vectors"
    assert settings.qdrant_url == "http://qdrant:6333"
    assert "not-a-real-key" not in repr(settings)
    assert settings.max_embeddings_per_call == -1


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("AUTOPACK_MEMORY_EMBEDDINGS", "gpt"),
        ("AUTOPACK_MEMORY_MAX_EMBEDDINGS_PER_CALL", "-2"),
        ("AUTOPACK_MEMORY_DRIFT_MODE", "sometimes"),
        ("AUTOPACK_MEMORY_DRIFT_THRESHOLD", "1.5"),
    ],
)
def test_bad_values_fail_at_start_up(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError, match=name):
        MemorySettings()
