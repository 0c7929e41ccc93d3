"""Hybrid ranking of files for a task: several rankings fused by reciprocal rank fusion.

Each signal ranks the files on its own scale and fusion only reads the ranks, so no signal's
scale (BM25's unbounded scores, cosine's narrow band) drowns another:

* ``file``: BM25 over the whole file (path words count twice), identifiers split into words;
* ``chunk``: BM25 over structural pieces (functions, classes, sections), a file scoring its best
  piece, so one relevant function in a large module is not diluted by the rest of it;
* ``path``: BM25 over the path's words only (directories and file name), because tasks name
  the area they touch ("estimator README", "CLI: ...") far more often than they quote code;
* ``symbol``: names in the task that the file defines (or its path/file name quoted verbatim);
* ``hint``: files under the phase's scope and modules imported by pinned files;
* ``semantic``: embedding cosine, when the caller has vectors;
* ``pair``: tests of the best-ranked modules and modules of the best-ranked tests (a second
  pass over the fusion of the others), since a change to one usually touches the other.

A file missing from a signal (score 0) gets nothing from it. Ties break by path, so the same
inputs always give the same order.
"""

from __future__ import annotations

import functools
import math
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import bm25s
import numpy as np

from autopack_memory.chunking import FileStructure

RRF_K = 10
# Weights of the signals in the fusion. symbol 0.5 (was 1.0): at 1.0 prose words that happen to name a
# function outranked BM25; 0.5 raised recall@16k on 143 own commits (1.13x -> 1.18x BM25) and on the
# 9 vendored Debian repositories (1.86x -> 1.94x), flat on 6 larger ones (1.56x -> 1.55x).
DEFAULT_WEIGHTS: Mapping[str, float] = {
    "file": 1.0,
    "chunk": 1.0,
    "path": 1.0,
    "symbol": 0.5,
    "hint": 0.5,
    "semantic": 0.5,
    "pair": 0.5,
}
# How many of the best-ranked files pull in their test (or tested module).
PAIR_TOP = 5

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PIECE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+")
_PATHLIKE = re.compile(r"[\w.-]+(?:/[\w.-]+)+|[\w-]+\.[A-Za-z]{1,5}\b")
_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "for",
        "from",
        "has",
        "have",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "this",
        "to",
        "was",
        "were",
        "will",
        "with",
        "into",
        "not",
        "no",
        "if",
        "then",
        "else",
        "def",
        "class",
        "return",
        "import",
        "self",
        "none",
        "true",
        "false",
        "use",
        "used",
        "uses",
        "using",
        "when",
        "so",
        "but",
        "can",
        "all",
        "any",
        "one",
        "two",
        "new",
        "now",
        "only",
        "also",
        "do",
        "does",
        "than",
        "too",
        "very",
        "via",
        "per",
        "out",
        "up",
    ]
)
# Path words that say nothing about what a file is about.
_GENERIC_PATH_WORDS = frozenset(
    [
        "src",
        "lib",
        "init",
        "main",
        "py",
        "md",
        "txt",
        "json",
        "yaml",
        "yml",
        "toml",
        "cfg",
        "ini",
        "rst",
        "test",
        "tests",
        "index",
    ]
)


def _stem(word: str) -> str:
    """Crude suffix stripping so "rows"/"row" and "parse"/"parses"/"parsing"/"parser" meet."""
    for suffix in ("ing", "ed", "es", "s"):
        if word.endswith(suffix) and not word.endswith("ss") and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            break
    if word.endswith("er") and len(word) >= 5:
        word = word[:-2]
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]
    return word


def terms(text: str) -> list[str]:
    """Words of ``text`` for matching: identifiers split into pieces, lower-cased, stemmed.

    A compound identifier (``wait_until_serving``, ``SelectContext``) also stays whole, so a task
    quoting it matches it more strongly than the same words scattered through a file.
    """
    out: list[str] = []
    for identifier in _IDENTIFIER.findall(text):
        out.extend(identifier_terms(identifier))
    return out


@functools.lru_cache(maxsize=65_536)
def identifier_terms(identifier: str) -> tuple[str, ...]:
    """Terms of one identifier (memoised: code repeats its names)."""
    pieces = [piece.lower() for piece in _PIECE.findall(identifier)]
    kept = [_stem(piece) for piece in pieces if len(piece) > 1 and piece not in _STOPWORDS]
    if len(pieces) > 1:
        kept.append(identifier.lower().strip("_"))
    return tuple(kept)


def path_terms(path: str) -> list[str]:
    """Words of a path: directory names and file name split like identifiers, generic ones dropped."""
    words = terms(path.replace("/", " ").replace(".", " ").replace("-", " "))
    return [word for word in words if word not in _GENERIC_PATH_WORDS]


def lexical_scores(query: str, documents: Sequence[str]) -> list[float]:
    """TF-IDF cosine of each document with the query, 0..1 (IDF over these documents)."""
    query_counts = Counter(terms(query))
    doc_counts = [Counter(terms(document)) for document in documents]
    if not query_counts:
        return [0.0] * len(documents)
    total = len(doc_counts)
    frequency: Counter[str] = Counter()
    for counts in doc_counts:
        frequency.update(counts.keys())

    def weights(counts: Counter[str]) -> dict[str, float]:
        return {
            term: (1.0 + math.log(count)) * (math.log((1 + total) / (1 + frequency[term])) + 1.0)
            for term, count in counts.items()
        }

    query_weights = weights(query_counts)
    query_norm = math.sqrt(sum(value * value for value in query_weights.values()))
    scores = []
    for counts in doc_counts:
        doc_weights = weights(counts)
        doc_norm = math.sqrt(sum(value * value for value in doc_weights.values()))
        dot = sum(weight * doc_weights.get(term, 0.0) for term, weight in query_weights.items())
        scores.append(dot / (query_norm * doc_norm) if doc_norm else 0.0)
    return scores


@dataclass(frozen=True)
class AnalysedFile:
    """A candidate's derived data, computed once per content (see ``analyse_file``)."""

    path: str
    structure: FileStructure
    file_terms: list[str]
    chunk_terms: list[list[str]]
    path_words: list[str]


def analyse_file(path: str, content: str, structure: FileStructure) -> AnalysedFile:
    """Terms of the whole file (path twice), of each chunk, and of the path alone."""
    words = path_terms(path)
    pieces = [terms(chunk.text) for chunk in structure.chunks]
    covered = sum(len(chunk.text) for chunk in structure.chunks)
    # Chunks cover the file except blank runs; recount only if something else was dropped.
    body = [term for piece in pieces for term in piece] if covered >= len(content.strip()) else terms(content)
    return AnalysedFile(
        path=path,
        structure=structure,
        file_terms=[*words, *words, *body],
        chunk_terms=[
            [*words, *_names(chunk.name), *piece]
            for chunk, piece in zip(structure.chunks, pieces, strict=True)
        ],
        path_words=words,
    )


def _names(name: str) -> list[str]:
    return terms(name) if name else []


@dataclass(frozen=True)
class Hints:
    """What the caller knows besides the task text: scope, pinned files."""

    scope_paths: Sequence[str] = ()
    pinned_paths: Sequence[str] = ()


@dataclass
class Ranking:
    """Fused scores (one per file, input order) and each signal's raw scores, for spans and the bench."""

    scores: list[float]
    signals: dict[str, list[float]] = field(default_factory=dict)


def bm25_scores(query_terms: Sequence[str], corpus: Sequence[Sequence[str]]) -> np.ndarray:
    """Okapi BM25 (k1 1.2, b 0.75) of every document for the query, via ``bm25s``."""
    if not corpus or not query_terms:
        return np.zeros(len(corpus))
    # bm25s needs at least one token per document to build its vocabulary.
    documents = [list(document) or ["\x00empty"] for document in corpus]
    index = bm25s.BM25(k1=1.2, b=0.75)
    index.index(documents, show_progress=False)
    vocabulary = index.vocab_dict
    known = [term for term in query_terms if term in vocabulary]
    if not known:
        return np.zeros(len(corpus))
    return np.asarray(index.get_scores(known), dtype=np.float64)


def _symbol_scores(query: str, files: Sequence[AnalysedFile]) -> list[float]:
    """Names from the task that a file defines, and paths or file names the task quotes.

    A name defined by many files says little, so each match weighs 1/number of definers.
    """
    lowered = query.lower()
    names = {identifier.lower() for identifier in _IDENTIFIER.findall(query) if len(identifier) >= 4}
    names -= _STOPWORDS
    quoted = {match.lower().strip("./") for match in _PATHLIKE.findall(query)}
    dotted: set[str] = set()  # "pkg.module.function" names pkg.module (and pkg.module.function)
    for reference in _DOTTED.findall(query):
        parts = reference.lower().split(".")
        dotted.update(".".join(parts[:end]) for end in range(2, len(parts) + 1))
    definers: Counter[str] = Counter()
    defined: list[set[str]] = []
    for file in files:
        own = {symbol.lower() for symbol in file.structure.symbols if "." not in symbol} & names
        defined.append(own)
        definers.update(own)
    scores = []
    for file, own in zip(files, defined, strict=True):
        score = sum(1.0 / definers[name] for name in own)
        path = file.path.lower()
        name = PurePosixPath(path).name
        if (
            path in quoted
            or any(path.endswith("/" + quote) for quote in quoted)
            or name in quoted
            or path in lowered
        ):
            score += 3.0
        elif dotted and any("." in module and module in dotted for module in _module_names(path)):
            score += 2.0
        scores.append(score)
    return scores


def _module_names(path: str) -> set[str]:
    """Dotted module names a Python file may be imported as (every suffix of its package path)."""
    pure = PurePosixPath(path)
    if pure.suffix != ".py":
        return set()
    parts = list(pure.with_suffix("").parts)
    if parts and parts[-1] == "__init__":
        parts = parts[:-1]
    return {".".join(parts[start:]) for start in range(len(parts)) if parts[start:]}


def _hint_scores(files: Sequence[AnalysedFile], hints: Hints) -> list[float]:
    """Files under the phase's scope, and modules the pinned files import."""
    pinned = set(hints.pinned_paths)
    imported: set[str] = set()
    for file in files:
        if file.path in pinned:
            imported.update(name.lstrip(".") for name in file.structure.imports)
    prefixes = [scope.rstrip("/") for scope in hints.scope_paths if scope]
    scores = []
    for file in files:
        score = 0.0
        if any(file.path == prefix or file.path.startswith(prefix + "/") for prefix in prefixes):
            score += 1.0
        if imported and _module_names(file.path) & imported:
            score += 1.0
        scores.append(score)
    return scores


def rrf(
    signals: Mapping[str, Sequence[float]], paths: Sequence[str], weights: Mapping[str, float]
) -> list[float]:
    """Weighted reciprocal rank fusion: sum over signals of weight / (k + rank); rank 1 = best.

    Only files with a positive score in a signal are ranked by it; equal scores share a rank
    (the best of them), so ties do not depend on input order.
    """
    fused = [0.0] * len(paths)
    for name, scores in signals.items():
        weight = weights.get(name, 0.0)
        if weight == 0.0:
            continue
        positive = sorted(
            (index for index, score in enumerate(scores) if score > 0), key=lambda i: -scores[i]
        )
        rank = 0
        previous: float | None = None
        for position, index in enumerate(positive, start=1):
            if scores[index] != previous:
                rank, previous = position, scores[index]
            fused[index] += weight / (RRF_K + rank)
    return fused


def rank_files(
    query: str,
    files: Sequence[AnalysedFile],
    hints: Hints = Hints(),
    semantic: Sequence[float] | None = None,
    weights: Mapping[str, float] = DEFAULT_WEIGHTS,
) -> Ranking:
    """Fused relevance of each file to ``query`` (input order); see the module docstring."""
    query_terms = terms(query)
    signals: dict[str, list[float]] = {
        "file": bm25_scores(query_terms, [file.file_terms for file in files]).tolist(),
        "path": bm25_scores(query_terms, [file.path_words for file in files]).tolist(),
        "symbol": _symbol_scores(query, files),
        "hint": _hint_scores(files, hints),
    }
    owners = [index for index, file in enumerate(files) for _ in file.chunk_terms]
    chunk_scores = bm25_scores(query_terms, [chunk for file in files for chunk in file.chunk_terms])
    best = np.zeros(len(files))
    if owners:
        np.maximum.at(best, np.asarray(owners, dtype=np.intp), chunk_scores)
    signals["chunk"] = best.tolist()
    if semantic is not None:
        signals["semantic"] = list(semantic)
    paths = [file.path for file in files]
    fused = rrf(signals, paths, weights)
    signals["pair"] = _pair_scores(paths, fused)
    return Ranking(scores=rrf(signals, paths, weights), signals=signals)


def _test_stem(path: str) -> str:
    """The module a test file is about (``test_x.py``/``x_test.py`` -> ``x``), else ''."""
    stem = PurePosixPath(path).stem
    if stem.startswith("test_"):
        return stem[5:]
    if stem.endswith("_test"):
        return stem[:-5]
    return ""


def _pair_scores(paths: Sequence[str], fused: Sequence[float]) -> list[float]:
    """Tests of the best-ranked modules, and modules of the best-ranked tests: they change together."""
    top = sorted(range(len(paths)), key=lambda i: (-fused[i], paths[i]))[:PAIR_TOP]
    scores = [0.0] * len(paths)
    by_stem: dict[str, list[int]] = {}
    by_test: dict[str, list[int]] = {}
    for index, path in enumerate(paths):
        tested = _test_stem(path)
        if tested:
            by_test.setdefault(tested, []).append(index)
        else:
            by_stem.setdefault(PurePosixPath(path).stem, []).append(index)
    for place, index in enumerate(top, start=1):
        if fused[index] <= 0:
            break
        tested = _test_stem(paths[index])
        partners = by_stem.get(tested, []) if tested else by_test.get(PurePosixPath(paths[index]).stem, [])
        for partner in partners:
            scores[partner] += 1.0 / place
    return scores
