"""Keeping secret file contents out of what the applier returns (check output).

ReadFiles never reads env/secret files (``paths.secret_protection``), but a check runs the
repository's code, which may print them (a failing test that dumps its settings, a
``python -c`` check). Before the output tail is cut, the values those files hold in the
workspace are replaced by a marker. This is best effort: code that transforms a secret
(encodes, slices, reverses it) before printing it cannot be recognised.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

from autopack_applier.paths import secret_protection, secret_reason

MARKER = b"[withheld secret]"
# Values shorter than this are not treated as secrets ("1", "true", "dev"): replacing
# them would garble ordinary output.
MIN_SECRET_LENGTH = 6
MAX_SECRET_FILES = 200
MAX_SECRET_FILE_BYTES = 256 * 1024
# Directories whose files are never the workspace's own secrets: VCS data, tool caches.
_SKIP_DIRECTORIES = frozenset(
    {
        ".git",
        ".hg",
        ".svn",
        "node_modules",
        ".venv",
        "__pycache__",
        ".pytest_cache",
        ".mypy_cache",
        ".ruff_cache",
    }
)
_QUOTES = "'\"`"
_ARMOR = re.compile(r"^-----(BEGIN|END) [A-Z0-9 ]+-----$")


def secret_values(workspace: Path) -> tuple[str, ...]:
    """The values held by the env/secret files under ``workspace`` (symlinks to files outside it are not read).

    Longest first, so a value that contains another is replaced whole.
    """
    root = Path(os.path.realpath(workspace))
    values: set[str] = set()
    seen = 0
    for directory, subdirectories, names in os.walk(root):
        subdirectories[:] = [name for name in subdirectories if name not in _SKIP_DIRECTORIES]
        for name in names:
            path = Path(directory, name)
            if secret_protection(path.relative_to(root).as_posix()) is None or path.is_symlink():
                continue  # a link's target is walked itself when it lies in the workspace
            seen += 1
            if seen > MAX_SECRET_FILES:
                break
            try:
                with open(path, "rb") as handle:
                    data = handle.read(MAX_SECRET_FILE_BYTES)
            except OSError:
                continue
            values.update(_values_in(data.decode("utf-8", "replace")))
    return tuple(sorted(values, key=lambda value: (-len(value), value)))


def _values_in(text: str) -> Iterable[str]:
    """Candidate secrets of one file, line by line.

    ``KEY=value`` (env files): the value; ``a:b:c`` (.pgpass, .htpasswd): the last field;
    anything else (a PEM body line, a .netrc entry, a bare token): the whole line, and in a
    .netrc the words after ``login``/``password``/``account``.
    """
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#") or _ARMOR.match(line):
            continue
        if "=" in line.rstrip("="):  # base64 padding alone does not make a KEY=value line
            value = line.split("=", 1)[1]
            candidates = [value, value.split(" #", 1)[0]]  # also without an inline comment
        elif ":" in line:
            candidates = [line.rsplit(":", 1)[1]]
        else:
            tokens = line.split()
            candidates = [line] + [
                tokens[index + 1]
                for index, token in enumerate(tokens[:-1])
                if token in ("login", "password", "account")
            ]
        for candidate in candidates:
            value = candidate.strip().strip(_QUOTES).strip()
            if len(value) >= MIN_SECRET_LENGTH:
                yield value


def redact(output: bytes, values: Iterable[str]) -> bytes:
    """``output`` with every occurrence of ``values`` replaced by the marker, in one pass.

    Longer values are tried first at each position, so a value containing another is
    replaced whole and a marker is never rewritten.
    """
    present = sorted(
        {encoded for encoded in (value.encode("utf-8") for value in values) if encoded and encoded in output},
        key=lambda encoded: (-len(encoded), encoded),
    )
    if not present:
        return output
    return re.compile(b"|".join(re.escape(encoded) for encoded in present)).sub(MARKER, output)


def redact_text(text: str, values: Iterable[str]) -> str:
    """``redact`` for text (a test id, a verdict sentence)."""
    return redact(text.encode("utf-8"), values).decode("utf-8")


def resolve_in_workspace(root: Path, relative: str) -> tuple[Path, str] | None:
    """Where ``relative`` really is under ``root`` (symlink-free) and its relative form; None outside."""
    root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(root / relative))
    if root not in real.parents:
        return None
    return real, real.relative_to(root).as_posix()


def readable_path(root: Path, relative: str) -> Path | None:
    """The file behind ``relative`` when the applier may look at its content, else None.

    None when it resolves outside ``root`` (symlink-free) or it, or what it links to, is a
    secret file.
    """
    resolved = resolve_in_workspace(root, relative)
    if resolved is None or secret_reason(relative, resolved[1]) is not None:
        return None
    return resolved[0]


def is_secret(root: Path, relative: str) -> bool:
    """True when ``relative``, or the workspace file it links to, is an env/secret file."""
    resolved = resolve_in_workspace(root, relative)
    return secret_reason(relative, resolved[1] if resolved is not None else relative) is not None
