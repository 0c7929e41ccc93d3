"""Context selection without a server: packing, reasons, lexical ranking and fallback."""

from __future__ import annotations

import pytest
from autopack_common.errors import InvalidArgument
from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable
from autopack_memory.memory import Memory
from autopack_memory.selection import (
    Candidate,
    ContextSelector,
    SelectionMode,
    chunk_text,
    estimate_tokens,
    lexical_scores,
    pack,
    terms,
)
from autopack_memory.vectors import VectorStore


def _file(path: str, tokens: int, pinned: bool = False, text: str = "x") -> Candidate:
    """A candidate whose content estimates to exactly ``tokens`` tokens."""
    return Candidate(path=path, content=(text * (tokens * 4))[: tokens * 4], pinned=pinned)


def test_token_estimate_is_ceil_of_chars_over_four() -> None:
    assert estimate_tokens("") == 0
    assert estimate_tokens("abc") == 1
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("x" * 400) == 100


def test_pack_respects_budget_and_skips_files_that_do_not_fit() -> None:
    candidates = [_file("a.py", 60), _file("big.py", 50), _file("c.py", 30), _file("d.py", 20)]
    selection = pack(candidates, [0.9, 0.8, 0.7, 0.6], token_budget=100)

    assert [f.path for f in selection.kept] == ["a.py", "c.py"]
    assert selection.used_tokens == 90 <= 100
    assert [(f.path, f.reason) for f in selection.omitted] == [
        ("big.py", "over budget (ranked 2)"),
        ("d.py", "over budget (ranked 4)"),
    ]
    assert [f.reason for f in selection.kept] == ["ranked 1", "ranked 3"]
    assert sum(f.tokens for f in selection.kept) == selection.used_tokens


def test_pinned_files_come_first_whatever_their_score() -> None:
    candidates = [_file("best.py", 10), _file("deliverable.py", 10, pinned=True), _file("next.py", 10)]
    selection = pack(candidates, [0.99, 0.01, 0.5], token_budget=25)

    assert [(f.path, f.reason) for f in selection.kept] == [
        ("deliverable.py", "pinned"),
        ("best.py", "ranked 1"),
    ]
    assert [(f.path, f.reason) for f in selection.omitted] == [("next.py", "over budget (ranked 2)")]


def test_a_pinned_file_larger_than_the_budget_is_omitted_with_its_reason() -> None:
    selection = pack([_file("huge.py", 500, pinned=True), _file("small.py", 5)], [1.0, 0.1], token_budget=100)

    assert [(f.path, f.reason) for f in selection.omitted] == [("huge.py", "over budget (pinned)")]
    assert [f.path for f in selection.kept] == ["small.py"]


def test_equal_scores_keep_the_callers_order() -> None:
    candidates = [_file(name, 1) for name in ("z.py", "a.py", "m.py")]
    selection = pack(candidates, [0.5, 0.5, 0.5], token_budget=10)
    assert [f.path for f in selection.kept] == ["z.py", "a.py", "m.py"]


def test_terms_split_identifiers_and_meet_across_inflections() -> None:
    assert terms("CsvReader.parseRows") == terms("csv reader parse rows")
    assert terms("parsing the rows") == terms("parser row")


def test_lexical_scores_prefer_the_file_about_the_query() -> None:
    documents = [
        "logo_renderer.py\ndef render_logo(canvas): draw the brand image with colours",
        "csv_reader.py\nimport csv\ndef read_rows(path): parse each CSV row into a dict",
        "empty.py\n",
    ]
    scores = lexical_scores("parse CSV rows from a file", documents)
    assert scores[1] > scores[0] >= 0.0
    assert scores[2] == 0.0
    assert all(0.0 <= score <= 1.0 for score in scores)
    assert lexical_scores("the of and", documents) == [0.0, 0.0, 0.0]


def test_chunks_are_line_aligned_bounded_and_capped() -> None:
    text = "".join(f"line {n:03d}\n" for n in range(100))  # 9 chars a line
    chunks = chunk_text(text, chunk_chars=100, max_chunks=3)
    assert len(chunks) == 3
    assert all(len(chunk) <= 100 for chunk in chunks)
    assert all(chunk.endswith("\n") for chunk in chunks)
    assert "".join(chunks) == text[: len("".join(chunks))]
    assert chunk_text("y" * 250, chunk_chars=100, max_chunks=5) == ["y" * 100, "y" * 100, "y" * 50]
    assert chunk_text("", chunk_chars=100, max_chunks=5) == [""]


def test_without_embeddings_selection_is_lexical_and_says_why() -> None:
    selector = ContextSelector(embedder=None)
    candidates = [
        Candidate("logo_renderer.py", "def render_logo(canvas): draw the brand image"),
        Candidate("csv_reader.py", "def read_rows(path): parse each CSV row"),
    ]
    selection = selector.select("parse CSV rows", candidates, token_budget=1000)

    assert selection.mode is SelectionMode.LEXICAL
    assert selection.fallback_reason == "embeddings disabled"
    assert [f.path for f in selection.kept] == ["csv_reader.py", "logo_renderer.py"]
    assert selection.kept[0].reason == "ranked 1"


def test_cap_exceeded_ranks_lexically_and_spends_the_cap_warming_the_cache(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    selector = ContextSelector(CachingEmbedder(hashing_embedder, cache=None), max_embeddings_per_call=2)
    candidates = [Candidate(f"f{n}.py", f"content {n}") for n in range(3)]  # query + 3 files = 4 > 2

    selection = selector.select("content", candidates, token_budget=100)

    assert selection.mode is SelectionMode.LEXICAL
    assert selection.fallback_reason == "4 new embeddings needed, cap 2"
    assert hashing_embedder.embedded == ["content", "f0.py\ncontent 0"]  # never more than the cap
    assert selection.embeddings_computed == 2
    assert len(selection.kept) == 3


def test_later_chunks_are_embedded_breadth_first_within_the_cap(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    selector = ContextSelector(
        CachingEmbedder(hashing_embedder, cache=None),
        max_embeddings_per_call=5,
        chunk_chars=100,
        max_chunks_per_file=3,
    )
    long = "".join(f"{word} " * 15 + "\n" for word in ("aaaa", "bbbb", "cccc"))  # 3 chunks each
    candidates = [Candidate("x.py", long), Candidate("y.py", long)]

    selection = selector.select("cccc", candidates, token_budget=10_000)

    assert selection.mode is SelectionMode.SEMANTIC
    assert selection.embeddings_computed == 5  # query + 2 heads + the 2nd chunk of each file
    assert [text.split("\n")[1].split()[0] for text in hashing_embedder.embedded[1:]] == [
        "aaaa",
        "aaaa",
        "bbbb",
        "bbbb",
    ]


@pytest.mark.parametrize(("cap", "mode"), [(-1, SelectionMode.SEMANTIC), (0, SelectionMode.LEXICAL)])
def test_cap_minus_one_is_unlimited_and_zero_disables(
    hashing_embedder, cap: int, mode: SelectionMode
) -> None:
    selector = ContextSelector(CachingEmbedder(hashing_embedder, cache=None), max_embeddings_per_call=cap)
    candidates = [Candidate(f"f{n}.py", f"content {n}") for n in range(50)]
    assert selector.select("content", candidates, token_budget=10_000).mode is mode


def test_semantic_selection_scores_a_file_by_its_best_chunk(hashing_embedder) -> None:
    selector = ContextSelector(
        CachingEmbedder(hashing_embedder, cache=None), chunk_chars=100, max_chunks_per_file=5
    )
    filler = "".join(f"unrelated filler words number {n}\n" for n in range(6))
    candidates = [
        Candidate("a.py", filler + "alpha beta gamma\n"),  # the match is in a later chunk
        Candidate("b.py", "delta epsilon\n"),
    ]
    selection = selector.select("alpha beta gamma", candidates, token_budget=10_000)

    assert selection.mode is SelectionMode.SEMANTIC
    assert selection.fallback_reason is None
    assert [f.path for f in selection.kept] == ["a.py", "b.py"]
    assert selection.kept[0].score > 0.5 > selection.kept[1].score
    assert selection.embeddings_computed == len(hashing_embedder.embedded)


def test_unavailable_provider_degrades_to_lexical() -> None:
    class Down:
        model_name = "test:down"
        dimension = 4

        def embed(self, texts):  # type: ignore[no-untyped-def]
            raise EmbeddingUnavailable("connection refused")

    selection = ContextSelector(CachingEmbedder(Down(), cache=None)).select(
        "query", [Candidate("a.py", "query words")], token_budget=10
    )
    assert selection.mode is SelectionMode.LEXICAL
    assert selection.fallback_reason == "embeddings unavailable: connection refused"


@pytest.fixture
def lexical_memory(qdrant_path) -> Memory:  # type: ignore[no-untyped-def]
    vectors = VectorStore.open(path=qdrant_path)
    yield Memory(None, vectors, ContextSelector(None))
    vectors.close()


@pytest.mark.parametrize(
    ("query", "candidates", "budget", "field"),
    [
        ("", [], 10, "query"),
        ("   ", [], 10, "query"),
        ("q", [], 0, "token_budget"),
        ("q", [], -5, "token_budget"),
        ("q", [Candidate("a.py", "x"), Candidate("", "y")], 10, "candidates[1].path"),
        ("q", [Candidate("a.py", "x"), Candidate("a.py", "y")], 10, "candidates[1].path"),
    ],
)
def test_bad_selection_requests_name_the_field(lexical_memory, query, candidates, budget, field) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidArgument) as raised:
        lexical_memory.select_context(query, candidates, budget)
    assert raised.value.field == field
    assert raised.value.message.startswith(f"{field}: ")


def test_no_candidates_is_an_empty_selection(lexical_memory) -> None:  # type: ignore[no-untyped-def]
    selection = lexical_memory.select_context("anything", [], 10)
    assert (selection.kept, selection.omitted, selection.used_tokens) == ([], [], 0)


def test_no_candidates_embeds_nothing(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    selection = ContextSelector(CachingEmbedder(hashing_embedder, cache=None)).select("query", [], 10)
    assert (selection.kept, selection.omitted, selection.used_tokens) == ([], [], 0)
    assert hashing_embedder.embedded == []
