"""Which declared dependency provides a missing module; only plain specifiers are installable."""

from __future__ import annotations

from autopack_orchestrator.dependencies import DeclaredRequirement, clean_specifier, declared_requirement

PYPROJECT = """
[project]
name = "demo"
dependencies = ["PyYAML>=6; python_version >= '3.9'", "requests[socks] >= 2.31"]
[project.optional-dependencies]
test = ["Scikit-Learn==1.5.0"]
"""


def test_module_names_map_to_declared_distributions() -> None:
    manifests = {"pyproject.toml": PYPROJECT, "requirements.txt": "# pinned\nattrs==23.2.0  # classes\n"}
    assert declared_requirement("yaml", manifests) == DeclaredRequirement("PyYAML>=6", "pyproject.toml")
    assert declared_requirement("requests", manifests) == DeclaredRequirement(
        "requests[socks]>=2.31", "pyproject.toml"
    )
    assert declared_requirement("sklearn", manifests) == DeclaredRequirement(
        "Scikit-Learn==1.5.0", "pyproject.toml"
    )
    assert declared_requirement("attr", manifests) == DeclaredRequirement("attrs==23.2.0", "requirements.txt")
    assert declared_requirement("numpy", manifests) is None  # not declared: never installed


def test_options_urls_and_paths_are_never_install_arguments() -> None:
    for line in (
        "-e .",
        "--index-url https://evil.example/simple",
        "git+https://x/y.git",
        "./local",
        "-r a.txt",
    ):
        assert clean_specifier(line) is None
    manifests = {"requirements.txt": "--extra-index-url https://x\nnumpy @ https://x/numpy.whl\n"}
    assert declared_requirement("numpy", manifests) is None


def test_poetry_dependencies_and_a_broken_pyproject() -> None:
    poetry = '[tool.poetry.dependencies]\npython = "^3.11"\nhttpx = "^0.27"\n'
    assert declared_requirement("httpx", {"pyproject.toml": poetry}) == DeclaredRequirement(
        "httpx", "pyproject.toml"
    )
    assert declared_requirement("httpx", {"pyproject.toml": "[project"}) is None
