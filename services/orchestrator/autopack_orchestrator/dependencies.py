"""Which declared dependency of a workspace provides a missing Python module (no I/O).

The missing-dependency mitigation may install a module before the next attempt, but only
one the workspace itself declares (``requirements*.txt``, ``pyproject.toml``): a model that
imports something undeclared is told not to, never given a new dependency. Only plain
requirement specifiers are accepted (``name[extras] >=1,<2``): options, URLs, paths and
editable installs in a requirements file are never passed on to an install command.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

MANIFESTS = ("requirements.txt", "requirements-dev.txt", "requirements/", "pyproject.toml")
"""Workspace paths (files, or a directory prefix) that declare Python dependencies."""

# Distributions whose import name differs from their name (the common cases only).
_IMPORT_ALIASES = {
    "yaml": "pyyaml",
    "pil": "pillow",
    "sklearn": "scikit_learn",
    "bs4": "beautifulsoup4",
    "cv2": "opencv_python",
    "dateutil": "python_dateutil",
    "dotenv": "python_dotenv",
    "jwt": "pyjwt",
    "attr": "attrs",
}
_SPECIFIER = re.compile(
    r"^(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)(?:\[[\w.,-]+\])?"
    r"(?:(?:===|==|!=|<=|>=|~=|<|>)[\w.*+!-]+(?:,(?:===|==|!=|<=|>=|~=|<|>)[\w.*+!-]+)*)?$"
)


@dataclass(frozen=True)
class DeclaredRequirement:
    """A requirement to install and where the workspace declares it."""

    specifier: str
    source: str


def normalise(name: str) -> str:
    """PEP 503-style name for comparison (``Scikit-Learn`` -> ``scikit_learn``)."""
    return re.sub(r"[-_.]+", "_", name).lower()


def clean_specifier(line: str) -> str | None:
    """The requirement without markers, comments and spaces, or None unless it is a plain specifier."""
    text = line.split("#", 1)[0].split(";", 1)[0].replace(" ", "").strip()
    return text if text and _SPECIFIER.match(text) else None


def _requirements(text: str) -> Iterable[str]:
    for line in text.splitlines():
        specifier = clean_specifier(line)
        if specifier:
            yield specifier


def _pyproject(text: str) -> Iterable[str]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return
    project = data.get("project", {})
    entries = list(project.get("dependencies", []))
    for extra in project.get("optional-dependencies", {}).values():
        entries += list(extra)
    for group in data.get("dependency-groups", {}).values():
        entries += [entry for entry in group if isinstance(entry, str)]
    for entry in entries:
        specifier = clean_specifier(str(entry))
        if specifier:
            yield specifier
    poetry = data.get("tool", {}).get("poetry", {}).get("dependencies", {})
    for name in poetry:
        if name.lower() != "python" and clean_specifier(name):
            yield name


def declared_requirement(module: str, manifests: Mapping[str, str]) -> DeclaredRequirement | None:
    """The workspace's declared requirement that provides ``module``, if any.

    ``manifests`` maps repository paths to their text (requirements files, ``pyproject.toml``).
    """
    wanted = {normalise(module)}
    if module.lower() in _IMPORT_ALIASES:
        wanted.add(_IMPORT_ALIASES[module.lower()])
    for path, text in sorted(manifests.items()):
        name = path.rsplit("/", 1)[-1]
        if name == "pyproject.toml":
            specifiers = _pyproject(text)
        elif name.endswith(".txt") and "requirements" in path:
            specifiers = _requirements(text)
        else:
            continue
        for specifier in specifiers:
            match = _SPECIFIER.match(specifier)
            if match and normalise(match.group("name")) in wanted:
                return DeclaredRequirement(specifier, path)
    return None
