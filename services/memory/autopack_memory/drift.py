"""Intention anchors and goal drift (seed 004: cosine similarity >= 0.5, advisory by default).

The run's intention is what the orchestrator stored with Upsert in the ``intentions``
collection under the run id. A phase's change summary is compared with it by cosine of their
embeddings (TF-IDF cosine of their words without embeddings); below the threshold the change
has drifted, and the configured mode says whether that blocks or only warns.

Word overlap runs on another scale than embeddings (an aligned change scores about 0.2), so
it has its own threshold, set where words flag as many changes as MiniLM at the seed's 0.5
(bench: subject of a real commit as the intention, its body and files as an aligned change, the
next commit's as a drifted one; 41 commits: words at 0.2 flag 46% / 93%, MiniLM at 0.5 56% / 95%).
Losing the model therefore does not change how often a phase is stopped.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from autopack_common.errors import InvalidArgument, NotFound

from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable
from autopack_memory.ranking import lexical_scores
from autopack_memory.vectors import VectorStore

INTENTIONS_COLLECTION = "intentions"
INTENTION_MAX_BYTES = 2048
DEFAULT_DRIFT_THRESHOLD = 0.5
DEFAULT_LEXICAL_DRIFT_THRESHOLD = 0.2


class DriftMode(StrEnum):
    ADVISORY = "advisory"
    BLOCKING = "blocking"


class DriftVerdict(StrEnum):
    ALIGNED = "aligned"
    ADVISORY = "advisory"
    BLOCKING = "blocking"


@dataclass(frozen=True)
class DriftCheck:
    similarity: float
    threshold: float
    verdict: DriftVerdict
    intention: str
    lexical: bool


def anchor(text: str, max_bytes: int = INTENTION_MAX_BYTES) -> str:
    """The intention as it goes into prompts: at most ``max_bytes`` of UTF-8, cut on a character."""
    return text.encode("utf-8")[:max_bytes].decode("utf-8", errors="ignore")


class DriftDetector:
    """Compares change summaries with the run's intention."""

    def __init__(
        self,
        vectors: VectorStore,
        embedder: CachingEmbedder | None,
        threshold: float = DEFAULT_DRIFT_THRESHOLD,
        mode: DriftMode = DriftMode.ADVISORY,
        lexical_threshold: float = DEFAULT_LEXICAL_DRIFT_THRESHOLD,
    ) -> None:
        self._vectors = vectors
        self._embedder = embedder
        self._threshold = threshold
        self._lexical_threshold = lexical_threshold
        self._mode = mode

    def check(self, run_id: str, change_summary: str, intention: str = "") -> DriftCheck:
        if not change_summary.strip():
            raise InvalidArgument("change_summary", "required")
        if not intention.strip():
            if not run_id:
                raise InvalidArgument("run_id", "required when no intention is given")
            stored = self._vectors.get(INTENTIONS_COLLECTION, run_id)
            if stored is None:
                raise NotFound(f"no intention stored for run {run_id[:64]!r}")
            intention = stored.text
        intention = anchor(intention)
        lexical = self._embedder is None
        if self._embedder is not None:
            try:
                vectors = self._embedder.embed([intention, change_summary])
                similarity = float(vectors[0] @ vectors[1])
            except EmbeddingUnavailable:
                lexical = True
        if lexical:
            similarity = lexical_scores(intention, [change_summary])[0]
        threshold = self._lexical_threshold if lexical else self._threshold
        if similarity >= threshold:
            verdict = DriftVerdict.ALIGNED
        else:
            verdict = DriftVerdict.BLOCKING if self._mode is DriftMode.BLOCKING else DriftVerdict.ADVISORY
        return DriftCheck(similarity, threshold, verdict, intention, lexical)
