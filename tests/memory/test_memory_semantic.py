"""The real MiniLM model: relevance that word overlap alone would not give, and the cache."""

from __future__ import annotations

import numpy as np
import pytest
from autopack_common.database import create_db_engine, upgrade_schema
from autopack_memory.embedding import LOCAL_MODEL_NAME, CachingEmbedder
from autopack_memory.selection import Candidate, ContextSelector, SelectionMode
from autopack_memory.store import EmbeddingCache

CSV_READER = '''"""Load spreadsheet exports."""
import csv


def load_records(path):
    with open(path, newline="") as handle:
        return [dict(line) for line in csv.DictReader(handle)]
'''

LOGO_RENDERER = '''"""Brand artwork."""
from PIL import Image, ImageDraw


def draw_logo(size):
    image = Image.new("RGBA", (size, size))
    ImageDraw.Draw(image).ellipse((0, 0, size, size), fill="#ff6600")
    return image
'''

HTTP_CLIENT = '''"""Talk to the billing API."""
import httpx


def fetch_invoices(token):
    return httpx.get("https://billing.example/invoices", headers={"Authorization": token}).json()
'''


def test_model_is_minilm_with_normalised_384_dim_vectors(minilm) -> None:  # type: ignore[no-untyped-def]
    embedder = minilm.embedder
    assert (embedder.model_name, embedder.dimension) == (LOCAL_MODEL_NAME, 384)
    vectors = embedder.embed(["parse CSV rows", "draw a logo"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_a_query_about_parsing_csv_ranks_the_csv_reader_first(counting_minilm, sqlite_url) -> None:  # type: ignore[no-untyped-def]
    engine = create_db_engine(sqlite_url)
    upgrade_schema(engine, "autopack_memory.migrations", "alembic_version_memory")
    counting = counting_minilm
    selector = ContextSelector(CachingEmbedder(counting, EmbeddingCache(engine)))
    candidates = [
        Candidate("src/logo_renderer.py", LOGO_RENDERER),
        Candidate("src/http_client.py", HTTP_CLIENT),
        Candidate("src/loader.py", CSV_READER),  # "parse" and "rows" appear nowhere in it
    ]
    budget = len(CSV_READER) // 4 + 5  # room for the best file only

    first = selector.select("parse CSV rows from a spreadsheet export", candidates, budget)

    assert first.mode is SelectionMode.SEMANTIC
    assert [(f.path, f.reason) for f in first.kept] == [("src/loader.py", "ranked 1")]
    assert {f.path for f in first.omitted} == {"src/logo_renderer.py", "src/http_client.py"}
    assert first.kept[0].score > max(f.score for f in first.omitted) + 0.1
    assert first.embeddings_computed == 4 and len(counting.embedded) == 4

    second = selector.select("parse CSV rows from a spreadsheet export", candidates, budget)
    assert (second.embeddings_computed, second.embedding_cache_hits) == (0, 4)
    assert len(counting.embedded) == 4  # nothing re-embedded
    assert second.kept[0].score == first.kept[0].score
    engine.dispose()


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("paint a circular emblem picture", "src/logo_renderer.py"),
        ("request payment documents over the network", "src/http_client.py"),
    ],
)
def test_meaning_wins_where_no_word_is_shared(minilm, query: str, expected: str) -> None:  # type: ignore[no-untyped-def]
    candidates = [
        Candidate("src/logo_renderer.py", LOGO_RENDERER),
        Candidate("src/http_client.py", HTTP_CLIENT),
        Candidate("src/loader.py", CSV_READER),
    ]
    lexical = ContextSelector(None).select(query, candidates, 10_000)
    assert {f.score for f in lexical.kept} == {0.0}  # word overlap cannot tell them apart

    semantic = ContextSelector(CachingEmbedder(minilm.embedder, cache=None)).select(query, candidates, 10_000)
    assert semantic.kept[0].path == expected
