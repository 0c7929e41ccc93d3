"""The memory bench's vendored datasets keep their schema, and Debian patches become tasks correctly."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # bench/ is not an installed package

from bench import memory_bench
from bench.memory_debian import (
    Counts,
    is_packaging,
    parse_patch,
    sdist_link,
    tasks_from_tree,
    upstream_version,
)

DATASETS = [memory_bench.DATA, *sorted(memory_bench.DEBIAN.glob("*.json.gz"))]


@pytest.mark.parametrize("path", DATASETS, ids=lambda p: p.name)
def test_vendored_dataset_schema(path: Path) -> None:
    data = json.loads(gzip.decompress(path.read_bytes()))
    assert set(data) == {"source", "blobs", "commits"}
    assert len(data["commits"]) >= 3
    for commit in data["commits"]:
        assert set(commit) == {"commit", "parent", "message", "files", "modified"}
        int(commit["commit"], 16)  # the bench splits tuning/held-out by the id's parity
        assert commit["message"].strip()
        assert commit["modified"], commit["commit"]
        assert set(commit["modified"]) <= set(commit["files"])
        assert all(blob in data["blobs"] for blob in commit["files"].values())
        assert not any(p.startswith(("debian/", ".pc/")) for p in commit["files"])


def test_debian_datasets_are_vendored() -> None:
    """The multi-repository rows need other repositories than this one."""
    assert len(DATASETS) >= 6


FORMAT_PATCH = """From 0123456789abcdef0123456789abcdef01234567 Mon Sep 17 00:00:00 2001
From: Dev <dev@example.org>
Date: Mon, 1 Jan 2024 00:00:00 +0000
Subject: [PATCH] Fix the parser on empty
 input

Empty input used to raise.

Signed-off-by: Dev <dev@example.org>
Bug-Debian: https://bugs.debian.org/1
---
 pkg/parser.py | 2 +-
 1 file changed, 1 insertion(+), 1 deletion(-)

diff --git a/pkg/parser.py b/pkg/parser.py
--- a/pkg/parser.py
+++ b/pkg/parser.py
@@ -1,2 +1,2 @@
 def parse(text):
-    return text.split()[0]
+    return text.split()[0] if text else None
"""

DEP3_PATCH = """Description: Use the standard timeout in the client
 The client ignored the configured timeout.
 .
 This fixes hanging calls.
Origin: upstream, https://github.com/example/pkg/commit/89abcdef0123456789abcdef0123456789abcdef
Author: Dev <dev@example.org>
Last-Update: 2024-01-02
--- a/pkg/client.py
+++ b/pkg/client.py
@@ -1 +1 @@
-TIMEOUT = None
+TIMEOUT = 30
"""

PACKAGING_PATCH = """Description: Use local objects.inv for intersphinx
Forwarded: not-needed
--- a/docs/conf.py
+++ b/docs/conf.py
@@ -1 +1 @@
-intersphinx = {"python": ("https://docs.python.org/3", None)}
+intersphinx = {"python": ("/usr/share/doc/python3/html", None)}
"""

BROKEN_PATCH = """Description: Does not apply
--- a/pkg/client.py
+++ b/pkg/client.py
@@ -1 +1 @@
-NOT THERE
+STILL NOT
"""


def test_parse_patch_messages_and_upstream_ids() -> None:
    mail = parse_patch(FORMAT_PATCH)
    assert mail.format_patch
    assert mail.message == "Fix the parser on empty input\n\nEmpty input used to raise."
    dep3 = parse_patch(DEP3_PATCH)
    assert dep3.upstream and dep3.upstream_sha == "89abcdef0123456789abcdef0123456789abcdef"
    assert dep3.message == (
        "Use the standard timeout in the client\n\nThe client ignored the configured timeout.\n\nThis fixes hanging calls."
    )
    assert is_packaging(parse_patch(PACKAGING_PATCH), "local-objects-inv.patch", ["docs/conf.py"])
    assert not is_packaging(dep3, "timeout.patch", ["pkg/client.py"])


def test_series_applied_in_order_gives_one_task_per_upstream_patch(tmp_path: Path) -> None:
    tree = tmp_path / "pkg-1.0"
    (tree / "pkg").mkdir(parents=True)
    (tree / "docs").mkdir()
    (tree / "pkg" / "parser.py").write_text("def parse(text):\n    return text.split()[0]\n")
    (tree / "pkg" / "client.py").write_text("TIMEOUT = None\n")
    (tree / "docs" / "conf.py").write_text('intersphinx = {"python": ("https://docs.python.org/3", None)}\n')
    (tree / "logo.png").write_bytes(b"\x89PNG\0\0binary")
    patches = tree / "debian" / "patches"
    patches.mkdir(parents=True)
    for name, text in (
        ("0001-parser.patch", FORMAT_PATCH),
        ("objects-inv.patch", PACKAGING_PATCH),
        ("broken.patch", BROKEN_PATCH),
        ("timeout.patch", DEP3_PATCH),
    ):
        (patches / name).write_text(text)
    (patches / "series").write_text(
        "0001-parser.patch\n# a comment\nobjects-inv.patch\nbroken.patch\ntimeout.patch\n"
    )
    (tree / "debian" / "control").write_text("Source: pkg\n")

    blobs: dict[str, str] = {}
    counts = Counts()
    commits = tasks_from_tree("pkg", "1.0-1", tree, blobs, counts)

    assert (counts.patches, counts.failed, counts.packaging, counts.tasks) == (4, 1, 1, 2)
    first, second = commits
    assert first["commit"] == "0123456789abcdef0123456789abcdef01234567"  # no upstream sha: the mail's
    assert second["commit"] == "89abcdef0123456789abcdef0123456789abcdef"
    assert first["modified"] == ["pkg/parser.py"] and second["modified"] == ["pkg/client.py"]
    assert set(first["files"]) == {"docs/conf.py", "pkg/client.py", "pkg/parser.py"}  # no debian/, no binary
    # The tree before the second task has the first patch (and the packaging one) applied.
    assert "if text else None" in blobs[second["files"]["pkg/parser.py"]]
    assert "/usr/share/doc" in blobs[second["files"]["docs/conf.py"]]
    assert blobs[second["files"]["pkg/client.py"]] == "TIMEOUT = None\n"
    assert "TIMEOUT = 30" in (tree / "pkg" / "client.py").read_text()
    assert subprocess.run(["patch", "--version"], capture_output=True).returncode == 0


def test_a_missing_orig_tarball_is_replaced_by_the_same_release_from_pypi() -> None:
    assert upstream_version("2:25.1.0-2+deb12u3") == "25.1.0"  # epoch and Debian revision dropped
    assert upstream_version("2.28.1+dfsg-1") == "2.28.1"  # repacked for Debian: same release
    assert upstream_version("0.20") == "0.20"  # native version
    page = (
        '<a href="https://files.example/W/Werkzeug-2.2.20.tar.gz#sha256=1">Werkzeug-2.2.20.tar.gz</a>'
        '<a href="https://files.example/W/Werkzeug-2.2.2-py3-none-any.whl#sha256=2">wheel</a>'
        '<a href="https://files.example/W/Werkzeug-2.2.2.tar.gz#sha256=3">Werkzeug-2.2.2.tar.gz</a>'
    )
    assert sdist_link(page, "werkzeug", "2.2.2") == "https://files.example/W/Werkzeug-2.2.2.tar.gz"
    assert sdist_link(page, "werkzeug", "2.2.3") is None


def test_drift_pairs_come_from_commits_with_a_body_and_pair_each_with_the_next() -> None:
    pairs = memory_bench.drift_pairs(memory_bench.datasets())
    assert len(pairs) >= 30
    for index, (intention, aligned, drifted) in enumerate(pairs):
        assert "\n" not in intention and aligned.split("\nFiles: ")[1]
        assert drifted == pairs[(index + 1) % len(pairs)][1] != aligned
