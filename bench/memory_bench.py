"""Memory benchmarks: context-selection recall on real commits against BM25, and SelectContext latency.

Recall: every commit of a real repository's history is a task (``bench/memory_history.py``
builds the dataset; the vendored one is this repository's own history, ``bench/data/
autopack_history.json.gz``, or ``AUTOPACK_BENCH_HISTORY`` for another one). The commit message is
the task, the files it modified (that existed before it) are what had to be in context, and
every text file at the parent commit is a candidate. Recall is the share of those files kept,
averaged over commits, at 8k / 16k / 32k token budgets (``ceil(chars / 4)`` per file, the
service's estimate). Against, in the same run and over the same candidates:

* BM25: ``bm25s`` with its standard tokenizer and English stop words over path + content, files
  packed greedily by score (what a plain BM25 retriever gives);
* random: files in a seeded random order, packed the same way (mean of 5 seeds).

The service is measured through its domain (``ContextSelector``), lexical (no embeddings) and
hybrid (the packaged MiniLM). Plain rows count whole files kept (the default: outlines only get
what whole files leave). "10% outlines" rows hold 10% of the budget back for outlines of files
too big to keep whole; "kept+outlines" also counts those. Commits are split by the parity of
their id into "tuning" and "held-out": settings (RRF k, packing exponent, semantic top-k) were
picked by their tuning-half figures, though both halves were printed while developing, so the
held-out half is only a partial guard against overfitting this one repository.

Latency: SelectContext over a real gRPC channel with 100 candidate files taken from the
dataset's last snapshot. Cold = a fresh service state for every call (empty embedding cache,
no memoised analyses; the model loaded, as after start-up); warm = the same request again.
"""

from __future__ import annotations

import gzip
import json
import os
import random
import re
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import bm25s
import numpy as np

from bench import Section

DATA = Path(__file__).resolve().parent / "data" / "autopack_history.json.gz"
DEBIAN = Path(__file__).resolve().parent / "data" / "debian"
QUICK_TASKS_PER_DATASET = 3
BUDGETS = (8_000, 16_000, 32_000)
RANDOM_SEEDS = 5
LATENCY_FILES = 100
OUTLINE_SHARE = 0.1


@dataclass(frozen=True)
class Task:
    commit: str
    message: str
    paths: list[str]
    contents: list[str]
    modified: set[str]

    @property
    def held_out(self) -> bool:
        return int(self.commit, 16) % 2 == 1


def load_tasks(path: Path) -> tuple[str, list[Task]]:
    data = json.loads(gzip.decompress(path.read_bytes()))
    blobs = data["blobs"]
    tasks = []
    for commit in data["commits"]:
        paths = sorted(commit["files"])
        tasks.append(
            Task(
                commit=commit["commit"],
                message=commit["message"],
                paths=paths,
                contents=[blobs[commit["files"][p]] for p in paths],
                modified=set(commit["modified"]),
            )
        )
    return str(data.get("source", path.name)), tasks


def _tokens(text: str) -> int:
    return -(-len(text) // 4)


def greedy(paths: Sequence[str], contents: Sequence[str], scores: Sequence[float], budget: int) -> set[str]:
    """Files by score (ties by path), each kept if it still fits."""
    order = sorted(range(len(paths)), key=lambda i: (-scores[i], paths[i]))
    kept, used = set(), 0
    for index in order:
        size = _tokens(contents[index])
        if used + size <= budget:
            kept.add(paths[index])
            used += size
    return kept


_BM25_WORD = re.compile(r"(?u)\b\w\w+\b")


def bm25_baseline(task: Task) -> list[float]:
    corpus = bm25s.tokenize(
        [f"{p}\n{c}" for p, c in zip(task.paths, task.contents, strict=True)],
        stopwords="en",
        show_progress=False,
    )
    retriever = bm25s.BM25()
    retriever.index(corpus, show_progress=False)
    query = [word for word in _BM25_WORD.findall(task.message.lower()) if word in retriever.vocab_dict]
    if not query:
        return [0.0] * len(task.paths)
    return retriever.get_scores(query).tolist()


def _recall(kept: set[str], task: Task) -> float:
    return len(kept & task.modified) / len(task.modified)


def datasets() -> list[Path]:
    """``AUTOPACK_BENCH_HISTORY`` (colon-separated files), else the own history and every Debian dataset."""
    listed = os.environ.get("AUTOPACK_BENCH_HISTORY")
    if listed:
        return [Path(part) for part in listed.split(":") if part]
    return [DATA, *sorted(DEBIAN.glob("*.json.gz"))]


def subsample(tasks: list[Task], limit: int) -> list[Task]:
    """At most ``limit`` tasks, the same ones every run (lowest commit ids), in dataset order."""
    if len(tasks) <= limit:
        return tasks
    chosen = {task.commit for task in sorted(tasks, key=lambda t: t.commit)[:limit]}
    return [task for task in tasks if task.commit in chosen]


# results[method][budget] -> list of (held_out, recall)
Results = dict[str, dict[int, list[tuple[bool, float]]]]


def measure(tasks: Sequence[Task], selectors: dict[str, object]) -> Results:
    """Recall of BM25, random and every selector on every task at every budget."""
    results: Results = {}

    def add(method: str, budget: int, task: Task, value: float) -> None:
        results.setdefault(method, {}).setdefault(budget, []).append((task.held_out, value))

    from autopack_memory.selection import Candidate

    for task in tasks:
        baseline = bm25_baseline(task)
        candidates = [Candidate(p, c) for p, c in zip(task.paths, task.contents, strict=True)]
        for budget in BUDGETS:
            add("BM25", budget, task, _recall(greedy(task.paths, task.contents, baseline, budget), task))
            randoms = []
            for seed in range(RANDOM_SEEDS):
                rng = random.Random(seed)
                scores = [rng.random() for _ in task.paths]
                randoms.append(_recall(greedy(task.paths, task.contents, scores, budget), task))
            add("random", budget, task, statistics.fmean(randoms))
            for name, selector in selectors.items():
                selection = selector.select(task.message, candidates, budget)  # type: ignore[attr-defined]
                add(name, budget, task, _recall({choice.path for choice in selection.kept}, task))
            # The outline trade-off: 10% of the budget held back for outlines of files too big to keep.
            name, selector = list(selectors.items())[-1]
            selection = selector.select(task.message, candidates, budget, outline_share=OUTLINE_SHARE)  # type: ignore[attr-defined]
            kept = {choice.path for choice in selection.kept}
            outlined = {choice.path for choice in selection.summarized}
            add(f"{name}, 10% outlines (kept)", budget, task, _recall(kept, task))
            add(f"{name}, 10% outlines (kept+outlines)", budget, task, _recall(kept | outlined, task))
    return results


def _ratios(values: Sequence[float], bases: Sequence[float]) -> list[float]:
    return [value / base if base else float("nan") for value, base in zip(values, bases, strict=True)]


def recall_section(quick: bool) -> list[Section]:
    from autopack_memory.selection import ContextSelector

    scratch = tempfile.TemporaryDirectory()
    embedder = _embedder(_cache_engine(Path(scratch.name) / "cache.db"))
    selectors: dict[str, object] = {"memory lexical": ContextSelector(None)}
    if embedder is not None:
        selectors["memory hybrid"] = ContextSelector(embedder, max_embeddings_per_call=-1)
    measured: list[tuple[str, list[Task], Results]] = []
    for path in datasets():
        source, tasks = load_tasks(path)
        if quick:
            tasks = tasks[-12:] if not measured else subsample(tasks, QUICK_TASKS_PER_DATASET)
        measured.append((source, tasks, measure(tasks, selectors)))
    scratch.cleanup()

    source, tasks, results = measured[0]
    section = Section(
        title=f"Memory: context recall on {len(tasks)} real commits of {source} (message -> modified files)",
        columns=[
            "method",
            "split",
            *(f"recall@{b // 1000}k" for b in BUDGETS),
            *(f"x BM25 @{b // 1000}k" for b in BUDGETS),
        ],
    )
    for split, keep in (("all", lambda h: True), ("tuning", lambda h: not h), ("held-out", lambda h: h)):
        if not any(keep(task.held_out) for task in tasks):
            continue  # a small dataset may have no commit on one side of the split
        means = {
            method: [statistics.fmean(v for h, v in by_budget[b] if keep(h)) for b in BUDGETS]
            for method, by_budget in results.items()
        }
        count = sum(1 for task in tasks if keep(task.held_out))
        for method, values in means.items():
            ratios = _ratios(values, means["BM25"])
            section.rows.append(
                [method, f"{split} ({count})", *(f"{v:.3f}" for v in values), *(f"{r:.2f}" for r in ratios)]
            )
    section.notes.append(
        "Recall counts whole files kept within the budget (the default: outlines only in what whole files leave). "
        "'10% outlines': summary_budget_percent=10; 'kept+outlines' also counts files given as their outline "
        "(signatures) because they did not fit whole. BM25 = bm25s over path+content, greedy by score."
    )
    if embedder is None:
        section.notes.append("hybrid rows missing: the MiniLM model could not be loaded")
    sections = [section]
    if len(measured) > 1:
        sections.append(_repositories_section(measured))
    return sections


def _repositories_section(measured: list[tuple[str, list[Task], Results]]) -> Section:
    """Per-repository rows, the pooled mean over every task, and the macro mean of per-repository ratios."""
    total = sum(len(tasks) for _source, tasks, _results in measured)
    section = Section(
        title=f"Memory: context recall per repository ({len(measured)} repositories, {total} tasks)",
        columns=[
            "method",
            "repository (tasks, median files)",
            *(f"recall@{b // 1000}k" for b in BUDGETS),
            *(f"x BM25 @{b // 1000}k" for b in BUDGETS),
        ],
    )
    methods = [m for m in measured[0][2] if "outlines" not in m]
    per_repo: dict[str, list[list[float]]] = {m: [] for m in methods}
    for source, tasks, results in measured:
        files = statistics.median(len(task.paths) for task in tasks)
        base = [statistics.fmean(v for _h, v in results["BM25"][b]) for b in BUDGETS]
        for method in methods:
            values = [statistics.fmean(v for _h, v in results[method][b]) for b in BUDGETS]
            ratios = _ratios(values, base)
            per_repo[method].append(ratios)
            section.rows.append(
                [
                    method,
                    f"{source} ({len(tasks)}, {files:.0f})",
                    *(f"{v:.3f}" for v in values),
                    *(f"{r:.2f}" for r in ratios),
                ]
            )
    pooled_base = [
        statistics.fmean(v for _s, _t, results in measured for _h, v in results["BM25"][b]) for b in BUDGETS
    ]
    for method in methods:
        pooled = [
            statistics.fmean(v for _s, _t, results in measured for _h, v in results[method][b])
            for b in BUDGETS
        ]
        section.rows.append(
            [
                method,
                f"pooled ({total})",
                *(f"{v:.3f}" for v in pooled),
                *(f"{r:.2f}" for r in _ratios(pooled, pooled_base)),
            ]
        )
    repo_means = {
        method: [
            [statistics.fmean(v for _h, v in results[method][b]) for b in BUDGETS]
            for _s, _t, results in measured
        ]
        for method in methods
    }
    macro_base = [statistics.fmean(row[i] for row in repo_means["BM25"]) for i in range(len(BUDGETS))]
    for method in methods:
        macro_recall = [statistics.fmean(row[i] for row in repo_means[method]) for i in range(len(BUDGETS))]
        section.rows.append(
            [
                method,
                f"macro mean of recalls ({len(measured)})",
                *(f"{v:.3f}" for v in macro_recall),
                *(f"{r:.2f}" for r in _ratios(macro_recall, macro_base)),
            ]
        )
    for method in methods:
        macro = []
        for index in range(len(BUDGETS)):
            finite = [ratios[index] for ratios in per_repo[method] if ratios[index] == ratios[index]]
            macro.append(statistics.fmean(finite) if finite else float("nan"))
        section.rows.append(
            [
                method,
                f"macro mean of ratios ({len(measured)})",
                *("" for _ in BUDGETS),
                *(f"{r:.2f}" for r in macro),
            ]
        )
    section.notes.append(
        "Repositories other than this one come from Debian source packages' upstream patches "
        "(bench/memory_debian.py): each patch's message is the task, the files it modified are what had to "
        "be in context, every text file of the tree before it is a candidate. pooled = mean over all tasks; "
        "macro mean of recalls = every repository weighs the same; macro mean of ratios = mean over repositories "
        "of method/BM25 (repositories where BM25 recalls nothing are left out; with 3-8 tasks per repository a "
        "BM25 recall near 0 makes single ratios large, so read it with the recalls)."
    )
    return section


def _cache_engine(path: Path):  # type: ignore[no-untyped-def]
    """A migrated SQLite database for the embedding cache."""
    from autopack_common.database import create_db_engine, upgrade_schema

    engine = create_db_engine(f"sqlite:///{path}")
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    return engine


def _embedder(cache_engine: object | None = None):  # type: ignore[no-untyped-def]
    """MiniLM behind an embedding cache (in-memory unless an engine is given); None if it cannot load."""
    try:
        from autopack_memory.embedding import CachingEmbedder, LocalEmbedder
    except ImportError:
        return None
    global _MODEL
    if _MODEL is None:
        try:
            _MODEL = LocalEmbedder()
            _MODEL.warm()
        except Exception:  # the bench reports the missing rows instead
            return None
    from autopack_memory.store import EmbeddingCache

    return CachingEmbedder(_MODEL, EmbeddingCache(cache_engine) if cache_engine is not None else None)


_MODEL = None


def _percentile(values: Sequence[float], fraction: float) -> float:
    return float(np.percentile(np.asarray(values), fraction * 100))


def latency_section(quick: bool) -> Section:
    """SelectContext p50/p95 over a real channel: cold (fresh state per call) and warm."""
    import grpc
    from autopack.memory.v1 import memory_pb2, memory_pb2_grpc
    from autopack_common.content import text_sha256
    from autopack_common.server import create_server
    from autopack_memory.memory import Memory
    from autopack_memory.ranking import identifier_terms
    from autopack_memory.selection import ContextSelector
    from autopack_memory.service import MemoryServicer, memory_binding
    from autopack_memory.store import WorkspaceIndex
    from autopack_memory.vectors import VectorStore

    _source, tasks = load_tasks(datasets()[0])
    snapshot = tasks[-1]
    rng = random.Random(11)
    indices = sorted(rng.sample(range(len(snapshot.paths)), min(LATENCY_FILES, len(snapshot.paths))))
    request = memory_pb2.SelectContextRequest(
        query=snapshot.message,
        candidates=[
            memory_pb2.CandidateFile(path=snapshot.paths[i], content=snapshot.contents[i]) for i in indices
        ],
        token_budget=16_000,
    )
    rounds = 5 if quick else 20
    section = Section(
        title=f"Memory: SelectContext latency, {len(indices)} candidate files, budget 16k (ms)",
        columns=["mode", "state", "p50", "p95", "CPU p50", "CPU p95", "calls"],
    )
    with tempfile.TemporaryDirectory() as scratch:
        vectors = VectorStore.open(path=Path(scratch) / "qdrant")
        modes: list[tuple[str, Callable[[object], object]]] = [("lexical", lambda engine: None)]
        if _embedder() is not None:
            modes.append(("hybrid", lambda engine: _embedder(engine)))
            modes.append(("hybrid, indexed workspace", lambda engine: _embedder(engine)))
        by_reference = memory_pb2.SelectContextRequest(
            query=request.query, workspace="bench", token_budget=request.token_budget
        )
        for mode, make_embedder in modes:
            indexed = mode.endswith("indexed workspace")
            cold, warm, cold_cpu, warm_cpu = [], [], [], []
            for round_ in range(rounds):
                engine = _cache_engine(Path(scratch) / f"cache-{mode}-{round_}.db")
                identifier_terms.cache_clear()  # cold: no word of these files seen before
                embedder = make_embedder(engine)
                memory = Memory(
                    embedder,  # type: ignore[arg-type]
                    vectors,
                    ContextSelector(embedder),  # type: ignore[arg-type]
                    workspaces=WorkspaceIndex(engine),
                )
                running = create_server([memory_binding(MemoryServicer(memory))])
                try:
                    with grpc.insecure_channel(running.address) as channel:
                        stub = memory_pb2_grpc.MemoryServiceStub(channel)
                        stub.Search(memory_pb2.SearchRequest(collection="warmup", query="x"), timeout=30)
                        if indexed:
                            files = [
                                memory_pb2.WorkspaceFile(
                                    path=c.path, content_sha256=text_sha256(c.content), content=c.content
                                )
                                for c in request.candidates
                            ]
                            stub.IndexWorkspace(
                                memory_pb2.IndexWorkspaceRequest(workspace="bench", files=files), timeout=60
                            )
                            if memory.last_warming is not None:
                                memory.last_warming.result(timeout=120)
                        for wall, cpu in ((cold, cold_cpu), (warm, warm_cpu)):
                            started, started_cpu = time.perf_counter(), time.process_time()
                            stub.SelectContext(by_reference if indexed else request, timeout=60)
                            wall.append((time.perf_counter() - started) * 1000)
                            cpu.append((time.process_time() - started_cpu) * 1000)
                finally:
                    running.stop(0)
                    memory.stop_background()
                    engine.dispose()
            for state, values, cpu in (("cold", cold, cold_cpu), ("warm", warm, warm_cpu)):
                section.rows.append(
                    [
                        mode,
                        state,
                        *(f"{_percentile(series, q):.0f}" for series in (values, cpu) for q in (0.5, 0.95)),
                        str(len(values)),
                    ]
                )
        vectors.close()
    load = os.getloadavg()
    section.notes.append(
        "cold: new embedding cache, selector and term memo per call (model already loaded, as after start-up); "
        "indexed workspace: the files were sent once with IndexWorkspace and its background work (analyses, "
        "card embeddings) finished, then the first SelectContext refers to the workspace; "
        "warm: the same request again on the same service. Target: cold p95 < 1000 ms. CPU = this process's "
        "CPU time for the call (server and client share it; all threads), which other load does not inflate. "
        f"Load average while measuring: {load[0]:.1f} (1 min), {load[1]:.1f} (5 min) on {os.cpu_count()} CPUs."
    )
    return section


def drift_pairs(paths: Sequence[Path]) -> list[tuple[str, str, str]]:
    """(intention, aligned change, drifted change) from real commits with a body.

    The subject is the intention; the body and the modified files (what the orchestrator sends:
    build summary + paths) are a change on it; the next such commit's body and files are a change
    off it.
    """
    changes = []
    for path in paths:
        for task in load_tasks(path)[1]:
            subject, _, body = task.message.partition("\n")
            if len(body.strip()) >= 40:
                files = ", ".join(sorted(task.modified))
                changes.append((subject.strip(), f"{body.strip()[:1500]}\nFiles: {files}"))
    return [
        (intention, change, changes[(index + 1) % len(changes)][1])
        for index, (intention, change) in enumerate(changes)
    ]


def drift_section() -> Section:
    """How often each drift measure flags aligned and drifted changes at its threshold."""
    from autopack_memory.drift import DEFAULT_DRIFT_THRESHOLD, DEFAULT_LEXICAL_DRIFT_THRESHOLD
    from autopack_memory.ranking import lexical_scores

    pairs = drift_pairs(datasets())
    section = Section(
        title=f"Memory: goal drift on {len(pairs)} real commits (subject = intention)",
        columns=[
            "similarity",
            "threshold",
            "aligned flagged",
            "drifted flagged",
            "aligned median",
            "drifted median",
        ],
    )
    measures: list[tuple[str, float, list[float], list[float]]] = [
        (
            "words (TF-IDF cosine)",
            DEFAULT_LEXICAL_DRIFT_THRESHOLD,
            [lexical_scores(i, [a])[0] for i, a, _d in pairs],
            [lexical_scores(i, [d])[0] for i, _a, d in pairs],
        )
    ]
    embedder = _embedder()
    if embedder is not None:
        intentions = embedder.embed([i for i, _a, _d in pairs])
        aligned = embedder.embed([a for _i, a, _d in pairs])
        drifted = embedder.embed([d for _i, _a, d in pairs])
        measures.append(
            (
                "MiniLM cosine",
                DEFAULT_DRIFT_THRESHOLD,
                [float(v @ w) for v, w in zip(intentions, aligned, strict=True)],
                [float(v @ w) for v, w in zip(intentions, drifted, strict=True)],
            )
        )
    for name, threshold, on_goal, off_goal in measures:
        section.rows.append(
            [
                name,
                f"{threshold:.2f}",
                f"{sum(s < threshold for s in on_goal) / len(pairs):.0%}",
                f"{sum(s < threshold for s in off_goal) / len(pairs):.0%}",
                f"{statistics.median(on_goal):.2f}",
                f"{statistics.median(off_goal):.2f}",
            ]
        )
    section.notes.append(
        "aligned = the commit's own body and files; drifted = the next commit's. Flagged = below the "
        "threshold (an advisory event, or a stop in blocking mode). Words run on a lower scale than "
        "embeddings, hence their own threshold (AUTOPACK_MEMORY_DRIFT_LEXICAL_THRESHOLD)."
    )
    return section


def run(quick: bool = False) -> list[Section]:
    return [*recall_section(quick), latency_section(quick), drift_section()]


if __name__ == "__main__":
    for section in run(quick=bool(os.environ.get("AUTOPACK_BENCH_QUICK"))):
        print(section.title)
        for row in section.rows:
            print("  ", " | ".join(row))
        for note in section.notes:
            print("   ", note)
