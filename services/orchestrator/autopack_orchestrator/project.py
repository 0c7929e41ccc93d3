"""The project key: one name for every run of the same repository, so memory spans runs.

Plain Python (no gRPC): the key is derived once per run from the plan's ``source_repo``.
"""

from __future__ import annotations

import os
import re
import subprocess
from urllib.parse import urlsplit

GIT_TIMEOUT_SECONDS = 10
_SCP_LIKE = re.compile(r"^(?:[\w.-]+@)?([\w.-]+):(?!//)(.+)$")


def normalise_remote(source: str) -> str:
    """``host/owner/name`` for a git URL in any spelling (https, ssh, scp-like, with credentials)."""
    text = source.strip()
    if "://" in text:
        parts = urlsplit(text)
        host = (parts.hostname or "").lower()
        path = parts.path
    else:
        match = _SCP_LIKE.match(text)
        if match is None:
            return ""
        host, path = match.group(1).lower(), match.group(2)
    path = path.strip("/")
    path = path.removesuffix(".git").rstrip("/")
    return f"{host}/{path}" if host else path


def root_commit(path: str) -> str:
    """The repository's first commit (the smallest root when histories were merged); "" if not git."""
    try:
        result = subprocess.run(
            ["git", "-C", path, "rev-list", "--max-parents=0", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT_SECONDS,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    roots = sorted(line.strip() for line in result.stdout.splitlines() if line.strip())
    return roots[0] if result.returncode == 0 and roots else ""


def project_key(source_repo: str, explicit: str = "") -> str:
    """Stable across runs: an explicit key, else ``git:<root commit>``, else the normalised location.

    The root commit names a repository wherever it is cloned (every clone and workspace copy
    shares it); a remote URL is normalised (``git@github.com:a/b.git`` and
    ``https://github.com/a/b`` are both ``remote:github.com/a/b``); a local directory without git
    history is its resolved absolute path (``path:/abs/dir``).
    """
    if explicit.strip():
        return explicit.strip()
    source = source_repo.strip()
    if os.path.isdir(source):
        commit = root_commit(source)
        if commit:
            return f"git:{commit}"
        return "path:" + os.path.realpath(source)
    remote = normalise_remote(source)
    return f"remote:{remote}" if remote else "path:" + os.path.normpath(source)
