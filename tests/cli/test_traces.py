import json
from pathlib import Path

from autopack_cli.traces import read_spans, run_traces


def _span(trace: str, span: str, parent: str | None, name: str, service: str, attrs: dict, start: int) -> str:
    return json.dumps(
        {
            "name": name,
            "context": {"trace_id": f"0x{trace}", "span_id": f"0x{span}"},
            "parent_id": f"0x{parent}" if parent else None,
            "start_time": f"2026-11-21T10:00:0{start}.000000Z",
            "end_time": f"2026-11-21T10:00:0{start + 1}.000000Z",
            "status": {"status_code": "UNSET"},
            "attributes": attrs,
            "resource": {"attributes": {"service.name": service}},
        }
    )


def test_spans_of_a_run_form_one_tree_per_trace(tmp_path: Path) -> None:
    (tmp_path / "orchestrator.jsonl").write_text(
        "\n".join(
            [
                _span(
                    "a" * 32, "1" * 16, None, "phase p1", "autopack-orchestrator", {"autopack.run_id": "r"}, 0
                ),
                _span(
                    "b" * 32, "3" * 16, None, "phase p2", "autopack-orchestrator", {"autopack.run_id": "r"}, 2
                ),
                _span(
                    "c" * 32, "5" * 16, None, "phase x", "autopack-orchestrator", {"autopack.run_id": "o"}, 1
                ),
                "not json",
            ]
        )
    )
    (tmp_path / "builder.jsonl").write_text(
        _span("a" * 32, "2" * 16, "1" * 16, "chat m", "autopack-builder", {"gen_ai.request.model": "m"}, 1)
    )
    roots = run_traces(read_spans(tmp_path), "r")
    assert [root.name for root in roots] == ["phase p1", "phase p2"]
    assert [child.name for child in roots[0].children] == ["chat m"]
    assert roots[0].children[0].service == "autopack-builder"
    assert roots[0].duration_ms == 1000
