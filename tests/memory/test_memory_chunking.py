"""Cutting files by structure: Python by ``ast``, Markdown by sections, other text by blocks."""

from __future__ import annotations

from autopack_memory.chunking import analyse, summary

PYTHON = (
    '''"""Invoices and their totals."""

import json
from decimal import Decimal

RATE = Decimal("0.2")


def total(lines):
    """Sum of the lines."""
    return sum(lines)


class Invoice:
    """One invoice."""

    def __init__(self, lines):
        self.lines = lines

    @property
    def tax(self):
        """Tax at the standard rate."""
        return total(self.lines) * RATE
'''
    + "".join(f"\n\ndef helper_{n}(value):\n    return value + {n}\n" for n in range(60))
    + '''

def parse_invoice_json(text):
    """The last function of a long module."""
    return Invoice(json.loads(text))
'''
)


def test_python_is_cut_by_definitions_over_the_whole_file() -> None:
    structure = analyse("billing/invoice.py", PYTHON, max_chars=400)
    names = [chunk.name for chunk in structure.chunks]
    assert "total" in names and "Invoice" in names
    assert names[-1] == "parse_invoice_json"  # the end of a long file is read too
    last = structure.chunks[-1]
    assert last.kind == "def" and last.text.startswith("def parse_invoice_json")
    assert PYTHON.splitlines()[last.start_line - 1].startswith("def parse_invoice_json")
    assert all(len(chunk.text) <= 400 for chunk in structure.chunks)
    assert {"total", "Invoice", "Invoice.tax", "tax", "RATE", "parse_invoice_json"} <= set(structure.symbols)
    assert {"json", "decimal", "decimal.Decimal"} <= set(structure.imports)


def test_a_large_class_is_cut_by_method_and_its_decorators_stay_with_them() -> None:
    source = "class Big:\n" + "".join(
        f"    @staticmethod\n    def method_{n}():\n        return '{'x' * 80}'\n\n" for n in range(10)
    )
    structure = analyse("big.py", source, max_chars=300)
    methods = [chunk for chunk in structure.chunks if chunk.kind == "def"]
    assert [chunk.name for chunk in methods] == [f"Big.method_{n}" for n in range(10)]
    assert all(chunk.text.lstrip().startswith("@staticmethod") for chunk in methods)


def test_the_outline_lists_signatures_with_their_first_docstring_line() -> None:
    structure = analyse("billing/invoice.py", PYTHON)
    outline = structure.outline.splitlines()
    assert outline[0] == '"""Invoices and their totals."""'
    assert "def total(lines):  # Sum of the lines." in structure.outline
    assert any(line.endswith("def tax(self):  # Tax at the standard rate.") for line in outline)
    text = summary("billing/invoice.py", structure, PYTHON.count("\n") + 1)
    assert text.startswith("# outline of billing/invoice.py (")
    assert "return" not in text  # signatures, not bodies


def test_markdown_is_cut_by_sections_ignoring_headings_in_code_fences() -> None:
    text = "# Title\nintro\n\n## Install\nrun it\n```\n# not a heading\n```\n## Usage\nuse it\n"
    structure = analyse("README.md", text)
    assert [chunk.name for chunk in structure.chunks] == ["Title", "Install", "Usage"]
    assert "# not a heading" in structure.chunks[1].text
    assert structure.outline.splitlines() == ["1: # Title", "4: ## Install", "9: ## Usage"]


def test_other_text_and_broken_python_fall_back_to_blocks() -> None:
    text = "".join(f"key_{n} = value {n}\n" + ("\n" if n % 5 == 4 else "") for n in range(40))
    for path in ("settings.ini", "broken.py"):
        structure = analyse(path, text + ("def (\n" if path.endswith(".py") else ""), max_chars=120)
        assert len(structure.chunks) > 1
        assert all(chunk.kind == "block" for chunk in structure.chunks)
        assert all(len(chunk.text) <= 120 for chunk in structure.chunks)
        assert structure.chunks[0].text.startswith("key_0 = value 0")


def test_an_empty_file_still_has_one_chunk() -> None:
    assert len(analyse("empty.py", "").chunks) == 1
    assert len(analyse("empty.txt", "").chunks) == 1


def test_definitions_of_other_languages_give_symbols_and_the_outline() -> None:
    text = (
        "import { api } from './api';\n\n"
        "export async function fetchInvoices(customer) {\n  return api.get(customer);\n}\n\n"
        "export default class InvoiceTable extends Table {\n  render() {}\n}\n\n"
        "pub(crate) fn parse_total(text: &str) -> u32 { 0 }\n"
    )
    structure = analyse("web/invoices.ts", text)
    assert structure.symbols == ["fetchInvoices", "InvoiceTable", "parse_total"]
    assert structure.outline.splitlines() == [
        "3: export async function fetchInvoices(customer) {",
        "7: export default class InvoiceTable extends Table {",
        "11: pub(crate) fn parse_total(text: &str) -> u32 { 0 }",
    ]


def test_a_long_text_without_blank_lines_is_cut_into_bounded_chunks_covering_it() -> None:
    text = "".join(f"row {n}, value {n * 7}\n" for n in range(50_000))
    structure = analyse("data.csv", text, max_chars=1000)
    assert sum(len(chunk.text) for chunk in structure.chunks) == len(text)
    assert all(len(chunk.text) <= 1000 for chunk in structure.chunks)
