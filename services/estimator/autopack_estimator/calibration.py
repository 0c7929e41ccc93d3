"""Calibration: learn per-group corrections and buffers from telemetry, judged on held-out data.

The model's structural coefficients stay fixed; calibration learns, per group of phases, how far
reality sits from them and how widely it scatters. Real telemetry is small (50-70 events),
duplicated (up to 6 identical retries of one phase), censored (truncations at old ceilings) and
heavy-tailed, so every step is built for that:

* **One phase, one vote** -- events are collapsed to distinct phases (same goal and deliverables,
  ``phase_units``): a phase with a clean attempt is its median clean output, one that only
  truncated is one lower bound at its largest truncation, one that only failed is left out.
* **Location** -- a multiplicative factor on the point prediction: the median of
  ``log(actual / raw prediction)`` over phases, truncated ones as lower bounds (Kaplan-Meier): a
  badly under-predicted group truncates often, and dropping its truncations would learn far too
  little. Failed-only phases say nothing about the need and are left out.
* **Hierarchy and shrinkage** -- groups are (category, complexity), with (category, *) and (*, *)
  above them. Each level's estimate is shrunk toward its parent: weight ``n / (n + k)`` with
  ``k = (sigma / tau)^2`` clamped to 2..10, so few or noisy samples move little. A level is
  *applied* only with ``min_samples`` clean phases and ``min_confidence``.
* **Size elasticity** -- within groups, residuals are regressed on log(deliverables) (shrunk toward
  the current exponent by the slope's standard error): large phases write less per file.
* **Buffer** (``_buffer_policy``) -- the objective is stated in ``frontier``: a miss costs the lost
  attempt plus its retry, a reservation only capacity, and the default operating point is at most
  5 % misses with the smallest P90 waste. The global buffer is the blend of the empirical quantile
  of phase residuals (a truncation at C counts as a miss for any budget <= C, never as an
  extrapolated need, so a few truncations cannot drive it to the ceiling) and a normal quantile of
  their robust spread, aimed below the miss target by the scatter a later evaluation will show.
  Group buffers are shrunk toward it by ``n / (n + BUFFER_SHRINKAGE)``. Every buffer is capped:
  at most ``MAX_BUFFER_GROWTH`` times what the current model serves those phases (unless
  ``LARGE_EVIDENCE`` phases back it) and never above ``MAX_BUFFER``. A learned all-phases buffer
  replaces the P7/P9 rule buffers (one measured buffer beats rules measured nowhere).
* **Phase memory** -- exact repeats of a phase reuse their own history, weighted by how much of
  the spread is the phase rather than the attempt (estimated from repeated phases); with enough
  retries their own buffer policy is chosen on held-out retries.
* **Honest before/after and a verdict** -- k-fold cross-validation with folds by *phase* (retries of
  one phase stay in one fold), one outcome per distinct phase, and the miss / waste frontier of the
  current model and the candidate on the same held-out phases; ``promotion.promotion_verdict``
  decides from them whether the candidate may be promoted. A split by time (calibrate on the oldest
  70 %, judge the rest) is reported too. Metrics are re-predicted, never the predictions stored in
  telemetry.

``split_by_phase`` / ``split_by_time`` make honest train/held-out splits (``synthetic.py``
generates telemetry, ``crossval.py`` runs the grouped-by-run protocol real telemetry was judged by).
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from autopack_estimator.features import PhaseInput, phase_fingerprint
from autopack_estimator.frontier import (
    DEFAULT_MAX_MISS_RATE,
    FrontierPoint,
    HeldOutBudget,
    held_out_item,
    mark_chosen,
    scaled_frontier,
)
from autopack_estimator.metrics import AccuracyMetrics, Outcome, accuracy, percentile, smape
from autopack_estimator.model import (
    ANY,
    BudgetPolicy,
    Draft,
    GroupCorrection,
    ModelParameters,
    PhaseMemory,
    Prediction,
    TokenModel,
    output_ceiling,
    select_buffer,
    selected_budget,
)
from autopack_estimator.promotion import MIN_JUDGED_PHASES, PromotionVerdict, promotion_verdict

#: Budget-miss rate the buffers are calibrated for: the default operating point (see ``frontier``).
DEFAULT_TARGET_MISS_RATE = DEFAULT_MAX_MISS_RATE

#: Size elasticity: clean events needed, prior spread of the slope, range of the total.
_MIN_SLOPE_EVENTS = 30
_SLOPE_TAU = 0.15
_SLOPE_MIN, _SLOPE_MAX = -0.7, 0.3


#: Retries needed before their own offset, tail and held-out policy are learned.
_MIN_REPEATS = 30

#: Share of the (time-ordered) telemetry the time-split evaluation calibrates on.
DEFAULT_TIME_SPLIT = 0.7

#: What a truncated event needed, as the miss metric counts it (x its recorded lower bound).
TRUNCATED_NEED = 1.0

#: Prior spread of group effects in log space (how different groups plausibly are from the model).
_TAU = 0.35
#: Prior residual scale (log space) when a level has too few clean events to measure its own.
_SIGMA_PRIOR = 0.5
_SIGMA_MIN = 0.05
_BUFFER_MIN = 1.05
#: The buffer cap: no learned buffer ever exceeds MAX_BUFFER, nor MAX_BUFFER_GROWTH times what the
#: current model serves the same phases, unless LARGE_EVIDENCE distinct phases back the group.
MAX_BUFFER = 3.0
MAX_BUFFER_GROWTH = 1.5
LARGE_EVIDENCE = 60
#: Pseudo-phases of shrinkage of a group's buffer toward the global one: weight n / (n + this).
BUFFER_SHRINKAGE = 10.0
#: Memory policy search on held-out retries: buffer z range and largest-output margins (0 = none).
_MEMORY_Z_MIN, _MEMORY_Z_MAX = 0.05, 6.0
_MEMORY_MARGINS = (1.15, 1.0, 0.0)
#: Factors are kept within this range: beyond it the structural model, not a factor, is wrong.
_FACTOR_MIN, _FACTOR_MAX = 0.05, 20.0


@dataclass(frozen=True)
class TrainingEvent:
    """One recorded outcome, re-predictable: the phase as estimated and what it produced."""

    phase: PhaseInput
    actual_output_tokens: int
    success: bool
    truncated: bool

    @property
    def clean(self) -> bool:
        """Exact measurement: succeeded without hitting the ceiling."""
        return self.success and not self.truncated


@dataclass(frozen=True)
class GroupCalibration:
    """What calibration learned for one group (proto GroupCalibration)."""

    category: str
    complexity: str
    samples: int
    factor: float
    confidence: float
    applied: bool
    smape_before: float
    smape_after: float
    buffer: float = 0.0  # learned buffer (0 = none: the group keeps the rule buffer or its parent's)
    buffer_cap: float = 0.0  # the most it was allowed to be (see MAX_BUFFER, MAX_BUFFER_GROWTH)


@dataclass(frozen=True)
class HoldoutEvaluation:
    """Calibrated on the earlier events, judged on the later ones (time order).

    The other honest view next to k-fold by phase: it is how a calibration is used (learn from
    history, serve what comes next), so retries of phases seen earlier reappear in the held-out
    part and the phase memory gets judged too.
    """

    fraction: float
    calibration_events: int
    held_out_events: int
    repeats: int  # held-out events whose exact phase occurs in the calibration part
    before: AccuracyMetrics
    after: AccuracyMetrics
    after_repeats: AccuracyMetrics
    after_new: AccuracyMetrics


@dataclass(frozen=True)
class CalibrationReport:
    """Held-out evaluation and per-group corrections of one calibration, and whether to promote it."""

    before: AccuracyMetrics
    after: AccuracyMetrics
    groups: tuple[GroupCalibration, ...]
    training_events: int
    folds: int
    base_version: str
    notes: tuple[str, ...]
    time_split: HoldoutEvaluation | None = None
    frontier: tuple[FrontierPoint, ...] = ()  # candidate: misses vs waste at multiples of its buffers
    baseline_frontier: tuple[FrontierPoint, ...] = ()  # the current model, same held-out events
    verdict: PromotionVerdict | None = None
    smape_noise: float = 0.0  # two standard errors of the paired before/after median SMAPE difference


@dataclass(frozen=True)
class CalibrationResult:
    """The candidate parameters and the report that justifies (or not) promoting them."""

    candidate: ModelParameters
    report: CalibrationReport
    # The candidate with re-learned predictions when the guard refused it and only the safety
    # margins were re-learned instead (``candidate``); None otherwise.
    declined: CalibrationResult | None = None


# -- evaluation ---------------------------------------------------------------------------------


def outcome_for(prediction: Prediction, event: TrainingEvent) -> Outcome:
    """Score one event against a (re-)prediction."""
    return Outcome(
        category=prediction.category,
        complexity=prediction.complexity,
        deliverable_count=prediction.deliverable_count,
        predicted_output_tokens=prediction.predicted_output_tokens,
        actual_output_tokens=event.actual_output_tokens,
        selected_budget=prediction.selected_budget,
        actual_max_tokens=prediction.actual_max_tokens,
        success=event.success,
        truncated=event.truncated,
    )


def predict_outcomes(model: TokenModel, events: Sequence[TrainingEvent]) -> list[Outcome]:
    """Re-predict every event with ``model`` (events it cannot estimate are skipped)."""
    outcomes = []
    for event in events:
        try:
            prediction = model.predict(event.phase)
        except ValueError:
            continue
        outcomes.append(outcome_for(prediction, event))
    return outcomes


def evaluate(model: TokenModel, events: Sequence[TrainingEvent]) -> AccuracyMetrics:
    """Accuracy of ``model`` on ``events``, re-predicting each one (not the stored prediction)."""
    return accuracy(predict_outcomes(model, events))


def distinct_phases(events: Sequence[TrainingEvent]) -> list[TrainingEvent]:
    """One outcome per phase (same goal and deliverables), in order of first appearance.

    A phase with a clean attempt is its first clean attempt (as ``phase_units``); one that only
    truncated is its largest truncation (a lower bound); one that only failed is its largest failed
    output. ``events`` must be in time order.
    """
    by_phase: dict[str, list[TrainingEvent]] = {}
    for event in events:
        by_phase.setdefault(phase_fingerprint(event.phase), []).append(event)
    units = []
    for attempts in by_phase.values():
        clean = [e for e in attempts if e.clean]
        truncated = [e for e in attempts if e.truncated]
        if clean:
            units.append(clean[0])
        elif truncated:
            units.append(max(truncated, key=lambda e: e.actual_output_tokens))
        else:
            units.append(max(attempts, key=lambda e: e.actual_output_tokens))
    return units


def split_by_phase(
    events: Sequence[TrainingEvent], holdout_fraction: float, seed: int = 0
) -> tuple[list[TrainingEvent], list[TrainingEvent]]:
    """Split into (train, held-out) keeping all attempts of a phase on one side."""
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be between 0 and 1")
    prints = sorted({phase_fingerprint(e.phase) for e in events})
    random.Random(seed).shuffle(prints)
    held = set(prints[: max(1, round(len(prints) * holdout_fraction))])
    train = [e for e in events if phase_fingerprint(e.phase) not in held]
    test = [e for e in events if phase_fingerprint(e.phase) in held]
    return train, test


def split_by_time(
    events: Sequence[TrainingEvent], holdout_fraction: float
) -> tuple[list[TrainingEvent], list[TrainingEvent]]:
    """Split into (earlier, later) by position: ``events`` must be oldest first (as the store yields).

    Unlike ``split_by_phase`` the attempts of one phase may fall on both sides: a retry after
    the cut is judged with the history before it, as in production.
    """
    if not 0.0 < holdout_fraction < 1.0:
        raise ValueError("holdout_fraction must be between 0 and 1")
    cut = len(events) - max(1, round(len(events) * holdout_fraction))
    return list(events[:cut]), list(events[cut:])


def time_split_evaluation(
    events: Sequence[TrainingEvent],
    base: ModelParameters,
    *,
    fraction: float = DEFAULT_TIME_SPLIT,
    min_samples: int = 5,
    min_confidence: float = 0.7,
    target_miss_rate: float = DEFAULT_TARGET_MISS_RATE,
    seed: int = 0,
) -> HoldoutEvaluation | None:
    """Calibrate on the first ``fraction`` of ``events`` (oldest first), judge base and candidate
    on the rest, re-predicting every event. None when either side would be too small to mean
    anything (fewer than 2 events held out or 2 distinct phases to learn from).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError("fraction must be between 0 and 1")
    earlier, later = split_by_time(events, 1.0 - fraction)
    if len(later) < 2 or len({phase_fingerprint(e.phase) for e in earlier}) < 2:
        return None
    candidate = calibrate(
        earlier,
        base,
        min_samples=min_samples,
        min_confidence=min_confidence,
        new_version=f"{base.version}-time-split",
        target_miss_rate=target_miss_rate,
        seed=seed,
        time_split_fraction=None,
    ).candidate
    seen = {phase_fingerprint(e.phase) for e in earlier}
    repeats = [e for e in later if phase_fingerprint(e.phase) in seen]
    new = [e for e in later if phase_fingerprint(e.phase) not in seen]
    model = TokenModel(candidate)
    return HoldoutEvaluation(
        fraction=fraction,
        calibration_events=len(earlier),
        held_out_events=len(later),
        repeats=len(repeats),
        before=evaluate(TokenModel(base), later),
        after=evaluate(model, later),
        after_repeats=evaluate(model, repeats),
        after_new=evaluate(model, new),
    )


def describe_metrics(metrics: AccuracyMetrics) -> str:
    """One-line summary of the three quality-bar figures (for notes and logs)."""
    return (
        f"median SMAPE {metrics.median_smape:.1f}%, budget miss {100 * metrics.budget_miss_rate:.1f}%, "
        f"P90 waste {metrics.waste_p90:.2f}x"
    )


# -- robust, censoring-aware statistics ---------------------------------------------------------


def _km_steps(values: Sequence[tuple[float, bool]]) -> list[tuple[float, float]]:
    """Kaplan-Meier CDF steps (value, F(value)) of (value, exact) pairs; censored = lower bounds."""
    ordered = sorted(values, key=lambda item: (item[0], not item[1]))
    steps: list[tuple[float, float]] = []
    at_risk, survival, i = len(ordered), 1.0, 0
    while i < len(ordered):
        x, j, deaths = ordered[i][0], i, 0
        while j < len(ordered) and ordered[j][0] == x:
            deaths += 1 if ordered[j][1] else 0
            j += 1
        if deaths:
            survival *= 1.0 - deaths / at_risk
            steps.append((x, 1.0 - survival))
        at_risk -= j - i
        i = j
    return steps


def _quantile(values: Sequence[tuple[float, bool]], q: float) -> float | None:
    """q-quantile of (value, exact) pairs; censored values are lower bounds (Kaplan-Meier).

    Without censoring this is the ordinary interpolated quantile. With censoring it is the
    smallest value where the KM distribution reaches q, or None when the censored tail leaves it
    undetermined (more than 1 - q of the mass is only known to lie above the data).
    """
    if not values:
        return None
    if all(exact for _, exact in values):
        return percentile([v for v, _ in values], q * 100.0)
    for x, cdf in _km_steps(values):
        if cdf >= q - 1e-12:
            return x
    return None


def _tail_quantile(values: Sequence[tuple[float, bool]], q: float) -> tuple[float, str]:
    """High quantile of standardised residuals, extrapolated with a normal tail where censored.

    When truncations hide the tail (the KM CDF stops below q), continue from the last determined
    point with a unit-scale normal tail: z_q = z_last + Phi^-1(q) - Phi^-1(F_last).
    """
    normal = statistics.NormalDist()
    direct = _quantile(values, q)
    if direct is not None:
        return direct, "empirical"
    steps = _km_steps(values)
    if not steps:
        return max(v for v, _ in values), "largest lower bound"
    last_x, last_cdf = steps[-1]
    last_cdf = min(max(last_cdf, 0.5), 0.999)
    return last_x + normal.inv_cdf(q) - normal.inv_cdf(last_cdf), "normal tail beyond truncations"


def _location(values: Sequence[tuple[float, bool]]) -> float:
    """Censoring-aware median of (value, exact) pairs.

    When more than half of the mass is censored (a group the model badly underestimates: most
    attempts truncated), the KM median is not determined; it is extrapolated with a normal shape
    fitted to the two highest determined quantiles. With no exact value at all, the largest lower
    bound x the P10 factor is the best available guess.
    """
    median = _quantile(values, 0.5)
    if median is not None:
        return median
    steps = _km_steps(values)
    if not steps:
        return max(v for v, _ in values) + math.log(1.25)
    normal = statistics.NormalDist()
    top_x, top_cdf = steps[-1]
    lower = [(x, cdf) for x, cdf in steps if cdf <= top_cdf / 2]
    if lower and top_cdf - lower[-1][1] > 1e-9:
        low_x, low_cdf = lower[-1]
        spread = (top_x - low_x) / (normal.inv_cdf(min(top_cdf, 0.999)) - normal.inv_cdf(max(low_cdf, 0.001)))
    else:
        spread = _SIGMA_PRIOR
    bound = max(v for v, exact in values if not exact)
    estimate = top_x - max(spread, _SIGMA_MIN) * normal.inv_cdf(max(min(top_cdf, 0.499), 0.001))
    return max(estimate, min(bound, top_x))


def _scale(values: Sequence[tuple[float, bool]], clean: int) -> float | None:
    """Robust, censoring-aware standard deviation from KM quartiles (IQR / 1.349).

    Truncations remove the upper tail from the clean sample, so a plain MAD of clean residuals
    would understate the spread; when even the upper quartile is hidden, the lower half is used.
    None with fewer than 3 clean values.
    """
    if clean < 3:
        return None
    q25, q50, q75 = (_quantile(values, q) for q in (0.25, 0.5, 0.75))
    if q25 is not None and q75 is not None:
        spread = (q75 - q25) / 1.349
    elif q25 is not None and q50 is not None:
        spread = (q50 - q25) / 0.6745
    else:
        return None
    return max(_SIGMA_MIN, spread)


def _confidence(sigma: float, n_eff: float) -> float:
    """Confidence in a learned factor from its standard error: exp(-SE) x sqrt(n/(n+1))."""
    if n_eff <= 0:
        return 0.0
    standard_error = 1.2533 * sigma / math.sqrt(n_eff)
    return round(math.exp(-standard_error) * math.sqrt(n_eff / (n_eff + 1.0)), 4)


def _shrink(estimate: float, prior: float, n_eff: float, sigma: float) -> float:
    """Empirical-Bayes style shrinkage of a log-space estimate toward its prior."""
    k = min(10.0, max(2.0, (sigma / _TAU) ** 2))
    weight = n_eff / (n_eff + k)
    return weight * estimate + (1.0 - weight) * prior


# -- fitting ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Row:
    """One event as calibration sees it: residual against the uncalibrated model."""

    category: str
    complexity: str
    log_ratio: float  # log(actual / raw structural prediction)
    current_log_factor: float  # log of the factor the current model applies to this event
    clean: bool
    truncated: bool
    fingerprint: str
    log_count: float = 0.0  # log(deliverables / the model's count_reference)
    base_buffer: float = 1.0  # the buffer the base model serves this phase (the growth cap's reference)


@dataclass
class _Level:
    """Estimates of one level of the hierarchy (group, category or global)."""

    key: tuple[str, str]
    samples: int
    n_eff: float
    location: float
    sigma: float
    confidence: float
    applied: bool
    reason: str = ""


@dataclass(frozen=True)
class _Fit:
    params: ModelParameters
    levels: dict[tuple[str, str], _Level]
    notes: tuple[str, ...]
    buffers: Mapping[tuple[str, str], float]
    caps: Mapping[tuple[str, str], float]


def _rows(events: Sequence[TrainingEvent], base: ModelParameters) -> tuple[list[_Row], list[str]]:
    """Residual rows against the raw structural model; unusable events are noted and skipped."""
    raw_model = TokenModel(replace(base, corrections=(), phase_memory=()))
    current = TokenModel(replace(base, phase_memory=()))  # the group corrections in force, not the memory
    rows: list[_Row] = []
    notes: list[str] = []
    skipped_invalid = 0
    for index, event in enumerate(events, start=1):
        if event.actual_output_tokens <= 0:
            skipped_invalid += 1
            continue
        try:
            raw = raw_model.draft(event.phase)
            cur = current.draft(event.phase) if base.corrections else raw
        except ValueError as exc:
            notes.append(f"event {index} skipped: {exc}")
            continue
        rows.append(
            _Row(
                category=raw.category,
                complexity=raw.complexity,
                log_ratio=math.log(event.actual_output_tokens / raw.predicted),
                current_log_factor=math.log(cur.predicted / raw.predicted),
                clean=event.clean,
                truncated=event.truncated,
                fingerprint=phase_fingerprint(event.phase),
                log_count=math.log(max(1, raw.deliverable_count) / base.count_reference),
                base_buffer=cur.buffer,
            )
        )
    if skipped_invalid:
        notes.append(f"{skipped_invalid} events without output tokens skipped")
    return rows, notes


def phase_units(rows: Sequence[_Row]) -> list[_Row]:
    """One row per phase (same goal and deliverables): retries must not outvote the other phases.

    Up to 6 identical retries of one phase were seen in real telemetry; counted per event they
    decided both the factors and the buffers. A phase with a clean attempt is its first clean
    attempt (what a new phase writes: later ones may only complete what is missing); one that only
    truncated is a single lower bound at its largest truncation, however many copies; one that only
    failed says nothing about its need and is left out. ``rows`` must be in time order.
    """
    by_phase: dict[str, list[_Row]] = {}
    for row in rows:
        by_phase.setdefault(row.fingerprint, []).append(row)
    units = []
    for attempts in by_phase.values():
        clean = [r for r in attempts if r.clean]
        truncated = [r for r in attempts if r.truncated]
        if clean:
            units.append(clean[0])
        elif truncated:
            units.append(max(truncated, key=lambda r: r.log_ratio))
    return units


def _estimate_level(
    key: tuple[str, str],
    rows: Sequence[_Row],
    prior_location: float,
    prior_sigma: float,
    min_samples: int,
    min_confidence: float,
) -> _Level:
    """Shrunk location and scale of one level from its clean (exact) and truncated (censored) rows."""
    clean = [r.log_ratio for r in rows if r.clean]
    censored = [r.log_ratio for r in rows if r.truncated]
    values = [(v, True) for v in clean] + [(v, False) for v in censored]
    n_eff = len(clean) + 0.5 * len(censored)
    if not clean:
        return _Level(key, 0, n_eff, prior_location, prior_sigma, 0.0, False, "no phase finished normally")
    raw_location = _location(values)
    measured = _scale(values, len(clean))
    sigma_for_conf = measured if measured is not None else prior_sigma
    sigma = prior_sigma if measured is None else _shrink_sigma(measured, prior_sigma, len(clean))
    location = _shrink(raw_location, prior_location, n_eff, sigma_for_conf)
    location = min(math.log(_FACTOR_MAX), max(math.log(_FACTOR_MIN), location))
    confidence = _confidence(sigma_for_conf, n_eff)
    reason = ""
    if len(clean) < min_samples:
        reason = f"{len(clean)} finished, fewer than the {min_samples} needed (min_samples)"
    elif confidence < min_confidence:
        reason = f"too scattered to trust (confidence {confidence:.2f} < min_confidence {min_confidence:.2f})"
    return _Level(key, len(clean), n_eff, location, sigma, confidence, not reason, reason)


def _shrink_sigma(measured: float, prior: float, n: int) -> float:
    """Scale shrunk toward the parent's in log space (a handful of residuals mis-states spread)."""
    weight = n / (n + 5.0)
    return math.exp(weight * math.log(measured) + (1.0 - weight) * math.log(prior))


def _estimate_levels(
    rows: Sequence[_Row], current_global: float, min_samples: int, min_confidence: float
) -> dict[tuple[str, str], _Level]:
    """Global, category and group levels, each shrunk toward the best-informed level above it."""

    def prior_of(subset: Sequence[_Row], fallback: float) -> float:
        return statistics.median(r.current_log_factor for r in subset) if subset else fallback

    levels: dict[tuple[str, str], _Level] = {}
    global_level = _estimate_level(
        (ANY, ANY), rows, prior_of(rows, current_global), _SIGMA_PRIOR, min_samples, min_confidence
    )
    levels[(ANY, ANY)] = global_level

    by_category: dict[str, list[_Row]] = {}
    by_group: dict[tuple[str, str], list[_Row]] = {}
    for row in rows:
        by_category.setdefault(row.category, []).append(row)
        by_group.setdefault((row.category, row.complexity), []).append(row)

    def informative(level: _Level, subset: Sequence[_Row]) -> bool:
        # A parent is a prior only if it knows more than the subset itself (no double counting).
        return level.applied and level.n_eff > sum(1 for r in subset if r.clean) + 0.5 * sum(
            1 for r in subset if r.truncated
        )

    for category, subset in sorted(by_category.items()):
        prior = global_level.location if informative(global_level, subset) else prior_of(subset, 0.0)
        levels[(category, ANY)] = _estimate_level(
            (category, ANY), subset, prior, global_level.sigma, min_samples, min_confidence
        )
    for (category, complexity), subset in sorted(by_group.items()):
        parent = levels[(category, ANY)]
        if informative(parent, subset):
            prior = parent.location
        elif informative(global_level, subset):
            prior = global_level.location
        else:
            prior = prior_of(subset, 0.0)
        sigma_prior = parent.sigma if parent.samples else global_level.sigma
        levels[(category, complexity)] = _estimate_level(
            (category, complexity), subset, prior, sigma_prior, min_samples, min_confidence
        )
    return levels


def _count_slope(rows: Sequence[_Row], levels: Mapping[tuple[str, str], _Level], current: float) -> float:
    """Change of the size elasticity the residuals ask for (0 when the evidence is weak).

    Regresses each event's residual from its group's location on log(deliverables), within groups
    (the group factors already absorb size differences between groups). Truncated events are
    lower bounds: they enter at their expected value above the bound (one Buckley-James step per
    round), otherwise the largest phases -- the ones that truncate -- would pull the slope down.
    Residuals are winsorised at 3 robust sigmas; the slope is shrunk toward 0 by its standard
    error (prior spread 0.15) and the total kept within -0.7..0.3.
    """
    normal = statistics.NormalDist()
    usable = []
    for row in rows:
        if not (row.clean or row.truncated):
            continue
        level = _applied(levels, row)
        location = level.location if level else row.current_log_factor
        sigma = level.sigma if level else _SIGMA_PRIOR
        usable.append((row, location, sigma))
    if sum(1 for row, _, _ in usable if row.clean) < _MIN_SLOPE_EVENTS:
        return 0.0
    by_group: dict[tuple[str, str], list[float]] = {}
    for row, _, _ in usable:
        by_group.setdefault((row.category, row.complexity), []).append(row.log_count)
    centre = {key: statistics.fmean(values) for key, values in by_group.items()}
    xs = [row.log_count - centre[(row.category, row.complexity)] for row, _, _ in usable]
    sxx = sum(x * x for x in xs)
    if sxx < 1.0:
        return 0.0
    slope = 0.0
    residuals: list[float] = []
    for _ in range(3):
        residuals = []
        for (row, location, sigma), x in zip(usable, xs, strict=True):
            value = row.log_ratio - location
            if row.truncated:
                mean = slope * x
                a = min(6.0, (value - mean) / sigma)
                tail = 1.0 - normal.cdf(a)
                expected = mean + sigma * (normal.pdf(a) / tail if tail > 1e-9 else a)
                value = max(value, expected)
            residuals.append(value)
        median = statistics.median(residuals)
        spread = 1.4826 * statistics.median(abs(r - median) for r in residuals) or _SIGMA_PRIOR
        clipped = [min(median + 3 * spread, max(median - 3 * spread, r)) for r in residuals]
        slope = sum(x * r for x, r in zip(xs, clipped, strict=True)) / sxx
    scatter = statistics.pstdev([r - slope * x for x, r in zip(xs, residuals, strict=True)])
    standard_error = scatter / math.sqrt(sxx)
    shrunk = slope * _SLOPE_TAU**2 / (_SLOPE_TAU**2 + standard_error**2)
    total = min(_SLOPE_MAX, max(_SLOPE_MIN, current + shrunk))
    change = total - current
    return round(change, 4) if abs(change) >= 0.005 else 0.0


def _applied(levels: Mapping[tuple[str, str], _Level], row: _Row) -> _Level | None:
    """The most specific applied level of a row's group, if any."""
    for key in ((row.category, row.complexity), (row.category, ANY), (ANY, ANY)):
        level = levels.get(key)
        if level is not None and level.applied:
            return level
    return None


@dataclass(frozen=True)
class _BufferPolicy:
    buffers: dict[tuple[str, str], float]
    caps: dict[tuple[str, str], float]
    notes: list[str]


def censored_quantile(residuals: Sequence[tuple[float, bool]], miss_rate: float) -> float:
    """Smallest log buffer that misses at most ``miss_rate`` of the phases, truncations at their bound.

    A truncated phase (exact = False) is only known to need more than its bound, so a buffer up to
    the bound misses it and one just above covers it: it is never extrapolated to an unknown need.
    """
    if not residuals:
        return 0.0
    ordered = sorted(residuals, key=lambda item: -item[0])
    allowed = math.floor(miss_rate * len(ordered) + 1e-9)
    if allowed >= len(ordered):
        return ordered[-1][0]
    value, exact = ordered[allowed]
    return value if exact else value + 1e-6


def _buffer_policy(
    units: Sequence[_Row],
    levels: Mapping[tuple[str, str], _Level],
    applied_level: Callable[[_Row], _Level | None],
    target_miss_rate: float,
    operating_point: float,
) -> _BufferPolicy:
    """Buffers per applied level, from the residuals of distinct phases (see ``calibrate``).

    1. A global buffer for ``target_miss_rate`` (set below ``operating_point`` by the caller, with
       room for the scatter of a later evaluation): a blend of the empirical quantile (truncations
       counted at their bound) and a normal quantile of the robust spread; the empirical one gets
       weight n / (n + 1/miss rate): a tail quantile means little before about 1/miss-rate phases.
    2. A level's buffer is the global one stretched by its own spread, shrunk toward the global
       buffer by n / (n + BUFFER_SHRINKAGE) with n its distinct phases: 1-3 phases move it little.
    3. Every buffer is capped: never above ``MAX_BUFFER``, and never more than ``MAX_BUFFER_GROWTH``
       times what the current model serves those phases, unless ``LARGE_EVIDENCE`` phases back it.
    """
    residuals = []
    for unit in units:
        level = applied_level(unit)
        location = level.location if level else unit.current_log_factor
        residuals.append((unit.log_ratio - location, unit.clean))
    exact = sum(1 for _, is_exact in residuals if is_exact)
    n = len(residuals)
    measured = _scale(residuals, exact) if residuals else None
    sigma = _SIGMA_PRIOR if measured is None else _shrink_sigma(measured, _SIGMA_PRIOR, exact)
    z = statistics.NormalDist().inv_cdf(1.0 - target_miss_rate)
    normal = z * sigma * math.sqrt(1.0 + 1.0 / max(1, n))
    empirical = censored_quantile(residuals, target_miss_rate)
    weight = n / (n + 1.0 / target_miss_rate)
    global_log = max(math.log(_BUFFER_MIN), weight * empirical + (1.0 - weight) * normal)

    buffers: dict[tuple[str, str], float] = {}
    caps: dict[tuple[str, str], float] = {}
    capped: list[str] = []
    for key, level in levels.items():
        if not level.applied:
            continue
        members = [u for u in units if key[0] in (ANY, u.category) and key[1] in (ANY, u.complexity)]
        if key == (ANY, ANY):
            log_buffer = global_log
        else:
            own = global_log * level.sigma / sigma
            shrink = len(members) / (len(members) + BUFFER_SHRINKAGE)
            log_buffer = shrink * own + (1.0 - shrink) * global_log
        reference = statistics.median(u.base_buffer for u in members) if members else 1.0
        cap = MAX_BUFFER if len(members) >= LARGE_EVIDENCE else min(MAX_BUFFER, MAX_BUFFER_GROWTH * reference)
        cap = max(_BUFFER_MIN, cap)
        buffer = min(cap, max(_BUFFER_MIN, math.exp(log_buffer)))
        if math.exp(log_buffer) > cap + 1e-9:
            capped.append(f"{key[0]}/{key[1]}")
        buffers[key], caps[key] = buffer, cap
    notes = []
    if (ANY, ANY) in buffers:
        notes.append(
            f"safety margin for all phases x{buffers[(ANY, ANY)]:.2f}: about {target_miss_rate:.1%} of {n} "
            f"distinct phases would have needed more (aimed under {operating_point:.0%}, leaving room for chance)"
        )
    if capped:
        notes.append(
            "safety margins held at the cap (at most x"
            f"{MAX_BUFFER_GROWTH:g} the current model's and never above x{MAX_BUFFER:g}): "
            + ", ".join(capped)
        )
    return _BufferPolicy(buffers, caps, notes)


def _fit(
    events: Sequence[TrainingEvent],
    base: ModelParameters,
    *,
    min_samples: int,
    min_confidence: float,
    new_version: str,
    target_miss_rate: float,
    relearn_predictions: bool = True,
) -> _Fit:
    """Learn the candidate parameters from ``events`` (no evaluation).

    Without ``relearn_predictions`` every level keeps the factor the current model applies there and
    the size elasticity is kept: only the buffers (and the phase memory) are learned.
    """
    rows, notes = _rows(events, base)
    old = {(c.category, c.complexity): c for c in base.corrections}
    current_global = math.log(old[(ANY, ANY)].factor) if (ANY, ANY) in old else 0.0
    units = phase_units(rows)
    if len(units) < len(rows):
        notes.append(
            f"{len(rows)} events come from {len(units)} distinct phases with a usable outcome: "
            "each phase counts once, however often it was retried"
        )
    levels = _estimate_levels(units, current_global, min_samples, min_confidence)
    count_exponent = base.count_exponent
    if not relearn_predictions:
        levels = {
            key: replace(level, location=math.log(_current_factor(base, key)))
            for key, level in levels.items()
        }
    slope = _count_slope(units, levels, base.count_exponent) if relearn_predictions else 0.0
    if slope:
        count_exponent = round(base.count_exponent + slope, 4)
        rows = [replace(r, log_ratio=r.log_ratio - slope * r.log_count) for r in rows]
        units = [replace(r, log_ratio=r.log_ratio - slope * r.log_count) for r in units]
        levels = _estimate_levels(units, current_global, min_samples, min_confidence)
        notes.append(
            f"larger phases write {'less' if slope < 0 else 'more'} per file than the model assumed: "
            f"predictions now scale with (deliverables / {base.count_reference:g}) to the power "
            f"{count_exponent:+.2f}"
        )

    def applied_level(row: _Row) -> _Level | None:
        return _applied(levels, row)

    coverage = 1.0 - target_miss_rate
    policy = _buffer_policy(
        units, levels, applied_level, _allowed_miss(target_miss_rate, len(units)), target_miss_rate
    )
    notes += policy.notes
    corrections: dict[tuple[str, str], GroupCorrection] = {}
    for key, level in levels.items():
        if not level.applied:
            continue
        corrections[key] = GroupCorrection(
            category=key[0],
            complexity=key[1],
            factor=round(math.exp(level.location), 6),
            buffer=round(policy.buffers[key], 4),
            samples=level.samples,
            confidence=level.confidence,
        )
    carried = [key for key in old if key not in corrections]
    for key in carried:
        corrections[key] = old[key]
    if carried:
        notes.append(
            "kept from the current model (not enough new evidence to re-learn): "
            + ", ".join(f"{c}/{x}" for c, x in sorted(carried))
        )
    if rows and not any(level.applied for level in levels.values()):
        notes.append("no group had enough clean phases: the candidate keeps the current corrections")
    ordered = tuple(sorted(corrections.values(), key=_correction_order))

    # Phase memory: split the residual spread into the phase itself (between) and the attempt
    # (within), so an exact repeat trusts its own history as much as the data says it should.
    def residual(row: _Row) -> float:
        level = applied_level(row)
        return row.log_ratio - (level.location if level else row.current_log_factor)

    sigma_total = (
        _scale([(residual(r), r.clean) for r in rows if r.clean or r.truncated], len(rows)) or _SIGMA_PRIOR
    )
    within = _within_phase_sigma(rows)
    memory = build_phase_memory(events, base)
    memory_fields: dict[str, float] = {}
    if within is not None:
        between = math.sqrt(max(sigma_total**2 - within**2, (0.1 * sigma_total) ** 2))
        prior_attempts = min(5.0, max(0.1, (within / between) ** 2))
        memory_fields.update(
            memory_prior_attempts=round(prior_attempts, 4),
            memory_within_sigma=round(within, 4),
            memory_between_sigma=round(between, 4),
        )
        repeats = _repeat_errors(rows, residual, prior_attempts, within, between)
        if len(repeats) >= _MIN_REPEATS:
            offset = _repeat_offset(repeats)
            shifted = [((error - offset) / spread, exact) for error, spread, exact, _ in repeats]
            memory_fields["memory_repeat_factor"] = round(math.exp(offset), 4)
            memory_fields["memory_buffer_z"] = round(max(0.0, _tail_quantile(shifted, coverage)[0]), 4)
    if memory:
        detail = ""
        if within is not None:
            detail = (
                f" (attempts of one phase differ by about x{math.exp(within):.2f}, phases among themselves "
                f"by x{math.exp(memory_fields['memory_between_sigma']):.2f})"
            )
            if "memory_repeat_factor" in memory_fields:
                detail += (
                    f"; a retry writes about x{memory_fields['memory_repeat_factor']:.2f} of what its earlier "
                    "attempts suggest"
                )
        notes.append(
            f"{len(memory)} phases remembered: a retry of one of them is budgeted from its own earlier "
            f"attempts{detail}"
        )
    params = replace(
        base,
        version=new_version,
        parent_version=base.version,
        corrections=ordered,
        count_exponent=count_exponent,
        phase_memory=memory,
        buffer_shape_scale=1.0,  # buffers are served as learned (and capped)
        buffer_shape_power=1.0,
        buffer_shape_reference=1.0,
        learned_buffer_replaces_rules=True,
        **memory_fields,  # type: ignore[arg-type]
    )
    return _Fit(params=params, levels=levels, notes=tuple(notes), buffers=policy.buffers, caps=policy.caps)


@dataclass(frozen=True)
class _HeldOut:
    """One out-of-fold prediction in the making: the fold's model and draft, and what happened."""

    model: TokenModel
    draft: Draft
    need: float  # a budget below this is a miss (a truncated output counts at its recorded bound)
    actual: int
    clean: bool
    weight: float = 1.0  # retries: how likely a split by time puts this one after its history


@dataclass(frozen=True)
class TradeOff:
    """A point of the budget-miss / waste curve on held-out predictions."""

    policy: BudgetPolicy
    miss_rate: float
    waste_p90: float


class _Curve:
    """Held-out predictions compiled for trying many budget policies quickly.

    Same arithmetic as ``TokenModel.budget_for`` (``select_buffer`` + ``selected_budget``), with the
    parts that do not depend on the policy computed once.
    """

    def __init__(self, held_out: Sequence[_HeldOut]) -> None:
        self.items = held_out
        self.total_weight = sum(item.weight for item in held_out)
        self.weighted = any(item.weight != 1.0 for item in held_out)
        self._compiled: dict[float, list[tuple[Any, ...]]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def _items(self, margin: float) -> list[tuple[Any, ...]]:
        if margin not in self._compiled:
            rows = []
            for item in self.items:
                d, p = item.draft, item.model.params
                need = item.model.memory_need(d.memory, margin)[0]
                ceiling = output_ceiling(d.model_name)
                rows.append(
                    (
                        d,
                        need,
                        p.budget_rounding,
                        p.max_budget,
                        ceiling,
                        item.need,
                        max(1, item.actual),
                        item.clean,
                        item.weight,
                    )
                )
            self._compiled[margin] = rows
        return self._compiled[margin]

    def point(self, policy: BudgetPolicy) -> TradeOff:
        """Held-out miss rate (all events) and P90 waste (clean events) under ``policy``, weighted."""
        missed = 0.0
        wastes: list[tuple[float, float]] = []
        for d, memory_need, rounding, max_budget, ceiling, need, actual, clean, weight in self._items(
            policy.memory_margin
        ):
            buffer = select_buffer(
                d.rule_buffer, "", d.group_buffer, "", d.group_global, d.memory_spread, policy
            )[0]
            selected = selected_budget(d.predicted, buffer, d.floor, memory_need, rounding, max_budget)
            if need > selected:
                missed += weight
            if clean:
                wastes.append((min(selected, ceiling) / actual, weight))
        total = self.total_weight
        waste = _weighted_percentile(wastes, 0.9) if self.weighted else percentile([w for w, _ in wastes], 90)
        return TradeOff(policy, missed / total if total else 0.0, waste)

    def effective_size(self) -> float:
        """Kish effective sample size of the weights."""
        squares = sum(item.weight**2 for item in self.items)
        return self.total_weight**2 / squares if squares else 0.0


def _weighted_percentile(values: Sequence[tuple[float, float]], q: float) -> float:
    """Smallest value whose cumulative weight reaches ``q`` of the total (0.0 for no values)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    goal = q * sum(w for _, w in ordered)
    running = 0.0
    for value, weight in ordered:
        running += weight
        if running >= goal - 1e-12:
            return value
    return ordered[-1][0]


def _trade_off(curve: _Curve, policy: BudgetPolicy) -> TradeOff:
    """Held-out miss rate and P90 waste of ``curve`` under ``policy``."""
    return curve.point(policy)


def _allowed_miss(target: float, phases: int) -> float:
    """Miss rate to aim for on cross-validation so a later held-out set stays under ``target``.

    A later evaluation set is smaller than the calibration data (a 70/30 split holds out ~0.43x
    as much), and misses cluster by phase (a phase that truncates once tends to truncate on every
    retry), so its miss rate scatters like a binomial over its distinct *phases*; aim 1.65
    standard errors below the target (95 % one-sided), within 50-80 % of the target.
    """
    later = max(1.0, 0.43 * phases)
    standard_error = math.sqrt(target * (1.0 - target) / later)
    return min(0.8 * target, max(0.5 * target, target - 1.65 * standard_error))


def _choose_memory_policy(judged: Sequence[tuple[_Curve, float]], base: BudgetPolicy) -> TradeOff:
    """Memory buffer z and largest-output margin with the least P90 waste on held-out retries.

    Retries are judged apart from new phases (each side within the miss target), so the choice
    holds whatever share of repeats a later evaluation happens to contain. ``judged`` pairs curves
    with their allowed miss rates: every retry alike (many, steady) and retries weighted by their
    distance from their history (what a split by time sees, fewer effective samples); the z must
    satisfy all of them, the waste is read from the last.
    """
    best: TradeOff | None = None
    safest: TradeOff | None = None
    for margin in _MEMORY_MARGINS:

        def make(z: float, margin: float = margin) -> BudgetPolicy:
            return replace(base, memory_z=z, memory_margin=margin)

        z = max(_bisect(curve, make, allowed, _MEMORY_Z_MIN, _MEMORY_Z_MAX) for curve, allowed in judged)
        point = _trade_off(judged[-1][0], make(z))
        if safest is None or point.miss_rate < safest.miss_rate:
            safest = point
        if not all(_trade_off(curve, make(z)).miss_rate <= allowed for curve, allowed in judged):
            continue
        if best is None or point.waste_p90 < 0.98 * best.waste_p90:
            best = point
    assert safest is not None
    return best if best is not None else safest  # none within the target: the fewest misses


def _bisect(
    held_out: _Curve,
    make: Callable[[float], BudgetPolicy],
    allowed_miss: float,
    low: float,
    high: float,
) -> float:
    """Smallest knob value in low..high whose held-out miss rate is within ``allowed_miss``."""
    if _trade_off(held_out, make(low)).miss_rate <= allowed_miss:
        return low
    if _trade_off(held_out, make(high)).miss_rate > allowed_miss:
        return high
    for _ in range(10):
        middle = (low + high) / 2
        if _trade_off(held_out, make(middle)).miss_rate <= allowed_miss:
            high = middle
        else:
            low = middle
    return round(high, 4)


def _repeat_errors(
    rows: Sequence[_Row],
    residual: Callable[[_Row], float],
    prior_attempts: float,
    within: float,
    between: float,
) -> list[tuple[float, float, bool, bool]]:
    """(log error, predictive spread, exact, clean) of each retry predicted from the attempts before it.

    Rows are in time order, so this is what serving does: the second sighting of a phase is a
    retry, predicted from the clean attempts seen so far exactly as ``TokenModel`` blends them.
    Failed retries count as exact values, truncated ones as lower bounds.
    """
    by_phase: dict[str, list[_Row]] = {}
    for row in rows:
        by_phase.setdefault(row.fingerprint, []).append(row)
    errors: list[tuple[float, float, bool, bool]] = []
    for attempts in by_phase.values():
        for k in range(1, len(attempts)):
            earlier = [o.log_ratio for o in attempts[:k] if o.clean]
            if not earlier:
                continue
            row = attempts[k]
            weight = len(earlier) / (len(earlier) + prior_attempts)
            model_location = row.log_ratio - residual(row)
            expected = weight * statistics.median(earlier) + (1 - weight) * model_location
            spread = math.sqrt(within**2 + (1 - weight) * between**2)
            errors.append((row.log_ratio - expected, spread, not row.truncated, row.clean))
    return errors


def _repeat_offset(repeats: Sequence[tuple[float, float, bool, bool]]) -> float:
    """How far retries sit from their history (log; censoring-aware median, shrunk toward 0).

    Retries need not repeat the first attempt: with cumulative deliverables a retry writes only
    what is missing, a fix-up after a failure is smaller. Failed retries are left out (their
    output says little about what the phase needed), as for the group factors.
    """
    values = [(error, exact) for error, _, exact, clean in repeats if clean or not exact]
    if not any(exact for _, exact in values):
        return 0.0
    n = len(values)
    return min(math.log(2.0), max(math.log(0.5), _location(values) * n / (n + 10.0)))


def _within_phase_sigma(rows: Sequence[_Row]) -> float | None:
    """Robust spread of clean attempts of the same phase (pairwise differences); None without repeats.

    For two draws of N(mu, s^2) the difference has median |d| = 0.6745 * sqrt(2) * s.
    """
    by_phase: dict[str, list[float]] = {}
    for row in rows:
        if row.clean:
            by_phase.setdefault(row.fingerprint, []).append(row.log_ratio)
    differences = [
        abs(a - b) for values in by_phase.values() for i, a in enumerate(values) for b in values[i + 1 :]
    ]
    if len(differences) < 3:
        return None
    return max(_SIGMA_MIN, statistics.median(differences) / (0.6745 * math.sqrt(2.0)))


def phase_history(fingerprint: str, seen: Sequence[TrainingEvent]) -> PhaseMemory:
    """What the attempts ``seen`` of one phase tell about its next attempt."""
    clean = [e.actual_output_tokens for e in seen if e.clean]
    exact = [e.actual_output_tokens for e in seen if not e.truncated]
    bounds = [e.actual_output_tokens for e in seen if e.truncated]
    return PhaseMemory(
        fingerprint=fingerprint,
        attempts=len(seen),
        clean_count=len(clean),
        clean_median=round(statistics.median(clean)) if clean else 0,
        max_exact=max(exact, default=0),
        max_lower_bound=max(bounds, default=0),
    )


def build_phase_memory(events: Sequence[TrainingEvent], base: ModelParameters) -> tuple[PhaseMemory, ...]:
    """Per-phase history from ``events`` merged over ``base``'s, newest phases kept up to the cap.

    A phase seen in ``events`` is summarised from those events alone (they are the fuller record);
    phases only the base remembers are carried over.
    """
    attempts: dict[str, list[TrainingEvent]] = {}
    for event in events:
        if event.actual_output_tokens > 0:
            attempts.setdefault(phase_fingerprint(event.phase), []).append(event)
    fresh = {fingerprint: phase_history(fingerprint, seen) for fingerprint, seen in attempts.items()}
    carried = [m for m in base.phase_memory if m.fingerprint not in fresh]
    merged = carried + list(fresh.values())  # insertion order ~ age: base first, then events in order
    return tuple(merged[-base.max_phase_memory :]) if base.max_phase_memory > 0 else ()


def _correction_order(c: GroupCorrection) -> tuple[int, str, str]:
    return ((c.category == ANY) + (c.complexity == ANY), c.category, c.complexity)


# -- calibrate ----------------------------------------------------------------------------------


def _folds_for(distinct_phases: int) -> int:
    """k adapts to the data; too few phases for any held-out evaluation -> 0.

    Small sets get more folds: with 30 phases, models fitted on 3/4 of them are noticeably worse
    than the one fitted on all, and the promotion guard would judge the candidate by them.
    """
    if distinct_phases >= 200:
        return 5
    if distinct_phases >= 20:
        return 10
    if distinct_phases >= 6:
        return 3
    if distinct_phases >= 2:
        return 2
    return 0


def calibrate(
    events: Sequence[TrainingEvent],
    base: ModelParameters,
    *,
    min_samples: int = 5,
    min_confidence: float = 0.7,
    new_version: str,
    target_miss_rate: float = DEFAULT_TARGET_MISS_RATE,
    seed: int = 0,
    time_split_fraction: float | None = DEFAULT_TIME_SPLIT,
) -> CalibrationResult:
    """Learn a candidate from ``events`` and report held-out before/after metrics.

    ``events`` are re-predicted with ``base`` (stored predictions are never used). Clean events
    teach the factors, truncated ones count as lower bounds, failed ones only shape the buffer.
    ``target_miss_rate`` is the budget-miss rate the buffers are tuned for; ``seed`` fixes the
    fold assignment. The candidate is ``base`` with new corrections, buffers and phase memory,
    ``version=new_version`` and ``parent_version=base.version``.

    The report holds two held-out views: k-fold by phase (``before``/``after``: how new phases
    fare) and, unless ``time_split_fraction`` is None, a time split (``time_split``: calibrate on
    the oldest ``time_split_fraction`` of ``events`` -- which must be oldest first, as the store
    yields them -- and judge the rest, retries of earlier phases included).

    Raises ValueError for a blank ``new_version``, ``min_samples < 1``, a ``min_confidence``
    outside 0..1, a ``target_miss_rate`` outside (0, 0.5) or a ``time_split_fraction`` outside
    (0, 1).
    """
    if not new_version or not new_version.strip():
        raise ValueError("new_version must not be empty")
    if min_samples < 1:
        raise ValueError("min_samples must be >= 1")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError("min_confidence must be between 0 and 1")
    if not 0.0 < target_miss_rate < 0.5:
        raise ValueError("target_miss_rate must be between 0 and 0.5")
    if time_split_fraction is not None and not 0.0 < time_split_fraction < 1.0:
        raise ValueError("time_split_fraction must be between 0 and 1")
    settings = {
        "min_samples": min_samples,
        "min_confidence": min_confidence,
        "target_miss_rate": target_miss_rate,
    }
    result = _calibrate_with(events, base, new_version, seed, settings, relearn_predictions=True)
    rejected = result.report.verdict
    if rejected is not None and not rejected.promote and result.report.before.events >= MIN_JUDGED_PHASES:
        # The held-out evidence does not support the re-learned predictions: the smaller step keeps
        # the current ones and re-learns only the safety margins, judged by the same guard.
        margins = _calibrate_with(events, base, new_version, seed, settings, relearn_predictions=False)
        if margins.report.verdict is not None and margins.report.verdict.promote:
            note = (
                f"re-learned predictions were not kept -- {rejected.reasons[0]} -- so this candidate keeps "
                "the current model's predictions and re-learns only its safety margins"
            )
            report = replace(margins.report, notes=(note, *margins.report.notes))
            result = replace(margins, report=report, declined=result)
    if time_split_fraction is None:
        return result
    time_split = time_split_evaluation(events, base, fraction=time_split_fraction, seed=seed, **settings)
    if time_split is None:
        return result
    note = (
        f"time split: calibrated on the first {time_split.calibration_events} events and tried on the "
        f"last {time_split.held_out_events} ({time_split.repeats} of them retries of earlier phases): "
        f"before {describe_metrics(time_split.before)}; after {describe_metrics(time_split.after)}"
    )
    report = replace(result.report, time_split=time_split, notes=(*result.report.notes, note))
    return replace(result, report=report)


def _calibrate_with(
    events: Sequence[TrainingEvent],
    base: ModelParameters,
    new_version: str,
    seed: int,
    settings: Mapping[str, Any],
    *,
    relearn_predictions: bool,
) -> CalibrationResult:
    """One candidate (``_fit`` on all events), its held-out before/after and frontiers, and the verdict."""
    target_miss_rate = settings["target_miss_rate"]
    settings = {**settings, "relearn_predictions": relearn_predictions}
    final = _fit(events, base, new_version=new_version, **settings)
    notes = list(final.notes)
    clean_count = sum(1 for e in events if e.clean and e.actual_output_tokens > 0)
    truncated = sum(1 for e in events if e.truncated)
    failed = sum(1 for e in events if not e.success and not e.truncated)
    notes.insert(
        0,
        f"{len(events)} events: {clean_count} finished normally (learned from), {truncated} ran out of "
        f"tokens (they only show that more was needed), {failed} failed early (not used to size phases)",
    )

    # Held-out evaluation: folds by phase so retries of a phase never sit on both sides.
    base_model = TokenModel(base)
    phases = sorted({phase_fingerprint(e.phase) for e in events})
    random.Random(seed).shuffle(phases)
    folds = _folds_for(len(phases))
    before_outcomes: list[Outcome] = []
    after_outcomes: list[Outcome] = []
    base_items: list[HeldOutBudget] = []
    candidate_items: list[HeldOutBudget] = []
    frontier: list[FrontierPoint] = []
    baseline_frontier: list[FrontierPoint] = []
    candidate = final.params
    if folds:
        fold_of = {fp: i % folds for i, fp in enumerate(phases)}
        repeats: list[_HeldOut] = []
        positions = {id(event): index for index, event in enumerate(events)}
        last_seen: dict[str, int] = {}
        gap_cap = max(1, round(len(events) * (1.0 - DEFAULT_TIME_SPLIT)))
        for fold in range(folds):
            train = [e for e in events if fold_of[phase_fingerprint(e.phase)] != fold]
            held = [e for e in events if fold_of[phase_fingerprint(e.phase)] == fold]
            fold_model = TokenModel(_fit(train, base, new_version=new_version, **settings).params)
            for unit in distinct_phases(held):
                try:
                    base_draft, fold_draft = base_model.draft(unit.phase), fold_model.draft(unit.phase)
                except ValueError:
                    continue
                before_outcomes.append(outcome_for(base_model.finish(base_draft), unit))
                after_outcomes.append(outcome_for(fold_model.finish(fold_draft), unit))
                base_items.append(held_out_item(base_model, base_draft, unit))
                candidate_items.append(held_out_item(fold_model, fold_draft, unit))
            earlier: dict[str, list[TrainingEvent]] = {}
            for event in held:
                fingerprint = phase_fingerprint(event.phase)
                seen = earlier.setdefault(fingerprint, [])
                position = positions[id(event)]
                try:
                    retry = fold_model.draft(event.phase, phase_history(fingerprint, seen)) if seen else None
                except ValueError:
                    continue
                need = event.actual_output_tokens * (TRUNCATED_NEED if event.truncated else 1.0)
                if retry is not None:
                    # A split by time separates a retry from its history with odds ~ the gap between them.
                    gap = min(position - last_seen[fingerprint], gap_cap)
                    repeats.append(
                        _HeldOut(fold_model, retry, need, event.actual_output_tokens, event.clean, float(gap))
                    )
                seen.append(event)
                last_seen[fingerprint] = position
        policy = TokenModel(final.params).policy
        baseline_frontier = mark_chosen(scaled_frontier(base_items), 1.0)
        frontier = mark_chosen(scaled_frontier(candidate_items), 1.0)
        if len(repeats) >= _MIN_REPEATS:
            retried = len({r.draft.memory.fingerprint for r in repeats if r.draft.memory is not None})
            weighted = _Curve(repeats)
            alike = _Curve([replace(r, weight=1.0) for r in repeats])
            share = weighted.effective_size() / len(repeats)
            retry_allowed = _allowed_miss(target_miss_rate, round(retried * share))
            retry_choice = _choose_memory_policy(
                ((alike, _allowed_miss(target_miss_rate, retried)), (weighted, retry_allowed)), policy
            )
            policy = retry_choice.policy
            notes.append(
                f"retries judged on their own ({len(repeats)} held-out retries, each budgeted from the "
                f"attempts before it): they would run out of tokens {retry_choice.miss_rate:.1%} of the time, "
                f"P90 waste {retry_choice.waste_p90:.2f}x"
            )
        candidate = replace(
            final.params, memory_buffer_z=round(policy.memory_z, 4), memory_margin=policy.memory_margin
        )
        notes.append(
            f"before/after: each of {len(phases)} distinct phases was predicted by a model calibrated "
            f"without it ({folds} rounds), and counted once however often it was retried"
        )
    else:
        before_outcomes = predict_outcomes(base_model, distinct_phases(events))
        after_outcomes = predict_outcomes(TokenModel(candidate), distinct_phases(events))
        notes.append(
            "too few distinct phases to test on unseen ones: before/after are measured on the phases "
            "the candidate learned from"
        )

    groups = []
    unlearned: list[str] = []
    for key, level in sorted(final.levels.items(), key=lambda item: _level_order(item[0])):
        match = _matcher(key)
        before_smape = _median_smape([o for o in before_outcomes if match(o)])
        after_smape = _median_smape([o for o in after_outcomes if match(o)])
        current_factor = _current_factor(base, key)
        groups.append(
            GroupCalibration(
                category=key[0],
                complexity=key[1],
                samples=level.samples,
                factor=round(math.exp(level.location) / current_factor, 4),
                confidence=level.confidence,
                applied=level.applied,
                smape_before=round(before_smape, 2),
                smape_after=round(after_smape, 2),
                buffer=round(final.buffers.get(key, 0.0), 4),
                buffer_cap=round(final.caps.get(key, 0.0), 4),
            )
        )
        if not level.applied and key != (ANY, ANY):
            unlearned.append(f"{key[0]}/{key[1]} ({level.reason})")
    if unlearned:
        notes.append("no correction of their own (a broader one applies): " + "; ".join(unlearned))
    report = CalibrationReport(
        before=accuracy(before_outcomes),
        after=accuracy(after_outcomes),
        groups=tuple(groups),
        training_events=clean_count,
        folds=folds,
        base_version=base.version,
        notes=tuple(notes),
        frontier=tuple(frontier),
        baseline_frontier=tuple(baseline_frontier),
        smape_noise=round(_paired_smape_noise(before_outcomes, after_outcomes), 2) if folds else 0.0,
    )
    verdict = promotion_verdict(report)
    return CalibrationResult(candidate=candidate, report=replace(report, verdict=verdict))


def _paired_smape_noise(before: Sequence[Outcome], after: Sequence[Outcome]) -> float:
    """Two standard errors of the median of per-phase SMAPE differences (same phases, two models).

    With 30 held-out phases, medians of SMAPE move by several points by chance alone; the
    promotion guard only calls a candidate less accurate beyond this.
    """
    differences = [
        smape(a.predicted_output_tokens, a.actual_output_tokens)
        - smape(b.predicted_output_tokens, b.actual_output_tokens)
        for b, a in zip(before, after, strict=True)
        if b.clean
    ]
    if len(differences) < 2:
        return 0.0
    return 2.0 * 1.2533 * statistics.stdev(differences) / math.sqrt(len(differences))


def _level_order(key: tuple[str, str]) -> tuple[int, str, str]:
    return ((key[0] == ANY) + (key[1] == ANY), key[0], key[1])


def _matcher(key: tuple[str, str]) -> Callable[[Outcome], bool]:
    category, complexity = key
    return lambda o: (category in (ANY, o.category)) and (complexity in (ANY, o.complexity))


def _median_smape(outcomes: Sequence[Outcome]) -> float:
    values = [smape(o.predicted_output_tokens, o.actual_output_tokens) for o in outcomes if o.clean]
    return statistics.median(values) if values else 0.0


def _current_factor(base: ModelParameters, key: tuple[str, str]) -> float:
    """Factor the base model applies at ``key`` (for reporting factors relative to it)."""
    if key == (ANY, ANY):
        correction, _ = base.correction_for(ANY, ANY)
    elif key[1] == ANY:
        correction, _ = base.correction_for(key[0], ANY)
    else:
        correction, _ = base.correction_for(*key)
    return correction.factor if correction is not None else 1.0
