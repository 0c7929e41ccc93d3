"""Applier benchmarks: a large Apply, many edits on a large file, and the CI gate's overhead.

Every figure is compared with a baseline measured in the same run on the same machine:
- 1,000 small writes in one Apply (validation, governance, atomic writes, savepoint commit)
  against writing the same files with plain Python and committing them with git;
- 50 edits on a 10,000-line file (line edits, search/replace, one 50-hunk unified diff) against
  the same change written whole (FILE_MODE_MODIFY);
- RunChecks (pytest with a JUnit report, baseline comparison, re-run of failures) against the
  bare pytest command in the same workspace.
"""

from __future__ import annotations

import difflib
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from autopack_applier.checks import CheckRunner
from autopack_applier.edits import LineAction, LineEdit, SearchReplace, UnifiedDiff
from autopack_applier.gate import CheckGate
from autopack_applier.gitrepo import Git
from autopack_applier.store import ApplierStore
from autopack_applier.workspace import FileOperation, Mode, WorkspaceManager
from autopack_common.database import create_db_engine, upgrade_schema

from bench import Section

BIG_LINES = 10_000
EDITS = 50
SMALL_FILES = 1_000
PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"]
T = TypeVar("T")


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


def _repo(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    for relative, content in files.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content)
    _git(root, "init", "-q", "-b", "main")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "initial")
    return root


def _median_ms(
    action: Callable[[T], None], repeats: int, setup: Callable[[int], T] = lambda attempt: attempt
) -> float:
    """Median wall time of ``action(setup(i))`` over ``repeats`` calls (setup untimed), in ms."""
    samples = []
    for attempt in range(repeats):
        prepared = setup(attempt)
        started = time.perf_counter()
        action(prepared)
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def _row(name: str, measured: float, baseline: float, note: str) -> list[str]:
    return [name, f"{measured:,.0f}", f"{baseline:,.0f}", f"{measured / baseline:.2f}x", note]


def run(quick: bool = False) -> list[Section]:
    repeats = 1 if quick else 3
    with tempfile.TemporaryDirectory(prefix="applier-bench-") as temporary:
        root = Path(temporary)
        engine = create_db_engine(f"sqlite:///{root / 'applier.db'}")
        upgrade_schema(engine, "autopack_applier.migrations", "alembic_version_applier")
        store = ApplierStore(engine)
        manager = WorkspaceManager(root / "workspaces", store)
        try:
            rows = [
                *_writes(root, manager, repeats),
                *_edits(root, manager, repeats),
                *_checks(root, manager, store, repeats),
            ]
        finally:
            engine.dispose()
    section = Section(
        title="Applier: governed apply and CI gate against plain baselines (same run)",
        columns=["case", "applier ms", "baseline ms", "ratio", "baseline"],
        rows=rows,
        notes=[
            f"median of {repeats} run(s); the applier rows include validation, governance, the savepoint "
            "commit and the apply log (SQLite); workspace preparation is not timed in the edit rows",
        ],
    )
    return [section]


def _writes(root: Path, manager: WorkspaceManager, repeats: int) -> list[list[str]]:
    source = _repo(root / "writes-src", {"README.md": "# bench\n"})

    def governed(attempt: int) -> None:
        run_id = f"writes-{attempt}"
        manager.prepare(run_id, str(source))
        operations = [
            FileOperation(f"pkg/m{index}.py", Mode.CREATE, f"VALUE = {index}\n")
            for index in range(SMALL_FILES)
        ]
        manager.apply(run_id, "p1", ["pkg/"], [], operations)

    def plain(attempt: int) -> None:
        target = root / f"plain-writes-{attempt}"
        _git(root, "clone", "-q", str(source), str(target))
        for index in range(SMALL_FILES):
            path = target / "pkg" / f"m{index}.py"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"VALUE = {index}\n")
        _git(target, "add", "-A")
        _git(target, "commit", "-q", "-m", "plain")

    baseline = _median_ms(plain, repeats)
    measured = _median_ms(governed, repeats)
    return [
        _row(
            f"{SMALL_FILES:,} small .py writes, one Apply",
            measured,
            baseline,
            "clone + write + git add/commit",
        )
    ]


def _edits(root: Path, manager: WorkspaceManager, repeats: int) -> list[list[str]]:
    original = "".join(f"line_{number} = {number}\n" for number in range(1, BIG_LINES + 1))
    source = _repo(root / "edits-src", {"big.py": original})
    step = BIG_LINES // EDITS
    targets = [1 + index * step for index in range(EDITS)]
    lines = original.splitlines(keepends=True)
    for number in targets:
        lines[number - 1] = f"line_{number} = -{number}\n"
    edited = "".join(lines)
    diff = "".join(
        difflib.unified_diff(original.splitlines(True), edited.splitlines(True), "a/big.py", "b/big.py")
    )
    kinds: dict[str, tuple[Any, ...]] = {
        "line edits": tuple(
            LineEdit(LineAction.REPLACE, number, number, f"line_{number} = -{number}\n") for number in targets
        ),
        "search/replace": tuple(
            SearchReplace(f"line_{number} = {number}\n", f"line_{number} = -{number}\n") for number in targets
        ),
        "unified diff (50 hunks)": (UnifiedDiff(diff),),
    }
    rows: list[list[str]] = []
    counter = iter(range(10_000))

    def prepared(attempt: int) -> str:
        run_id = f"edits-{next(counter)}"
        manager.prepare(run_id, str(source))
        return run_id

    def whole(run_id: str) -> None:
        manager.apply(run_id, "p1", ["big.py"], [], [FileOperation("big.py", Mode.MODIFY, edited)])

    baseline = _median_ms(whole, repeats, prepared)
    for name, edits in kinds.items():

        def edit(run_id: str, edits: tuple[Any, ...] = edits) -> None:
            manager.apply(run_id, "p1", ["big.py"], [], [FileOperation("big.py", Mode.EDIT, edits=edits)])
            assert (Path(manager.record(run_id).path) / "big.py").read_text() == edited

        rows.append(
            _row(
                f"{EDITS} edits on a {BIG_LINES:,}-line file: {name}",
                _median_ms(edit, repeats, prepared),
                baseline,
                "the same change as FILE_MODE_MODIFY",
            )
        )
    return rows


def _checks(root: Path, manager: WorkspaceManager, store: ApplierStore, repeats: int) -> list[list[str]]:
    tests = "".join(f"def test_{number}():\n    assert {number} >= 0\n\n\n" for number in range(200))
    failing = "def test_known_bug_one():\n    assert False\n\n\ndef test_known_bug_two():\n    assert False\n"
    runner = CheckRunner()
    gate = CheckGate(runner, store, manager.scratch)
    check = runner.prepare(PYTEST, 120)
    rows: list[list[str]] = []
    cases = {
        "RunChecks, 200 passing tests": (
            {"tests/test_many.py": tests},
            "bare pytest; the gate adds a JUnit report",
        ),
        "RunChecks, 200 passing + 2 known failures": (
            {"tests/test_many.py": tests, "tests/test_known.py": failing},
            "bare pytest; the gate adds a JUnit report and one re-run of the 2 failures",
        ),
    }
    for index, (name, (files, note)) in enumerate(cases.items()):
        source = _repo(root / f"checks-src-{index}", files)
        run_id = f"checks-{index}"
        manager.prepare(run_id, str(source))
        workspace = Path(manager.record(run_id).path)
        base = Git(workspace).head()

        def bare(attempt: int, workspace: Path = workspace) -> None:
            subprocess.run([sys.executable, *PYTEST[1:]], cwd=workspace, capture_output=True, check=False)

        def gated(attempt: int, run_id: str = run_id, workspace: Path = workspace, base: str = base) -> None:
            gate.run(run_id, workspace, base, PYTEST, check)

        gated(0)  # the first run records the baseline
        baseline = _median_ms(bare, repeats)
        rows.append(_row(name, _median_ms(gated, repeats), baseline, note))
    return rows
