"""The token model: point prediction, safety buffer, budget, model ceiling and P10 escalation.

How a phase becomes a budget (every step shows up as a breakdown term):

1. **Point prediction** (``predicted_output_tokens``) -- a *median* estimate, no safety margin in
   it, so SMAPE measures the model and not its caution:

   * ``doc_synthesis``: the seeds' additive phase model -- investigation by context quality
     (none/some/strong: 2500/2000/1500) + API extraction 1200 + examples 1400 + writing 850 per
     deliverable + 12 % coordination on the writing when there are 5+ deliverables, times the
     seeds' 1.3 phase-model margin (the additive terms were fitted as a lower envelope: the
     real 5-document phase truncated above 16,384 tokens).
   * ``doc_sot_update``: context reconstruction (3000/2200/1500) + 900 per ledger entry + 15 %
     consistency, times the same 1.3.
   * everything else: a base by category x complexity + a cost per deliverable by kind
     (code/test/doc/config/prose) scaled by complexity. Costs fall off with rank (the 5th-8th
     deliverable x0.7, 9th-16th x0.5, beyond x0.35): large phases do not write every file in
     full, and a linear model wildly overshoots them.
   * a calibrated model scales by a learned size elasticity (``calibration_size``: x (deliverables
     / 4) ** exponent) and a learned per-group factor (``calibration``), and an exact repeat of a
     phase it has seen (same goal and deliverables) leans on that phase's own history
     (``phase_memory``, times a learned repeat factor: retries often write less; its budget also
     covers the largest earlier output x a learned margin and 1.25x any earlier truncation).

2. **Buffer** -- P7/P9 rules until calibration has learned better: 1.2 by default, 1.4 when
   confidence < 0.7, 1.6 with 8+ deliverables or for high-complexity implementation/integration,
   2.2 only for ``doc_synthesis``/``doc_sot_update``. The seeds applied these on top of an estimate
   that already carried a x1.3 safety margin; our point prediction is a median, so outside the
   two phase models the rule buffer is multiplied by that 1.3 (``buffer_multiplier`` reports the
   product, e.g. 1.56 by default). A calibrated model uses the buffers it learned instead (the
   miss/waste objective and the cap are in ``calibration`` and ``frontier``): a group's own, else
   the all-phases one, which replaces the rule buffers in calibrations since the budget-policy
   rework (``learned_buffer_replaces_rules``; older versions only let it raise them); a repeat uses
   the spread of repeats when that is tighter. ``BufferShape`` is kept so older stored versions
   serve as they did.

3. **selected_budget** = prediction x buffer, raised to a category-aware floor (code phases keep
   a higher floor than docs-like ones, BUILD-142), rounded up to a multiple of 256. It is the
   estimator's *intent* and may exceed what the model can emit.

4. **actual_max_tokens** = min(selected_budget, the model's output ceiling) -- what is sent.
   Kept distinct from ``selected_budget`` (BUILD-142 semantics) so telemetry can tell intent
   from enforcement.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any

from autopack_estimator.features import (
    COMPLEXITIES,
    CONTEXT_QUALITIES,
    DELIVERABLE_KINDS,
    Deliverable,
    DocFeatures,
    PhaseInput,
    detect_category,
    doc_features,
    normalize_complexity,
    parse_deliverables,
    phase_fingerprint,
)

#: Model assumed when a request names none (proto: "Empty = the estimator's default model").
DEFAULT_MODEL = "claude-sonnet-4-6"

#: Output ceiling for models the table does not know: small enough that no provider rejects it.
DEFAULT_OUTPUT_CEILING = 8192

# Max output tokens per model family, matched on the longest normalised prefix ("." and "_" -> "-").
_OUTPUT_CEILINGS: dict[str, int] = {
    # Newer families: 64000 is the documented floor of their output limits; never sent above it.
    "claude-sonnet-5": 64000,
    "claude-opus-5": 64000,
    "claude-haiku-5": 64000,
    "claude-sonnet-4-6": 64000,
    "claude-opus-4-6": 64000,
    "claude-opus-4-7": 64000,
    "claude-opus-4-8": 64000,
    "claude-sonnet-4-5": 64000,
    "claude-opus-4-5": 64000,
    "claude-haiku-4-5": 64000,
    "claude-sonnet-4": 64000,
    "claude-opus-4-1": 32000,
    "claude-opus-4": 32000,
    "claude-3-7-sonnet": 64000,
    "claude-3-5": 8192,
    "claude-3": 4096,
    "gpt-5": 128000,
    "gpt-4-1": 32768,
    "gpt-4o": 16384,
    "gpt-4-turbo": 4096,
    "gpt-4": 8192,
    "o1-mini": 65536,
    "o1": 100000,
    "o3": 100000,
    "o4-mini": 100000,
    "gemini-2-5": 65536,
    "gemini-2-0": 8192,
    "gemini-1-5": 8192,
}

ESCALATION_REASONS = ("truncated", "high_utilization", "incomplete_deliverables")

#: Categories the "high complexity is risky" P7 rule covers (IMPLEMENT_FEATURE + integration).
_HIGH_RISK_CATEGORIES = frozenset({"implementation", "integration"})

#: Categories estimated by a seed phase model whose prediction already carries the x1.3 margin.
_PHASE_MODEL_CATEGORIES = frozenset({"doc_synthesis", "doc_sot_update"})
_MEMO_SIZE = 4096  # memoised predictions per model version (see TokenModel.predict)

#: Marker for "any complexity" / "any category" in a group correction.
ANY = "*"


@functools.lru_cache(maxsize=256)
def output_ceiling(model: str) -> int:
    """Largest max_tokens the model accepts; empty means the default model, unknown a safe 8192."""
    name = (model or "").strip().lower() or DEFAULT_MODEL
    name = name.rsplit("/", 1)[-1].replace(".", "-").replace("_", "-")
    best, best_len = DEFAULT_OUTPUT_CEILING, -1
    for prefix, ceiling in _OUTPUT_CEILINGS.items():
        if name.startswith(prefix) and len(prefix) > best_len:
            rest = name[len(prefix) :]
            if not rest or rest[0] in "-:@":
                best, best_len = ceiling, len(prefix)
    return best


@dataclass(frozen=True)
class BreakdownTerm:
    """One additive piece of an estimate, with a human explanation."""

    name: str
    tokens: int
    detail: str


@dataclass(frozen=True)
class Prediction:
    """What the estimator answers for one phase."""

    predicted_output_tokens: int
    selected_budget: int
    actual_max_tokens: int
    category: str
    complexity: str
    confidence: float
    buffer_multiplier: float
    deliverable_count: int
    breakdown: tuple[BreakdownTerm, ...]


@dataclass(frozen=True)
class EscalationPlan:
    """Retry budget after truncation / high utilisation (seeds' P10 escalate-once)."""

    retry_budget: int
    actual_max_tokens: int
    detail: str
    base: int = 0
    factor: float = 1.0


@dataclass(frozen=True)
class GroupCorrection:
    """What calibration learned for one group of phases.

    ``category``/``complexity`` may be ``"*"`` (a category-wide or global fallback). ``factor``
    multiplies the uncalibrated point prediction; ``buffer`` (0 = none learned) replaces the P7
    rule buffer for phases this correction applies to.
    """

    category: str
    complexity: str
    factor: float
    buffer: float
    samples: int
    confidence: float


@dataclass(frozen=True)
class PhaseMemory:
    """What earlier attempts of one exact phase (same goal and deliverables) produced.

    Retries and re-runs of a phase are common (the seeds' telemetry is full of them), and a
    phase's own history predicts it far better than any group average: a phase that truncated at
    16,384 needs more than 16,384 next time, whatever its category says.
    """

    fingerprint: str
    attempts: int
    clean_count: int
    clean_median: int  # median output of clean attempts, 0 without any
    max_exact: int  # largest output of an attempt that was not truncated (clean or failed)
    max_lower_bound: int  # largest truncated output (the real need was higher), 0 without any


def _default_base_tokens() -> dict[str, dict[str, int]]:
    # Fixed per-phase output (explanations, imports, wiring) by category x complexity, median-targeted
    # against the seeds' telemetry (1-file implementation/low ~1.3-1.7k, tests/medium ~4.5k, ...).
    return {
        "implementation": {"low": 600, "medium": 1200, "high": 2400, "maintenance": 800},
        "refactoring": {"low": 900, "medium": 1600, "high": 3000, "maintenance": 1000},
        "configuration": {"low": 400, "medium": 800, "high": 1500, "maintenance": 500},
        "integration": {"low": 1000, "medium": 1800, "high": 3200, "maintenance": 1200},
        "tests": {"low": 400, "medium": 1800, "high": 2600, "maintenance": 600},
        "docs": {"low": 1200, "medium": 1800, "high": 2600, "maintenance": 1000},
    }


def _default_deliverable_tokens() -> dict[str, int]:
    # Output per deliverable at medium complexity, by kind (the seeds' TOKEN_WEIGHTS, re-centred on
    # medians: the original weights carried a x1.3 safety margin and overshot by 2-3x on code).
    return {"code": 1700, "test": 1700, "doc": 1300, "config": 500, "other": 800}


def _default_complexity_scale() -> dict[str, float]:
    return {"low": 0.7, "medium": 1.0, "high": 1.4, "maintenance": 0.8}


def _default_no_deliverable_tokens() -> dict[str, int]:
    # Phases that name no deliverables: the whole phase is one guess by complexity.
    return {"low": 2000, "medium": 3500, "high": 6000, "maintenance": 2000}


def _default_floors() -> dict[str, dict[str, int]]:
    # Modest floors (BUILD-142): code phases keep a higher floor than docs-like ones, but a 16k floor
    # on a 3.8k phase is 4.3x waste, so the buffer -- not the floor -- carries the safety.
    code = {"low": 2048, "medium": 3072, "high": 4096, "maintenance": 2048}
    light = {"low": 1536, "medium": 2048, "high": 3072, "maintenance": 1536}
    docs = {"low": 1024, "medium": 1024, "high": 1024, "maintenance": 1024}
    return {
        "implementation": dict(code),
        "refactoring": dict(code),
        "integration": dict(code),
        "configuration": dict(light),
        "tests": dict(light),
        "docs": dict(docs),
        "doc_synthesis": dict(docs),
        "doc_sot_update": dict(docs),
    }


@dataclass(frozen=True)
class ModelParameters:
    """Everything a stored model version holds: coefficients, rules, learned corrections.

    Immutable and JSON round-trippable, so a version string always means the same numbers.
    """

    version: str
    parent_version: str = ""
    base_tokens: dict[str, dict[str, int]] = field(default_factory=_default_base_tokens)
    deliverable_tokens: dict[str, int] = field(default_factory=_default_deliverable_tokens)
    complexity_scale: dict[str, float] = field(default_factory=_default_complexity_scale)
    no_deliverable_tokens: dict[str, int] = field(default_factory=_default_no_deliverable_tokens)
    directory_weight: float = 1.5
    rank_weights: tuple[tuple[int, float], ...] = ((4, 1.0), (8, 0.7), (16, 0.5), (0, 0.35))
    doc_synthesis_investigation: dict[str, int] = field(
        default_factory=lambda: {"none": 2500, "some": 2000, "strong": 1500}
    )
    doc_synthesis_api_tokens: int = 1200
    doc_synthesis_examples_tokens: int = 1400
    doc_synthesis_writing_tokens: int = 850
    doc_synthesis_coordination: float = 0.12
    doc_synthesis_coordination_min_deliverables: int = 5
    sot_context: dict[str, int] = field(default_factory=lambda: {"none": 3000, "some": 2200, "strong": 1500})
    sot_entry_tokens: int = 900
    sot_consistency: float = 0.15
    phase_model_margin: float = 1.3
    safety_margin: float = 1.3
    buffer_default: float = 1.2
    buffer_low_confidence: float = 1.4
    low_confidence_threshold: float = 0.7
    buffer_many_deliverables: float = 1.6
    many_deliverables_threshold: int = 8
    buffer_high_risk: float = 1.6
    buffer_doc_phase_model: float = 2.2
    floors: dict[str, dict[str, int]] = field(default_factory=_default_floors)
    budget_rounding: int = 256
    max_budget: int = 128000  # the largest output any listed model accepts
    escalation_factor: float = 1.25
    default_model: str = DEFAULT_MODEL
    corrections: tuple[GroupCorrection, ...] = ()
    # Learned size elasticity: predictions x (deliverables / count_reference) ** count_exponent. Output
    # rarely grows as fast as the per-deliverable costs say (large phases reuse, skip or trim files).
    count_exponent: float = 0.0
    count_reference: float = 4.0
    phase_memory: tuple[PhaseMemory, ...] = ()
    memory_prior_attempts: float = 1.0
    memory_within_sigma: float = 0.0
    memory_between_sigma: float = 0.0
    memory_buffer_z: float = 0.0
    memory_margin: float = 1.15
    memory_repeat_factor: float = 1.0
    max_phase_memory: int = 2000
    # How learned buffers are served (identity by default; calibration chooses them on held-out data):
    # a learned buffer b becomes exp(scale * reference * (log b / reference) ** power). ``scale`` sets
    # the overall risk; ``power`` < 1 evens buffers out across groups, letting the noisiest groups take
    # a larger share of the misses where that costs less waste overall.
    buffer_shape_scale: float = 1.0
    buffer_shape_power: float = 1.0
    buffer_shape_reference: float = 1.0
    # Whether a learned all-phases buffer replaces the P7/P9 rule buffers (calibrations since the
    # budget-policy rework: one measured buffer beats rules measured nowhere) or only raises them.
    learned_buffer_replaces_rules: bool = False

    @classmethod
    def default(cls) -> ModelParameters:
        """The shipped model: seed coefficients re-centred on medians, no learned corrections."""
        return cls(version="default-1")

    def to_json(self) -> str:
        """Canonical JSON (sorted keys) of every field."""
        data: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "corrections":
                value = [
                    {
                        k: getattr(c, k)
                        for k in ("category", "complexity", "factor", "buffer", "samples", "confidence")
                    }
                    for c in value
                ]
            elif f.name == "phase_memory":
                value = [
                    [m.fingerprint, m.attempts, m.clean_count, m.clean_median, m.max_exact, m.max_lower_bound]
                    for m in value
                ]
            elif f.name == "rank_weights":
                value = [list(pair) for pair in value]
            data[f.name] = value
        return json.dumps(data, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> ModelParameters:
        """Parse stored parameters; missing keys take the defaults, malformed ones are refused."""
        try:
            data = json.loads(text)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"model parameters are not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError("model parameters must be a JSON object")
        version = data.get("version")
        if not isinstance(version, str) or not version.strip():
            raise ValueError("model parameters need a non-empty 'version'")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: v for k, v in data.items() if k in known}
        try:
            if "corrections" in kwargs:
                kwargs["corrections"] = tuple(
                    GroupCorrection(
                        category=str(c["category"]),
                        complexity=str(c["complexity"]),
                        factor=float(c["factor"]),
                        buffer=float(c["buffer"]),
                        samples=int(c["samples"]),
                        confidence=float(c["confidence"]),
                    )
                    for c in kwargs["corrections"]
                )
            if "phase_memory" in kwargs:
                kwargs["phase_memory"] = tuple(
                    PhaseMemory(str(m[0]), int(m[1]), int(m[2]), int(m[3]), int(m[4]), int(m[5]))
                    for m in kwargs["phase_memory"]
                )
            if "rank_weights" in kwargs:
                kwargs["rank_weights"] = tuple((int(a), float(b)) for a, b in kwargs["rank_weights"])
            params = cls(**kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed model parameters: {exc}") from exc
        params.validate()
        return params

    def validate(self) -> None:
        """Refuse parameter sets that would produce nonsense budgets (named field in the error)."""
        for name in ("base_tokens", "floors"):
            table = getattr(self, name)
            if "implementation" not in table:
                raise ValueError(f"{name} needs an 'implementation' row (the fallback for other categories)")
            for category, row in table.items():
                missing = [c for c in COMPLEXITIES if c not in row]
                if missing:
                    raise ValueError(f"{name}[{category!r}] lacks {', '.join(missing)}")
        for name, keys in (
            ("deliverable_tokens", DELIVERABLE_KINDS),
            ("complexity_scale", COMPLEXITIES),
            ("no_deliverable_tokens", COMPLEXITIES),
            ("doc_synthesis_investigation", CONTEXT_QUALITIES),
            ("sot_context", CONTEXT_QUALITIES),
        ):
            missing = [k for k in keys if k not in getattr(self, name)]
            if missing:
                raise ValueError(f"{name} lacks {', '.join(missing)}")
        if not self.rank_weights or self.rank_weights[-1][0] != 0:
            raise ValueError("rank_weights must end with a catch-all (0, weight) entry")
        for name in ("buffer_default", "buffer_low_confidence", "buffer_many_deliverables"):
            if float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be >= 1.0")
        if self.budget_rounding < 1:
            raise ValueError("budget_rounding must be >= 1")
        if self.escalation_factor <= 1.0:
            raise ValueError("escalation_factor must be > 1.0")
        if not self.count_reference > 0 or not -1.0 <= self.count_exponent <= 1.0:
            raise ValueError("count_reference must be positive and count_exponent within -1..1")
        if not (self.buffer_shape_scale > 0 and self.buffer_shape_reference > 0):
            raise ValueError("buffer_shape_scale and buffer_shape_reference must be positive")
        if not 0.0 <= self.buffer_shape_power <= 1.0:
            raise ValueError("buffer_shape_power must be between 0 and 1")
        for c in self.corrections:
            if not (c.factor > 0 and math.isfinite(c.factor)):
                raise ValueError(f"correction {c.category}/{c.complexity}: factor must be positive")
            if c.buffer != 0 and c.buffer < 1.0:
                raise ValueError(f"correction {c.category}/{c.complexity}: buffer must be 0 or >= 1")

    @property
    def buffer_shape(self) -> BufferShape:
        """How learned buffers are served."""
        return BufferShape(self.buffer_shape_scale, self.buffer_shape_power, self.buffer_shape_reference)

    def correction_for(self, category: str, complexity: str) -> tuple[GroupCorrection | None, str]:
        """Most specific learned correction: (category, complexity), then (category, *), then (*, *)."""
        table = {(c.category, c.complexity): c for c in self.corrections}
        for key, level in (
            ((category, complexity), "group"),
            ((category, ANY), "category"),
            ((ANY, ANY), "global"),
        ):
            if key in table:
                return table[key], level
        return None, ""


@dataclass(frozen=True)
class BufferShape:
    """Monotone map of a learned buffer b to the served one: exp(scale * ref * (log b / ref) ** power).

    ``power`` = 1 is the plain power ``b ** scale``; smaller powers pull buffers toward the reference
    (in log space), so tight groups get a little more room and noisy ones a little less.
    """

    scale: float = 1.0
    power: float = 1.0
    reference: float = 1.0

    @property
    def identity(self) -> bool:
        """Whether buffers are served as learned."""
        return self.scale == 1.0 and self.power == 1.0

    def apply(self, buffer: float) -> float:
        """The served buffer (never below 1)."""
        if self.identity or buffer <= 1.0:
            return max(1.0, buffer)
        log_buffer = math.log(buffer)
        shaped = self.scale * self.reference * (log_buffer / self.reference) ** self.power
        return max(1.0, math.exp(shaped))


def round_up(value: float, step: int) -> int:
    """Round up to a multiple of ``step`` (budgets are allocated in whole blocks)."""
    return math.ceil(value / step - 1e-9) * step


@dataclass(slots=True)
class Draft:
    """A prediction before its budget is fixed (lets calibration try budget policies cheaply).

    Not frozen only because it is built on every estimate (frozen init costs ~1 us); treat it as
    read-only.
    """

    terms: tuple[BreakdownTerm, ...]
    predicted: int
    buffer: float
    buffer_reason: str
    buffer_learned: bool
    floor: int
    memory_need: int
    memory_detail: str
    category: str
    complexity: str
    confidence: float
    deliverable_count: int
    model_name: str
    # The buffer's ingredients, so calibration can try other policies on the same draft.
    rule_buffer: float = 1.0
    rule_reason: str = ""
    group_buffer: float = 0.0  # learned, before the buffer shape; 0 = none
    group_reason: str = ""
    group_global: bool = False  # an all-phases buffer that only ever raises the rule buffer
    memory_spread: float = 0.0  # predictive log spread of a repeat; 0 = no memory buffer
    memory: PhaseMemory | None = None


@dataclass(frozen=True)
class BudgetPolicy:
    """What turns a draft's prediction into a budget beyond the prediction itself."""

    shape: BufferShape
    memory_z: float
    memory_margin: float


def select_buffer(
    rule_buffer: float,
    rule_reason: str,
    group_buffer: float,
    group_reason: str,
    group_global: bool,
    memory_spread: float,
    policy: BudgetPolicy,
) -> tuple[float, str, bool]:
    """(buffer, reason, learned): the rule buffer unless a learned one applies (an all-phases one
    only ever raises it); a repeat's own, tighter spread wins over its group's."""
    buffer, reason, learned = rule_buffer, rule_reason, False
    if group_buffer > 0:
        shaped = policy.shape.apply(group_buffer)
        if not group_global or shaped > buffer:
            buffer, reason, learned = shaped, group_reason, True
    if memory_spread > 0 and policy.memory_z > 0:
        remembered = max(1.05, math.exp(policy.memory_z * memory_spread))
        if remembered < buffer:
            buffer, reason, learned = remembered, "learned spread of repeats of this phase", True
    return buffer, reason, learned


def selected_budget(
    predicted: int, buffer: float, floor: int, memory_need: int, rounding: int, max_budget: int
) -> int:
    """The budget arithmetic of ``TokenModel.finish``: buffered prediction, minimums, rounding, cap."""
    budget = max(math.ceil(predicted * buffer - 1e-9), floor, memory_need)
    return min(round_up(budget, rounding), max(max_budget, predicted))


def _redo_buffer(draft: Draft, policy: BudgetPolicy) -> tuple[float, str, bool]:
    """``select_buffer`` of a draft's ingredients under another policy."""
    return select_buffer(
        draft.rule_buffer,
        draft.rule_reason,
        draft.group_buffer,
        draft.group_reason,
        draft.group_global,
        draft.memory_spread,
        policy,
    )


@dataclass(frozen=True, slots=True)
class _Analysis:
    """What the model reads off a phase's text: pure, so computed once per distinct phase."""

    category: str
    items: tuple[Deliverable, ...]
    fingerprint: str
    doc: DocFeatures | None  # only for the phase-model categories, the only ones that use it
    shape: tuple[Any, ...]  # everything the prediction depends on besides complexity, model and memory


@lru_cache(maxsize=8192)
def _analyse(phase: PhaseInput) -> _Analysis:
    """The analysis of a phase (pure, so cached per distinct phase)."""
    category = detect_category(phase)
    items = parse_deliverables(phase.deliverables)
    doc = doc_features(phase) if category in _PHASE_MODEL_CATEGORIES else None
    kinds = tuple(sorted((item.kind, item.is_directory, bool(item.path)) for item in items))
    return _Analysis(category, items, phase_fingerprint(phase), doc, (category, kinds, doc))


class TokenModel:
    """Predicts output tokens and budgets for phases with one fixed set of parameters."""

    def __init__(self, params: ModelParameters) -> None:
        self._params = params
        self._memory = {m.fingerprint: m for m in params.phase_memory}
        self._corrections = {(c.category, c.complexity): c for c in params.corrections}
        self._policy = BudgetPolicy(params.buffer_shape, params.memory_buffer_z, params.memory_margin)
        self._predictions: dict[tuple[Any, ...], Prediction] = {}

    @property
    def version(self) -> str:
        """Version of the parameters this model serves."""
        return self._params.version

    @property
    def params(self) -> ModelParameters:
        """The parameters (read-only)."""
        return self._params

    # -- point prediction ----------------------------------------------------------------------

    def _correction_for(self, category: str, complexity: str) -> tuple[GroupCorrection | None, str]:
        """Same lookup as ``ModelParameters.correction_for``, on a table built once."""
        for key, level in (
            ((category, complexity), "group"),
            ((category, ANY), "category"),
            ((ANY, ANY), "global"),
        ):
            if key in self._corrections:
                return self._corrections[key], level
        return None, ""

    def _rank_weight(self, rank: int) -> float:
        for upto, weight in self._params.rank_weights:
            if upto == 0 or rank <= upto:
                return weight
        return self._params.rank_weights[-1][1]

    def _structural_terms(self, analysis: _Analysis, complexity: str) -> list[BreakdownTerm]:
        """Additive terms of the uncalibrated median prediction."""
        p = self._params
        category, items = analysis.category, analysis.items
        if analysis.doc is not None:  # exactly the phase-model categories
            if category == "doc_synthesis":
                return self._doc_synthesis_terms(analysis.doc, items)
            return self._sot_terms(analysis.doc, items)
        base_table = p.base_tokens.get(category) or p.base_tokens["implementation"]
        terms = [BreakdownTerm("base", int(base_table[complexity]), f"{category}/{complexity} fixed output")]
        if not items:
            tokens = int(p.no_deliverable_tokens[complexity])
            terms.append(BreakdownTerm("unspecified_work", tokens, f"no deliverables named ({complexity})"))
            return terms
        scale = float(p.complexity_scale[complexity])
        units = []
        for item in items:
            unit = float(p.deliverable_tokens[item.kind]) * (p.directory_weight if item.is_directory else 1.0)
            units.append((unit, item))
        units.sort(key=lambda pair: -pair[0])
        per_kind: dict[str, float] = {}
        per_kind_count: dict[str, int] = {}
        for rank, (unit, item) in enumerate(units, start=1):
            per_kind[item.kind] = per_kind.get(item.kind, 0.0) + unit * scale * self._rank_weight(rank)
            per_kind_count[item.kind] = per_kind_count.get(item.kind, 0) + 1
        for kind in ("code", "test", "doc", "config", "other"):
            if kind in per_kind:
                terms.append(
                    BreakdownTerm(
                        f"deliverables:{kind}",
                        round(per_kind[kind]),
                        f"{per_kind_count[kind]} {kind} x {p.deliverable_tokens[kind]} x{scale:g} "
                        f"({complexity}), later deliverables weighted down",
                    )
                )
        return terms

    def _doc_synthesis_terms(self, feats: DocFeatures, items: tuple[Deliverable, ...]) -> list[BreakdownTerm]:
        """Seeds' DOC_SYNTHESIS additive phase model."""
        p = self._params
        n = max(1, len(items))
        writing = p.doc_synthesis_writing_tokens * n
        terms = [
            BreakdownTerm(
                "doc_synthesis_investigate",
                int(p.doc_synthesis_investigation[feats.context_quality]),
                f"code investigation, context quality {feats.context_quality}",
            )
        ]
        if feats.api_reference:
            terms.append(
                BreakdownTerm("doc_synthesis_api_extract", p.doc_synthesis_api_tokens, "API reference")
            )
        if feats.examples:
            terms.append(BreakdownTerm("doc_synthesis_examples", p.doc_synthesis_examples_tokens, "examples"))
        terms.append(
            BreakdownTerm("doc_synthesis_writing", writing, f"{n} x {p.doc_synthesis_writing_tokens} writing")
        )
        if n >= p.doc_synthesis_coordination_min_deliverables:
            terms.append(
                BreakdownTerm(
                    "doc_synthesis_coordination",
                    round(writing * p.doc_synthesis_coordination),
                    f"{p.doc_synthesis_coordination:.0%} of writing for {n} deliverables",
                )
            )
        return self._with_margin(terms)

    def _sot_terms(self, feats: DocFeatures, items: tuple[Deliverable, ...]) -> list[BreakdownTerm]:
        """Seeds' SOT-ledger model: context reconstruction + entries + consistency."""
        p = self._params
        quality = feats.context_quality
        entries = max(1, len(items))
        write = p.sot_entry_tokens * entries
        terms = [
            BreakdownTerm(
                "sot_context_reconstruction", int(p.sot_context[quality]), f"context quality {quality}"
            ),
            BreakdownTerm("sot_write_entries", write, f"{entries} x {p.sot_entry_tokens} per entry"),
            BreakdownTerm(
                "sot_consistency_overhead",
                round(write * p.sot_consistency),
                f"{p.sot_consistency:.0%} cross-references and formatting",
            ),
        ]
        return self._with_margin(terms)

    def _with_margin(self, terms: list[BreakdownTerm]) -> list[BreakdownTerm]:
        subtotal = sum(t.tokens for t in terms)
        margin = round(subtotal * self._params.phase_model_margin) - subtotal
        terms.append(
            BreakdownTerm(
                "phase_model_margin", margin, f"x{self._params.phase_model_margin:g} phase-model margin"
            )
        )
        return terms

    def _confidence(self, category: str, items: tuple[Deliverable, ...]) -> float:
        """Structural confidence: phase models are well specified, prose deliverables are not."""
        if category == "doc_synthesis":
            return 0.75
        if category == "doc_sot_update":
            return 0.70
        if not items:
            return 0.5
        specific = sum(1 for i in items if i.path) / len(items)
        return round(0.5 + 0.3 * specific, 3)

    def rule_buffer(self, category: str, complexity: str, confidence: float, count: int) -> tuple[float, str]:
        """P7/P9 prior buffer and which rule set it."""
        p = self._params
        if category in ("doc_synthesis", "doc_sot_update"):
            return p.buffer_doc_phase_model, f"P9: {category} phase model"
        buffer, reason = p.buffer_default, "P7 default"
        if confidence < p.low_confidence_threshold and p.buffer_low_confidence > buffer:
            buffer, reason = p.buffer_low_confidence, f"P7: low confidence {confidence:.2f}"
        if count >= p.many_deliverables_threshold and p.buffer_many_deliverables > buffer:
            buffer, reason = p.buffer_many_deliverables, f"P7: {count} deliverables"
        if category in _HIGH_RISK_CATEGORIES and complexity == "high" and p.buffer_high_risk > buffer:
            buffer, reason = p.buffer_high_risk, f"P7: high-complexity {category}"
        return buffer, reason

    def floor_for(self, category: str, complexity: str) -> int:
        """Category-aware minimum budget."""
        table = self._params.floors.get(category) or self._params.floors["implementation"]
        return int(table[complexity])

    def predict(self, phase: PhaseInput) -> Prediction:
        """Estimate one phase. Raises ValueError for an unknown complexity.

        A prediction depends on the phase's text only through its analysis (category, the kinds
        of its deliverables, the doc signals) unless this model remembers the phase itself, so
        phases of the same shape share one memoised prediction: most estimates skip the model.
        """
        analysis = _analyse(phase)
        if self._memory and analysis.fingerprint in self._memory:
            return self.finish(self.draft(phase))
        key = (analysis.shape, phase.complexity, phase.model)
        prediction = self._predictions.get(key)
        if prediction is None:
            prediction = self.finish(self.draft(phase))
            if len(self._predictions) >= _MEMO_SIZE:
                self._predictions.clear()  # shapes are few; a workload that cycles through more just recomputes
            self._predictions[key] = prediction
        return prediction

    def draft(self, phase: PhaseInput, history: PhaseMemory | None = None) -> Draft:
        """Everything up to the budget: point prediction, buffer and the minimums that apply.

        ``history`` (calibration only) stands in for the stored memory of this phase: how a
        retry is predicted from the attempts before it.
        """
        p = self._params
        complexity = normalize_complexity(phase.complexity)
        analysis = _analyse(phase)
        category, items, fingerprint = analysis.category, analysis.items, analysis.fingerprint
        terms = self._structural_terms(analysis, complexity)
        raw = max(1, sum(t.tokens for t in terms))
        if p.count_exponent and items and len(items) != p.count_reference:
            size = (len(items) / p.count_reference) ** p.count_exponent
            scaled = max(1, round(raw * size))
            terms.append(
                BreakdownTerm(
                    "calibration_size",
                    scaled - raw,
                    f"x{size:.3f} for {len(items)} deliverables (learned elasticity {p.count_exponent:+.3f} "
                    f"around {p.count_reference:g})",
                )
            )
            raw = scaled

        structural_confidence = self._confidence(category, items)
        confidence = structural_confidence
        correction, level = self._correction_for(category, complexity)
        predicted = raw
        if correction is not None:
            predicted = max(1, round(raw * correction.factor))
            terms.append(
                BreakdownTerm(
                    "calibration",
                    predicted - raw,
                    f"x{correction.factor:.3f} learned for {correction.category}/{correction.complexity} "
                    f"({correction.samples} samples, confidence {correction.confidence:.2f})",
                )
            )
            if level == "group":
                confidence = round(0.5 * confidence + 0.5 * correction.confidence, 3)
        memory = history if history is not None else (self._memory.get(fingerprint) if self._memory else None)
        memory_spread = 0.0
        if memory is not None and memory.clean_count and memory.clean_median > 0:
            weight = memory.clean_count / (memory.clean_count + p.memory_prior_attempts)
            blended = math.exp(weight * math.log(memory.clean_median) + (1 - weight) * math.log(predicted))
            remembered = max(1, round(blended * p.memory_repeat_factor))
            detail = (
                f"{memory.clean_count} clean attempt(s) of this exact phase, median {memory.clean_median}"
            )
            if p.memory_repeat_factor != 1.0:
                detail += f", x{p.memory_repeat_factor:.3f} learned for repeats"
            terms.append(BreakdownTerm("phase_memory", remembered - predicted, detail))
            predicted = remembered
            confidence = max(confidence, round(min(0.95, 0.7 + 0.1 * memory.clean_count), 3))
            if p.memory_within_sigma > 0:
                # Posterior predictive spread of a repeat: attempt noise + what is left of the phase effect.
                memory_spread = math.sqrt(p.memory_within_sigma**2 + (1 - weight) * p.memory_between_sigma**2)
        if predicted > p.max_budget:
            terms.append(
                BreakdownTerm("cap", p.max_budget - predicted, f"prediction capped at {p.max_budget}")
            )
            predicted = p.max_budget

        rule_buffer, rule_reason = self.rule_buffer(category, complexity, structural_confidence, len(items))
        if category not in _PHASE_MODEL_CATEGORIES and p.safety_margin != 1.0:
            rule_reason = f"{rule_reason} {rule_buffer:g} x safety margin {p.safety_margin:g}"
            rule_buffer *= p.safety_margin
        group_buffer, group_reason = 0.0, ""
        if correction is not None and correction.buffer > 0:
            group_buffer = correction.buffer
            group_reason = (
                "learned (all phases)"
                if level == "global"
                else f"learned for {correction.category}/{correction.complexity}"
            )
        policy = self._policy
        only_raises = level == "global" and not p.learned_buffer_replaces_rules
        buffer, reason, learned = select_buffer(
            rule_buffer, rule_reason, group_buffer, group_reason, only_raises, memory_spread, policy
        )
        memory_need, memory_detail = self.memory_need(memory, policy.memory_margin)
        return Draft(
            terms=tuple(terms),
            predicted=predicted,
            buffer=buffer,
            buffer_reason=reason,
            buffer_learned=learned,
            floor=self.floor_for(category, complexity),
            memory_need=memory_need,
            memory_detail=memory_detail,
            category=category,
            complexity=complexity,
            confidence=confidence,
            deliverable_count=len(items),
            model_name=phase.model.strip() or p.default_model,
            rule_buffer=rule_buffer,
            rule_reason=rule_reason,
            group_buffer=group_buffer,
            group_reason=group_reason,
            group_global=only_raises,
            memory_spread=memory_spread,
            memory=memory,
        )

    @property
    def policy(self) -> BudgetPolicy:
        """The stored budget policy: buffer shape, memory buffer z and memory margin."""
        return self._policy

    def memory_need(self, memory: PhaseMemory | None, margin: float) -> tuple[int, str]:
        """Minimum budget a phase's own history proves: its largest output and its truncations (P10)."""
        if memory is None:
            return 0, ""
        factor = self._params.escalation_factor
        need = max(
            math.ceil(memory.max_exact * margin) if margin > 0 else 0,
            int(memory.max_lower_bound * factor) + 1 if memory.max_lower_bound else 0,
        )
        detail = (f"earlier attempts used up to {memory.max_exact} (x{margin:g})" if margin > 0 else "") + (
            f"{' and ' if margin > 0 else 'earlier attempts '}truncated at {memory.max_lower_bound} (x{factor:g})"
            if memory.max_lower_bound
            else ""
        )
        return need, detail

    def budget_for(self, draft: Draft, policy: BudgetPolicy | None = None) -> tuple[int, int]:
        """(selected_budget, actual_max_tokens) of ``finish`` without the breakdown (cheap).

        Calibration tries many policies on the same held-out drafts; this is the same arithmetic
        as ``finish``, so what it chooses is what the stored model serves.
        """
        p = self._params
        if policy is None:
            buffer, memory_need = draft.buffer, draft.memory_need
        else:
            buffer = _redo_buffer(draft, policy)[0]
            memory_need = self.memory_need(draft.memory, policy.memory_margin)[0]
        selected = selected_budget(
            draft.predicted, buffer, draft.floor, memory_need, p.budget_rounding, p.max_budget
        )
        return selected, min(selected, output_ceiling(draft.model_name))

    def finish(self, draft: Draft, policy: BudgetPolicy | None = None) -> Prediction:
        """Budget from a draft: buffer, floors, rounding, ceiling.

        ``policy`` (calibration only) replaces the stored buffer shape / memory policy, as storing
        it in the parameters would.
        """
        p = self._params
        if policy is not None:
            buffer, reason, learned = _redo_buffer(draft, policy)
            memory_need, memory_detail = self.memory_need(draft.memory, policy.memory_margin)
            draft = replace(
                draft,
                buffer=buffer,
                buffer_reason=reason,
                buffer_learned=learned,
                memory_need=memory_need,
                memory_detail=memory_detail,
            )
        terms = list(draft.terms)
        predicted = draft.predicted
        buffer = draft.buffer
        buffered = math.ceil(predicted * buffer - 1e-9)
        terms.append(BreakdownTerm("buffer", buffered - predicted, f"x{buffer:.2f} ({draft.buffer_reason})"))
        budget = buffered
        if draft.floor > budget:
            terms.append(
                BreakdownTerm(
                    "floor", draft.floor - budget, f"{draft.category}/{draft.complexity} floor {draft.floor}"
                )
            )
            budget = draft.floor
        if draft.memory_need > budget:
            terms.append(BreakdownTerm("phase_memory_floor", draft.memory_need - budget, draft.memory_detail))
            budget = draft.memory_need
        rounded = min(round_up(budget, p.budget_rounding), max(p.max_budget, predicted))
        if rounded != budget:
            terms.append(
                BreakdownTerm("rounding", rounded - budget, f"up to a multiple of {p.budget_rounding}")
            )
        selected = rounded

        ceiling = output_ceiling(draft.model_name)
        actual_max = min(selected, ceiling)
        if actual_max < selected:
            terms.append(
                BreakdownTerm("ceiling", actual_max - selected, f"{draft.model_name} emits at most {ceiling}")
            )
        return Prediction(
            predicted_output_tokens=predicted,
            selected_budget=selected,
            actual_max_tokens=actual_max,
            category=draft.category,
            complexity=draft.complexity,
            confidence=draft.confidence,
            buffer_multiplier=round(buffer, 4),
            deliverable_count=draft.deliverable_count,
            breakdown=tuple(terms),
        )

    # -- escalation (P10) ----------------------------------------------------------------------

    def escalate(
        self, selected_budget: int, model: str, reason: str, tokens_used: int, was_truncated: bool
    ) -> EscalationPlan:
        """Retry budget after truncation / >=95 % utilisation / missing deliverables (P10).

        Rule (seed BUILD-129 P10, both escalation-base fixes): ``base = max(selected_budget,
        tokens_used)`` -- never escalate from below the proven lower bound -- and
        ``retry = floor(base x 1.25)`` (e.g. 28,142 -> 35,177; 36,902 -> 46,127). The retry is
        always above ``tokens_used``; ``actual_max_tokens`` caps it at the model ceiling. P10 is
        escalate-once: callers retry once with this budget, not repeatedly.
        """
        if reason not in ESCALATION_REASONS:
            raise ValueError(f"reason must be one of {', '.join(ESCALATION_REASONS)}, got {reason!r}")
        if selected_budget <= 0:
            raise ValueError("selected_budget must be positive")
        if tokens_used < 0:
            raise ValueError("tokens_used must not be negative")
        p = self._params
        model_name = model.strip() or p.default_model
        ceiling = output_ceiling(model_name)
        base = max(selected_budget, tokens_used)
        source = "selected_budget" if base == selected_budget else "tokens_used"
        retry = max(int(base * p.escalation_factor), base + 1, tokens_used + 1)
        actual_max = min(retry, ceiling)
        sent = min(selected_budget, ceiling)
        utilisation = tokens_used / sent if sent else 0.0
        detail = (
            f"P10 {reason}{' (truncated)' if was_truncated else ''}: utilisation {utilisation:.0%} of {sent}; "
            f"base max(selected_budget, tokens_used) = {base} ({source}) x{p.escalation_factor:g} = {retry}"
        )
        if actual_max < retry:
            detail += f"; capped at {model_name} ceiling {ceiling}"
        if sent >= ceiling:
            detail += "; already at the model ceiling: continuation or a larger-output model is needed"
        return EscalationPlan(
            retry_budget=retry,
            actual_max_tokens=actual_max,
            detail=detail,
            base=base,
            factor=p.escalation_factor,
        )
