"""Toolchain detection from file names: languages, confidence and suggested commands."""

from __future__ import annotations

from autopack_applier.checks import DEFAULT_ALLOWED_COMMANDS
from autopack_applier.toolchain import Language, Purpose, Toolchain, detect_toolchains


def detect(files: dict[str, str]) -> dict[Language, Toolchain]:
    found = detect_toolchains(list(files), files.get, DEFAULT_ALLOWED_COMMANDS)
    return {toolchain.language: toolchain for toolchain in found}


def test_rust_and_maven_at_the_root() -> None:
    found = detect({"Cargo.toml": "", "src/main.rs": "", "pom.xml": ""})
    rust, java = found[Language.RUST], found[Language.JAVA]
    assert rust.confidence == java.confidence == 0.95
    assert rust.commands[0].argv == ("cargo", "test")
    assert rust.commands[0].allowed
    test = next(command for command in java.commands if command.purpose is Purpose.TEST)
    assert test.argv == ("mvn", "-q", "test") and not test.allowed  # mvn is not on the default allowlist


def test_nested_manifests_get_commands_pointing_into_their_directory() -> None:
    found = detect({"svc/go.mod": "", "crates/x/Cargo.toml": "", "app/build.gradle": ""})
    assert found[Language.GO].commands[0].argv == ("go", "-C", "svc", "test", "./...")
    assert found[Language.RUST].commands[0].argv == (
        "cargo",
        "test",
        "--manifest-path",
        "crates/x/Cargo.toml",
    )
    assert found[Language.JAVA].commands[0].argv == ("gradle", "-p", "app", "test")
    assert all(toolchain.confidence == 0.7 for toolchain in found.values())


def test_python_hints_and_the_npm_placeholder_test_script() -> None:
    found = detect(
        {
            "requirements.txt": "",
            "package.json": '{"scripts": {"test": "echo \\"Error: no test specified\\" && exit 1"}}',
        }
    )
    assert found[Language.PYTHON].confidence == 0.85
    assert found[Language.PYTHON].evidence == ("requirements.txt",)
    assert found[Language.NODE].commands[0].argv == ("node", "--test")


def test_nothing_recognisable_gives_nothing() -> None:
    assert detect({"README.md": "", "deep/a/b/c/go.mod": ""}) == {}
