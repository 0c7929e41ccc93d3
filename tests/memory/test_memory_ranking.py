"""Hybrid ranking: each signal, their fusion, and determinism."""

from __future__ import annotations

import pytest
from autopack_memory.chunking import analyse
from autopack_memory.ranking import Hints, analyse_file, path_terms, rank_files, rrf


def _files(sources: dict[str, str]):  # type: ignore[no-untyped-def]
    return [analyse_file(path, text, analyse(path, text)) for path, text in sources.items()]


def _order(sources: dict[str, str], query: str, hints: Hints | None = None) -> list[str]:
    files = _files(sources)
    scores = rank_files(query, files, hints or Hints()).scores
    return [
        file.path
        for _score, file in sorted(zip(scores, files, strict=True), key=lambda p: (-p[0], p[1].path))
    ]


def test_path_words_are_split_and_generic_words_dropped() -> None:
    assert path_terms("services/estimator/README.md") == ["servic", "estimator", "readm"]
    assert "src" not in path_terms("src/pkg/__init__.py")


def test_one_relevant_function_in_a_long_module_still_ranks_it() -> None:
    filler = "".join(f"def unrelated_{n}(x):\n    return x + {n}\n\n" for n in range(150))
    sources = {
        "app/big.py": filler + "def refund_payment(order):\n    return order.refund()\n",
        "app/other.py": "def shipping_label(order):\n    return order.address\n",
    }
    assert _order(sources, "refund a payment")[0] == "app/big.py"


def test_a_task_naming_the_area_finds_its_files_by_path() -> None:
    sources = {
        "services/estimator/README.md": "# Service\nHow to run it.\n",
        "services/builder/README.md": "# Service\nHow to run it.\n",
    }
    assert _order(sources, "Estimator README: describe the release test")[0] == "services/estimator/README.md"


def test_names_the_task_quotes_find_the_file_that_defines_them() -> None:
    sources = {
        "lib/net.py": "def wait_until_serving(address):\n    pass\n",
        "lib/use.py": "from lib.net import wait_until_serving\nwait_until_serving('x')\nwait_until_serving('y')\n",
        "lib/misc.py": "def other():\n    pass\n",
    }
    files = _files(sources)
    ranking = rank_files("One wait_until_serving for every caller", files)
    assert ranking.signals["symbol"] == [1.0, 0.0, 0.0]
    sources["lib/quoted.txt"] = "notes\n"
    assert _order(sources, "update lib/quoted.txt with the notes")[0] == "lib/quoted.txt"


def test_scope_and_imports_of_pinned_files_are_hints() -> None:
    sources = {
        "pkg/main.py": "from pkg.helpers import tidy\n",
        "pkg/helpers.py": "def tidy():\n    pass\n",
        "pkg/unrelated.py": "def tidy_up():\n    pass\n",
        "docs/guide.md": "# Guide\n",
    }
    files = _files(sources)
    ranking = rank_files("change things", files, Hints(scope_paths=["docs/"], pinned_paths=["pkg/main.py"]))
    assert ranking.signals["hint"] == [0.0, 1.0, 0.0, 1.0]


def test_rrf_reads_ranks_only_and_ties_share_a_rank() -> None:
    fused = rrf({"a": [10.0, 10.0, 0.0], "b": [0.0, 0.3, 0.9]}, ["x", "y", "z"], {"a": 1.0, "b": 1.0})
    assert fused[0] == pytest.approx(1 / 11)
    assert fused[1] == pytest.approx(1 / 11 + 1 / 12)
    assert fused[2] == pytest.approx(1 / 11)
    assert rrf({"a": [5.0, 1.0]}, ["x", "y"], {"a": 0.0}) == [0.0, 0.0]


def test_ranking_does_not_depend_on_the_input_order() -> None:
    sources = {f"pkg/mod_{n}.py": f"def func_{n}():\n    return 'parse rows {n % 3}'\n" for n in range(30)}
    files = _files(sources)
    forward = dict(zip([f.path for f in files], rank_files("parse rows", files).scores, strict=True))
    backward_files = files[::-1]
    backward = dict(
        zip([f.path for f in backward_files], rank_files("parse rows", backward_files).scores, strict=True)
    )
    assert forward == backward


def test_the_tests_of_the_best_ranked_modules_are_pulled_in() -> None:
    sources = {
        "shop/cart.py": "def add_discount_code(cart, code):\n    cart.codes.append(code)\n",
        "tests/test_cart.py": "def test_something():\n    assert True\n",
        "tests/test_other.py": "def test_something():\n    assert True\n",
    }
    files = _files(sources)
    ranking = rank_files("discount codes in the cart", files)
    pair = ranking.signals["pair"]
    assert pair[1] == 1.0 and pair[2] == 0.0  # the cart module ranks first and pulls in its test
    assert ranking.scores[1] > ranking.scores[2]


def test_a_dotted_reference_names_the_module_it_lives_in() -> None:
    sources = {
        "services/common/autopack_common/clients.py": "def open_channel():\n    pass\n",
        "services/common/autopack_common/server.py": "def create_server():\n    pass\n",
        "clients.py": "def other():\n    pass\n",
    }
    ranking = rank_files("One wait (autopack_common.clients.wait_until_ready) for all", _files(sources))
    assert ranking.signals["symbol"] == [2.0, 0.0, 0.0]
