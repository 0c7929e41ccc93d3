"""Cross-validation grouped by run: how the estimator was judged on real telemetry.

The protocol of the issue that measured the original over-buffering: split the runs into 5 folds;
for each fold calibrate on the other 4 (what ``ImportTelemetry`` + ``Calibrate`` + ``PromoteModel``
do), then estimate every phase of the held-out fold with the promoted model (what ``Estimate``
serves) and score it against what happened. Three models are compared on the pooled held-out
events: the shipped default, the calibrated one, and the default prediction with the one global
buffer that meets the miss target *in hindsight* (chosen on the held-out events themselves: a
bound, not a model). Grouping by run keeps a run's retries and re-runs out of its own training set.

Held-out results are counted per distinct phase (``distinct_phases``: "estimate every phase"), so
a phase that truncated six times at an old ceiling is one miss, not six; the per-event figures are
kept next to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autopack_estimator.calibration import (
    CalibrationReport,
    TrainingEvent,
    calibrate,
    distinct_phases,
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
    """Pooled held-out results of every fold, per distinct phase (frontiers too) and per event."""

    folds: int
    events: int
    phases: int
    default: AccuracyMetrics
    calibrated: AccuracyMetrics
    default_events: AccuracyMetrics
    calibrated_events: AccuracyMetrics
    hindsight: FrontierPoint | None  # default prediction x one global buffer, chosen on the held-out events
    default_frontier: list[FrontierPoint]  # the default's budgets x a multiplier (1.0 = as shipped, marked)
    calibrated_frontier: list[FrontierPoint]  # calibrated budgets x a multiplier (1.0 = as served, marked)
    hindsight_frontier: list[FrontierPoint]  # default prediction x one global buffer (hindsight marked)
    candidates: list[ModelParameters]
    reports: list[CalibrationReport]
    promoted: int  # folds whose candidate passed the promotion guard (or was forced) and was served
    default_items: list[HeldOutBudget]  # per distinct held-out phase, for pooling several sets
    calibrated_items: list[HeldOutBudget]
    default_outcomes: list[Outcome]
    calibrated_outcomes: list[Outcome]
    default_event_outcomes: list[Outcome]  # every held-out event, retries included
    calibrated_event_outcomes: list[Outcome]


@dataclass(frozen=True)
class PooledResult:
    """Several cross-validations (e.g. one per generated set) judged as one held-out set."""

    phases: int
    default: AccuracyMetrics
    calibrated: AccuracyMetrics
    hindsight: FrontierPoint | None
    default_frontier: list[FrontierPoint]
    calibrated_frontier: list[FrontierPoint]
    hindsight_frontier: list[FrontierPoint]
    default_events: AccuracyMetrics  # per event, retries included
    calibrated_events: AccuracyMetrics


def pooled(
    results: Sequence[RunCrossValidation], max_miss_rate: float = DEFAULT_MAX_MISS_RATE
) -> PooledResult:
    """Pool the held-out phases of several cross-validations: figures from many small sets at once."""
    default_items = [item for r in results for item in r.default_items]
    calibrated_items = [item for r in results for item in r.calibrated_items]
    hindsight_frontier = global_buffer_frontier(default_items)
    hindsight = best_within(hindsight_frontier, max_miss_rate)
    if hindsight is not None:
        hindsight_frontier = mark_chosen(hindsight_frontier, hindsight.buffer)
    return PooledResult(
        phases=len(default_items),
        default=accuracy([o for r in results for o in r.default_outcomes]),
        calibrated=accuracy([o for r in results for o in r.calibrated_outcomes]),
        hindsight=hindsight,
        default_frontier=mark_chosen(scaled_frontier(default_items), 1.0),
        calibrated_frontier=mark_chosen(scaled_frontier(calibrated_items), 1.0),
        hindsight_frontier=hindsight_frontier,
        default_events=accuracy([o for r in results for o in r.default_event_outcomes]),
        calibrated_events=accuracy([o for r in results for o in r.calibrated_event_outcomes]),
    )


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
    force: bool = False,
) -> RunCrossValidation:
    """Calibrate on all runs but one fold's, estimate that fold's phases; pooled over the folds.

    As in production, a candidate the promotion guard rejects is not served (the fold keeps the
    current model) unless ``force`` (PromoteModel with force=true). ``events`` must be oldest first
    (calibration reads retries in time order).
    """
    fold_of = folds_by_run([e.run_id for e in events], folds)
    default_model = TokenModel(base)
    default_items: list[HeldOutBudget] = []
    calibrated_items: list[HeldOutBudget] = []
    default_outcomes: list[Outcome] = []
    calibrated_outcomes: list[Outcome] = []
    default_per_event: list[Outcome] = []
    calibrated_per_event: list[Outcome] = []
    candidates, reports = [], []
    served = 0
    for fold in range(folds):
        train = [e.event for e in events if fold_of[e.run_id] != fold]
        held = [e.event for e in events if fold_of[e.run_id] == fold]
        result = calibrate(train, base, new_version=f"{base.version}-cv{fold}", time_split_fraction=None)
        candidates.append(result.candidate)
        reports.append(result.report)
        verdict = result.report.verdict
        # PromoteModel refuses a rejected candidate: the fold is then served by the current model.
        promoted = verdict is None or verdict.promote or force
        candidate = TokenModel(result.candidate) if promoted else default_model
        served += promoted
        for event in held:
            default_per_event.append(held_out_budget(default_model, event)[1])
            calibrated_per_event.append(held_out_budget(candidate, event)[1])
        for event in distinct_phases(held):
            item, outcome = held_out_budget(default_model, event)
            default_items.append(item)
            default_outcomes.append(outcome)
            item, outcome = held_out_budget(candidate, event)
            calibrated_items.append(item)
            calibrated_outcomes.append(outcome)
    hindsight_frontier = global_buffer_frontier(default_items)
    hindsight = best_within(hindsight_frontier, max_miss_rate)
    if hindsight is not None:
        hindsight_frontier = mark_chosen(hindsight_frontier, hindsight.buffer)
    return RunCrossValidation(
        folds=folds,
        events=len(events),
        phases=len(default_items),
        default=accuracy(default_outcomes),
        calibrated=accuracy(calibrated_outcomes),
        default_events=accuracy(default_per_event),
        calibrated_events=accuracy(calibrated_per_event),
        hindsight=hindsight,
        default_frontier=mark_chosen(scaled_frontier(default_items), 1.0),
        calibrated_frontier=mark_chosen(scaled_frontier(calibrated_items), 1.0),
        hindsight_frontier=hindsight_frontier,
        candidates=candidates,
        reports=reports,
        promoted=served,
        default_items=default_items,
        calibrated_items=calibrated_items,
        default_outcomes=default_outcomes,
        calibrated_outcomes=calibrated_outcomes,
        default_event_outcomes=default_per_event,
        calibrated_event_outcomes=calibrated_per_event,
    )
