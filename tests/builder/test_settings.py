"""Provider selection: auto means live Anthropic only when a key is configured."""

from __future__ import annotations

from pathlib import Path

import pytest
from autopack_builder.providers import AnthropicProvider, ReplayProvider, create_provider
from autopack_builder.settings import BuilderSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AUTOPACK_BUILDER_PROVIDER",
        "AUTOPACK_BUILDER_MODEL",
        "AUTOPACK_REPLAY_DIR",
        "ANTHROPIC_API_KEY",
    ):
        monkeypatch.delenv(name, raising=False)

    settings = BuilderSettings()

    assert (settings.provider, settings.model, settings.replay_dir) == (
        "auto",
        "claude-sonnet-4-6",
        Path("examples/recordings"),
    )
    assert settings.resolved_provider() == "replay"


@pytest.mark.parametrize(
    ("choice", "key", "expected"),
    [
        ("auto", "sk-ant-x", "anthropic"),
        ("auto", "", "replay"),
        ("replay", "sk-ant-x", "replay"),
        ("anthropic", "", "anthropic"),
    ],
)
def test_resolved_provider(monkeypatch: pytest.MonkeyPatch, choice: str, key: str, expected: str) -> None:
    monkeypatch.setenv("AUTOPACK_BUILDER_PROVIDER", choice)
    monkeypatch.setenv("ANTHROPIC_API_KEY", key)

    assert BuilderSettings().resolved_provider() == expected


def test_unknown_provider_is_rejected_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_BUILDER_PROVIDER", "openai-ish")

    with pytest.raises(ValueError, match="AUTOPACK_BUILDER_PROVIDER"):
        BuilderSettings()


def test_create_provider(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")

    assert isinstance(create_provider("replay", replay_dir=tmp_path), ReplayProvider)
    live = create_provider("anthropic", replay_dir=tmp_path)
    assert isinstance(live, AnthropicProvider)
    live.close()
