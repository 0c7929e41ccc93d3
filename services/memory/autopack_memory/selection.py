"""Choosing the context files a phase gets, under a token budget.

Ranking is semantic when embeddings are on: each file is cut into line-aligned chunks
(the model reads ~256 word pieces, so a whole file would be silently truncated), every
chunk is embedded as ``path + chunk`` and the file scores its best chunk's cosine with
the phase query. Vectors come from the persistent cache when the same text was seen before.

The per-call cap bounds *new* embeddings (cache misses). The query and every file's first
chunk are required: if they alone need more than the cap, the call ranks lexically and
spends the cap warming the cache with them, so retries and later phases over the same
files converge to semantic ranking. Otherwise later chunks are embedded breadth-first while
the cap lasts, and a file scores by the chunks that have vectors.

Ranking falls back to lexical (TF-IDF cosine over words, identifiers split) when
embeddings are disabled, the cap is exceeded or the provider is unavailable: a cold cache
or a missing model degrades the ranking, never the call.

Packing: pinned files first (they are deliverables the Builder must see), then the rest
by score; greedy, so a file too big for what is left is skipped and smaller ones after it
may still fit.

Token estimate: ``ceil(chars / 4)``, the rule the rest of Autopack uses for context. The
Builder's LLM tokenizer is not known here and MiniLM's WordPiece vocabulary is not it, so
a model tokenizer would only add cost and false precision.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable

CHARS_PER_TOKEN = 4


def estimate_tokens(text: str) -> int:
    """Estimated LLM tokens of ``text``: ceil(chars / 4)."""
    return -(-len(text) // CHARS_PER_TOKEN)


class SelectionMode(StrEnum):
    SEMANTIC = "semantic"
    LEXICAL = "lexical"


@dataclass(frozen=True)
class Candidate:
    """A file that may be given to the Builder."""

    path: str
    content: str
    pinned: bool = False


@dataclass(frozen=True)
class FileChoice:
    """A file's result: kept or omitted, with its estimate, score and why."""

    path: str
    tokens: int
    score: float
    reason: str


@dataclass(frozen=True)
class Selection:
    """The outcome of one selection, with what it cost in embeddings."""

    kept: list[FileChoice]
    omitted: list[FileChoice]
    used_tokens: int
    mode: SelectionMode
    fallback_reason: str | None = None
    embedding_cache_hits: int = 0
    embeddings_computed: int = 0


# --- lexical ranking --------------------------------------------------------------------

_WORD = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|\d+")
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
    """Words of ``text`` for lexical matching: identifiers split, lower-cased, stemmed."""
    words = (match.lower() for match in _WORD.findall(text))
    return [_stem(word) for word in words if len(word) > 1 and word not in _STOPWORDS]


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


# --- chunking and packing -----------------------------------------------------------------


def chunk_text(text: str, chunk_chars: int, max_chunks: int) -> list[str]:
    """The first ``max_chunks`` line-aligned pieces of at most ``chunk_chars`` characters.

    Lines longer than a chunk are cut; an empty text gives one empty chunk so every file
    still has something (its path) to embed.
    """
    chunks: list[str] = []
    current = ""
    for line in text.splitlines(keepends=True):
        while len(line) > chunk_chars:
            if current:
                chunks.append(current)
                current = ""
            chunks.append(line[:chunk_chars])
            line = line[chunk_chars:]
        if current and len(current) + len(line) > chunk_chars:
            chunks.append(current)
            current = ""
        current += line
        if len(chunks) >= max_chunks:
            return chunks[:max_chunks]
    if current:
        chunks.append(current)
    return chunks[:max_chunks] or [""]


def pack(candidates: Sequence[Candidate], scores: Sequence[float], token_budget: int) -> Selection:
    """Pinned files first, then by score (ties keep input order), greedily within the budget.

    Returns a lexical-mode Selection; callers set the mode they ranked with.
    """
    order = sorted(range(len(candidates)), key=lambda i: (not candidates[i].pinned, -scores[i]))
    kept: list[FileChoice] = []
    omitted: list[FileChoice] = []
    used = 0
    rank = 0
    for index in order:
        candidate = candidates[index]
        tokens = estimate_tokens(candidate.content)
        if candidate.pinned:
            label = "pinned"
        else:
            rank += 1
            label = f"ranked {rank}"
        score = float(scores[index])
        if used + tokens <= token_budget:
            kept.append(FileChoice(candidate.path, tokens, score, label))
            used += tokens
        else:
            omitted.append(FileChoice(candidate.path, tokens, score, f"over budget ({label})"))
    return Selection(kept=kept, omitted=omitted, used_tokens=used, mode=SelectionMode.LEXICAL)


# --- the selector -----------------------------------------------------------------------------


class ContextSelector:
    """Ranks candidates (semantic or lexical) and packs them into the budget."""

    def __init__(
        self,
        embedder: CachingEmbedder | None,
        max_embeddings_per_call: int = 64,
        chunk_chars: int = 800,
        max_chunks_per_file: int = 4,
    ) -> None:
        self._embedder = embedder
        self._cap = max_embeddings_per_call
        self._chunk_chars = chunk_chars
        self._max_chunks = max_chunks_per_file

    def select(self, query: str, candidates: Sequence[Candidate], token_budget: int) -> Selection:
        """Rank and pack; see the module docstring for when ranking is semantic."""
        if self._embedder is None:
            return self._lexical(query, candidates, token_budget, "embeddings disabled")
        if self._cap == 0:
            return self._lexical(query, candidates, token_budget, "embedding cap is 0")
        if not candidates:
            return Selection(kept=[], omitted=[], used_tokens=0, mode=SelectionMode.SEMANTIC)
        # Required: the query and every file's first chunk. Optional: later chunks,
        # breadth-first so a tight cap refines every file a little rather than a few a lot.
        chunks = [chunk_text(c.content, self._chunk_chars, self._max_chunks) for c in candidates]
        texts = [query, *(f"{c.path}\n{parts[0]}" for c, parts in zip(candidates, chunks, strict=True))]
        owners = [-1, *range(len(candidates))]
        for level in range(1, self._max_chunks):
            for index, (candidate, parts) in enumerate(zip(candidates, chunks, strict=True)):
                if level < len(parts):
                    texts.append(f"{candidate.path}\n{parts[level]}")
                    owners.append(index)
        required = len(candidates) + 1
        plan = self._embedder.plan(texts)
        missing_required = {key: plan.missing[key] for key in plan.keys[:required] if key in plan.missing}

        if self._cap > 0 and len(missing_required) > self._cap:
            reason = f"{len(missing_required)} new embeddings needed, cap {self._cap}"
            warmed = self._warm(dict(list(missing_required.items())[: self._cap]))
            return self._lexical(query, candidates, token_budget, reason, plan.cache_hits, warmed)

        chosen = list(range(required))
        allowance = None if self._cap < 0 else self._cap - len(missing_required)
        new_keys = set(missing_required)
        for position in range(required, len(texts)):
            key = plan.keys[position]
            if key in plan.cached or key in new_keys:
                chosen.append(position)
            elif allowance is None or allowance > 0:
                new_keys.add(key)
                chosen.append(position)
                allowance = None if allowance is None else allowance - 1
        used = plan.subset(chosen)
        try:
            vectors = self._embedder.complete(used)
        except EmbeddingUnavailable as error:
            return self._lexical(query, candidates, token_budget, f"embeddings unavailable: {error}")
        similarities = vectors[1:] @ vectors[0]
        scores = np.full(len(candidates), -1.0)
        np.maximum.at(scores, np.asarray([owners[p] for p in chosen[1:]], dtype=np.intp), similarities)
        packed = pack(candidates, scores.tolist(), token_budget)
        return Selection(
            kept=packed.kept,
            omitted=packed.omitted,
            used_tokens=packed.used_tokens,
            mode=SelectionMode.SEMANTIC,
            embedding_cache_hits=used.cache_hits,
            embeddings_computed=used.to_compute,
        )

    def _warm(self, missing: dict[str, str]) -> int:
        """Spend this call's allowance on the cache so a later call can rank semantically."""
        assert self._embedder is not None
        try:
            return len(self._embedder.compute(missing))
        except EmbeddingUnavailable:
            return 0

    def _lexical(
        self,
        query: str,
        candidates: Sequence[Candidate],
        token_budget: int,
        reason: str,
        cache_hits: int = 0,
        computed: int = 0,
    ) -> Selection:
        documents = [f"{candidate.path}\n{candidate.content}" for candidate in candidates]
        packed = pack(candidates, lexical_scores(query, documents), token_budget)
        return Selection(
            kept=packed.kept,
            omitted=packed.omitted,
            used_tokens=packed.used_tokens,
            mode=SelectionMode.LEXICAL,
            fallback_reason=reason,
            embedding_cache_hits=cache_hits,
            embeddings_computed=computed,
        )
