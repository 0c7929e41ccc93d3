"""LLM providers: live Anthropic and OpenAI through their official SDKs, and replay of recordings.

Anthropic and replay produce an ``anthropic.types.Message`` and go through
``result_from_message`` (OpenAI through ``result_from_completion``), so a replayed answer is
parsed and accounted exactly like a live one. The SDKs never retry: a transient failure is a
``TransientProviderError`` for the builder's call layer, which counts, backs off and fails over. Usage is what the
provider reported, never estimated: an unknown count stays None, the total is always set.

Replay recordings (``AUTOPACK_REPLAY_DIR``, default ``examples/recordings``) are ``*.jsonl``
files, one recorded call per line::

    {"run_id": "demo", "phase_id": "p1", "attempt": 1, "call": 1,
     "response": {"id": "msg_...", "type": "message", "role": "assistant", "model": "...",
                  "content": [{"type": "text", "text": "..."}], "stop_reason": "end_turn",
                  "stop_sequence": null, "usage": {"input_tokens": 1200, "output_tokens": 800}}}

``role`` (default "builder"; "doctor" for Diagnose/Replan answers), ``run_id`` (a recording
only for that run) and ``call`` (1-based call within the attempt,
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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import anthropic
import openai
import pydantic
from anthropic.types import Message
from autopack_common.errors import (
    DomainError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unavailable,
)
from openai.types.chat import ChatCompletion, ChatCompletionChunk

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
        cache_read_input_tokens=usage.cache_read_input_tokens if usage is not None else None,
        cache_creation_input_tokens=usage.cache_creation_input_tokens if usage is not None else None,
    )


class TransientProviderError(Exception):
    """A request that may succeed later or elsewhere (429, 529, 5xx, connection): back off, then fail over.

    ``cause`` is the status to report if every model fails; ``retry_after`` the seconds the
    provider asked for (header ``retry-after``/``retry-after-ms``), None when it did not say.
    """

    def __init__(self, cause: DomainError, retry_after: float | None = None) -> None:
        super().__init__(cause.message)
        self.cause = cause
        self.retry_after = retry_after


def retry_after_seconds(headers: object) -> float | None:
    """The wait a 429/529 asked for, from ``retry-after-ms`` or ``retry-after`` (seconds only)."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = get(name)
        if value is None:
            continue
        try:
            seconds = float(value) * scale
        except ValueError:
            continue
        if seconds >= 0:
            return seconds
    return None


def is_transient_status(status_code: int) -> bool:
    """429, 408, 409 and every 5xx (529 overloaded included) may pass: back off, then fail over."""
    return status_code in (408, 409, 429) or status_code >= 500


# --- Anthropic ---------------------------------------------------------------------------


class AnthropicProvider:
    """Live calls through ``anthropic.Anthropic``, which reads ANTHROPIC_API_KEY / ANTHROPIC_BASE_URL.

    The SDK's own retries are off (``max_retries=0``): the builder's call layer owns retries,
    so every HTTP request is counted, backs off honouring ``retry-after`` and then fails over.
    ``stream=True`` reads the answer as server-sent events (large budgets without a long
    blocking read). The SDK's own spans are off: the builder makes one span per request.
    """

    name = "anthropic"

    def __init__(
        self,
        *,
        timeout_seconds: float = 600.0,
        stream: bool = False,
        client: anthropic.Anthropic | None = None,
    ) -> None:
        self._stream = stream
        if client is not None:
            self._client = client
            return
        try:
            self._client = anthropic.Anthropic(
                max_retries=0,
                timeout=timeout_seconds,
                open_telemetry={"traces": {"enabled": False}, "propagation": False},
            )
        except anthropic.CredentialsError as error:  # e.g. a configured profile that does not exist
            raise FailedPrecondition(f"anthropic: credentials could not be loaded ({error})") from None

    def chat(self, request: ChatRequest) -> ChatResult:
        arguments = {
            "model": request.model,
            "max_tokens": request.max_tokens,
            "system": request.system,
            "messages": [{"role": "user", "content": request.user}],
        }
        try:
            if self._stream:
                with self._client.messages.stream(**arguments) as stream:
                    message = stream.get_final_message()
            else:
                message = self._client.messages.create(**arguments)
        except anthropic.AnthropicError as error:
            cause = provider_error(error, request)
            if _is_transient(error):
                raise TransientProviderError(cause, _error_retry_after(error)) from None
            raise cause from None
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


def _is_transient(error: Exception) -> bool:
    """Connection errors, timeouts and 408/409/429/5xx of either SDK (both share these names)."""
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        return is_transient_status(status)
    return isinstance(error, anthropic.APIConnectionError | openai.APIConnectionError)


def _error_retry_after(error: Exception) -> float | None:
    response = getattr(error, "response", None)
    return retry_after_seconds(getattr(response, "headers", None))


def provider_error(error: Exception, request: ChatRequest, provider: str = "anthropic") -> DomainError:
    """The status a caller can act on for an error of either SDK (they share the class names)."""
    sdk = anthropic if provider == "anthropic" else openai
    key_variable = "ANTHROPIC_API_KEY" if provider == "anthropic" else "OPENAI_API_KEY"
    if isinstance(error, getattr(anthropic, "CredentialsError", ())):
        return FailedPrecondition(
            f"{provider}: no usable credentials configured for the builder ({key_variable})"
        )
    if isinstance(error, sdk.APIConnectionError):  # includes timeouts
        kind = "timed out" if isinstance(error, sdk.APITimeoutError) else "could not be reached"
        return Unavailable(f"{provider} {kind}")
    if isinstance(error, sdk.APIResponseValidationError):
        return Unavailable(f"{provider} returned a response the SDK could not read")
    if not isinstance(error, sdk.APIStatusError):
        return Unavailable(f"{provider} call failed: {type(error).__name__}")
    kind = getattr(error, "type", None) or getattr(error, "code", None) or ""
    detail = f"{error.status_code} {kind}".strip()
    api_message = getattr(error, "api_message", None) or error.message or ""
    if isinstance(error, sdk.AuthenticationError | sdk.PermissionDeniedError):
        return FailedPrecondition(f"{provider} rejected the builder's credentials ({detail})")
    if error.status_code == 402:
        return FailedPrecondition(f"{provider} account cannot be billed ({detail})")
    if isinstance(error, sdk.RateLimitError):
        return ResourceExhausted(f"{provider} rate limit ({detail}); retry later")
    if error.status_code >= 500:  # 500, 503, 504, 529 overloaded
        return Unavailable(f"{provider} unavailable ({detail})")
    if isinstance(error, sdk.NotFoundError):
        return InvalidArgument("model", f"{provider} does not serve model {request.model!r} ({detail})")
    lowered = api_message.lower()
    if "max_tokens" in lowered or "max_completion_tokens" in lowered:
        return InvalidArgument(
            "max_tokens", f"{provider} rejected max_tokens={request.max_tokens}: {api_message}"
        )
    if "prompt is too long" in lowered or "context length" in lowered or error.status_code == 413:
        return InvalidArgument("context_files", f"the prompt is too large for the provider ({detail})")
    if "model" in lowered:
        return InvalidArgument("model", f"{provider} rejected model {request.model!r}: {api_message}")
    return FailedPrecondition(f"{provider} rejected the request ({detail}): {api_message}")


# --- OpenAI (Chat Completions) -------------------------------------------------------------


def result_from_completion(completion: ChatCompletion, provider: str = "openai") -> ChatResult:
    """Text and exact usage of a Chat Completions response; cached and reasoning tokens when reported."""
    choice = completion.choices[0] if completion.choices else None
    text = (choice.message.content or "") if choice is not None else ""
    usage = completion.usage
    input_tokens = usage.prompt_tokens if usage is not None else None
    output_tokens = usage.completion_tokens if usage is not None else None
    prompt_details = usage.prompt_tokens_details if usage is not None else None
    completion_details = usage.completion_tokens_details if usage is not None else None
    # OpenAI counts cached tokens inside prompt_tokens (unlike Anthropic), so the total is the sum.
    total = (
        usage.total_tokens
        if usage is not None and usage.total_tokens
        else (input_tokens or 0) + (output_tokens or 0)
    )
    return ChatResult(
        provider=provider,
        model=completion.model,
        text=text,
        stop_reason=(choice.finish_reason or "") if choice is not None else "",
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        total_tokens=total,
        response_id=completion.id,
        cache_read_input_tokens=prompt_details.cached_tokens if prompt_details is not None else None,
        reasoning_output_tokens=completion_details.reasoning_tokens
        if completion_details is not None
        else None,
    )


class OpenAIProvider:
    """Live calls through ``openai.OpenAI`` (reads OPENAI_API_KEY / OPENAI_BASE_URL), SDK retries off.

    Streaming asks for ``include_usage`` so the final chunk carries exact usage; the stream is
    folded into one ChatCompletion and accounted like a non-streamed answer.
    """

    name = "openai"

    def __init__(self, *, timeout_seconds: float = 600.0, stream: bool = False) -> None:
        self._stream = stream
        try:
            self._client = openai.OpenAI(max_retries=0, timeout=timeout_seconds)
        except openai.OpenAIError as error:  # no OPENAI_API_KEY
            raise FailedPrecondition(f"openai: no credentials configured for the builder ({error})") from None

    def chat(self, request: ChatRequest) -> ChatResult:
        messages = [{"role": "system", "content": request.system}, {"role": "user", "content": request.user}]
        try:
            if self._stream:
                completion = _fold_stream(
                    self._client.chat.completions.create(
                        model=request.model,
                        max_completion_tokens=request.max_tokens,
                        messages=messages,
                        stream=True,
                        stream_options={"include_usage": True},
                    )
                )
            else:
                completion = self._client.chat.completions.create(
                    model=request.model, max_completion_tokens=request.max_tokens, messages=messages
                )
        except openai.OpenAIError as error:
            cause = provider_error(error, request, self.name)
            if _is_transient(error):
                raise TransientProviderError(cause, _error_retry_after(error)) from None
            raise cause from None
        return result_from_completion(completion, self.name)

    def close(self) -> None:
        self._client.close()


def _fold_stream(chunks: Iterable[ChatCompletionChunk]) -> ChatCompletion:
    """One ChatCompletion from streamed chunks: concatenated text, last finish reason, final usage."""
    text: list[str] = []
    finish_reason: str | None = None
    usage = None
    model = ""
    response_id = ""
    created = 0
    for chunk in chunks:
        model = chunk.model or model
        response_id = chunk.id or response_id
        created = chunk.created or created
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                text.append(choice.delta.content)
            if choice.finish_reason:
                finish_reason = choice.finish_reason
    return ChatCompletion.model_validate(
        {
            "id": response_id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish_reason or "stop",
                    "message": {"role": "assistant", "content": "".join(text)},
                }
            ],
            "usage": usage.model_dump() if usage is not None else None,
        }
    )


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
    role: str = "builder"


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
    role = entry.get("role", "builder")
    if role not in ("builder", "doctor", "auditor"):
        raise FailedPrecondition(f"replay recording {source}: 'role' must be builder, doctor or auditor")
    return Recording(
        role=role,
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
    recordings: list[Recording],
    *,
    run_id: str,
    phase_id: str,
    attempt: int,
    call: int = 1,
    role: str = "builder",
) -> Recording | None:
    """The recording that answers a request (see the module docstring for the rules)."""
    for_phase = [r for r in recordings if r.phase_id == phase_id and r.role == role]
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
            role=request.role,
        )
        if recording is None:
            raise FailedPrecondition(
                f"replay: no recorded {request.role} response for phase {request.phase_id!r} "
                f"(run {request.run_id!r}, attempt {request.attempt}) in {self._directory}; "
                "add a recording or set ANTHROPIC_API_KEY for the live provider"
            )
        log.info(
            "replay: phase %s attempt %d served from %s", request.phase_id, request.attempt, recording.source
        )
        return result_from_message(cut_to_budget(recording.response, request.max_tokens), self.name)

    def close(self) -> None:
        return None


class ProviderSet:
    """The configured providers by name; in replay mode the recordings answer for every model."""

    def __init__(self, providers: Mapping[str, Provider]) -> None:
        self._providers = dict(providers)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._providers)

    @property
    def replay(self) -> bool:
        return "replay" in self._providers

    def get(self, provider: str) -> Provider | None:
        """The provider serving ``provider``'s models, or None when it is not configured."""
        if self.replay:
            return self._providers["replay"]
        return self._providers.get(provider)

    def close(self) -> None:
        for provider in self._providers.values():
            provider.close()


def create_providers(
    kinds: Sequence[str], *, replay_dir: Path, timeout_seconds: float = 600.0, stream: bool = False
) -> ProviderSet:
    """The configured providers (``kinds`` already resolved from ``auto``)."""
    providers: dict[str, Provider] = {}
    for kind in kinds:
        if kind == "anthropic":
            providers[kind] = AnthropicProvider(timeout_seconds=timeout_seconds, stream=stream)
        elif kind == "openai":
            providers[kind] = OpenAIProvider(timeout_seconds=timeout_seconds, stream=stream)
        elif kind == "replay":
            providers[kind] = ReplayProvider(replay_dir)
        else:
            raise ValueError(f"unknown provider {kind!r}")
    return ProviderSet(providers)
