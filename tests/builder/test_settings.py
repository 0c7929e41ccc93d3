"""Provider selection: auto means the live providers whose keys are set, else replay."""

from __future__ import annotations

from pathlib import Path

import pytest
from autopack_builder.providers import AnthropicProvider, OpenAIProvider, ReplayProvider, create_providers
from autopack_builder.settings import BuilderSettings


def test_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (
        "AUTOPACK_BUILDER_PROVIDER",
        "AUTOPACK_BUILDER_MODEL",
        "AUTOPACK_REPLAY_DIR",
        "ANTHROPIC_API_KEY",
        "OPENAI_API_KEY",
        "AUTOPACK_BUILDER_ROUTING",
    ):
        monkeypatch.delenv(name, raising=False)

    settings = BuilderSettings()

    assert (settings.provider, settings.model, settings.replay_dir) == (
        "auto",
        "",
        Path("examples/recordings"),
    )
    assert (settings.max_requests_per_model, settings.routing_path) == (4, None)
    assert settings.resolved_providers() == ("replay",)


@pytest.mark.parametrize(
    ("choice", "anthropic_key", "openai_key", "expected"),
    [
        ("auto", "sk-ant-x", "", ("anthropic",)),
        ("auto", "sk-ant-x", "sk-x", ("anthropic", "openai")),
        ("auto", "", "sk-x", ("openai",)),
        ("auto", "", "", ("replay",)),
        ("replay", "sk-ant-x", "", ("replay",)),
        ("anthropic", "", "", ("anthropic",)),
        ("live", "", "", ("anthropic", "openai")),
    ],
)
def test_resolved_providers(
    monkeypatch: pytest.MonkeyPatch,
    choice: str,
    anthropic_key: str,
    openai_key: str,
    expected: tuple[str, ...],
) -> None:
    monkeypatch.setenv("AUTOPACK_BUILDER_PROVIDER", choice)
    monkeypatch.setenv("ANTHROPIC_API_KEY", anthropic_key)
    monkeypatch.setenv("OPENAI_API_KEY", openai_key)

    assert BuilderSettings().resolved_providers() == expected


def test_unknown_provider_is_rejected_at_start_up(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOPACK_BUILDER_PROVIDER", "openai-ish")

    with pytest.raises(ValueError, match="AUTOPACK_BUILDER_PROVIDER"):
        BuilderSettings()


def test_create_providers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-x")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")

    replay = create_providers(["replay"], replay_dir=tmp_path)
    assert replay.replay and isinstance(replay.get("openai"), ReplayProvider)
    live = create_providers(["anthropic", "openai"], replay_dir=tmp_path)
    assert isinstance(live.get("anthropic"), AnthropicProvider) and isinstance(
        live.get("openai"), OpenAIProvider
    )
    assert live.names == ("anthropic", "openai")
    live.close()


def test_estimator_address_follows_the_client_convention(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AUTOPACK_BUILDER_ESTIMATOR_ADDR", raising=False)
    monkeypatch.setenv("AUTOPACK_ESTIMATOR_ADDR", "estimator:50052")
    assert BuilderSettings().resolved_estimator_addr() == "estimator:50052"

    monkeypatch.setenv("AUTOPACK_BUILDER_ESTIMATOR_ADDR", "none")
    assert BuilderSettings().resolved_estimator_addr() == ""
