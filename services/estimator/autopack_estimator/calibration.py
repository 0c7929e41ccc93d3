"""Calibration: learn per-group corrections and buffers from telemetry, judged on held-out data.

The model's structural coefficients stay fixed; calibration learns, per group of phases, how far
reality sits from them and how widely it scatters:

* **Location** -- a multiplicative factor on the point prediction: the median of
  ``log(actual / raw prediction)`` (robust to outliers). Truncated events are right-censored (their
  actual is only a lower bound), so medians and quantiles come from a Kaplan-Meier estimate that
  treats them as ">= recorded". Failed-but-not-truncated attempts are not used for the location
  (failure-mode outputs are not what the phase needed) but they are for the buffer, because budget
  misses are counted on every event.
* **Hierarchy and shrinkage** -- groups are (category, complexity), with (category, *) and (*, *)
  above them. Each level's estimate is shrunk toward what would be used without it (its parent when
  the parent knows more than the level itself, else the current model): weight ``n / (n + k)`` with
  ``k = (sigma / tau)^2`` clamped to 2..10, so few or noisy samples move little. A level is
  *applied* only with ``min_samples`` clean samples and ``min_confidence``; otherwise its events
  fall back to the parent (or keep the current model).
* **Buffer** -- a location-scale model: each level has a robust, censoring-aware scale (KM
  interquartile range, shrunk toward the parent's). Residuals divided by their scale are pooled over
  all events and the quantile ``1 - target_miss_rate`` is taken (KM; where truncations hide the tail
  it is extended with a normal tail); a level's buffer is ``exp(z * sigma)``, so tight groups get
  small buffers and noisy ones large. One scalar power on all learned buffers is then set from the
  cross-validated predictions so that held-out budget misses land at 60 % of the target
  (a held-out set of a few hundred events scatters by about half a percent).
* **Phase memory** -- exact repeats of a phase (same goal and deliverables; retries are common)
  reuse their own history, weighted by how much of the spread is the phase rather than the attempt
  (estimated from repeated phases), with a buffer learned from leave-one-out errors of repeats.
* **Honest before/after** -- k-fold cross-validation with folds by *phase* (retries of one phase stay
  in one fold), k adapting to the number of distinct phases; metrics are re-predicted, never the
  predictions stored in telemetry.

``synthetic_events`` generates realistic telemetry (retries, failures, truncations, heavy tails)
for tests and benches; ``split_by_phase`` makes honest train/held-out splits of it.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from autopack_estimator.features import PhaseInput, phase_fingerprint
from autopack_estimator.metrics import AccuracyMetrics, Outcome, accuracy, percentile, smape
from autopack_estimator.model import (
    ANY,
    Draft,
    GroupCorrection,
    ModelParameters,
    PhaseMemory,
    Prediction,
    TokenModel,
)

#: Budget-miss rate the buffers are calibrated for (the seeds' <= 2 % risk target).
DEFAULT_TARGET_MISS_RATE = 0.02

#: What a truncated event needed, as the miss metric counts it (x its recorded lower bound).
TRUNCATED_NEED = 1.0

#: Prior spread of group effects in log space (how different groups plausibly are from the model).
_TAU = 0.35
#: Prior residual scale (log space) when a level has too few clean events to measure its own.
_SIGMA_PRIOR = 0.5
_SIGMA_MIN = 0.05
_BUFFER_MIN = 1.05
_BUFFER_MAX = 6.0
_SCALE_MIN, _SCALE_MAX = 0.5, 1.5
#: Share of the miss target the cross-validated buffer scale aims at (room for sampling noise).
_MISS_HEADROOM = 0.6
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


@dataclass(frozen=True)
class CalibrationReport:
    """Held-out evaluation and per-group corrections of one calibration."""

    before: AccuracyMetrics
    after: AccuracyMetrics
    groups: tuple[GroupCalibration, ...]
    training_events: int
    folds: int
    base_version: str
    notes: tuple[str, ...]


@dataclass(frozen=True)
class CalibrationResult:
    """The candidate parameters and the report that justifies (or not) promoting them."""

    candidate: ModelParameters
    report: CalibrationReport


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
            raw = raw_model.predict(event.phase)
            cur = current.predict(event.phase)
        except ValueError as exc:
            notes.append(f"event {index} skipped: {exc}")
            continue
        rows.append(
            _Row(
                category=raw.category,
                complexity=raw.complexity,
                log_ratio=math.log(event.actual_output_tokens / raw.predicted_output_tokens),
                current_log_factor=math.log(cur.predicted_output_tokens / raw.predicted_output_tokens),
                clean=event.clean,
                truncated=event.truncated,
                fingerprint=phase_fingerprint(event.phase),
            )
        )
    if skipped_invalid:
        notes.append(f"{skipped_invalid} events without output tokens skipped")
    return rows, notes


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
        return _Level(key, 0, n_eff, prior_location, prior_sigma, 0.0, False, "no clean samples")
    raw_location = _location(values)
    measured = _scale(values, len(clean))
    sigma_for_conf = measured if measured is not None else prior_sigma
    sigma = prior_sigma if measured is None else _shrink_sigma(measured, prior_sigma, len(clean))
    location = _shrink(raw_location, prior_location, n_eff, sigma_for_conf)
    location = min(math.log(_FACTOR_MAX), max(math.log(_FACTOR_MIN), location))
    confidence = _confidence(sigma_for_conf, n_eff)
    reason = ""
    if len(clean) < min_samples:
        reason = f"{len(clean)} clean samples < min_samples {min_samples}"
    elif confidence < min_confidence:
        reason = f"confidence {confidence:.2f} < min_confidence {min_confidence:.2f}"
    return _Level(key, len(clean), n_eff, location, sigma, confidence, not reason, reason)


def _shrink_sigma(measured: float, prior: float, n: int) -> float:
    """Scale shrunk toward the parent's in log space (a handful of residuals mis-states spread)."""
    weight = n / (n + 5.0)
    return math.exp(weight * math.log(measured) + (1.0 - weight) * math.log(prior))


def _fit(
    events: Sequence[TrainingEvent],
    base: ModelParameters,
    *,
    min_samples: int,
    min_confidence: float,
    new_version: str,
    target_miss_rate: float,
) -> _Fit:
    """Learn the candidate parameters from ``events`` (no evaluation)."""
    rows, notes = _rows(events, base)
    old = {(c.category, c.complexity): c for c in base.corrections}
    current_global = math.log(old[(ANY, ANY)].factor) if (ANY, ANY) in old else 0.0

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

    def applied_level(row: _Row) -> _Level | None:
        for key in ((row.category, row.complexity), (row.category, ANY), (ANY, ANY)):
            level = levels.get(key)
            if level is not None and level.applied:
                return level
        return None

    # Buffer: pooled standardised residuals (clean + failed exact, truncated censored).
    standardised: list[tuple[float, bool]] = []
    for row in rows:
        level = applied_level(row)
        location = level.location if level else row.current_log_factor
        sigma = _predictive_sigma(level) if level else _SIGMA_PRIOR
        standardised.append(((row.log_ratio - location) / sigma, not row.truncated))
    coverage = 1.0 - target_miss_rate
    normal_z = statistics.NormalDist().inv_cdf(coverage)
    z, how = _tail_quantile(standardised, coverage) if standardised else (normal_z, "normal prior")
    if len(standardised) < 100 and z < normal_z:
        z, how = normal_z, "normal (too few events for an empirical tail)"

    corrections: dict[tuple[str, str], GroupCorrection] = {}
    for key, level in levels.items():
        if not level.applied:
            continue
        buffer = min(_BUFFER_MAX, max(_BUFFER_MIN, math.exp(z * _predictive_sigma(level))))
        corrections[key] = GroupCorrection(
            category=key[0],
            complexity=key[1],
            factor=round(math.exp(level.location), 6),
            buffer=round(buffer, 4),
            samples=level.samples,
            confidence=level.confidence,
        )
    carried = [key for key in old if key not in corrections]
    for key in carried:
        corrections[key] = old[key]
    if carried:
        notes.append(
            "kept from the base model (not re-learned with enough evidence): "
            + ", ".join(f"{c}/{x}" for c, x in sorted(carried))
        )
    if rows and not any(level.applied for level in levels.values()):
        notes.append("no group reached min_samples and min_confidence: candidate keeps the base corrections")
    notes.append(
        f"buffer quantile {coverage:.1%} of pooled standardised residuals: z = {z:.2f} ({how})"
        + (f", all-phases buffer x{corrections[(ANY, ANY)].buffer:.2f}" if (ANY, ANY) in corrections else "")
    )
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
        repeat_z = _repeat_tail(rows, residual, prior_attempts, within, between, coverage)
        if repeat_z is not None:
            memory_fields["memory_buffer_z"] = round(repeat_z, 4)
    if memory:
        notes.append(
            f"phase memory: {len(memory)} distinct phases remembered; "
            + (
                f"attempt spread {within:.2f} vs phase spread {memory_fields['memory_between_sigma']:.2f} (log)"
                if within is not None
                else "no phase with two clean attempts yet: prior weight kept"
            )
        )
    params = replace(
        base,
        version=new_version,
        parent_version=base.version,
        corrections=ordered,
        phase_memory=memory,
        **memory_fields,  # type: ignore[arg-type]
    )
    return _Fit(params=params, levels=levels, notes=tuple(notes))


def _choose_buffer_scale(held_out: Sequence[tuple[TokenModel, Draft, float]], allowed_miss: float) -> float:
    """Power for the learned buffers that brings the cross-validated miss rate to ``allowed_miss``.

    The censoring-aware tail sets each group's buffer *shape*; this one scalar sets how far to go,
    judged on out-of-fold predictions (honest, unlike in-sample residuals). Misses are counted as
    the metric counts them: output above the budget, a truncated output at its recorded bound
    (``TRUNCATED_NEED``). Searched over 0.5..1.5; 1.0 when no learned buffer is involved.
    """
    drafts = [(m, d, need) for m, d, need in held_out if d.buffer_learned]
    if not drafts:
        return 1.0
    total = len(held_out)
    fixed_misses = sum(
        1 for m, d, need in held_out if not d.buffer_learned and need > m.finish(d).selected_budget
    )

    def miss_rate(scale: float) -> float:
        misses = sum(1 for m, d, need in drafts if need > m.finish(d, scale).selected_budget)
        return (misses + fixed_misses) / total

    low, high = _SCALE_MIN, _SCALE_MAX
    if miss_rate(low) <= allowed_miss:
        return low
    if miss_rate(high) > allowed_miss:
        return high
    for _ in range(10):
        middle = (low + high) / 2
        if miss_rate(middle) <= allowed_miss:
            high = middle
        else:
            low = middle
    return round(high, 3)


def _scaled(params: ModelParameters, scale: float) -> ModelParameters:
    """Parameters whose learned buffers are raised to ``scale`` (as ``_finish`` would apply it)."""
    if scale == 1.0:
        return params
    corrections = tuple(
        replace(c, buffer=round(max(1.0, c.buffer**scale), 4)) if c.buffer > 0 else c
        for c in params.corrections
    )
    return replace(params, corrections=corrections, memory_buffer_z=round(params.memory_buffer_z * scale, 4))


def _repeat_tail(
    rows: Sequence[_Row],
    residual: Callable[[_Row], float],
    prior_attempts: float,
    within: float,
    between: float,
    coverage: float,
) -> float | None:
    """Tail quantile of standardised leave-one-out errors of the phase memory on repeated phases.

    Each attempt of a repeated phase is predicted from the phase's *other* clean attempts exactly
    as ``TokenModel`` would, so the memory buffer is learned from how repeats really scatter
    (failures and truncations included), not assumed. None with fewer than 30 such attempts.
    """
    by_phase: dict[str, list[_Row]] = {}
    for row in rows:
        by_phase.setdefault(row.fingerprint, []).append(row)
    errors: list[tuple[float, bool]] = []
    for attempts in by_phase.values():
        if len(attempts) < 2:
            continue
        for i, row in enumerate(attempts):
            others = [o.log_ratio for j, o in enumerate(attempts) if j != i and o.clean]
            if not others:
                continue
            weight = len(others) / (len(others) + prior_attempts)
            model_location = row.log_ratio - residual(row)
            expected = weight * statistics.median(others) + (1 - weight) * model_location
            spread = math.sqrt(within**2 + (1 - weight) * between**2)
            errors.append(((row.log_ratio - expected) / spread, not row.truncated))
    if len(errors) < 30:
        return None
    z, _ = _tail_quantile(errors, coverage)
    return max(z, 0.0)


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


def build_phase_memory(events: Sequence[TrainingEvent], base: ModelParameters) -> tuple[PhaseMemory, ...]:
    """Per-phase history from ``events`` merged over ``base``'s, newest phases kept up to the cap.

    A phase seen in ``events`` is summarised from those events alone (they are the fuller record);
    phases only the base remembers are carried over.
    """
    attempts: dict[str, list[TrainingEvent]] = {}
    for event in events:
        if event.actual_output_tokens > 0:
            attempts.setdefault(phase_fingerprint(event.phase), []).append(event)
    fresh: dict[str, PhaseMemory] = {}
    for fingerprint, seen in attempts.items():
        clean = [e.actual_output_tokens for e in seen if e.clean]
        exact = [e.actual_output_tokens for e in seen if not e.truncated]
        bounds = [e.actual_output_tokens for e in seen if e.truncated]
        fresh[fingerprint] = PhaseMemory(
            fingerprint=fingerprint,
            attempts=len(seen),
            clean_count=len(clean),
            clean_median=round(statistics.median(clean)) if clean else 0,
            max_exact=max(exact, default=0),
            max_lower_bound=max(bounds, default=0),
        )
    carried = [m for m in base.phase_memory if m.fingerprint not in fresh]
    merged = carried + list(fresh.values())  # insertion order ~ age: base first, then events in order
    return tuple(merged[-base.max_phase_memory :]) if base.max_phase_memory > 0 else ()


def _predictive_sigma(level: _Level) -> float:
    """Scale of a new observation: residual spread plus the uncertainty of the location itself."""
    return level.sigma * math.sqrt(1.0 + 1.0 / max(1.0, level.n_eff))


def _correction_order(c: GroupCorrection) -> tuple[int, str, str]:
    return ((c.category == ANY) + (c.complexity == ANY), c.category, c.complexity)


# -- calibrate ----------------------------------------------------------------------------------


def _folds_for(distinct_phases: int) -> int:
    """k adapts to the data: more phases, more folds; too few for any held-out evaluation -> 0."""
    if distinct_phases >= 50:
        return 5
    if distinct_phases >= 20:
        return 4
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
) -> CalibrationResult:
    """Learn a candidate from ``events`` and report held-out before/after metrics.

    ``events`` are re-predicted with ``base`` (stored predictions are never used). Clean events
    teach the factors, truncated ones count as lower bounds, failed ones only shape the buffer.
    ``target_miss_rate`` is the budget-miss rate the buffers are tuned for; ``seed`` fixes the
    fold assignment. The candidate is ``base`` with new corrections, buffers and phase memory,
    ``version=new_version`` and ``parent_version=base.version``.

    Raises ValueError for a blank ``new_version``, ``min_samples < 1``, a ``min_confidence``
    outside 0..1 or a ``target_miss_rate`` outside (0, 0.5).
    """
    if not new_version or not new_version.strip():
        raise ValueError("new_version must not be empty")
    if min_samples < 1:
        raise ValueError("min_samples must be >= 1")
    if not 0.0 <= min_confidence <= 1.0:
        raise ValueError("min_confidence must be between 0 and 1")
    if not 0.0 < target_miss_rate < 0.5:
        raise ValueError("target_miss_rate must be between 0 and 0.5")
    settings = {
        "min_samples": min_samples,
        "min_confidence": min_confidence,
        "target_miss_rate": target_miss_rate,
    }
    final = _fit(events, base, new_version=new_version, **settings)
    notes = list(final.notes)
    clean_count = sum(1 for e in events if e.clean and e.actual_output_tokens > 0)
    truncated = sum(1 for e in events if e.truncated)
    failed = sum(1 for e in events if not e.success and not e.truncated)
    notes.insert(
        0,
        f"{len(events)} events: {clean_count} clean (learned from), {truncated} truncated "
        f"(lower bounds), {failed} failed (buffer only)",
    )

    # Held-out evaluation: folds by phase so retries of a phase never sit on both sides.
    base_model = TokenModel(base)
    phases = sorted({phase_fingerprint(e.phase) for e in events})
    random.Random(seed).shuffle(phases)
    folds = _folds_for(len(phases))
    before_outcomes: list[Outcome] = []
    after_outcomes: list[Outcome] = []
    candidate = final.params
    if folds:
        fold_of = {fp: i % folds for i, fp in enumerate(phases)}
        held_out: list[tuple[TokenModel, Draft, float]] = []
        held_events: list[TrainingEvent] = []
        for fold in range(folds):
            train = [e for e in events if fold_of[phase_fingerprint(e.phase)] != fold]
            held = [e for e in events if fold_of[phase_fingerprint(e.phase)] == fold]
            fold_model = TokenModel(_fit(train, base, new_version=new_version, **settings).params)
            before_outcomes += predict_outcomes(base_model, held)
            for event in held:
                try:
                    draft = fold_model.draft(event.phase)
                except ValueError:
                    continue
                need = event.actual_output_tokens * (TRUNCATED_NEED if event.truncated else 1.0)
                held_out.append((fold_model, draft, need))
                held_events.append(event)
        scale = _choose_buffer_scale(held_out, _MISS_HEADROOM * target_miss_rate)
        after_outcomes = [
            outcome_for(model.finish(draft, scale), event)
            for (model, draft, _), event in zip(held_out, held_events, strict=True)
        ]
        candidate = _scaled(final.params, scale)
        if scale != 1.0:
            notes.append(
                f"learned buffers raised to the power {scale:.2f}: cross-validated budget misses "
                f"at {_MISS_HEADROOM * target_miss_rate:.1%} (target {target_miss_rate:.1%})"
            )
        notes.append(f"before/after: {folds}-fold cross-validation over {len(phases)} distinct phases")
    else:
        before_outcomes = predict_outcomes(base_model, events)
        after_outcomes = predict_outcomes(TokenModel(candidate), events)
        notes.append("too few distinct phases for held-out evaluation: before/after are in-sample")

    groups = []
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
            )
        )
        if not level.applied and key != (ANY, ANY):
            notes.append(f"{key[0]}/{key[1]} keeps the prior: {level.reason}")
    report = CalibrationReport(
        before=accuracy(before_outcomes),
        after=accuracy(after_outcomes),
        groups=tuple(groups),
        training_events=clean_count,
        folds=folds,
        base_version=base.version,
        notes=tuple(notes),
    )
    return CalibrationResult(candidate=candidate, report=report)


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


# -- synthetic telemetry ------------------------------------------------------------------------

#: Hidden per-group drift of the realistic generator: how reality differs from the default model.
SYNTHETIC_DRIFT: Mapping[tuple[str, str], float] = {
    ("implementation", "low"): 0.75,
    ("implementation", "medium"): 0.9,
    ("implementation", "high"): 0.7,
    ("refactoring", "medium"): 1.25,
    ("configuration", "low"): 0.8,
    ("integration", "high"): 0.85,
    ("tests", "low"): 1.15,
    ("tests", "medium"): 1.3,
    ("docs", "low"): 1.5,
    ("docs", "medium"): 1.3,
    ("doc_synthesis", "low"): 1.3,
    ("doc_sot_update", "low"): 0.8,
}

_PACKAGES = ("billing", "memory", "research", "auth", "search", "config", "reports", "scheduler", "ingest")
_MODULES = ("manager", "client", "models", "service", "handlers", "parser", "cache", "retry", "validators")
_DOC_NAMES = ("OVERVIEW", "USAGE_GUIDE", "QUICKSTART", "FAQ", "TROUBLESHOOTING", "CONFIGURATION", "DESIGN")
_CONFIG_FILES = ("config/defaults.yaml", "config/logging.yaml", "pyproject.toml", "deploy/values.yaml")
_SOT_FILES = ("BUILD_HISTORY.md", "DEBUG_LOG.md", "docs/ARCHITECTURE_DECISIONS.md", "docs/FUTURE_PLAN.md")
_HINTS = {
    "implementation": ("implementation", "IMPLEMENT_FEATURE", "backend"),
    "refactoring": ("refactoring", "refactor"),
    "configuration": ("configuration", "config"),
    "integration": ("integration",),
    "tests": ("tests", "testing"),
    "docs": ("docs", "documentation"),
    "doc_synthesis": ("docs", "documentation"),
    "doc_sot_update": ("docs", "documentation"),
}
_GOALS = {
    "implementation": "Implement the {pkg} {mod} with validation and error handling",
    "refactoring": "Refactor the {pkg} {mod} to remove duplication",
    "configuration": "Environment-based configuration for {pkg} with validation",
    "integration": "Integrate the external {pkg} API with retries and authentication",
    "tests": "Add unit tests for the {pkg} {mod}",
    "docs": "Write comprehensive documentation with an example for {pkg}",
    "doc_synthesis": "Create the {pkg} documentation from scratch",
    "doc_sot_update": "Record the {pkg} build in the project ledgers",
}
_CATEGORY_WEIGHTS = (
    ("implementation", 35),
    ("refactoring", 10),
    ("configuration", 8),
    ("integration", 8),
    ("tests", 15),
    ("docs", 14),
    ("doc_synthesis", 5),
    ("doc_sot_update", 5),
)
_COUNT_WEIGHTS = ((1, 30), (2, 25), (3, 15), (4, 10), (5, 7), (6, 5), (8, 4), (10, 2), (13, 1), (17, 1))


def _pick(rng: random.Random, weighted: Sequence[tuple[object, int]]) -> object:
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


def _synthetic_phase(rng: random.Random, category: str) -> PhaseInput:
    """A plausible phase of ``category`` with real-looking paths and goal text."""
    pkg, mod = rng.choice(_PACKAGES), rng.choice(_MODULES)
    count = int(_pick(rng, _COUNT_WEIGHTS))  # type: ignore[call-overload]
    paths: list[str] = []
    for i in range(count):
        name = f"{mod}{i or ''}"
        if category in ("implementation", "refactoring", "integration"):
            sub = "integrations/" if category == "integration" else ""
            paths.append(f"tests/{pkg}/test_{name}.py" if i % 2 else f"src/{pkg}/{sub}{name}.py")
        elif category == "configuration":
            paths.append(_CONFIG_FILES[i % len(_CONFIG_FILES)] if i % 2 == 0 else f"src/{pkg}/settings{i}.py")
        elif category == "tests":
            paths.append(f"tests/{pkg}/test_{name}.py")
        elif category == "docs":
            paths.append(f"docs/{pkg}/{_DOC_NAMES[i % len(_DOC_NAMES)]}{i // len(_DOC_NAMES) or ''}.md")
        elif category == "doc_synthesis":
            special = ("API_REFERENCE.md", "EXAMPLES.md")
            doc = special[i] if i < 2 else f"{_DOC_NAMES[i % len(_DOC_NAMES)]}.md"
            paths.append(f"docs/{pkg}/{doc}")
        else:
            paths.append(_SOT_FILES[i % len(_SOT_FILES)])
    hint = rng.choice(_HINTS[category]) if rng.random() < 0.7 else ""
    complexity = str(_pick(rng, (("low", 40), ("medium", 40), ("high", 15), ("maintenance", 5))))
    context = tuple(f"src/{pkg}/ctx_{j}.py" for j in range(rng.choice((0, 0, 1, 2, 3, 6))))
    model = str(_pick(rng, (("claude-sonnet-4-5", 85), ("claude-opus-4-5", 10), ("gpt-4o", 5))))
    return PhaseInput(
        description=_GOALS[category].format(pkg=pkg, mod=mod) + f" ({rng.randrange(10**6)})",
        category_hint=hint,
        complexity=complexity,
        deliverables=tuple(paths),
        scope_paths=(f"src/{pkg}/",) if rng.random() < 0.5 else (),
        read_only_context=context,
        model=model,
    )


def synthetic_events(
    n: int,
    seed: int = 0,
    *,
    truth_factors: Mapping[tuple[str, str], float] | None = None,
    noise_sigma: float = 0.2,
    phase_sigma: float = 0.3,
    outlier_rate: float = 0.02,
    failure_rate: float = 0.08,
    retry_rate: float = 0.2,
    base: ModelParameters | None = None,
) -> list[TrainingEvent]:
    """Realistic telemetry for tests and benches (deterministic for a seed).

    Truth = the default model's uncalibrated prediction x a per-group factor (``truth_factors``,
    default ``SYNTHETIC_DRIFT``; groups not listed: 1.0) x a mild deliverable-count misfit (the
    realistic mode only) x a per-phase log-normal effect (``phase_sigma``: what the features cannot
    see) x per-attempt log-normal noise (``noise_sigma``) with rare x/÷ 3-6 outliers. Each
    attempt ran under the budget ``base`` would have sent: outputs above it are recorded as
    truncated at that budget (lower bounds). Some attempts fail with shorter failure-mode output,
    and some phases are retried (same phase, fresh noise).
    """
    if n < 0:
        raise ValueError("n must not be negative")
    rng = random.Random(seed)
    params = base or ModelParameters.default()
    raw_model = TokenModel(replace(params, corrections=()))
    served = TokenModel(params)
    realistic = truth_factors is None
    factors = SYNTHETIC_DRIFT if truth_factors is None else truth_factors
    events: list[TrainingEvent] = []
    while len(events) < n:
        category = str(_pick(rng, _CATEGORY_WEIGHTS))
        phase = _synthetic_phase(rng, category)
        raw = raw_model.predict(phase)
        budget = served.predict(phase).actual_max_tokens
        median = raw.predicted_output_tokens * factors.get((raw.category, raw.complexity), 1.0)
        if realistic:
            median *= max(1, raw.deliverable_count) ** -0.08
        median *= math.exp(rng.gauss(0.0, phase_sigma)) if phase_sigma > 0 else 1.0
        attempts = 1 + (rng.choice((1, 1, 2, 3)) if rng.random() < retry_rate else 0)
        for _ in range(attempts):
            if len(events) >= n:
                break
            actual = median * math.exp(rng.gauss(0.0, noise_sigma))
            if rng.random() < outlier_rate:
                actual *= rng.uniform(3.0, 6.0) ** rng.choice((-1, 1))
            success = rng.random() >= failure_rate
            if not success:
                actual *= rng.uniform(0.15, 1.1)
            tokens = max(50, round(actual))
            truncated = tokens > budget
            if truncated:
                tokens, success = budget, False
            events.append(
                TrainingEvent(phase=phase, actual_output_tokens=tokens, success=success, truncated=truncated)
            )
    return events
