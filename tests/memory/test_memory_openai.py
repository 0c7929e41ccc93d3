"""OpenAI embeddings through the real SDK against a loopback stand-in of the API."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from autopack_memory.embedding import CachingEmbedder, EmbeddingUnavailable, OpenAIEmbedder
from autopack_memory.selection import Candidate, ContextSelector, SelectionMode


class _FakeEmbeddings(BaseHTTPRequestHandler):
    """POST /v1/embeddings: a 3-dim vector per input, returned in reverse order (with indices)."""

    requests: list[dict] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _FakeEmbeddings.requests.append(
            {"path": self.path, "auth": self.headers.get("Authorization"), **body}
        )
        data = [
            {
                "object": "embedding",
                "index": index,
                "embedding": [float(len(text)), 0.0, 3.0 if "csv" in text else 0.0],
            }
            for index, text in enumerate(body["input"])
        ]
        payload = json.dumps(
            {
                "object": "list",
                "data": data[::-1],
                "model": body["model"],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def fake_api() -> Iterator[str]:
    _FakeEmbeddings.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeEmbeddings)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_embeddings_are_probed_ordered_and_normalised(fake_api: str) -> None:
    embedder = OpenAIEmbedder("text-embedding-3-small", base_url=fake_api, api_key="test-key")
    assert (embedder.model_name, embedder.dimension) == ("openai:text-embedding-3-small", 3)

    vectors = embedder.embed(["csv", "abcdefgh"])
    assert vectors[0] == pytest.approx([0.7071068, 0.0, 0.7071068])
    assert vectors[1] == pytest.approx([1.0, 0.0, 0.0])
    last = _FakeEmbeddings.requests[-1]
    assert (last["path"], last["auth"], last["model"]) == (
        "/v1/embeddings",
        "Bearer test-key",
        "text-embedding-3-small",
    )


def test_an_unreachable_api_degrades_selection_to_lexical(fake_api: str) -> None:
    embedder = OpenAIEmbedder("text-embedding-3-small", base_url=fake_api, api_key="test-key", timeout=2)
    embedder._client = embedder._client.with_options(base_url="http://127.0.0.1:9/v1", max_retries=0)
    with pytest.raises(EmbeddingUnavailable):
        embedder.embed(["x"])

    selection = ContextSelector(CachingEmbedder(embedder, cache=None)).select(
        "csv rows", [Candidate("a.py", "csv rows"), Candidate("b.py", "logo")], token_budget=100
    )
    assert selection.mode is SelectionMode.LEXICAL
    assert selection.fallback_reason.startswith("embeddings unavailable: openai:text-embedding-3-small")
    assert selection.kept[0].path == "a.py"
