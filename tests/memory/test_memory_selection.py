"""Context selection without a server: packing, outlines, reasons, ranking modes and fallback."""

from __future__ import annotations

import pytest
from autopack_common.errors import InvalidArgument
from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable
from autopack_memory.memory import Memory
from autopack_memory.selection import (
    Candidate,
    ContextSelector,
    SelectionMode,
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


def test_equal_scores_break_ties_by_path_whatever_the_input_order() -> None:
    candidates = [_file(name, 1) for name in ("z.py", "a.py", "m.py")]
    selection = pack(candidates, [0.5, 0.5, 0.5], token_budget=10)
    assert [f.path for f in selection.kept] == ["a.py", "m.py", "z.py"]
    reversed_selection = pack(candidates[::-1], [0.5, 0.5, 0.5], token_budget=10)
    assert reversed_selection.kept == selection.kept


def test_a_much_larger_file_needs_a_clearly_better_rank_to_displace_smaller_ones() -> None:
    # Rank 1 is 200x the size of rank 2: rank 2 goes first, and rank 1 no longer fits.
    candidates = [_file("huge.py", 2000), _file("b.py", 10)]
    selection = pack(candidates, [0.9, 0.8], token_budget=2005)
    assert [(f.path, f.reason) for f in selection.kept] == [("b.py", "ranked 2")]
    assert [(f.path, f.reason) for f in selection.omitted] == [("huge.py", "over budget (ranked 1)")]
    # Of similar sizes, rank decides.
    similar = [_file("a.py", 40), _file("b.py", 30), _file("c.py", 30)]
    assert [f.path for f in pack(similar, [0.9, 0.8, 0.7], token_budget=75).kept] == ["a.py", "b.py"]


def test_files_that_do_not_fit_whole_are_given_as_outlines_within_the_budget() -> None:
    candidates = [_file("big.py", 1000), _file("small.py", 100), _file("other.py", 100)]
    outlines = ["1: def alpha()\n2: def beta()\n", "", "1: def gamma()\n"]

    selection = pack(candidates, [0.9, 0.5, 0.1], 400, outlines, max_summaries=8, outline_share=0.1)

    assert [f.path for f in selection.kept] == ["small.py", "other.py"]
    assert [(f.path, f.reason, f.summary) for f in selection.summarized] == [
        ("big.py", "summarised (ranked 1)", outlines[0])
    ]
    assert selection.used_tokens == 200 + estimate_tokens(outlines[0]) <= 400
    assert selection.omitted == []
    # No outlines asked for: the big file is omitted, as before.
    plain = pack(candidates, [0.9, 0.5, 0.1], 400)
    assert [(f.path, f.reason) for f in plain.omitted] == [("big.py", "over budget (ranked 1)")]
    assert plain.summarized == []


def test_an_outline_too_long_for_what_is_left_is_cut_on_a_line_and_says_so() -> None:
    candidates = [_file("big.py", 5000)]
    outline = "".join(f"{n}: def function_number_{n}(argument)\n" for n in range(400))
    selection = pack(candidates, [1.0], 300, [outline], max_summaries=1)
    (summary,) = selection.summarized
    assert summary.tokens <= 300 and selection.used_tokens == summary.tokens
    assert summary.summary.startswith("0: def function_number_0(argument)\n")
    assert summary.summary.rstrip().endswith("more outline lines")


def test_terms_split_identifiers_and_meet_across_inflections() -> None:
    assert set(terms("csv reader parse rows")) < set(terms("CsvReader.parseRows"))
    assert {"csvreader", "parserows"} <= set(terms("CsvReader.parseRows"))  # compounds stay whole too
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


def test_without_embeddings_selection_is_lexical_and_says_why() -> None:
    selector = ContextSelector(embedder=None)
    candidates = [
        Candidate("logo_renderer.py", "def render_logo(canvas): draw the brand image"),
        Candidate("csv_reader.py", "def read_rows(path): parse each CSV row"),
    ]
    selection = selector.select("parse CSV rows", candidates, token_budget=1000)

    assert selection.mode is SelectionMode.LEXICAL
    assert selection.fallback_reason == "embeddings disabled"
    assert selection.kept[0].path == "csv_reader.py"
    assert selection.kept[0].reason == "ranked 1"


def test_cap_exceeded_ranks_lexically_and_spends_the_cap_warming_the_cache(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    caching = CachingEmbedder(hashing_embedder, cache=None)
    selector = ContextSelector(caching, max_embeddings_per_call=2)
    candidates = [Candidate(f"f{n}.py", f"content {n}") for n in range(3)]  # query + 3 cards = 4 > 2

    selection = selector.select("content", candidates, token_budget=100)

    assert selection.mode is SelectionMode.LEXICAL
    assert selection.fallback_reason == "4 new embeddings needed, cap 2"
    assert len(hashing_embedder.embedded) == 2  # never more than the cap
    assert hashing_embedder.embedded[0] == "content"
    assert selection.embeddings_computed == 2
    assert len(selection.kept) == 3


def test_only_the_lexical_top_k_is_embedded_so_the_cost_does_not_depend_on_the_cache(
    hashing_embedder,
) -> None:  # type: ignore[no-untyped-def]
    selector = ContextSelector(CachingEmbedder(hashing_embedder, cache=None), semantic_top_k=3)
    candidates = [Candidate(f"f{n:02d}.py", f"def handler_{n}(): return {n}\n") for n in range(20)]
    candidates.append(Candidate("target.py", "def parse_invoice(): pass\n"))

    selection = selector.select("parse invoice", candidates, token_budget=10_000)

    assert selection.mode is SelectionMode.SEMANTIC
    assert selection.embeddings_computed == 1 + 3  # the query and three file cards
    assert hashing_embedder.embedded[1].startswith("target.py\n")  # the lexical best is among them
    assert selection.kept[0].path == "target.py"


@pytest.mark.parametrize(("cap", "mode"), [(-1, SelectionMode.SEMANTIC), (0, SelectionMode.LEXICAL)])
def test_cap_minus_one_is_unlimited_and_zero_disables(
    hashing_embedder, cap: int, mode: SelectionMode
) -> None:
    selector = ContextSelector(CachingEmbedder(hashing_embedder, cache=None), max_embeddings_per_call=cap)
    candidates = [Candidate(f"f{n}.py", f"content {n}") for n in range(50)]
    assert selector.select("content", candidates, token_budget=10_000).mode is mode


def test_the_same_inputs_give_the_same_selection_cold_or_warm_and_in_any_order(hashing_embedder) -> None:  # type: ignore[no-untyped-def]
    selector = ContextSelector(CachingEmbedder(hashing_embedder, cache=None))
    candidates = [
        Candidate(f"pkg/module_{n}.py", f"def function_{n}(value):\n    return value * {n}\n")
        for n in range(40)
    ]
    candidates.append(Candidate("pkg/pricing.py", "def discount(price, rate):\n    return price * rate\n"))
    first = selector.select("apply the discount rate to a price", candidates, token_budget=200)
    again = selector.select("apply the discount rate to a price", candidates[::-1], token_budget=200)
    assert first.mode is again.mode is SelectionMode.SEMANTIC
    assert [(f.path, f.score) for f in again.kept] == [(f.path, f.score) for f in first.kept]
    assert first.kept[0].path == "pkg/pricing.py"


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
