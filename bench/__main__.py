"""Run every benchmark module and print one results table per section.

python -m bench [--quick] [--only estimator] [--json results.json]
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

import bench
from bench import Section


def discover() -> list[str]:
    """Module names ``bench.<x>_bench``, sorted."""
    return sorted(
        f"bench.{info.name}"
        for info in pkgutil.iter_modules([str(Path(bench.__file__).parent)])
        if info.name.endswith("_bench")
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Fewer calls and events (a smoke run).")
    parser.add_argument("--only", action="append", default=[], help="Run only modules containing this name.")
    parser.add_argument("--json", type=Path, help="Also write every section as JSON here.")
    args = parser.parse_args(argv)
    console = Console(width=max(Console().width, 150))
    sections: list[tuple[str, Section]] = []
    for name in discover():
        if args.only and not any(part in name for part in args.only):
            continue
        started = time.monotonic()
        console.print(f"[bold]running {name}[/bold] ...")
        module = importlib.import_module(name)
        for section in module.run(quick=args.quick):
            sections.append((name, section))
            print_section(console, section)
        console.print(f"[dim]{name} took {time.monotonic() - started:.1f}s[/dim]\n")
    if args.json:
        payload = [{"module": module, **section.__dict__} for module, section in sections]
        args.json.write_text(json.dumps(payload, indent=2), encoding="utf-8")
        console.print(f"results written to {args.json}")
    return 0


def print_section(console: Console, section: Section) -> None:
    table = Table(title=section.title)
    for index, column in enumerate(section.columns):
        table.add_column(column, justify="left" if index == 0 else "right")
    for row in section.rows:
        table.add_row(*row)
    console.print(table)
    for note in section.notes:
        console.print(f"  [dim]{note}[/dim]")


if __name__ == "__main__":
    sys.exit(main())
