"""Cross-validation grouped by run: how the estimator was judged on real telemetry.

The protocol of the issue that measured the original over-buffering: split the runs into 5 folds;
for each fold calibrate on the other 4 (what ``ImportTelemetry`` + ``Calibrate`` + ``PromoteModel``
do), then estimate every phase of the held-out fold with the promoted model (what ``Estimate``
serves) and score it against what happened. Three models are compared on the pooled held-out
events: the shipped default, the calibrated one, and the default prediction with the one global
buffer that meets the miss target *in hindsight* (chosen on the held-out events themselves: a
bound, not a model). Grouping by run keeps a run's retries and re-runs out of its own training set.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autopack_estimator.calibration import (
    CalibrationReport,
    TrainingEvent,
    calibrate,
    outcome_for,
)
from autopack_estimator.frontier import (
    DEFAULT_MAX_MISS_RATE,
    FrontierPoint,
    HeldOutBudget,
    best_within,
    global_buffer_frontier,
    held_out_item,
    mark_chosen,
    scaled_frontier,
)
from autopack_estimator.metrics import AccuracyMetrics, Outcome, accuracy
from autopack_estimator.model import ModelParameters, TokenModel


@dataclass(frozen=True)
class RunEvent:
    """A telemetry event and the run it belongs to (the unit of a fold)."""

    run_id: str
    event: TrainingEvent


@dataclass(frozen=True)
class RunCrossValidation:
    """Pooled held-out results of every fold."""

    folds: int
    events: int
    default: AccuracyMetrics
    calibrated: AccuracyMetrics
    hindsight: FrontierPoint | None  # default prediction x one global buffer, chosen on the held-out events
    default_frontier: list[FrontierPoint]  # default prediction x a global buffer (hindsight marked)
    calibrated_frontier: list[FrontierPoint]  # calibrated budgets x a multiplier (1.0 = as served, marked)
    candidates: list[ModelParameters]
    reports: list[CalibrationReport]


def folds_by_run(run_ids: Sequence[str], folds: int = 5) -> dict[str, int]:
    """Runs to folds, largest run first into the fold with the fewest events (deterministic)."""
    if folds < 2:
        raise ValueError("folds must be >= 2")
    sizes: dict[str, int] = {}
    for run_id in run_ids:
        sizes[run_id] = sizes.get(run_id, 0) + 1
    if len(sizes) < folds:
        raise ValueError(f"{len(sizes)} runs cannot make {folds} folds grouped by run")
    load = [0] * folds
    assignment: dict[str, int] = {}
    for run_id in sorted(sizes, key=lambda r: (-sizes[r], r)):
        fold = min(range(folds), key=lambda f: (load[f], f))
        assignment[run_id] = fold
        load[fold] += sizes[run_id]
    return assignment


def held_out_budget(model: TokenModel, event: TrainingEvent) -> tuple[HeldOutBudget, Outcome]:
    """How ``model`` budgets ``event``'s phase (what Estimate answers) and the scored outcome."""
    draft = model.draft(event.phase)
    return held_out_item(model, draft, event), outcome_for(model.finish(draft), event)


def cross_validate_by_run(
    events: Sequence[RunEvent],
    base: ModelParameters,
    *,
    folds: int = 5,
    max_miss_rate: float = DEFAULT_MAX_MISS_RATE,
) -> RunCrossValidation:
    """Calibrate on all runs but one fold's, estimate that fold's phases; pooled over the folds.

    ``events`` must be oldest first (calibration reads retries in time order).
    """
    fold_of = folds_by_run([e.run_id for e in events], folds)
    default_model = TokenModel(base)
    default_items: list[HeldOutBudget] = []
    calibrated_items: list[HeldOutBudget] = []
    default_outcomes: list[Outcome] = []
    calibrated_outcomes: list[Outcome] = []
    candidates, reports = [], []
    for fold in range(folds):
        train = [e.event for e in events if fold_of[e.run_id] != fold]
        held = [e.event for e in events if fold_of[e.run_id] == fold]
        result = calibrate(train, base, new_version=f"{base.version}-cv{fold}", time_split_fraction=None)
        candidates.append(result.candidate)
        reports.append(result.report)
        candidate = TokenModel(result.candidate)
        for event in held:
            item, outcome = held_out_budget(default_model, event)
            default_items.append(item)
            default_outcomes.append(outcome)
            item, outcome = held_out_budget(candidate, event)
            calibrated_items.append(item)
            calibrated_outcomes.append(outcome)
    default_frontier = global_buffer_frontier(default_items)
    hindsight = best_within(default_frontier, max_miss_rate)
    if hindsight is not None:
        default_frontier = mark_chosen(default_frontier, hindsight.buffer)
    return RunCrossValidation(
        folds=folds,
        events=len(events),
        default=accuracy(default_outcomes),
        calibrated=accuracy(calibrated_outcomes),
        hindsight=hindsight,
        default_frontier=default_frontier,
        calibrated_frontier=mark_chosen(scaled_frontier(calibrated_items), 1.0),
        candidates=candidates,
        reports=reports,
    )
