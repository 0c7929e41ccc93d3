"""Fixtures of the memory tests: the real MiniLM model (loaded once), a counting fake model,
span capture and a memory server on a real channel."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class CountingEmbedder:
    """Wraps a model and counts the texts it was asked to embed (cache misses reach it)."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.embedded: list[str] = []

    @property
    def model_name(self) -> str:
        return self.inner.model_name  # type: ignore[attr-defined]

    @property
    def dimension(self) -> int:
        return self.inner.dimension  # type: ignore[attr-defined]

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        self.embedded.extend(texts)
        return self.inner.embed(texts)  # type: ignore[attr-defined]


class HashingEmbedder:
    """A deterministic stand-in model: hashed bag of words, L2-normalised, 64 dimensions."""

    model_name = "test:hashing-64"
    dimension = 64

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        matrix = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                bucket = int.from_bytes(hashlib.sha256(word.encode()).digest()[:4], "little")
                matrix[row, bucket % self.dimension] += 1.0
            norm = np.linalg.norm(matrix[row])
            if norm:
                matrix[row] /= norm
        return matrix


@dataclass
class LoadedModel:
    embedder: object
    load_seconds: float


@pytest.fixture(scope="session")
def minilm() -> LoadedModel:
    """The packaged MiniLM model, loaded and warmed once for the whole session."""
    from autopack_memory.embedding import LocalEmbedder

    started = time.perf_counter()
    embedder = LocalEmbedder()
    embedder.warm()
    return LoadedModel(embedder=embedder, load_seconds=time.perf_counter() - started)


@pytest.fixture
def counting_minilm(minilm: LoadedModel) -> CountingEmbedder:
    """The shared model, with a fresh count of what this test made it embed."""
    return CountingEmbedder(minilm.embedder)


@pytest.fixture
def hashing_embedder() -> CountingEmbedder:
    return CountingEmbedder(HashingEmbedder())


@pytest.fixture
def qdrant_path(tmp_path: Path) -> Path:
    return tmp_path / "qdrant"


@pytest.fixture(scope="session")
def span_exporter() -> Iterator[object]:
    """Finished spans of this process, through the chassis' own tracer provider."""
    from autopack_common.telemetry import setup_telemetry
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    provider = setup_telemetry("memory", "test", Path(os.environ["AUTOPACK_TRACE_DIR"]))
    installed = trace.get_tracer_provider()  # another test package may have installed its own first
    if isinstance(installed, TracerProvider):
        provider = installed
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.clear()
