"""The estimator commands of ``autopack`` against a real in-process estimator."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest
import yaml
from autopack.estimator.v1 import estimator_pb2
from autopack_cli.estimator_commands import category_smape
from autopack_cli.main import app
from typer.testing import CliRunner

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def cli(estimator):  # type: ignore[no-untyped-def]
    """Run ``autopack ...`` against the test estimator; returns (exit code, combined output)."""
    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, [*args, "--address", estimator.address], env={"COLUMNS": "220"})
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.output

    return invoke


def test_legacy_sample_imports_and_exports_through_the_cli(
    cli, estimator, legacy_sample: Path, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    code, output = cli("telemetry", "import", str(legacy_sample))
    assert code == 0, output
    assert "imported 18 event(s), rejected 0" in output
    assert estimator.store.count_events() == 18

    exported = tmp_path / "export.ndjson"
    code, output = cli("telemetry", "export", str(exported))
    assert code == 0, output
    assert "exported 18 event(s)" in output
    records = [json.loads(line) for line in exported.read_text(encoding="utf-8").splitlines()]
    originals = sorted(
        (json.loads(line) for line in legacy_sample.read_text(encoding="utf-8").splitlines()),
        key=lambda record: record["timestamp"],
    )
    assert [r["phase_id"] for r in records] == [o["phase_id"] for o in originals]
    assert [r["actual_output_tokens"] for r in records] == [o["actual_output_tokens"] for o in originals]
    assert all(r["timestamp"].endswith("+00:00") for r in records)

    code, output = cli("telemetry", "export", str(tmp_path / "docs.ndjson"), "--category", "docs")
    assert code == 0 and "exported 8 event(s)" in output  # "docs" and legacy "documentation"


def test_a_malformed_import_line_is_reported_by_number_and_the_rest_imports(cli, estimator, tmp_path) -> None:  # type: ignore[no-untyped-def]
    good = {
        "phase_id": "p",
        "predicted_output_tokens": 900,
        "actual_output_tokens": 1000,
        "selected_budget": 2048,
    }
    lines = [
        json.dumps(good),
        "{this is not json",
        json.dumps({**good, "phase_id": "q"}),
        json.dumps({**good, "actual_output_tokens": 41}),
        json.dumps({**good, "selected_budget": "lots"}),
    ]
    path = tmp_path / "mixed.ndjson"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    code, output = cli("telemetry", "import", str(path))
    assert code == 0, output
    assert "imported 2 event(s), rejected 3" in output
    assert re.search(r"\b2\b.*line: not valid JSON", output)
    assert re.search(r"\b4\b.*actual_output_tokens: 41 is below the validity guard", output)
    assert re.search(r"\b5\b.*selected_budget: expected an integer", output)
    assert sorted(e.phase_id for e in estimator.store.list_events()) == ["p", "q"]


def test_estimate_from_flags_prints_number_budget_and_breakdown(cli) -> None:  # type: ignore[no-untyped-def]
    code, output = cli(
        "estimate",
        "--description",
        "Add a retry helper with exponential backoff",
        "--phase-id",
        "p1",
        "--deliverable",
        "src/app/retry.py",
        "--deliverable",
        "tests/test_retry.py",
        "--complexity",
        "medium",
    )
    assert code == 0, output
    assert re.search(r"p1: [\d,]+ output tokens predicted, budget [\d,]+", output)
    assert "Breakdown" in output and "buffer" in output

    code, output = cli("estimate", "-d", "Write the guide", "--deliverable", "docs/GUIDE.md", "--json")
    assert code == 0, output
    payload = json.loads(output)
    assert payload["category"] == "docs" and int(payload["selected_budget"]) > 0


def test_estimate_from_a_plan_file(cli, tmp_path) -> None:  # type: ignore[no-untyped-def]
    plan = {
        "run_id": "plan-run",
        "tiers": [
            {
                "tier_id": "t1",
                "phases": [
                    {
                        "phase_id": "p1-module",
                        "description": "Add the word frequency module",
                        "category": "implementation",
                        "complexity": "low",
                        "deliverables": ["textkit/wordfreq.py"],
                        "scope": {"paths": ["textkit/"], "read_only_context": ["README.md"]},
                    },
                    {
                        "phase_id": "p2-docs",
                        "description": "Document the helpers",
                        "category": "docs",
                        "deliverables": ["docs/wordfreq.md"],
                    },
                ],
            }
        ],
    }
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan), encoding="utf-8")
    code, output = cli("estimate", "--plan", str(path))
    assert code == 0, output
    assert "p1-module" in output and "p2-docs" in output and "total" in output
    code, output = cli("estimate", "--plan", str(path), "--phase", "p2-docs")
    assert code == 0 and "p2-docs:" in output and "p1-module" not in output
    code, output = cli("estimate", "--plan", str(path), "--phase", "nope")
    assert code == 2 and "no phase 'nope'" in output


def test_calibrate_reports_writes_a_png_and_promote_switches_the_served_model(
    cli, estimator, synthetic, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    estimator.stub.ImportTelemetry(iter(synthetic(300, 11)), timeout=30)
    picture = tmp_path / "out" / "calibration.png"
    code, output = cli("calibrate", "--png", str(picture), "--min-samples", "5", "--min-confidence", "0.7")
    assert code == 0, output
    assert "Held-out accuracy" in output and "median SMAPE (clean)" in output
    assert "Corrections per category x complexity" in output
    assert picture.read_bytes()[:8] == PNG_SIGNATURE and picture.stat().st_size > 10_000
    candidate = estimator.store.newest_candidate()
    assert candidate is not None and f"stored candidate {candidate}" in output

    code, output = cli("calibrate", "--dry-run", "--png", str(tmp_path / "dry.png"))
    assert code == 0 and "dry run: no candidate stored" in output
    assert estimator.store.newest_candidate() == candidate

    code, output = cli("calibrate", "--promote", candidate)
    assert code == 0 and f"now serving {candidate} (was default-1)" in output
    assert estimator.store.promoted_version() == candidate
    code, output = cli("estimator", "models")
    assert code == 0 and candidate in output and "promoted" in output and "retired" in output

    code, output = cli("calibrate", "--promote", "default-1")  # rollback
    assert code == 0 and f"(was {candidate})" in output


def test_replay_shows_current_and_candidate_side_by_side(cli, estimator, synthetic, tmp_path) -> None:  # type: ignore[no-untyped-def]
    estimator.stub.ImportTelemetry(iter(synthetic(250, 12)), timeout=30)
    code, output = cli("calibrate", "--png", str(tmp_path / "c.png"))
    assert code == 0, output
    candidate = estimator.store.newest_candidate()
    exported = tmp_path / "export.ndjson"
    assert cli("telemetry", "export", str(exported))[0] == 0
    with exported.open("a", encoding="utf-8") as handle:
        handle.write("not json\n")
    code, output = cli("estimator", "replay", str(exported))
    assert code == 0, output
    assert "current (default-1)" in output and f"candidate ({candidate})" in output
    assert "as recorded" in output and "Median SMAPE by category" in output
    assert re.search(r"\b251\b.*line: not valid JSON", output)


def test_accuracy_command_prints_the_breakdowns(cli, estimator, legacy_sample: Path) -> None:  # type: ignore[no-untyped-def]
    cli("telemetry", "import", str(legacy_sample))
    code, output = cli("estimator", "accuracy")
    assert code == 0, output
    assert "Overall" in output and "By category" in output and "truncation rate" in output


def test_errors_are_one_line_with_the_status_and_field(cli) -> None:  # type: ignore[no-untyped-def]
    # A wrong request exits 2, like wrong command-line input; anything else exits 1.
    code, output = cli("estimate", "-d", "Add it", "--complexity", "extreme")
    assert code == 2 and "INVALID_ARGUMENT" in output and "complexity:" in output
    code, output = cli("calibrate", "--promote", "cal-missing")
    assert code == 2 and "NOT_FOUND" in output and "version:" in output
    code, output = cli("estimate")
    assert code == 2 and "--description" in output
    code, output = cli("calibrate", "--png", "x.png")  # nothing recorded yet
    assert code == 1 and "FAILED_PRECONDITION" in output
    assert "Traceback" not in output


def test_an_unreachable_estimator_is_named_with_its_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"
    result = CliRunner().invoke(
        app, ["estimator", "models", "--address", address, "--timeout", "2"], env={"COLUMNS": "220"}
    )
    assert result.exit_code == 1, result.output
    assert f"UNAVAILABLE: the estimator at {address} is not reachable" in " ".join(result.output.split())


def test_smape_by_category_uses_category_level_groups() -> None:
    report = estimator_pb2.CalibrationReport(
        groups=[
            estimator_pb2.GroupCalibration(
                category="docs", complexity="low", samples=3, smape_before=30, smape_after=10
            ),
            estimator_pb2.GroupCalibration(
                category="docs", complexity="*", samples=4, smape_before=20, smape_after=15
            ),
            estimator_pb2.GroupCalibration(
                category="tests", complexity="low", samples=1, smape_before=10, smape_after=30
            ),
            estimator_pb2.GroupCalibration(
                category="tests", complexity="high", samples=3, smape_before=50, smape_after=10
            ),
            estimator_pb2.GroupCalibration(
                category="*", complexity="*", samples=7, smape_before=25, smape_after=12
            ),
        ]
    )
    assert category_smape(report) == {"docs": (20, 15), "tests": (40, 15), "all": (25, 12)}


def test_calibrate_says_in_one_sentence_not_to_promote_a_worse_candidate_and_force_overrides(
    cli, estimator, worse_candidate_telemetry, tmp_path
) -> None:  # type: ignore[no-untyped-def]
    estimator.stub.ImportTelemetry(iter(worse_candidate_telemetry), timeout=30)
    picture = tmp_path / "calibration.png"
    code, output = cli("calibrate", "--png", str(picture))
    assert code == 0, output
    sentence = next(line for line in output.splitlines() if line.startswith("Do not promote it:"))
    assert any(metric in sentence for metric in ("median SMAPE", "budget misses", "P90 waste"))
    assert "What other safety margins would cost" in output
    assert picture.read_bytes().startswith(PNG_SIGNATURE)
    version = re.search(r"stored (cal-\S+) as rejected", output).group(1)  # type: ignore[union-attr]

    code, output = cli("calibrate", "--promote", version)
    assert code == 1 and "FAILED_PRECONDITION" in output and "force" in output
    code, output = cli("estimator", "models")
    assert code == 0 and "rejected" in output
    code, output = cli("calibrate", "--force")
    assert code == 2 and "--force only goes with --promote" in output
    code, output = cli("calibrate", "--promote", version, "--force")
    assert code == 0 and f"now serving {version}" in output
