"""Build the memory bench's dataset from a git repository's real history.

Each non-merge commit becomes one task: its message is the task text, the files it modified
(that existed at the parent) are what had to be in context, and every text file at the parent
commit is a candidate. Blobs are stored once by git object id, so ~40 snapshots of one repository
stay a few hundred KB gzipped and the bench runs in a fresh clone without the repository.

    python -m bench.memory_history /work/main bench/data/autopack_history.json.gz
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

MAX_FILE_BYTES = 200_000
TEXT_PROBE_BYTES = 8192


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def text_of(data: bytes) -> str | None:
    """A file's text, or None for binary, non-UTF-8 or oversized files (the datasets' one rule)."""
    if len(data) > MAX_FILE_BYTES or b"\0" in data[:TEXT_PROBE_BYTES]:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _blob_text(repo: Path, sha: str) -> str | None:
    """The blob's text, or None when ``text_of`` leaves it out."""
    data = subprocess.run(
        ["git", "-C", str(repo), "cat-file", "blob", sha], check=True, capture_output=True
    ).stdout
    return text_of(data)


def build(repo: Path) -> dict[str, object]:
    """Commits (oldest first) with their parent's text files and the modified paths."""
    blobs: dict[str, str] = {}
    skipped: set[str] = set()
    commits = []
    for line in _git(repo, "rev-list", "--no-merges", "--reverse", "HEAD").split():
        parents = _git(repo, "rev-list", "--parents", "-n", "1", line).split()[1:]
        if len(parents) != 1:
            continue
        parent = parents[0]
        files: dict[str, str] = {}
        for entry in _git(repo, "ls-tree", "-r", parent).splitlines():
            meta, path = entry.split("\t", 1)
            _mode, kind, sha = meta.split()
            if kind != "blob" or sha in skipped:
                continue
            if sha not in blobs:
                text = _blob_text(repo, sha)
                if text is None:
                    skipped.add(sha)
                    continue
                blobs[sha] = text
            files[path] = sha
        status = _git(repo, "diff-tree", "--no-commit-id", "-r", "--name-status", parent, line)
        modified = sorted(
            parts[1] for parts in (row.split("\t") for row in status.splitlines()) if parts[0] == "M"
        )
        modified = [path for path in modified if path in files]
        if not modified:
            continue
        message = _git(repo, "log", "-1", "--format=%B", line).strip()
        commits.append(
            {"commit": line, "parent": parent, "message": message, "files": files, "modified": modified}
        )
    used = {sha for commit in commits for sha in commit["files"].values()}  # type: ignore[union-attr]
    return {"source": str(repo.name), "blobs": {sha: blobs[sha] for sha in sorted(used)}, "commits": commits}


def main(argv: list[str]) -> int:
    repo, out = Path(argv[0]), Path(argv[1])
    data = build(repo)
    out.write_bytes(gzip.compress(json.dumps(data, sort_keys=True).encode("utf-8"), mtime=0))
    print(f"{len(data['commits'])} commits, {len(data['blobs'])} blobs, {out.stat().st_size} bytes")  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
