"""Cutting a file into pieces that follow its structure, and what it defines and imports.

Ranking a file by its first few fixed-size pieces judges a large module by its imports; cutting
by structure over the whole file lets one relevant function speak for its file. Python is read
with ``ast`` (functions, classes, methods of large classes, module-level blocks), Markdown by
sections, anything else by blank-line blocks. A piece never exceeds ``max_chars``: a longer
function or section is split on line boundaries.

The outline (signatures with their first docstring line, or section headings) is what a file
too large for the budget is summarised to, instead of being cut.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

DEFAULT_MAX_CHARS = 1200
MARKDOWN_SUFFIXES = frozenset({".md", ".markdown", ".rst", ".txt"})
_HEADING = re.compile(r"^(#{1,6})\s+(.*\S)\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_OUTLINE_MAX_LINES = 400
# A definition in a C-like or scripting language: optional modifiers, a keyword, the name.
_DEFINITION = re.compile(
    r"^\s*(?:(?:export|default|public|private|protected|static|abstract|final|async|pub(?:\([\w:]+\))?|"
    r"extern|inline|unsafe|const|override|sealed|partial|internal)\s+)*"
    r"(?:function\*?|class|interface|struct|enum|trait|impl|type|func|fn|def|module|namespace|object|record)"
    r"\s+([A-Za-z_$][\w$]*)"
)


@dataclass(frozen=True)
class Chunk:
    """A piece of a file: what it is (``def``, ``class``, ``section``, ``block``), its name and lines."""

    kind: str
    name: str
    start_line: int
    end_line: int
    text: str


@dataclass(frozen=True)
class FileStructure:
    """A file cut by structure, with the names it defines, the modules it imports and its outline."""

    chunks: list[Chunk]
    symbols: list[str] = field(default_factory=list)
    imports: list[str] = field(default_factory=list)
    outline: str = ""


def _split_lines(lines: list[str], start: int, kind: str, name: str, max_chars: int) -> list[Chunk]:
    """Consecutive lines (``start`` is 1-based) as chunks of at most ``max_chars``."""
    chunks: list[Chunk] = []
    current: list[str] = []
    current_start = start
    size = 0
    for offset, line in enumerate(lines):
        while len(line) > max_chars:  # a single huge line (minified, data): cut it
            if current:
                chunks.append(Chunk(kind, name, current_start, start + offset - 1, "".join(current)))
                current, size = [], 0
            chunks.append(Chunk(kind, name, start + offset, start + offset, line[:max_chars]))
            line = line[max_chars:]
            current_start = start + offset
        if current and size + len(line) > max_chars:
            chunks.append(Chunk(kind, name, current_start, start + offset - 1, "".join(current)))
            current, size = [], 0
        if not current:
            current_start = start + offset
        current.append(line)
        size += len(line)
    if current and "".join(current).strip():
        chunks.append(Chunk(kind, name, current_start, start + len(lines) - 1, "".join(current)))
    return chunks


def _node_start(node: ast.stmt) -> int:
    decorators = getattr(node, "decorator_list", None) or []
    return min([node.lineno, *(decorator.lineno for decorator in decorators)])


def _signature(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef, lines: list[str]) -> str:
    """The ``def``/``class`` line(s) up to the colon that opens the body."""
    body_line = node.body[0].lineno if node.body else node.lineno
    header = "".join(lines[node.lineno - 1 : max(node.lineno, body_line - 1)]).rstrip()
    if isinstance(node.body[0], ast.Expr) and body_line == node.lineno:  # one-liner
        header = lines[node.lineno - 1].rstrip()
    return header


def _first_doc_line(node: ast.AST) -> str:
    try:
        doc = ast.get_docstring(node)  # type: ignore[arg-type]
    except TypeError:
        return ""
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _import_candidates(tree: ast.Module) -> list[ast.stmt]:
    """Module-level statements and those one block down (``if TYPE_CHECKING``, ``try``): where imports live.

    Walking the whole tree costs more than parsing it, and imports inside functions say little
    about what a module depends on.
    """
    nodes: list[ast.stmt] = []
    for node in tree.body:
        nodes.append(node)
        for attribute in ("body", "orelse", "finalbody", "handlers"):
            for child in (
                getattr(node, attribute, [])
                if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                else []
            ):
                nodes.extend(child.body if isinstance(child, ast.ExceptHandler) else [child])
    return nodes


def _python(content: str, max_chars: int) -> FileStructure | None:
    try:
        tree = ast.parse(content)
    except (SyntaxError, ValueError):
        return None
    lines = content.splitlines(keepends=True)
    chunks: list[Chunk] = []
    symbols: list[str] = []
    imports: list[str] = []
    outline: list[str] = []
    module_doc = _first_doc_line(tree)
    if module_doc:
        outline.append(f'"""{module_doc}"""')
    pending_start: int | None = None  # module-level statements between definitions

    def flush(until: int) -> None:
        nonlocal pending_start
        if pending_start is not None and until >= pending_start:
            chunks.extend(
                _split_lines(lines[pending_start - 1 : until], pending_start, "block", "", max_chars)
            )
        pending_start = None

    for node in _import_candidates(tree):
        if isinstance(node, ast.Import):
            imports.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = "." * node.level + (node.module or "")
            imports.append(base)
            imports.extend(f"{base}.{alias.name}" if base else alias.name for alias in node.names)

    for node in tree.body:
        start = _node_start(node)
        end = node.end_lineno or node.lineno
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            flush(start - 1)
            symbols.append(node.name)
            signature = _signature(node, lines)
            doc = _first_doc_line(node)
            outline.append(f"{start}: {signature.strip()}" + (f"  # {doc}" if doc else ""))
            text = "".join(lines[start - 1 : end])
            if isinstance(node, ast.ClassDef):
                members = [
                    child for child in node.body if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                for child in members:
                    symbols.append(f"{node.name}.{child.name}")
                    symbols.append(child.name)
                    child_doc = _first_doc_line(child)
                    outline.append(
                        f"{_node_start(child)}:     {_signature(child, lines).strip()}"
                        + (f"  # {child_doc}" if child_doc else "")
                    )
                if len(text) > max_chars and members:
                    head_end = _node_start(members[0]) - 1
                    chunks.extend(
                        _split_lines(lines[start - 1 : head_end], start, "class", node.name, max_chars)
                    )
                    for index, child in enumerate(members):
                        child_start = _node_start(child)
                        child_end = _node_start(members[index + 1]) - 1 if index + 1 < len(members) else end
                        chunks.extend(
                            _split_lines(
                                lines[child_start - 1 : child_end],
                                child_start,
                                "def",
                                f"{node.name}.{child.name}",
                                max_chars,
                            )
                        )
                    continue
            kind = "class" if isinstance(node, ast.ClassDef) else "def"
            chunks.extend(_split_lines(lines[start - 1 : end], start, kind, node.name, max_chars))
        else:
            if isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                symbols.extend(target.id for target in targets if isinstance(target, ast.Name))
            if pending_start is None:
                pending_start = start
    flush(len(lines))
    return FileStructure(chunks=chunks, symbols=symbols, imports=imports, outline="\n".join(outline))


def _markdown(content: str, max_chars: int) -> FileStructure:
    lines = content.splitlines(keepends=True)
    sections: list[tuple[int, str]] = [(1, "")]
    outline: list[str] = []
    fenced = False
    for number, line in enumerate(lines, start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        match = None if fenced else _HEADING.match(line)
        if match:
            if number > 1:
                sections.append((number, match.group(2)))
            else:
                sections[0] = (1, match.group(2))
            outline.append(f"{number}: {line.strip()}")
    chunks: list[Chunk] = []
    for index, (start, title) in enumerate(sections):
        end = sections[index + 1][0] - 1 if index + 1 < len(sections) else len(lines)
        chunks.extend(_split_lines(lines[start - 1 : end], start, "section", title, max_chars))
    symbols = [title for _start, title in sections if title]
    return FileStructure(chunks=chunks, symbols=symbols, outline="\n".join(outline))


def _blocks(content: str, max_chars: int) -> FileStructure:
    """Blank-line separated blocks, merged up to ``max_chars``.

    Definitions other languages announce with a keyword (``function``, ``class``, ``func``,
    ``fn``, ``struct``, ...) give the symbols and the outline; without any, the outline is each
    block's first line.
    """
    lines = content.splitlines(keepends=True)
    chunks: list[Chunk] = []
    firsts: list[str] = []
    definitions: list[str] = []
    symbols: list[str] = []
    block_start = 1
    current: list[str] = []
    size = 0

    def close() -> None:
        if any(line.strip() for line in current):
            first = next(line for line in current if line.strip())
            firsts.append(f"{block_start}: {first.strip()[:160]}")
        chunks.extend(_split_lines(current, block_start, "block", "", max_chars))

    for number, line in enumerate(lines, start=1):
        match = _DEFINITION.match(line)
        if match:
            symbols.append(match.group(1))
            definitions.append(f"{number}: {line.strip()[:160]}")
        if not line.strip() and current and size >= max_chars // 2:
            close()
            current, size, block_start = [], 0, number + 1
            continue
        if not current:
            block_start = number
        current.append(line)
        size += len(line)
    if current:
        close()
    return FileStructure(chunks=chunks, symbols=symbols, outline="\n".join(definitions or firsts))


def analyse(path: str, content: str, max_chars: int = DEFAULT_MAX_CHARS) -> FileStructure:
    """The file's structure: Python by ``ast``, Markdown/text by sections, the rest by blocks."""
    suffix = PurePosixPath(path).suffix.lower()
    structure = None
    if suffix in {".py", ".pyi"}:
        structure = _python(content, max_chars)
    elif suffix in MARKDOWN_SUFFIXES:
        structure = _markdown(content, max_chars)
    if structure is None:
        structure = _blocks(content, max_chars)
    if not structure.chunks:
        structure = FileStructure(
            chunks=[Chunk("block", "", 1, 1, "")],
            symbols=structure.symbols,
            imports=structure.imports,
            outline=structure.outline,
        )
    return structure


def summary(path: str, structure: FileStructure, total_lines: int) -> str:
    """A file's outline for the Builder when the whole file does not fit: signatures, not a cut."""
    outline_lines = structure.outline.splitlines()
    if len(outline_lines) > _OUTLINE_MAX_LINES:
        dropped = len(outline_lines) - _OUTLINE_MAX_LINES
        outline_lines = [*outline_lines[:_OUTLINE_MAX_LINES], f"... {dropped} more outline lines"]
    body = "\n".join(outline_lines)
    return f"# outline of {path} ({total_lines} lines; summarised to fit the context budget)\n{body}\n"
