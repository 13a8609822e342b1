"""A simulated LLM endpoint, OpenAI- and Anthropic-compatible, on loopback: the demo's LLM, and the
server the tests point the real `openai` and `anthropic` SDKs at. No network, no model: replies are
canned words and the usage is made up, realistic in shape (a prompt that grows each turn, prompt-cache
hits for the start a request shares with an earlier one, a few reasoning tokens).

Routes: `POST /v1/chat/completions`, `POST /v1/responses` (OpenAI), `POST /v1/messages` (Anthropic),
each streamed (`"stream": true`, server-sent events in the provider's own format) or not. A request
may dictate its usage with a header `x-openrtc-usage` (a JSON object in the route's own field names:
`prompt_tokens`..., `input_tokens`..., `cache_read_input_tokens`...) and its delay with
`x-openrtc-delay-ms`; without them the delay is 200-800 ms (the demo) and the usage made up.

    python -m openrtc.cli.llmsim [--port 0]     # prints the base URL
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["sure", "let", "me", "check", "that", "for", "you", "the", "order", "shipped", "yesterday", "and"]


BLOCK_CHARS = 512
"""The prompt cache works in blocks of 512 characters of the request (128 tokens at 4 a token)."""


class PromptCache:
    """Which request prefixes were sent before, as a provider's prompt cache sees them: a request
    reads from the cache the longest run of leading blocks an earlier request had, and writes the
    rest. A prompt whose start changes on every call (a timestamp first) never hits."""

    def __init__(self, max_entries: int = 200_000) -> None:
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        self._max = max_entries

    def read_and_write(self, text: str) -> tuple[int, int]:
        """(blocks read from the cache, blocks written to it) for this request."""
        keys = [
            hashlib.sha256(text[: BLOCK_CHARS * (i + 1)].encode()).hexdigest()
            for i in range(len(text) // BLOCK_CHARS)
        ]
        with self._lock:
            read = 0
            while read < len(keys) and keys[read] in self._seen:
                read += 1
            if len(self._seen) + len(keys) > self._max:
                self._seen.clear()
            self._seen.update(keys)
        return read, len(keys) - read


def made_up_usage(route: str, body: dict[str, Any], cache: PromptCache) -> dict[str, Any]:
    """Usage in the route's own shape, from the request: prompt ~ the text sent (4 characters a token,
    plus 200), cached ~ its leading blocks an earlier request sent too (`PromptCache`), output 30-160
    tokens, some of it reasoning."""
    text = json.dumps(body.get("messages") or body.get("input") or "")
    prompt = 200 + len(text) // 4
    read, written = cache.read_and_write(text)
    cached = min(read * BLOCK_CHARS // 4, prompt)
    digest = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    output = 30 + digest % 130
    reasoning = output // 5 if "reason" in str(body.get("model", "")) or digest % 3 == 0 else 0
    if route == "chat":
        return {
            "prompt_tokens": prompt,
            "completion_tokens": output,
            "total_tokens": prompt + output,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": reasoning},
        }
    if route == "responses":
        return {
            "input_tokens": prompt,
            "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": output,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": prompt + output,
        }
    written_tokens = min(written * BLOCK_CHARS // 4, prompt - cached)
    return {  # Anthropic: input_tokens excludes the cache reads and writes
        "input_tokens": prompt - cached - written_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": written_tokens,
        "output_tokens": output,
    }


def _reply(n: int) -> str:
    return " ".join(WORDS[i % len(WORDS)] for i in range(n))


class _Handler(BaseHTTPRequestHandler):
    server_version = "openrtc-llmsim/1"
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except json.JSONDecodeError:
            self._json(400, {"error": {"message": "body is not JSON", "type": "invalid_request_error"}})
            return
        route = {"/v1/chat/completions": "chat", "/v1/responses": "responses", "/v1/messages": "messages"}
        kind = route.get(self.path.split("?")[0])
        if kind is None:
            self._json(404, {"error": {"message": f"no route {self.path}", "type": "not_found"}})
            return
        dictated = self.headers.get("x-openrtc-usage")
        usage = json.loads(dictated) if dictated else made_up_usage(kind, body, self.server.cache)  # type: ignore[attr-defined]
        delay = self.headers.get("x-openrtc-delay-ms")
        time.sleep(float(delay) / 1000 if delay is not None else random.uniform(0.2, 0.8))
        model = str(body.get("model") or "gpt-4o-mini")
        text = _reply(8)
        if body.get("stream"):
            events = {"chat": _chat_stream, "responses": _responses_stream, "messages": _messages_stream}[
                kind
            ]
            self._sse(events(model, text, usage, body))
        else:
            build = {"chat": _chat, "responses": _responses, "messages": _message}[kind]
            self._json(200, build(model, text, usage))

    def _json(self, status: int, doc: dict[str, Any]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _sse(self, events: Iterator[tuple[str | None, dict[str, Any] | str]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("cache-control", "no-cache")
        self.send_header("connection", "close")
        self.end_headers()
        for name, data in events:
            payload = data if isinstance(data, str) else json.dumps(data)
            head = f"event: {name}\n" if name else ""
            self.wfile.write(f"{head}data: {payload}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True


def _chat(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "chatcmpl-sim",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": usage,
    }


def _chat_stream(
    model: str, text: str, usage: dict[str, Any], body: dict[str, Any]
) -> Iterator[tuple[str | None, Any]]:
    base = {
        "id": "chatcmpl-sim",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }
    for i, word in enumerate(text.split()):
        delta = {"role": "assistant", "content": word + " "} if i == 0 else {"content": word + " "}
        yield None, {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
    yield None, {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    if (body.get("stream_options") or {}).get("include_usage"):
        yield None, {**base, "choices": [], "usage": usage}
    yield None, "[DONE]"


def _response_doc(model: str, text: str, usage: dict[str, Any] | None, status: str) -> dict[str, Any]:
    return {
        "id": "resp_sim",
        "object": "response",
        "created_at": int(time.time()),
        "model": model,
        "status": status,
        "output": [
            {
                "id": "msg_sim",
                "type": "message",
                "role": "assistant",
                "status": "completed",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        ]
        if status == "completed"
        else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "usage": usage,
    }


def _responses(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    return _response_doc(model, text, usage, "completed")


def _responses_stream(
    model: str, text: str, usage: dict[str, Any], body: dict[str, Any]
) -> Iterator[tuple[str | None, Any]]:
    yield (
        "response.created",
        {
            "type": "response.created",
            "sequence_number": 0,
            "response": _response_doc(model, "", None, "in_progress"),
        },
    )
    for i, word in enumerate(text.split()):
        yield (
            "response.output_text.delta",
            {
                "type": "response.output_text.delta",
                "sequence_number": i + 1,
                "item_id": "msg_sim",
                "output_index": 0,
                "content_index": 0,
                "delta": word + " ",
                "logprobs": [],
            },
        )
    yield (
        "response.completed",
        {"type": "response.completed", "sequence_number": 99, "response": _responses(model, text, usage)},
    )


def _message(model: str, text: str, usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": "msg_sim",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": text}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": usage,
    }


def _messages_stream(
    model: str, text: str, usage: dict[str, Any], body: dict[str, Any]
) -> Iterator[tuple[str | None, Any]]:
    start_usage = {**usage, "output_tokens": 1}
    message = {**_message(model, "", start_usage), "content": [], "stop_reason": None}
    yield "message_start", {"type": "message_start", "message": message}
    yield (
        "content_block_start",
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    )
    for word in text.split():
        yield (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": word + " "}},
        )
    yield "content_block_stop", {"type": "content_block_stop", "index": 0}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": "end_turn", "stop_sequence": None},
            "usage": {"output_tokens": usage.get("output_tokens", 0)},
        },
    )
    yield "message_stop", {"type": "message_stop"}


class SimulatedLLM:
    """The endpoint, on a thread of its own: `with SimulatedLLM() as llm: llm.base_url`."""

    def __init__(self, port: int = 0) -> None:
        self._server = ThreadingHTTPServer(("127.0.0.1", port), _Handler)
        self._server.daemon_threads = True
        self._server.cache = PromptCache()  # type: ignore[attr-defined]
        self._thread = threading.Thread(target=self._server.serve_forever, name="openrtc-llmsim", daemon=True)

    @property
    def base_url(self) -> str:
        """The OpenAI-style base URL (`.../v1`); the Anthropic SDK takes the same without `/v1`."""
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    @property
    def root_url(self) -> str:
        return self.base_url.removesuffix("/v1")

    def start(self) -> SimulatedLLM:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> SimulatedLLM:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: any free one)")
    args = parser.parse_args()
    llm = SimulatedLLM(args.port).start()
    print(llm.base_url, flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        llm.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
