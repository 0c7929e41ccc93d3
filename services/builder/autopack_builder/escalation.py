"""Budgets for continuation calls: the estimator's ``Escalate``, or a stated local rule.

The builder calls the estimator only here (DESIGN: "re-budget on continuation"). Without an
estimator address, without an estimate id, or when the estimator does not answer, the local
rule applies - the cut call's max_tokens x 1.5, capped by the model's output ceiling - and the
call record says which source the budget came from and why.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Protocol

import grpc
from autopack.estimator.v1 import estimator_pb2, estimator_pb2_grpc
from autopack_common.clients import open_channel

log = logging.getLogger(__name__)

LOCAL_ESCALATION_FACTOR = 1.5
ESCALATE_TIMEOUT_SECONDS = 5.0


@dataclass(frozen=True)
class ContinuationBudget:
    """max_tokens for a continuation and a sentence on where it came from (kept in the call record)."""

    max_tokens: int
    source: str


class BudgetSource(Protocol):
    def continuation_budget(
        self, estimate_id: str, tokens_used: int, cut_max_tokens: int, ceiling: int | None
    ) -> ContinuationBudget: ...


def local_budget(cut_max_tokens: int, ceiling: int | None, why: str) -> ContinuationBudget:
    budget = math.ceil(cut_max_tokens * LOCAL_ESCALATION_FACTOR)
    if ceiling:
        budget = min(budget, ceiling)
    return ContinuationBudget(
        budget,
        f"local rule ({why}): {cut_max_tokens} x {LOCAL_ESCALATION_FACTOR} capped by the model ceiling",
    )


class LocalBudget:
    """No estimator configured: always the local rule."""

    def continuation_budget(
        self, estimate_id: str, tokens_used: int, cut_max_tokens: int, ceiling: int | None
    ) -> ContinuationBudget:
        return local_budget(cut_max_tokens, ceiling, "no estimator configured")


class EstimatorBudget:
    """The estimator's Escalate(reason=TRUNCATED); the local rule when it cannot answer."""

    def __init__(self, address: str, channel: grpc.Channel | None = None) -> None:
        self._address = address
        self._channel = channel or open_channel("estimator", address)
        self._stub = estimator_pb2_grpc.EstimatorServiceStub(self._channel)

    def continuation_budget(
        self, estimate_id: str, tokens_used: int, cut_max_tokens: int, ceiling: int | None
    ) -> ContinuationBudget:
        if not estimate_id:
            return local_budget(cut_max_tokens, ceiling, "the request has no estimate_id")
        try:
            reply = self._stub.Escalate(
                estimator_pb2.EscalateRequest(
                    estimate_id=estimate_id,
                    reason=estimator_pb2.ESCALATION_REASON_TRUNCATED,
                    tokens_used=tokens_used,
                    was_truncated=True,
                ),
                timeout=ESCALATE_TIMEOUT_SECONDS,
            )
        except grpc.RpcError as error:
            code = error.code().name if isinstance(error, grpc.Call) else "ERROR"
            log.warning("estimator Escalate failed (%s); continuation budget from the local rule", code)
            return local_budget(cut_max_tokens, ceiling, f"estimator Escalate failed: {code}")
        budget = reply.actual_max_tokens or reply.retry_budget
        if ceiling:
            budget = min(budget, ceiling)
        return ContinuationBudget(budget, f"estimator Escalate {reply.escalation_id}: {reply.detail}".strip())

    def close(self) -> None:
        self._channel.close()
