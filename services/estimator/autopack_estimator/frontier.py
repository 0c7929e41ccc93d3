"""The miss / waste frontier: what each buffer level costs on held-out budgets.

**The objective** (used by calibration, the promotion guard and the reports). A budget ``b`` for a
phase that needs ``y`` output tokens costs:

* when ``b >= y``: a reservation of ``b - y`` unused tokens. They are not billed, but they hold
  rate-limit and context capacity, so waste is reported as ``b / y`` (the waste ratio);
* when ``b < y`` (a *miss*): the lost attempt -- about ``b`` billed output tokens thrown away --
  plus the retry from the escalation path (P10: ``max(b, used) x 1.25`` reserved, ``y`` written),
  and a second round trip. A miss therefore costs at least ``b + y`` billed tokens: more than the
  whole phase again.

A miss is dear and a reservation is cheap, but not free: pushing misses to zero on a heavy tail
buys large reservations for every phase. The default operating point is **at most 5 % misses with
the smallest P90 waste**; the frontier (misses vs P90 waste across buffer levels, with the tokens
lost to misses) shows what another point would cost, so an operator can choose it knowingly.

A truncation at ``C`` is censored: the phase needed *at least* ``C``, so any budget ``<= C`` is a
miss (``metrics.is_budget_miss``). Its cost is counted at ``C`` -- no guess of how much more it
needed -- which is what keeps a few truncations from driving buffers to the model ceiling.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from autopack_estimator.metrics import is_budget_miss, percentile
from autopack_estimator.model import Draft, TokenModel, output_ceiling, selected_budget

#: The default operating point: budget misses at or below this share of held-out events.
DEFAULT_MAX_MISS_RATE = 0.05

#: Buffer levels a frontier is drawn at: a global buffer replacing the model's, or a multiplier of it.
GLOBAL_BUFFERS = (1.0, 1.2, 1.4, 1.6, 1.8, 2.0, 2.25, 2.5, 2.75, 3.0, 3.5, 4.0, 5.0, 6.0)
BUFFER_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.25, 1.4, 1.6, 1.8, 2.0, 2.5, 3.0)


@dataclass(frozen=True, slots=True)
class HeldOutBudget:
    """One held-out event as a model budgets it: everything needed to re-budget at another buffer."""

    predicted: int
    buffer: float
    floor: int
    memory_need: int
    ceiling: int
    actual: int
    truncated: bool
    clean: bool
    rounding: int = 256
    max_budget: int = 128000

    def budget(self, buffer: float) -> int:
        """The budget the model's arithmetic gives with ``buffer`` (floors, phase memory, rounding)."""
        return selected_budget(
            self.predicted, buffer, self.floor, self.memory_need, self.rounding, self.max_budget
        )


@dataclass(frozen=True)
class FrontierPoint:
    """Held-out cost of one buffer level.

    ``buffer`` is the global buffer (a frontier of one buffer for every phase) or the multiplier
    of the model's own buffers (a frontier of a calibrated model); ``lost_share`` is the output
    tokens of missed attempts over all tokens written: the billed price of the misses.
    """

    buffer: float
    miss_rate: float
    waste_p50: float
    waste_p90: float
    lost_share: float
    chosen: bool = False


def judge(
    items: Sequence[HeldOutBudget], buffer_of: Callable[[HeldOutBudget], float], level: float
) -> FrontierPoint:
    """Misses over every event, waste over clean events, with each item budgeted at ``buffer_of(item)``."""
    misses, lost, written = 0, 0, 0
    wastes = []
    for item in items:
        budget = item.budget(buffer_of(item))
        written += item.actual
        if is_budget_miss(budget, item.actual, item.truncated):
            misses += 1
            lost += min(budget, item.ceiling)
        if item.clean:
            wastes.append(min(budget, item.ceiling) / max(1, item.actual))
    total = len(items)
    return FrontierPoint(
        buffer=level,
        miss_rate=misses / total if total else 0.0,
        waste_p50=percentile(wastes, 50),
        waste_p90=percentile(wastes, 90),
        lost_share=lost / written if written else 0.0,
    )


def global_buffer_frontier(
    items: Sequence[HeldOutBudget], buffers: Sequence[float] = GLOBAL_BUFFERS
) -> list[FrontierPoint]:
    """One buffer for every phase, replacing the model's own (the hindsight baseline's frontier)."""
    return [judge(items, lambda _item, b=b: b, b) for b in buffers]


def scaled_frontier(
    items: Sequence[HeldOutBudget], scales: Sequence[float] = BUFFER_SCALES
) -> list[FrontierPoint]:
    """The model's own buffers times each scale (1.0 = as served)."""
    return [judge(items, lambda item, s=s: item.buffer * s, s) for s in scales]


def best_within(points: Sequence[FrontierPoint], max_miss_rate: float) -> FrontierPoint | None:
    """The point with the smallest P90 waste among those missing at most ``max_miss_rate``."""
    eligible = [p for p in points if p.miss_rate <= max_miss_rate + 1e-12]
    return min(eligible, key=lambda p: (p.waste_p90, p.miss_rate)) if eligible else None


def waste_at(points: Sequence[FrontierPoint], miss_rate: float) -> float | None:
    """Smallest P90 waste a frontier reaches at ``miss_rate`` or fewer misses (None: never that few)."""
    point = best_within(points, miss_rate)
    return point.waste_p90 if point is not None else None


def served_point(points: Sequence[FrontierPoint]) -> FrontierPoint:
    """The point marked chosen (the buffers as served)."""
    return next(point for point in points if point.chosen)


def no_worse_at_equal_misses(candidate: Sequence[FrontierPoint], current: Sequence[FrontierPoint]) -> bool:
    """Whether ``current``, at equal or fewer misses, needs at least ``candidate``'s P90 waste.

    Read two ways, both required: along the frontiers (each model at its best buffer level with at
    most the candidate's misses as served: where a buffer happens to sit between two held-out phases
    favours neither) and as served (the current model as served does not miss no more for less waste).
    """
    mine, theirs = served_point(candidate), served_point(current)
    dominated = theirs.miss_rate <= mine.miss_rate and theirs.waste_p90 < mine.waste_p90 - 1e-9
    reference = waste_at(current, mine.miss_rate)
    own = waste_at(candidate, mine.miss_rate)
    return not dominated and (reference is None or (own is not None and own <= reference + 1e-9))


def mark_chosen(points: Sequence[FrontierPoint], level: float) -> list[FrontierPoint]:
    """The same points with the one nearest ``level`` marked chosen."""
    if not points:
        return []
    nearest = min(points, key=lambda p: abs(math.log(p.buffer) - math.log(level)))
    return [
        FrontierPoint(p.buffer, p.miss_rate, p.waste_p50, p.waste_p90, p.lost_share, p is nearest)
        for p in points
    ]


def held_out_item(model: TokenModel, draft: Draft, event: Any) -> HeldOutBudget:
    """A held-out ``event`` (a ``TrainingEvent``) as ``model`` budgets it from ``draft``."""
    params = model.params
    return HeldOutBudget(
        predicted=draft.predicted,
        buffer=draft.buffer,
        floor=draft.floor,
        memory_need=draft.memory_need,
        ceiling=output_ceiling(draft.model_name),
        actual=event.actual_output_tokens,
        truncated=event.truncated,
        clean=event.clean,
        rounding=params.budget_rounding,
        max_budget=params.max_budget,
    )
