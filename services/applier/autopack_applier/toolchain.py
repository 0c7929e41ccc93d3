"""Which toolchains a workspace uses and the commands that test, build and lint it.

Detection reads file names (and a package.json's scripts), never runs anything. A manifest at
the repository root gives high confidence; one in a sub-directory (a monorepo part) less,
with commands that point into that directory (``npm --prefix``, ``go -C``,
``cargo --manifest-path``, ``mvn -f``); source files alone the least. Commands are argument
vectors ready for RunChecks; ``allowed`` says whether the applier's allowlist would run them.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from autopack_applier.gitrepo import Git
from autopack_applier.withholding import readable_path

ROOT_MANIFEST_CONFIDENCE = 0.95
ROOT_HINT_CONFIDENCE = 0.85
NESTED_MANIFEST_CONFIDENCE = 0.7
SOURCES_ONLY_CONFIDENCE = 0.5
# Manifests deeper than this many directories are not considered (vendored code, fixtures).
MAX_MANIFEST_DEPTH = 2
NPM_DEFAULT_TEST = 'echo "Error: no test specified" && exit 1'

# A repository-relative path to its text, or None when it cannot be read.
TextReader = Callable[[str], "str | None"]


class Language(enum.Enum):
    PYTHON = "python"
    NODE = "node"
    GO = "go"
    RUST = "rust"
    JAVA = "java"


class Purpose(enum.Enum):
    TEST = "test"
    BUILD = "build"
    LINT = "lint"


@dataclass(frozen=True)
class SuggestedCommand:
    purpose: Purpose
    argv: tuple[str, ...]
    allowed: bool


@dataclass(frozen=True)
class Toolchain:
    language: Language
    confidence: float
    evidence: tuple[str, ...]
    commands: tuple[SuggestedCommand, ...]


_MANIFESTS: dict[Language, tuple[str, ...]] = {
    Language.PYTHON: ("pyproject.toml", "setup.py", "setup.cfg"),
    Language.NODE: ("package.json",),
    Language.GO: ("go.mod",),
    Language.RUST: ("Cargo.toml",),
    Language.JAVA: ("pom.xml", "build.gradle", "build.gradle.kts"),
}
# Files that say "Python" almost as clearly as a manifest, at the root only.
_PYTHON_HINTS = ("requirements.txt", "Pipfile", "tox.ini", "pytest.ini", "conftest.py")
_SOURCE_SUFFIXES: dict[Language, tuple[str, ...]] = {
    Language.PYTHON: (".py",),
    Language.NODE: (".js", ".mjs", ".cjs", ".ts"),
    Language.GO: (".go",),
    Language.RUST: (".rs",),
    Language.JAVA: (".java",),
}


def detect_toolchains(
    files: Sequence[str], read_text: TextReader, allowed_commands: Collection[str]
) -> list[Toolchain]:
    """Toolchains of a workspace whose (repository-relative) file list is ``files``.

    ``read_text(path)`` returns a file's text or None; only package.json is read.
    """
    present = set(files)
    by_name: dict[str, list[str]] = {}
    for path in files:
        parts = PurePosixPath(path).parts
        if len(parts) - 1 <= MAX_MANIFEST_DEPTH:
            by_name.setdefault(parts[-1], []).append(path)
    found: list[Toolchain] = []
    for language, manifests in _MANIFESTS.items():
        candidates = sorted(
            (path for name in manifests for path in by_name.get(name, [])),
            key=lambda path: (path.count("/"), path),
        )
        evidence: list[str] = []
        directory: str | None = None
        confidence = 0.0
        if candidates:
            directory = str(PurePosixPath(candidates[0]).parent)
            evidence = [path for path in candidates if str(PurePosixPath(path).parent) == directory]
            confidence = ROOT_MANIFEST_CONFIDENCE if directory == "." else NESTED_MANIFEST_CONFIDENCE
        if language is Language.PYTHON:
            hints = [name for name in _PYTHON_HINTS if name in present]
            if hints and confidence < ROOT_HINT_CONFIDENCE:
                directory, evidence, confidence = ".", hints, ROOT_HINT_CONFIDENCE
            elif hints and directory == ".":
                evidence += hints
        if directory is None:
            sources = [path for path in files if path.endswith(_SOURCE_SUFFIXES[language])]
            if not sources:
                continue
            directory, evidence, confidence = ".", sorted(sources)[:3], SOURCES_ONLY_CONFIDENCE
        commands = _commands(language, directory, evidence, read_text)
        found.append(
            Toolchain(
                language=language,
                confidence=confidence,
                evidence=tuple(evidence),
                commands=tuple(
                    SuggestedCommand(purpose, argv, argv[0] in allowed_commands) for purpose, argv in commands
                ),
            )
        )
    found.sort(key=lambda toolchain: (-toolchain.confidence, toolchain.language.value))
    return found


def _commands(
    language: Language, directory: str, evidence: Sequence[str], read_text: TextReader
) -> list[tuple[Purpose, tuple[str, ...]]]:
    nested = directory != "."
    if language is Language.PYTHON:
        target = (directory,) if nested else ()
        return [
            (Purpose.TEST, ("python", "-m", "pytest", "-q", *target)),
            (Purpose.LINT, ("ruff", "check", directory)),
            (Purpose.BUILD, ("python", "-m", "compileall", "-q", directory)),
        ]
    if language is Language.NODE:
        return _node_commands(directory, evidence, read_text)
    if language is Language.GO:
        prefix = ("go", "-C", directory) if nested else ("go",)
        return [
            (Purpose.TEST, (*prefix, "test", "./...")),
            (Purpose.BUILD, (*prefix, "build", "./...")),
            (Purpose.LINT, (*prefix, "vet", "./...")),
        ]
    if language is Language.RUST:
        manifest = ("--manifest-path", f"{directory}/Cargo.toml") if nested else ()
        return [
            (Purpose.TEST, ("cargo", "test", *manifest)),
            (Purpose.BUILD, ("cargo", "build", *manifest)),
            (Purpose.LINT, ("cargo", "clippy", *manifest)),
        ]
    # Java: Maven when there is a pom.xml, otherwise Gradle.
    if any(path.endswith("pom.xml") for path in evidence):
        pom = ("-f", f"{directory}/pom.xml") if nested else ()
        return [
            (Purpose.TEST, ("mvn", "-q", *pom, "test")),
            (Purpose.BUILD, ("mvn", "-q", *pom, "package", "-DskipTests")),
        ]
    if any(path.endswith((".gradle", ".gradle.kts")) for path in evidence):
        project = ("-p", directory) if nested else ()
        return [(Purpose.TEST, ("gradle", *project, "test")), (Purpose.BUILD, ("gradle", *project, "build"))]
    return []


def _node_commands(
    directory: str, evidence: Sequence[str], read_text: TextReader
) -> list[tuple[Purpose, tuple[str, ...]]]:
    manifest = next((path for path in evidence if path.endswith("package.json")), None)
    if manifest is None:
        return [(Purpose.TEST, ("node", "--test"))]
    scripts: dict[str, object] = {}
    try:
        parsed = json.loads(read_text(manifest) or "{}")
        if isinstance(parsed, dict) and isinstance(parsed.get("scripts"), dict):
            scripts = parsed["scripts"]
    except json.JSONDecodeError:
        pass
    prefix = ("npm", "--prefix", directory) if directory != "." else ("npm",)
    commands: list[tuple[Purpose, tuple[str, ...]]] = []
    test = scripts.get("test")
    if isinstance(test, str) and test.strip() != NPM_DEFAULT_TEST:
        commands.append((Purpose.TEST, (*prefix, "test")))
    else:
        commands.append((Purpose.TEST, ("node", "--test")))
    for purpose, script in ((Purpose.BUILD, "build"), (Purpose.LINT, "lint")):
        if isinstance(scripts.get(script), str):
            commands.append((purpose, (*prefix, "run", script)))
    return commands


def detect_workspace_toolchains(workspace: Path, allowed_commands: Collection[str]) -> list[Toolchain]:
    """Toolchains of a workspace directory: the files git sees (tracked and untracked, not ignored)."""

    def read_text(path: str) -> str | None:
        # A manifest that is a symlink out of the workspace or to a secret file is not
        # read: even which scripts it declares would say something about its content.
        real = readable_path(workspace, path)
        if real is None:
            return None
        try:
            return real.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return None

    return detect_toolchains(Git(workspace).list_files(), read_text, allowed_commands)
