"""LLM providers: live Anthropic through the official SDK, and replay of recorded responses.

Both produce an ``anthropic.types.Message`` and go through ``result_from_message``, so a
replayed answer is parsed and accounted exactly like a live one. Usage is what the
provider reported, never estimated: an unknown count stays None, the total is always set.

Replay recordings (``AUTOPACK_REPLAY_DIR``, default ``examples/recordings``) are ``*.jsonl``
files, one recorded call per line::

    {"run_id": "demo", "phase_id": "p1", "attempt": 1, "call": 1,
     "response": {"id": "msg_...", "type": "message", "role": "assistant", "model": "...",
                  "content": [{"type": "text", "text": "..."}], "stop_reason": "end_turn",
                  "stop_sequence": null, "usage": {"input_tokens": 1200, "output_tokens": 800}}}

``run_id`` (a recording only for that run) and ``call`` (1-based call within the attempt,
e.g. 2 for the empty-files retry; default 1) are optional, ``attempt`` defaults to 1. A
request takes the recordings of its run if any exist, else those without a run; then the
highest recorded attempt <= the requested one and, within it, the highest call <= the
requested one. When several lines share a key the last one (files in name order) wins.

A request whose ``max_tokens`` is below the recorded ``output_tokens`` gets what a live
provider would give: ``stop_reason`` "max_tokens", ``output_tokens`` = max_tokens and the
text cut to the same fraction of its characters (so the truncation salvage path runs).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anthropic
import pydantic
from anthropic.types import Message
from autopack_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)

from autopack_builder.models import ChatRequest, ChatResult

log = logging.getLogger(__name__)


class Provider(Protocol):
    """Answers one chat request; raises a DomainError the servicer maps to a status code."""

    name: str

    def chat(self, request: ChatRequest) -> ChatResult: ...

    def close(self) -> None: ...


def result_from_message(message: Message, provider: str) -> ChatResult:
    """The text and exact usage of a Messages API response (live or replayed)."""
    text = "".join(block.text for block in message.content if block.type == "text")
    usage = message.usage
    input_tokens = usage.input_tokens if usage is not None else None
    output_tokens = usage.output_tokens if usage is not None else None
    # Billed total: prompt-cache reads and writes are input tokens too (0 unless caching is on).
    cache_tokens = (
        (usage.cache_creation_input_tokens or 0) + (usage.cache_read_input_tokens or 0) if usage else 0
    )
    total_tokens = (input_tokens or 0) + (output_tokens or 0) + cache_tokens
    return ChatResult(
        provider=provider,
        model=message.model,
        text=text,
        stop_reason=message.stop_reason or "",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total_tokens,
        response_id=message.id,
    )


# --- Anthropic ---------------------------------------------------------------------------


class AnthropicProvider:
    """Live calls through ``anthropic.Anthropic``, which reads ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL.

    The SDK retries 408/409/429/5xx/529 and connection errors ``max_retries`` times with
    backoff (honouring retry-after). Its own spans are off: the builder makes the one
    ``chat <model>`` span per call, and no setting can put prompt content into a span.
    """

    name = "anthropic"

    def __init__(
        self,
        *,
        max_retries: int = 2,
        timeout_seconds: float = 600.0,
        client: anthropic.Anthropic | None = None,
    ) -> None:
        if client is not None:
            self._client = client
            return
        try:
            self._client = anthropic.Anthropic(
                max_retries=max_retries,
                timeout=timeout_seconds,
                open_telemetry={"traces": {"enabled": False}, "propagation": False},
            )
        except anthropic.CredentialsError as error:  # e.g. a configured profile that does not exist
            raise FailedPrecondition(f"anthropic: credentials could not be loaded ({error})") from None

    def chat(self, request: ChatRequest) -> ChatResult:
        try:
            message = self._client.messages.create(
                model=request.model,
                max_tokens=request.max_tokens,
                system=request.system,
                messages=[{"role": "user", "content": request.user}],
            )
        except anthropic.AnthropicError as error:
            raise provider_error(error, request) from None
        except TypeError as error:
            # The SDK reports "no api_key, auth_token or credentials" as a TypeError.
            if "authentication" not in str(error):
                raise
            raise FailedPrecondition(
                "anthropic: no credentials configured for the builder (set ANTHROPIC_API_KEY)"
            ) from None
        return result_from_message(message, self.name)

    def close(self) -> None:
        self._client.close()


def provider_error(error: anthropic.AnthropicError, request: ChatRequest) -> DomainError:
    """The status a caller can act on for an SDK error (after the SDK's own retries)."""
    if isinstance(error, anthropic.CredentialsError):
        return FailedPrecondition(
            "anthropic: no usable credentials configured for the builder (ANTHROPIC_API_KEY)"
        )
    if isinstance(error, anthropic.APIConnectionError):  # includes timeouts
        kind = "timed out" if isinstance(error, anthropic.APITimeoutError) else "could not be reached"
        return Unavailable(f"anthropic {kind}")
    if isinstance(error, anthropic.APIResponseValidationError):
        return Unavailable("anthropic returned a response the SDK could not read")
    if not isinstance(error, anthropic.APIStatusError):
        return Unavailable(f"anthropic call failed: {type(error).__name__}")
    detail = f"{error.status_code} {error.type or ''}".strip()
    api_message = error.api_message or ""
    if isinstance(error, anthropic.AuthenticationError | anthropic.PermissionDeniedError):
        return FailedPrecondition(f"anthropic rejected the builder's credentials ({detail})")
    if isinstance(error, anthropic.PaymentRequiredError):
        return FailedPrecondition(f"anthropic account cannot be billed ({detail})")
    if isinstance(error, anthropic.RateLimitError):
        return ResourceExhausted(f"anthropic rate limit ({detail}); retry later")
    if error.status_code >= 500:  # 500, 503, 504, 529 overloaded
        return Unavailable(f"anthropic unavailable ({detail})")
    if isinstance(error, anthropic.NotFoundError):
        return InvalidArgument("model", f"anthropic does not serve model {request.model!r} ({detail})")
    lowered = api_message.lower()
    if "max_tokens" in lowered:
        return InvalidArgument(
            "max_tokens", f"anthropic rejected max_tokens={request.max_tokens}: {api_message}"
        )
    if "prompt is too long" in lowered or isinstance(error, anthropic.ContentTooLargeError):
        return InvalidArgument("context_files", f"the prompt is too large for the provider ({detail})")
    if "model" in lowered:
        return InvalidArgument("model", f"anthropic rejected model {request.model!r}: {api_message}")
    return FailedPrecondition(f"anthropic rejected the request ({detail}): {api_message}")


# --- Replay ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recording:
    """One recorded call; ``source`` is file:line for error messages."""

    source: str
    run_id: str | None
    phase_id: str
    attempt: int
    call: int
    response: Message


def _positive_int(entry: dict[str, object], key: str, source: str) -> int:
    value = entry.get(key, 1)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise FailedPrecondition(f"replay recording {source}: {key!r} must be an integer >= 1")
    return value


def parse_recording_line(line: str, source: str) -> Recording:
    """Validate one JSONL line; the response must be a valid Messages API response."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as error:
        raise FailedPrecondition(f"replay recording {source}: not JSON ({error.msg})") from None
    if not isinstance(entry, dict):
        raise FailedPrecondition(f"replay recording {source}: each line must be a JSON object")
    phase_id = entry.get("phase_id")
    if not isinstance(phase_id, str) or not phase_id:
        raise FailedPrecondition(f"replay recording {source}: 'phase_id' is required")
    run_id = entry.get("run_id")
    if run_id is not None and not isinstance(run_id, str):
        raise FailedPrecondition(f"replay recording {source}: 'run_id' must be a string")
    try:
        response = Message.model_validate(entry.get("response"))
    except pydantic.ValidationError as error:
        problem = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:3])
        raise FailedPrecondition(
            f"replay recording {source}: 'response' is not a Message ({problem})"
        ) from None
    return Recording(
        source=source,
        run_id=run_id or None,
        phase_id=phase_id,
        attempt=_positive_int(entry, "attempt", source),
        call=_positive_int(entry, "call", source),
        response=response,
    )


def load_recordings(directory: Path) -> list[Recording]:
    """Every recording under ``directory`` (``*.jsonl``, in name order); a bad line fails loudly."""
    recordings: list[Recording] = []
    for path in sorted(directory.glob("*.jsonl")):
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    recordings.append(parse_recording_line(line, f"{path.name}:{number}"))
    return recordings


def select_recording(
    recordings: list[Recording], *, run_id: str, phase_id: str, attempt: int, call: int = 1
) -> Recording | None:
    """The recording that answers a request (see the module docstring for the rules)."""
    for_phase = [r for r in recordings if r.phase_id == phase_id]
    pool = [r for r in for_phase if run_id and r.run_id == run_id] or [
        r for r in for_phase if r.run_id is None
    ]
    earlier = [r for r in pool if r.attempt <= attempt]
    if not earlier:
        return None
    best_attempt = max(r.attempt for r in earlier)
    calls = [r for r in earlier if r.attempt == best_attempt and r.call <= call]
    if not calls:
        return None
    best_call = max(r.call for r in calls)
    return [r for r in calls if r.call == best_call][-1]


def cut_to_budget(message: Message, max_tokens: int) -> Message:
    """What a live provider answers when max_tokens is below what the recorded answer used."""
    used = message.usage.output_tokens
    if used <= max_tokens:
        return message
    text = "".join(block.text for block in message.content if block.type == "text")
    kept = text[: len(text) * max_tokens // used]
    data = message.model_dump(mode="json")
    data["content"] = [{"type": "text", "text": kept}]
    data["stop_reason"] = "max_tokens"
    data["stop_sequence"] = None
    data["usage"]["output_tokens"] = max_tokens
    return Message.model_validate(data)


class ReplayProvider:
    """Serves recorded responses: for demos and tests, and it says so (provider "replay")."""

    name = "replay"

    def __init__(self, directory: Path) -> None:
        self._directory = directory
        self._lock = threading.Lock()
        self._signature: tuple[tuple[str, int, int], ...] | None = None
        self._recordings: list[Recording] = []

    @property
    def directory(self) -> Path:
        return self._directory

    def _current(self) -> list[Recording]:
        """Recordings, reloaded when a file changed so new recordings need no restart."""
        files = sorted(self._directory.glob("*.jsonl")) if self._directory.is_dir() else []
        signature = tuple((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in files)
        with self._lock:
            if signature != self._signature:
                self._recordings = load_recordings(self._directory) if files else []
                self._signature = signature
            return self._recordings

    def chat(self, request: ChatRequest) -> ChatResult:
        recording = select_recording(
            self._current(),
            run_id=request.run_id,
            phase_id=request.phase_id,
            attempt=request.attempt,
            call=request.call,
        )
        if recording is None:
            raise FailedPrecondition(
                f"replay: no recorded response for phase {request.phase_id!r} "
                f"(run {request.run_id!r}, attempt {request.attempt}) in {self._directory}; "
                "add a recording or set ANTHROPIC_API_KEY for the live provider"
            )
        log.info(
            "replay: phase %s attempt %d served from %s", request.phase_id, request.attempt, recording.source
        )
        return result_from_message(cut_to_budget(recording.response, request.max_tokens), self.name)

    def close(self) -> None:
        return None


def create_provider(
    kind: str, *, replay_dir: Path, max_retries: int = 2, timeout_seconds: float = 600.0
) -> Provider:
    """The configured provider (``kind`` already resolved from ``auto``)."""
    if kind == "anthropic":
        return AnthropicProvider(max_retries=max_retries, timeout_seconds=timeout_seconds)
    if kind == "replay":
        return ReplayProvider(replay_dir)
    raise ValueError(f"unknown provider {kind!r}")
