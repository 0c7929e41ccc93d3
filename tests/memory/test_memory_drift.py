"""Intention anchors and goal drift with the real MiniLM model; Qdrant down degrades Search/Upsert."""

from __future__ import annotations

import pytest
from autopack_common.errors import InvalidArgument, NotFound
from autopack_memory.drift import INTENTION_MAX_BYTES, DriftDetector, DriftMode, DriftVerdict, anchor
from autopack_memory.embedding import CachingEmbedder
from autopack_memory.memory import Memory
from autopack_memory.selection import ContextSelector
from autopack_memory.vectors import StoredItem, VectorStore

INTENTION = "Build a command-line tool that imports customer CSV exports into PostgreSQL tables"
ON_GOAL = "Added the CSV import command: parses customer rows and inserts them into PostgreSQL"
OFF_GOAL = "Redesigned the marketing website's landing page colours and the company logo"


@pytest.fixture
def vectors(qdrant_path):  # type: ignore[no-untyped-def]
    store = VectorStore.open(path=qdrant_path)
    yield store
    store.close()


def test_a_change_on_the_intention_is_aligned_and_one_off_it_drifts(minilm, vectors) -> None:  # type: ignore[no-untyped-def]
    caching = CachingEmbedder(minilm.embedder, None)
    Memory(caching, vectors, ContextSelector(caching)).upsert(
        "intentions", [StoredItem(id="run-1", text=INTENTION, metadata={"run_id": "run-1"})]
    )
    advisory = DriftDetector(vectors, caching)
    aligned = advisory.check("run-1", ON_GOAL)
    drifted = advisory.check("run-1", OFF_GOAL)

    assert aligned.verdict is DriftVerdict.ALIGNED and aligned.similarity >= 0.5
    assert drifted.verdict is DriftVerdict.ADVISORY and drifted.similarity < 0.5
    assert aligned.intention == INTENTION and not aligned.lexical
    blocking = DriftDetector(vectors, caching, threshold=0.5, mode=DriftMode.BLOCKING)
    assert blocking.check("run-1", OFF_GOAL).verdict is DriftVerdict.BLOCKING
    assert blocking.check("", ON_GOAL, intention=INTENTION).verdict is DriftVerdict.ALIGNED


def test_without_embeddings_drift_is_measured_on_words_against_its_own_threshold(vectors) -> None:  # type: ignore[no-untyped-def]
    # The embedding threshold (0.5) does not apply to word overlap: blocking mode without a
    # model must not stop every aligned phase.
    detector = DriftDetector(vectors, None, threshold=0.5, mode=DriftMode.BLOCKING)
    check = detector.check("", ON_GOAL, intention=INTENTION)
    assert check.lexical and check.verdict is DriftVerdict.ALIGNED
    assert check.threshold == 0.2 and 0.2 <= check.similarity < 0.5
    drifted = detector.check("", OFF_GOAL, intention=INTENTION)
    assert drifted.verdict is DriftVerdict.BLOCKING and drifted.similarity < 0.2
    stricter = DriftDetector(vectors, None, lexical_threshold=0.9)
    assert stricter.check("", ON_GOAL, intention=INTENTION).verdict is DriftVerdict.ADVISORY


def test_the_anchor_is_at_most_2_kb_cut_on_a_character() -> None:
    text = "é" * 1500  # 3000 bytes
    cut = anchor(text)
    assert len(cut.encode()) <= INTENTION_MAX_BYTES and cut == "é" * 1024
    assert anchor("short") == "short"


def test_bad_drift_requests_name_the_field(vectors) -> None:  # type: ignore[no-untyped-def]
    detector = DriftDetector(vectors, None)
    for call, field in (
        (lambda: detector.check("run-1", "  "), "change_summary"),
        (lambda: detector.check("", "a change"), "run_id"),
    ):
        with pytest.raises(InvalidArgument) as raised:
            call()
        assert raised.value.field == field
    with pytest.raises(NotFound):
        detector.check("no-such-run", "a change")


def test_qdrant_down_degrades_search_and_upsert_instead_of_failing() -> None:
    down = VectorStore.open(url="http://127.0.0.1:9")  # nothing listens on the discard port
    memory = Memory(None, down, ContextSelector(None))
    stored = memory.upsert("phase_summaries", [StoredItem(id="p1", text="phase 1 did things")])
    assert (stored.upserted, stored.degraded) == (0, True)
    found = memory.search("phase_summaries", "things")
    assert (found.hits, found.lexical, found.degraded) == ([], True, True)
    with pytest.raises(InvalidArgument):  # bad input is still refused, not degraded
        memory.search("phase_summaries", "")
