"""What the estimator learns from one Build: one sample per answer the model produced.

``BuildResponse.calls`` lists every HTTP request the builder made: answered calls, requests
that got no answer (429/529/5xx: ``error`` set, zero tokens), continuation calls after a
cut-off answer, and possibly calls of other roles. The estimator predicts a phase's *output
need*, so:

* a failed request produced nothing: it is no sample (as a zero-token outcome it would be
  rejected by the estimator's validity guard at best, and teach "this phase needs nothing" at
  worst); calls of another role (doctor, auditor) answer other prompts and are left out;
* a continuation chain (a cut-off answer, then continuation calls until one ends normally)
  is ONE answer to the phase, written in pieces. Its real output need is the chain's summed
  output. Recording each piece would teach the estimator the size of the last remainder as
  a clean, exact need (far too small), and recording only the first cut call would keep a
  lower bound (``truncated``) where the exact need is known. The estimator's calibration
  collapses a phase to its first clean sample, else its largest truncation
  (``calibration.distinct_phases``), so the one summed sample is what it should see: clean
  when the chain finished, a lower bound (``truncated``) when it was still cut off. Its
  ``max_tokens`` is the first call's: the budget the estimate chose, which the summed need
  is judged against (a need above it is a budget miss).
* answers that are not continuations (a re-ask after malformed output, the empty-files
  retry) are new answers to the same phase: one sample each.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from autopack.builder.v1 import builder_pb2
from autopack_common.truncation import is_truncated, is_truncating_stop_reason

BUILDER_ROLE = "builder"


@dataclass(frozen=True)
class OutcomeSample:
    """One answer of the model to the phase, as RecordOutcome should see it."""

    output_tokens: int
    max_tokens: int
    truncated: bool
    stop_reason: str
    model: str
    input_tokens: int
    calls: int
    # The answer the attempt's result came from (the last one): only it can be a success.
    final: bool


def _answered(call: builder_pb2.LlmCall) -> bool:
    return not call.error and call.role in ("", BUILDER_ROLE)


def estimator_samples(build: builder_pb2.BuildResponse) -> list[OutcomeSample]:
    """Answered builder calls grouped into continuation chains, one sample per chain."""
    calls: Sequence[builder_pb2.LlmCall] = [call for call in build.calls if _answered(call)]
    if not build.calls:  # a builder that lists no calls: its totals are one answer
        calls = [
            builder_pb2.LlmCall(
                provider=build.provider,
                model=build.model,
                max_tokens=build.actual_max_tokens,
                usage=build.usage,
                stop_reason=build.stop_reason,
            )
        ]
    chains: list[list[builder_pb2.LlmCall]] = []
    for call in calls:
        continues = bool(chains) and is_truncating_stop_reason(chains[-1][-1].stop_reason)
        if continues:
            chains[-1].append(call)
        else:
            chains.append([call])
    samples = []
    for index, chain in enumerate(chains):
        final = index == len(chains) - 1
        last = chain[-1]
        samples.append(
            OutcomeSample(
                output_tokens=sum(c.usage.output_tokens for c in chain if c.usage.HasField("output_tokens")),
                max_tokens=chain[0].max_tokens,
                truncated=is_truncated(last.stop_reason, build.truncated and final),
                stop_reason=last.stop_reason,
                model=last.model,
                input_tokens=sum(c.usage.input_tokens for c in chain if c.usage.HasField("input_tokens")),
                calls=len(chain),
                final=final,
            )
        )
    return samples
