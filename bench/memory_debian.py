"""Build memory-bench datasets from Debian source packages' upstream patches.

No git history of other projects is reachable from the bench machine, but the Debian mirror is:
a source package's ``debian/patches/`` carries upstream fixes (cherry-picked commits, DEP-3
``Origin: upstream``/``backport`` patches) as real changes to a real repository. Applying the
series in order over the upstream tree gives, for each upstream patch, the tree before it, the
files it modified and its message: the same task as a commit in ``memory_history.py``, in the
same JSON schema (one ``.json.gz`` per package, ``source`` = package name).

    python -m bench.memory_debian bench/data/debian jinja2 python-werkzeug ...
    python -m bench.memory_debian bench/data/debian --suite     # the vendored selection

Downloads are cached outside the repository (``~/.cache/autopack-bench/debian``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from bench.memory_history import text_of

CACHE = Path.home() / ".cache" / "autopack-bench" / "debian"
MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
PYPI = "https://pypi.org/simple"
# (suite name, Sources index URL, base URL the stanza's Directory is relative to)
SUITES = (
    ("bookworm", f"{MIRROR}/dists/bookworm/main/source/Sources.xz", MIRROR),
    ("bookworm-security", f"{SECURITY}/dists/bookworm-security/main/source/Sources.xz", SECURITY),
    ("trixie", f"{MIRROR}/dists/trixie/main/source/Sources.xz", MIRROR),
)
MAX_TREE_FILES = 8_000
# The vendored selection (``--suite``): Python projects whose Debian packages carry upstream fixes.
# Chosen from ~80 candidates: upstream patches that the mirror serves, that apply and have a message,
# trees of 100+ files, smallest datasets first to stay near 6 MB. keystone (12 tasks, 2.2 MB), swift (14,
# 3.2 MB), ironic (12, 4.2 MB), pillow (6, 1.4 MB), mercurial (10, 6.6 MB) and python-django (33, 12.9 MB)
# build too (``python -m bench.memory_debian <dir> keystone swift``) for ``AUTOPACK_BENCH_HISTORY``.
SUITE_PACKAGES = (
    "starlette",
    "jinja2",
    "python-urllib3",
    "python-authlib",
    "python-tornado",
    "python-cryptography",
    "tryton-server",
    "designate",
    "lxml",
)

_TRAILER_KEYS = {
    "signed-off-by", "bug-debian", "bug-ubuntu", "bug", "forwarded", "last-update", "reviewed-by",
    "origin", "applied-upstream", "author", "from", "date", "gbp-pq", "acked-by", "co-authored-by",
    "change-id", "tested-by", "reported-by", "cc", "patch-name", "reviewed-on", "subject",
    "description", "index", "upstream-status", "bug-upstream", "bug-redhat", "bug-launchpad",
}  # fmt: skip
_TRAILER = re.compile(r"^([A-Za-z][A-Za-z0-9-]*):\s")
_SHA = re.compile(r"\b([0-9a-f]{40})\b")
_COMMIT_URL = re.compile(r"/commits?/([0-9a-f]{7,40})\b")
_CHERRY = re.compile(r"cherry[- ]picked from commit ([0-9a-f]{7,40})", re.IGNORECASE)
# Patches that are Debian packaging, not a change a developer of the project made.
_PACKAGING = re.compile(
    r"objects\.inv|intersphinx|privacy|network access|needs? (the )?network|requir\w* (the )?network"
    r"|internet|\bdebian\b|lintian|reproducib|embedded cop|system (copy|librar)|\bdfsg\b"
    r"|(skip|disable)\w* (some |a |the |flaky |failing )?tests?\b|\bsphinx\b|shebang|install path"
    r"|use (the )?system|\bbuild[- ]?system\b|remove (google|github|travis|badges?)|mathjax|fonts?\b"
    r"|\b(ease|relax|bump|allow)\b.*\b(version|dependency)",
    re.IGNORECASE,
)
# Without upstream evidence, a message naming the distribution or its ports is a Debian change.
_DISTRIBUTION = re.compile(
    r"\bdebian\b|debconf|\bhurd\b|kfreebsd|pkg_resources|(already|package) installed|buildd|autopkgtest",
    re.IGNORECASE,
)
_PACKAGING_FILES = {
    "setup.py", "setup.cfg", "pyproject.toml", "MANIFEST.in", "tox.ini", "Makefile", "Cargo.toml", "Cargo.lock",
    "requirements.txt", "test-requirements.txt", "requirements-dev.txt",
}  # fmt: skip
# A message that says nothing about the change (GitHub's security-advisory merges, a bare CVE id)
# cannot be a task's text: such patches are counted and left out.
_UNINFORMATIVE = re.compile(
    r"(Merge (commit|pull request|branch)\b[^\n]*|(Fix(es)? )?CVE-\d+-\d+[.:]?|Backport GHSA-[\w-]+)",
    re.IGNORECASE,
)


@dataclass
class PatchInfo:
    """A patch's header as far as the task needs it."""

    message: str
    upstream_sha: str | None
    upstream: bool  # explicit evidence: Origin upstream/backport, Applied-Upstream, cherry-pick line
    format_patch: bool


@dataclass
class Counts:
    patches: int = 0
    failed: int = 0
    packaging: int = 0
    no_modified: int = 0
    uninformative: int = 0
    tasks: int = 0
    notes: list[str] = field(default_factory=list)


def _fetch(url: str, target: Path) -> Path:
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with urllib.request.urlopen(url, timeout=300) as response:
            data = response.read()
        partial = target.with_suffix(target.suffix + ".part")
        partial.write_bytes(data)
        partial.rename(target)
    return target


def _stanzas(index: Path) -> Iterable[dict[str, str]]:
    text = lzma.decompress(index.read_bytes()).decode("utf-8", "replace")
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line[:1] in (" ", "\t") and key:
                fields[key] += "\n" + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            yield fields


def find_versions(package: str) -> list[tuple[str, dict[str, str], str]]:
    """(suite, stanza, base URL) for every suite index that has the package."""
    found = []
    for suite, url, base in SUITES:
        index = _fetch(url, CACHE / f"{suite}.Sources.xz")
        for stanza in _stanzas(index):
            if stanza["Package"] == package:
                found.append((suite, stanza, base))
    return found


def _files(stanza: dict[str, str]) -> list[str]:
    """The source package's file names (security indexes only list checksums, not ``Files``)."""
    listing = stanza.get("Files") or stanza.get("Checksums-Sha256", "")
    return [line.split()[-1] for line in listing.splitlines() if line.strip()]


def upstream_version(version: str) -> str:
    """Debian ``[epoch:]upstream[-revision]`` -> the upstream release (repack suffixes dropped)."""
    upstream = version.split(":", 1)[-1].rsplit("-", 1)[0]
    return re.split(r"[+~](?:dfsg|ds|repack)", upstream, maxsplit=1)[0]


def _normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def sdist_link(page: str, project: str, version: str) -> str | None:
    """The ``project-version.tar.gz`` link of a simple-index page (names compared normalised)."""
    wanted = _normalized(f"{project}-{version}")
    for url in re.findall(r'href="([^"#]+)', page):
        filename = url.rsplit("/", 1)[-1]
        if filename.endswith(".tar.gz") and _normalized(filename.removesuffix(".tar.gz")) == wanted:
            return url
    return None


def pypi_sdist_url(project: str, version: str) -> str | None:
    """The sdist of ``project==version`` from PyPI's simple index, or None."""
    try:
        with urllib.request.urlopen(f"{PYPI}/{_normalized(project)}/", timeout=60) as response:
            page = response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError:
        return None
    return sdist_link(page, project, version)


def download(stanza: dict[str, str], base: str, debian_only: bool = False) -> Path:
    """The package's tarballs in the cache folder (the .dsc is not needed: tarfile unpacks them).

    The mirror reached from the bench machine lacks many orig tarballs; the upstream release's
    sdist from PyPI stands in for a missing one (same release, though an sdist may leave out
    tests or docs, so some patches then fail to apply and are counted as such).
    """
    folder = CACHE / "pool" / stanza["Package"] / stanza["Version"]
    for name in _files(stanza):
        if ".tar." in name and not name.endswith(".asc") and (not debian_only or ".debian.tar." in name):
            try:
                _fetch(f"{base}/{stanza['Directory']}/{name}", folder / name)
            except urllib.error.HTTPError:
                if ".orig.tar." not in name:
                    raise
                version = upstream_version(stanza["Version"])
                url = pypi_sdist_url(stanza["Package"].removeprefix("python-"), version)
                if url is None:
                    raise
                _fetch(url, folder / f"{stanza['Package']}_{version}.orig.tar.gz")
    return folder


def unpack(folder: Path, target: Path) -> None:
    """orig tarball at the root, orig-<component> tarballs in <component>/, debian tarball in debian/."""
    for archive_path in sorted(folder.glob("*.tar.*")):
        name = archive_path.name
        if name.endswith((".asc", ".part")):
            continue
        if ".debian.tar." in name:
            into, strip = target, 0
        elif ".orig-" in name:
            into, strip = target / name.split(".orig-", 1)[1].split(".tar.", 1)[0], 1
        elif ".orig.tar." in name:
            into, strip = target, 1
        else:
            continue
        with tarfile.open(archive_path) as archive:
            members = []
            for member in archive.getmembers():
                parts = member.name.split("/")[strip:]
                if not parts or not (member.isfile() or member.isdir()):
                    continue
                member.name = "/".join(parts)
                members.append(member)
            archive.extractall(into, members=members, filter="data")


# ---------------------------------------------------------------- patch headers


def _header(text: str) -> tuple[list[str], bool]:
    """The lines before the diff, and whether the patch is a ``git format-patch`` mail."""
    lines = text.splitlines()
    format_patch = bool(lines) and bool(re.match(r"^From [0-9a-f]{40} ", lines[0]))
    header: list[str] = []
    for line in lines:
        if line.startswith(("diff ", "Index: ", "--- ", "===")) or line == "---":
            break
        header.append(line)
    return header, format_patch


def parse_patch(text: str) -> PatchInfo:
    """Message, upstream sha and upstream evidence from a format-patch mail or DEP-3 header."""
    header, format_patch = _header(text)
    joined = "\n".join(header)
    upstream_sha = None
    for pattern in (_CHERRY, _COMMIT_URL):
        match = pattern.search(joined)
        if match and len(match.group(1)) == 40:
            upstream_sha = match.group(1)
            break
    if upstream_sha is None and format_patch:
        upstream_sha = header[0].split()[
            1
        ]  # the mail's commit (a cherry-pick's own id when exported by gbp pq)
    upstream = bool(
        re.search(r"^Origin:\s*(upstream|backport)", joined, re.IGNORECASE | re.MULTILINE)
        or re.search(r"^Applied-Upstream:", joined, re.IGNORECASE | re.MULTILINE)
        or _CHERRY.search(joined)
        or re.search(r"^Origin:\s*\S*(github|gitlab)\S*/commit", joined, re.IGNORECASE | re.MULTILINE)
    )
    subject, body = "", []
    if format_patch:
        in_headers, key = True, ""
        for line in header[1:]:
            if in_headers:
                if not line.strip():
                    in_headers = False
                elif line[:1] in (" ", "\t") and key == "subject":
                    subject += " " + line.strip()
                else:
                    key = line.partition(":")[0].lower()
                    if key == "subject":
                        subject = line.partition(":")[2].strip()
                continue
            body.append(line)
        subject = re.sub(r"^(\[[^\]]*\]\s*)+", "", subject)
    else:
        key = ""
        for line in header:
            match = _TRAILER.match(line)
            if match and match.group(1).lower() in ("description", "subject"):
                key = "description"
                subject = line.partition(":")[2].strip()
            elif match:
                key = match.group(1).lower()
            elif line[:1] in (" ", "\t") and key == "description":
                body.append("" if line.strip() == "." else line.strip())
            elif not line.strip():
                key = "" if key != "description" else key
            elif key not in ("description",) and not match:
                body.append(line)  # free text before/after the fields
    return PatchInfo(_message(subject, body), upstream_sha, upstream, format_patch)


def _message(subject: str, body: list[str]) -> str:
    subject = re.sub(r"^(\[[^\]]*PATCH[^\]]*\]\s*)+", "", subject.strip())
    kept: list[str] = []
    skipping = False
    for line in body:
        match = _TRAILER.match(line.strip())
        key = match.group(1).lower() if match else ""
        if match and (key in _TRAILER_KEYS or key.startswith(("x-", "bug-"))):
            continue
        if _CHERRY.search(line) or line.startswith("(cherry picked"):
            continue
        if re.match(r"^(Backported|Rebased|Refreshed)( by)?:", line.strip(), re.IGNORECASE):
            skipping = True  # a backporter's note and its list of context changes, not the change's message
            continue
        if skipping and (
            not line.strip() or line.lstrip().startswith(("-", "*")) or line.strip() == "Changes:"
        ):
            continue
        skipping = False
        kept.append(line.rstrip())
    text = "\n".join([subject.strip(), "", *kept]).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def patch_paths(text: str, strip: int) -> list[str]:
    """Paths a unified diff touches (the new side, ``strip`` leading components removed)."""
    paths = []
    for line in text.splitlines():
        if line.startswith("+++ "):
            raw = line[4:].split("\t")[0].strip()
            if raw == "/dev/null":
                continue
            parts = raw.split("/")
            paths.append("/".join(parts[strip:]))
    return paths


def is_packaging(info: PatchInfo, name: str, paths: list[str]) -> bool:
    """Debian-only changes: debian/ files, packaging metadata only, or a packaging-ish message."""
    real = [p for p in paths if not p.startswith("debian/")]
    if not real:
        return True
    if all(p.split("/")[-1] in _PACKAGING_FILES or p.startswith(("doc/", "docs/")) for p in real):
        return True
    first = info.message.split("\n", 1)[0]
    if _PACKAGING.search(first) or _PACKAGING.search(name):
        return True
    if info.upstream:
        return False
    # No upstream evidence: distribution words anywhere, or a change to tests only (Debian's test tweaks).
    return bool(_DISTRIBUTION.search(info.message)) or all(_is_test(p) for p in real)


def _is_test(path: str) -> bool:
    parts = path.split("/")
    return (
        any(part in ("test", "tests", "testing") for part in parts[:-1])
        or parts[-1].startswith(("test_", "conftest"))
        or parts[-1].endswith("_test.py")
    )


# ---------------------------------------------------------------- tree walking


def _blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _read(root: Path, rel: str, blobs: dict[str, str]) -> str | None:
    """The blob id of a text file (stored in ``blobs``), or None for binary/missing files."""
    path = root / rel
    if path.is_symlink() or not path.is_file():
        return None
    data = path.read_bytes()
    text = text_of(data)
    if text is None:
        return None
    sha = _blob_id(data)
    blobs.setdefault(sha, text)
    return sha


def snapshot(root: Path, blobs: dict[str, str]) -> dict[str, str]:
    """Every text file of the tree but ``debian/`` and ``.pc/``, path -> blob id."""
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if rel.split("/")[0] in ("debian", ".pc", ".git"):
            continue
        sha = _read(root, rel, blobs)
        if sha is not None:
            files[rel] = sha
    return files


def series(tree: Path) -> list[tuple[str, int]]:
    """(patch name, strip level) in ``debian/patches/series`` order."""
    path = tree / "debian" / "patches" / "series"
    if not path.exists():
        return []
    entries = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, *options = line.split()
        strip = next((int(o[2:]) for o in options if re.fullmatch(r"-p\d", o)), 1)
        entries.append((name, strip))
    return entries


def tasks_from_tree(
    package: str, version: str, tree: Path, blobs: dict[str, str], counts: Counts
) -> list[dict]:
    """Apply the series in order over ``tree``; one task per upstream patch that applied."""
    commits = []
    files = snapshot(tree, blobs)
    for position, (name, strip) in enumerate(series(tree)):
        counts.patches += 1
        patch_file = tree / "debian" / "patches" / name
        raw = patch_file.read_bytes().decode("utf-8", "replace")
        command = ["patch", f"-p{strip}", "--batch", "--forward", "--no-backup-if-mismatch", "-r", "-", "-s"]
        dry = subprocess.run([*command, "--dry-run", "-i", str(patch_file)], cwd=tree, capture_output=True)
        if dry.returncode != 0:
            counts.failed += 1
            continue
        subprocess.run([*command, "-i", str(patch_file)], cwd=tree, capture_output=True, check=True)
        touched = sorted(set(patch_paths(raw, strip)))
        before = files
        after = dict(before)
        for rel in touched:
            sha = _read(tree, rel, blobs)
            if sha is None:
                after.pop(rel, None)
            elif not rel.startswith(("debian/", ".pc/")):
                after[rel] = sha
        files = after
        info = parse_patch(raw)
        if is_packaging(info, name, touched):
            counts.packaging += 1
            continue
        if not info.message or _UNINFORMATIVE.fullmatch(info.message.strip()):
            counts.uninformative += 1
            continue
        modified = sorted(p for p in touched if p in before and p in after and before[p] != after[p])
        if not modified:
            counts.no_modified += 1
            continue
        stable = hashlib.sha1(f"{package} {version} {position}".encode()).hexdigest()
        commit = info.upstream_sha or hashlib.sha1(f"{package} {name}".encode()).hexdigest()
        commits.append(
            {
                "commit": commit,
                "parent": stable,
                "message": info.message,
                "files": before,
                "modified": modified,
            }
        )
        counts.tasks += 1
    return commits


def upstream_count(folder: Path) -> int:
    """Patches in the debian tarball that look like upstream changes (to pick among versions)."""
    debian = next(
        (p for p in folder.iterdir() if ".debian.tar." in p.name and not p.name.endswith(".asc")), None
    )
    if debian is None:
        return 0
    count = 0
    with tarfile.open(debian) as archive:
        members = {m.name: m for m in archive.getmembers() if m.isfile()}
        if "debian/patches/series" not in members:
            return 0
        names = archive.extractfile(members["debian/patches/series"]).read().decode("utf-8", "replace")  # type: ignore[union-attr]
        for line in names.splitlines():
            line = line.split("#", 1)[0].strip()
            member = members.get(f"debian/patches/{line.split()[0]}") if line else None
            if member is None:
                continue
            raw = archive.extractfile(member).read().decode("utf-8", "replace")  # type: ignore[union-attr]
            info = parse_patch(raw)
            if not is_packaging(info, line, patch_paths(raw, 1)):
                count += 1
    return count


def build_package(package: str) -> tuple[dict[str, object], Counts]:
    """The dataset of one source package: the version with most upstream patches."""
    versions = find_versions(package)
    if not versions:
        raise RuntimeError(f"{package}: not in any suite index")
    scored = []
    for order, (suite, stanza, base) in enumerate(versions):
        try:
            folder = download(stanza, base)
        except urllib.error.HTTPError as error:  # the mirror lacks some pool files
            print(f"  {package} {stanza['Version']} ({suite}): {error}", file=sys.stderr)
            continue
        score = upstream_count(folder)
        print(f"  {package} {stanza['Version']} ({suite}): {score} upstream-looking patches", file=sys.stderr)
        scored.append((score, -order, suite, stanza, folder))
    if not scored:
        raise RuntimeError(f"{package}: no version downloadable")
    _score, _order, suite, stanza, folder = max(scored, key=lambda item: item[:2])
    work = CACHE / "work" / package
    shutil.rmtree(work, ignore_errors=True)
    unpack(folder, work)
    blobs: dict[str, str] = {}
    counts = Counts()
    counts.notes.append(f"{package} {stanza['Version']} from {suite}")
    commits = tasks_from_tree(package, stanza["Version"], work, blobs, counts)
    used = {sha for commit in commits for sha in commit["files"].values()}
    data = {"source": package, "blobs": {sha: blobs[sha] for sha in sorted(used)}, "commits": commits}
    shutil.rmtree(work, ignore_errors=True)
    return data, counts


def write(data: dict[str, object], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(gzip.compress(json.dumps(data, sort_keys=True).encode("utf-8"), mtime=0))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory_debian", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("out", type=Path, help="Directory for <package>.json.gz (one dataset per package).")
    parser.add_argument("packages", nargs="*", help="Debian source package names.")
    parser.add_argument("--suite", action="store_true", help="Build the vendored selection.")
    args = parser.parse_args(argv)
    packages = list(args.packages) + (list(SUITE_PACKAGES) if args.suite else [])
    for package in packages:
        try:
            data, counts = build_package(package)
        except (RuntimeError, subprocess.CalledProcessError, OSError, tarfile.TarError) as error:
            print(f"{package}: skipped ({error})", file=sys.stderr)
            continue
        commits = data["commits"]
        trees = sorted(len(c["files"]) for c in commits)  # type: ignore[union-attr]
        median = trees[len(trees) // 2] if trees else 0
        if median > MAX_TREE_FILES:
            print(f"{package}: skipped ({median} text files > {MAX_TREE_FILES})", file=sys.stderr)
            continue
        if not commits:
            print(f"{package}: no tasks ({counts})", file=sys.stderr)
            continue
        target = args.out / f"{package}.json.gz"
        write(data, target)
        print(
            f"{package}: {counts.notes[0]}; {counts.patches} patches, {counts.failed} failed to apply, "
            f"{counts.packaging} packaging, {counts.uninformative} uninformative message, "
            f"{counts.no_modified} no modified text file -> {counts.tasks} tasks; "
            f"{median} files per tree; {len(data['blobs'])} blobs; {target.stat().st_size} bytes"  # type: ignore[arg-type]
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
