"""Local servers speaking the Anthropic Messages and OpenAI Chat Completions wire formats.

They run on 127.0.0.1 so the official SDK code paths (headers, error classes, retry-after,
response and server-sent-event parsing) run for real without leaving the host. Replies come
from a script (the last reply repeats) or from a responder function that sees each request,
which lets a test answer per phase, attempt, model or call. A request with ``"stream": true``
gets the scripted answer as server-sent events, cut into small deltas.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TEST_API_KEY = "sk-ant-test-0000-not-a-real-key"
TEST_OPENAI_KEY = "sk-test-openai-0000-not-a-real-key"
RESPONSE_MODEL = "claude-sonnet-4-5-20250929"
OPENAI_RESPONSE_MODEL = "gpt-5-2025-08-07"
STREAM_CHUNK_CHARS = 40


def message_payload(
    text: str,
    *,
    stop_reason: str = "end_turn",
    input_tokens: int = 1500,
    output_tokens: int = 600,
    model: str = RESPONSE_MODEL,
    cache_read: int = 0,
    cache_creation: int = 0,
) -> dict[str, Any]:
    """A Messages API response body as the API returns it."""
    return {
        "id": "msg_01XFDUDYJgAACzvnptvVoYEL",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": cache_creation,
            "cache_read_input_tokens": cache_read,
            "service_tier": "standard",
        },
    }


def completion_payload(
    text: str,
    *,
    finish_reason: str = "stop",
    prompt_tokens: int = 1400,
    completion_tokens: int = 500,
    model: str = OPENAI_RESPONSE_MODEL,
    cached_tokens: int | None = None,
    reasoning_tokens: int | None = None,
) -> dict[str, Any]:
    """A Chat Completions response body as the API returns it."""
    usage: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached_tokens is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached_tokens}
    if reasoning_tokens is not None:
        usage["completion_tokens_details"] = {"reasoning_tokens": reasoning_tokens}
    return {
        "id": "chatcmpl-Test0001",
        "object": "chat.completion",
        "created": 1764900000,
        "model": model,
        "choices": [
            {"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": text}}
        ],
        "usage": usage,
    }


def anthropic_error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_011CTestRequest"}


def openai_error(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": kind}}


@dataclass
class ScriptedReply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class SeenRequest:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]

    @property
    def prompt(self) -> str:
        """The user prompt (last user message) of either wire format."""
        users = [m for m in self.body.get("messages", []) if m.get("role") == "user"]
        content = users[-1]["content"] if users else ""
        return content if isinstance(content, str) else json.dumps(content)

    @property
    def system(self) -> str:
        if "system" in self.body:
            return str(self.body["system"])
        systems = [m for m in self.body.get("messages", []) if m.get("role") == "system"]
        return systems[0]["content"] if systems else ""


def presented_key(seen: SeenRequest) -> str | None:
    """The API key of a request: ``x-api-key`` or a Bearer token."""
    if "x-api-key" in seen.headers:
        return seen.headers["x-api-key"]
    authorization = seen.headers.get("authorization", "")
    return authorization.removeprefix("Bearer ") if authorization.startswith("Bearer ") else None


Responder = Callable[[SeenRequest], ScriptedReply]


class FakeLlmServer:
    """Common machinery: one POST route, a key, a script or responder, JSON or SSE replies."""

    route = ""
    key = ""

    def __init__(self) -> None:
        self.requests: list[SeenRequest] = []
        self._script: list[ScriptedReply] = []
        self._responder: Responder | None = None
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # headers and body go out as two writes: without this, Nagle + delayed ACK add ~40 ms
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                seen = SeenRequest(self.path, {k.lower(): v for k, v in self.headers.items()}, body)
                reply = fake._reply_for(seen)
                if reply.status == 200 and body.get("stream"):
                    payload = "".join(fake.sse_events(reply.body)).encode()
                    content_type = "text/event-stream"
                else:
                    payload = json.dumps(reply.body).encode()
                    content_type = "application/json"
                self.send_response(reply.status)
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(payload)))
                self.send_header("request-id", "req_011CTestRequest")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_args: object) -> None:
                return None

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def script(self, *replies: ScriptedReply) -> None:
        with self._lock:
            self._script = list(replies)
            self._responder = None

    def respond_with(self, responder: Responder) -> None:
        """Answer every request with ``responder(seen)`` (per phase, attempt, model, call ...)."""
        with self._lock:
            self._responder = responder

    def _reply_for(self, seen: SeenRequest) -> ScriptedReply:
        with self._lock:
            self.requests.append(seen)
            if seen.path != self.route:
                return ScriptedReply(404, self.error("not_found_error", f"no route {seen.path}"))
            if presented_key(seen) != self.key:
                return ScriptedReply(401, self.error("authentication_error", "invalid api key"))
            if self._responder is not None:
                return self._responder(seen)
            if not self._script:
                return ScriptedReply(500, self.error("api_error", "nothing scripted"))
            return self._script.pop(0) if len(self._script) > 1 else self._script[0]

    def error(self, kind: str, message: str) -> dict[str, Any]:
        raise NotImplementedError

    def sse_events(self, body: dict[str, Any]) -> Iterator[str]:
        raise NotImplementedError

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _sse(event: str | None, data: dict[str, Any] | str) -> str:
    payload = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {payload}\n\n"


def _chunks(text: str) -> Iterator[str]:
    for start in range(0, len(text), STREAM_CHUNK_CHARS):
        yield text[start : start + STREAM_CHUNK_CHARS]


class FakeAnthropic(FakeLlmServer):
    """POST /v1/messages with the Messages API's JSON and event-stream replies."""

    route = "/v1/messages"
    key = TEST_API_KEY

    def reply_messages(self, *messages: dict[str, Any]) -> None:
        self.script(*(ScriptedReply(200, message) for message in messages))

    def error(self, kind: str, message: str) -> dict[str, Any]:
        return anthropic_error(kind, message)

    def sse_events(self, body: dict[str, Any]) -> Iterator[str]:
        text = "".join(block.get("text", "") for block in body["content"])
        usage = body["usage"]
        start = {**body, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        yield _sse("message_start", {"type": "message_start", "message": start})
        yield _sse(
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        )
        for piece in _chunks(text):
            delta = {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": piece},
            }
            yield _sse("content_block_delta", delta)
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": body["stop_reason"], "stop_sequence": None},
                "usage": {"output_tokens": usage["output_tokens"]},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})


class FakeOpenAI(FakeLlmServer):
    """POST /v1/chat/completions with Chat Completions JSON and chunked event-stream replies."""

    route = "/v1/chat/completions"
    key = TEST_OPENAI_KEY

    def reply_completions(self, *completions: dict[str, Any]) -> None:
        self.script(*(ScriptedReply(200, completion) for completion in completions))

    def error(self, kind: str, message: str) -> dict[str, Any]:
        return openai_error(kind, message)

    def sse_events(self, body: dict[str, Any]) -> Iterator[str]:
        choice = body["choices"][0]
        base = {
            "id": body["id"],
            "object": "chat.completion.chunk",
            "created": body["created"],
            "model": body["model"],
        }
        first = {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}
        yield _sse(None, {**base, "choices": [first]})
        for piece in _chunks(choice["message"]["content"]):
            yield _sse(
                None, {**base, "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
            )
        last = {"index": 0, "delta": {}, "finish_reason": choice["finish_reason"]}
        yield _sse(None, {**base, "choices": [last]})
        yield _sse(None, {**base, "choices": [], "usage": body["usage"]})
        yield _sse(None, "[DONE]")
