"""Choosing the context files a phase gets, under a token budget.

Ranking (see ``ranking.py``) fuses BM25 over whole files and over their structural pieces, the
path's words, names the task quotes and the caller's hints by reciprocal rank fusion. Every
file is read whole (``chunking.py``): nothing is judged by its head only.

Embeddings add one more signal, deterministically: the lexical ranking's top
``SEMANTIC_TOP_K`` files are re-ranked with the cosine of a *file card* (path and outline) to
the query, so which vectors are needed depends only on the inputs, never on what the cache
already holds. The per-call cap (seed 003) bounds *new* embeddings (cache misses): ``-1``
unlimited, ``0`` never embed, ``N`` at most N; if the cards and the query need more, the call
ranks lexically and spends the cap warming the cache, so a retry ranks the same files with
the same vectors. Embeddings disabled or unavailable: lexical, never a failed call.

Packing: pinned files first (they are deliverables the Builder must see), then the rest by
rank weighed against size (see ``pack``); greedy, so a file too big for what is left is
skipped and smaller ones after it may still fit. The best-ranked files that do not fit whole
are summarised (their outline: signatures, headings) in what the whole files leave, or in a
share of the budget the caller reserves, up to ``max_summaries`` files; summaries are reported
apart from the kept files so a caller that only reads ``kept`` still gets whole files within
the budget.

Token estimate: ``ceil(chars / 4)``, the rule the rest of Autopack uses for context. The
Builder's LLM tokenizer is not known here and MiniLM's WordPiece vocabulary is not it, so
a model tokenizer would only add cost and false precision.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from autopack_memory.chunking import DEFAULT_MAX_CHARS, analyse, summary
from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable
from autopack_memory.ranking import (
    DEFAULT_WEIGHTS,
    AnalysedFile,
    Hints,
    analyse_file,
    lexical_scores,
    rank_files,
    rrf,
    terms,
)

__all__ = ["lexical_scores", "terms"]

CHARS_PER_TOKEN = 4
SEMANTIC_TOP_K = 8
DEFAULT_MAX_SUMMARIES = 8
# Packing weighs a file's rank against its size^this (see ``pack``).
DENSITY_EXPONENT = 0.2
_CARD_OUTLINE_CHARS = 200
_ANALYSIS_CACHE_SIZE = 4096


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
    """A file's result: kept, summarised or omitted, with its estimate, score and why."""

    path: str
    tokens: int
    score: float
    reason: str
    summary: str = ""


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
    summarized: list[FileChoice] = field(default_factory=list)


# --- packing ------------------------------------------------------------------------------


def _fit_outline(outline: str, max_tokens: int) -> str:
    """The outline's first lines within ``max_tokens``, saying how many were left out."""
    if estimate_tokens(outline) <= max_tokens:
        return outline
    lines = outline.splitlines(keepends=True)
    kept: list[str] = []
    size = 0
    for line in lines:
        if estimate_tokens("".join(kept) + line) + 10 > max_tokens:
            break
        kept.append(line)
        size += 1
    if size <= 1:
        return ""
    return "".join(kept) + f"... {len(lines) - size} more outline lines\n"


def pack(
    candidates: Sequence[Candidate],
    scores: Sequence[float],
    token_budget: int,
    summaries: Sequence[str] | None = None,
    max_summaries: int = 0,
    outline_share: float = 0.0,
) -> Selection:
    """Pinned files first, then by rank and size, greedily within the budget.

    Files are taken by ``1 / (rank * tokens ** DENSITY_EXPONENT)``: mostly rank order, but a
    file several times larger than the next ones needs a clearly better rank to displace them
    (chosen on the bench's tuning split; expected recall per token). With ``summaries`` (one
    outline per file, may be empty), ``outline_share`` of the budget is held back while whole
    files are packed; then the best-ranked files that did not fit whole get their outline (cut
    to fit, at most half the file, up to ``max_summaries`` files) in what is left; whatever is
    still left goes to more whole files. Returns a lexical-mode Selection;
    callers set the mode they ranked with.
    """
    ranked = sorted(
        range(len(candidates)), key=lambda i: (not candidates[i].pinned, -scores[i], candidates[i].path)
    )
    labels: dict[int, str] = {}
    priority: dict[int, float] = {}
    rank = 0
    for index in ranked:
        if candidates[index].pinned:
            labels[index] = "pinned"
            priority[index] = float("inf")
        else:
            rank += 1
            labels[index] = f"ranked {rank}"
            # Expected relevance ~ 1/rank, per token^DENSITY_EXPONENT: a large file must rank
            # clearly higher than the several smaller ones it would displace.
            tokens = max(estimate_tokens(candidates[index].content), 1)
            priority[index] = 1.0 / (rank * tokens**DENSITY_EXPONENT)
    position = {index: place for place, index in enumerate(ranked)}
    order = sorted(ranked, key=lambda i: (-priority[i], position[i]))
    sizes = [estimate_tokens(candidate.content) for candidate in candidates]
    outlines = summaries is not None and max_summaries > 0
    reserve = int(token_budget * outline_share) if outlines else 0
    whole: set[int] = set()
    outlined: dict[int, str] = {}
    used = 0

    def fill(limit: int) -> None:
        nonlocal used
        for index in order:
            if index not in whole and index not in outlined and used + sizes[index] <= limit:
                whole.add(index)
                used += sizes[index]

    fill(token_budget - reserve)
    if outlines:
        assert summaries is not None
        for index in ranked:
            if len(outlined) >= max_summaries:
                break
            if index in whole or not summaries[index]:
                continue
            cap = min(sizes[index] // 2, token_budget - used)
            outline = _fit_outline(summaries[index], cap) if cap > 0 else ""
            if outline:
                outlined[index] = outline
                used += estimate_tokens(outline)
        fill(token_budget)

    def choice(index: int, tokens: int, reason: str, summary: str = "") -> FileChoice:
        return FileChoice(candidates[index].path, tokens, float(scores[index]), reason, summary)

    kept = [choice(i, sizes[i], labels[i]) for i in order if i in whole]
    summarized = [
        choice(i, estimate_tokens(outlined[i]), f"summarised ({labels[i]})", outlined[i])
        for i in order
        if i in outlined
    ]
    omitted = [
        choice(i, sizes[i], f"over budget ({labels[i]})")
        for i in order
        if i not in whole and i not in outlined
    ]
    return Selection(
        kept=kept, omitted=omitted, used_tokens=used, mode=SelectionMode.LEXICAL, summarized=summarized
    )


# --- the selector -----------------------------------------------------------------------------


def _card(analysed: AnalysedFile, content: str) -> str:
    """What a file is embedded as: its path and outline (or head when it has no outline)."""
    outline = analysed.structure.outline or content
    return f"{analysed.path}\n{outline[:_CARD_OUTLINE_CHARS]}"


class ContextSelector:
    """Ranks candidates (hybrid or lexical) and packs them into the budget.

    Analyses (structure, terms) are memoised by path and content hash, so a warm call over the
    same files only re-ranks. Safe to share between threads.
    """

    def __init__(
        self,
        embedder: CachingEmbedder | None,
        max_embeddings_per_call: int = 64,
        chunk_chars: int = DEFAULT_MAX_CHARS,
        semantic_top_k: int = SEMANTIC_TOP_K,
    ) -> None:
        self._embedder = embedder
        self._cap = max_embeddings_per_call
        self._chunk_chars = chunk_chars
        self._top_k = semantic_top_k
        self._analyses: OrderedDict[tuple[str, str], AnalysedFile] = OrderedDict()
        self._lock = threading.Lock()

    def analyse(self, path: str, content: str) -> AnalysedFile:
        """The file's structure and terms, memoised by (path, sha256 of content)."""
        key = (path, hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest())
        with self._lock:
            found = self._analyses.get(key)
            if found is not None:
                self._analyses.move_to_end(key)
                return found
        analysed = analyse_file(path, content, analyse(path, content, self._chunk_chars))
        with self._lock:
            self._analyses[key] = analysed
            while len(self._analyses) > _ANALYSIS_CACHE_SIZE:
                self._analyses.popitem(last=False)
        return analysed

    def select(
        self,
        query: str,
        candidates: Sequence[Candidate],
        token_budget: int,
        hints: Hints | None = None,
        max_summaries: int = DEFAULT_MAX_SUMMARIES,
        outline_share: float = 0.0,
    ) -> Selection:
        """Rank and pack; see the module docstring for when embeddings are used."""
        hints = hints or Hints(pinned_paths=[c.path for c in candidates if c.pinned])
        files = [self.analyse(c.path, c.content) for c in candidates]
        ranking = rank_files(query, files, hints)
        lexical = ranking.scores
        summaries = [
            summary(c.path, f.structure, c.content.count("\n") + 1) if f.structure.outline else ""
            for c, f in zip(candidates, files, strict=True)
        ]

        def packed(
            scores: Sequence[float], mode: SelectionMode, reason: str | None, hits: int, computed: int
        ) -> Selection:
            result = pack(candidates, scores, token_budget, summaries, max_summaries, outline_share)
            return Selection(
                kept=result.kept,
                omitted=result.omitted,
                summarized=result.summarized,
                used_tokens=result.used_tokens,
                mode=mode,
                fallback_reason=reason,
                embedding_cache_hits=hits,
                embeddings_computed=computed,
            )

        if self._embedder is None:
            return packed(lexical, SelectionMode.LEXICAL, "embeddings disabled", 0, 0)
        if self._cap == 0:
            return packed(lexical, SelectionMode.LEXICAL, "embedding cap is 0", 0, 0)
        if not candidates:
            return packed(lexical, SelectionMode.SEMANTIC, None, 0, 0)
        top = sorted(range(len(files)), key=lambda i: (-lexical[i], files[i].path))[: self._top_k]
        texts = [query, *(_card(files[i], candidates[i].content) for i in top)]
        plan = self._embedder.plan(texts)
        if self._cap > 0 and plan.to_compute > self._cap:
            reason = f"{plan.to_compute} new embeddings needed, cap {self._cap}"
            warmed = self._warm(dict(list(plan.missing.items())[: self._cap]))
            return packed(lexical, SelectionMode.LEXICAL, reason, plan.cache_hits, warmed)
        try:
            vectors = self._embedder.complete(plan)
        except EmbeddingUnavailable as error:
            return packed(lexical, SelectionMode.LEXICAL, f"embeddings unavailable: {error}", 0, 0)
        similarities = vectors[1:] @ vectors[0]
        semantic = [0.0] * len(files)
        for index, similarity in zip(top, similarities.tolist(), strict=True):
            semantic[index] = 1.0 + similarity  # positive, so every top file is ranked by the signal
        fused = rrf({**ranking.signals, "semantic": semantic}, [f.path for f in files], DEFAULT_WEIGHTS)
        return packed(fused, SelectionMode.SEMANTIC, None, plan.cache_hits, plan.to_compute)

    def warm_cards(self, files: Sequence[tuple[str, str]], batch: int = 32) -> int:
        """Embed the cards of (path, content) files ahead of a selection; returns how many were new.

        Only the cost of later selections changes (their cards hit the cache), never their
        result: which cards a selection uses depends on its inputs alone.
        """
        if self._embedder is None:
            return 0
        computed = 0
        for start in range(0, len(files), batch):
            cards = [
                _card(self.analyse(path, content), content) for path, content in files[start : start + batch]
            ]
            plan = self._embedder.plan(cards)
            try:
                computed += len(self._embedder.compute(plan.missing))
            except EmbeddingUnavailable:
                return computed
        return computed

    def _warm(self, missing: dict[str, str]) -> int:
        """Spend this call's allowance on the cache so a later call can rank semantically."""
        assert self._embedder is not None
        try:
            return len(self._embedder.compute(missing))
        except EmbeddingUnavailable:
            return 0
