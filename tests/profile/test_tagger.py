"""The tagger against a local OpenAI-compatible HTTP server the test starts, answering what it is told."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from openrtc.profile.stacks import ProfileError
from openrtc.profile.tagger import Tagger, content_text, validate


class FakeLLM:
    """`/v1/chat/completions` answering from a script; records what it was asked."""

    def __init__(self) -> None:
        self.answers: list[str] = []
        self.requests: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append({"path": self.path, **body})
                answer = outer.answers.pop(0) if outer.answers else "fallback"
                reply = json.dumps(
                    {
                        "model": "tiny-llama",
                        "choices": [{"message": {"role": "assistant", "content": answer}}],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm() -> Iterator[FakeLLM]:
    server = FakeLLM()
    yield server
    server.close()


def test_a_valid_word_is_the_tag_and_is_cached_with_its_model(llm: FakeLLM, tmp_path: Path) -> None:
    llm.answers = [" refund.\n"]  # spaces and a final period are trimmed
    cache = tmp_path / "tags.json"
    tagger = Tagger(llm.url, cache)
    assert tagger.tag("please refund my invoice") == "refund"
    assert llm.requests[0]["path"] == "/v1/chat/completions"
    assert "please refund my invoice" in llm.requests[0]["messages"][0]["content"]
    entry = next(iter(json.loads(cache.read_text()).values()))
    assert entry["tag"] == "refund" and entry["model"] == "tiny-llama"
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    # The cache hit: a new tagger, the same content, no question.
    again = Tagger(llm.url, cache)
    assert again.tag("please refund my invoice") == "refund"
    assert len(llm.requests) == 1 and again.asked == 0


def test_an_invalid_answer_gets_one_retry(llm: FakeLLM, tmp_path: Path) -> None:
    llm.answers = ["It is about billing", "billing"]
    tagger = Tagger(llm.url, tmp_path / "tags.json")
    assert tagger.tag("my bill is too high") == "billing"
    assert tagger.asked == 2
    retry = llm.requests[1]["messages"]
    assert retry[-2] == {"role": "assistant", "content": "It is about billing"}
    assert "one word" in retry[-1]["content"]


def test_invalid_twice_is_an_error_and_nothing_is_cached(llm: FakeLLM, tmp_path: Path) -> None:
    llm.answers = ["Billing!", "two words"]
    cache = tmp_path / "tags.json"
    with pytest.raises(ProfileError, match="did not answer with one lowercase word twice"):
        Tagger(llm.url, cache).tag("my bill")
    assert not cache.exists()


def test_no_server_no_content_and_bad_replies_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match=r"no tagger at http://127\.0\.0\.1:9"):
        Tagger("http://127.0.0.1:9", timeout=2).tag("text")
    with pytest.raises(ProfileError, match="no recorded content"):
        Tagger("http://127.0.0.1:9").tag("  ")
    with pytest.raises(ProfileError, match="http:// or https://"):
        Tagger("file:///etc/passwd")
    odd = Tagger("http://x", post=lambda url, body, timeout: {"choices": []})
    with pytest.raises(ProfileError, match="unexpected shape"):
        odd.tag("text")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ProfileError, match="unreadable"):
        Tagger("http://x", tmp_path / "bad.json")


def test_words_and_content() -> None:
    assert validate("weather") == "weather"
    assert validate("Weather") is None and validate("two words") is None and validate(3) is None
    text = content_text(
        [{"input": [{"role": "user", "content": "hi"}], "output": "hello"}, None, {"output": "x"}]
    )
    assert "hi" in text and "hello" in text and text.endswith("x")


def test_the_cli_default_is_the_taggers() -> None:
    from openrtc.cli.profile import DEFAULT_TAGGER
    from openrtc.profile.tagger import DEFAULT_URL

    assert DEFAULT_TAGGER == DEFAULT_URL
