"""One-word tags for sessions, from their recorded content, by a local OpenAI-compatible server
(llama.cpp's `llama-server` by default). agentpprof's tagger, made strict:

- the answer must be one lowercase word (`[a-z]+`, after trimming spaces and a final period); a bad
  answer gets one retry with a stricter prompt, then the tagging fails: there is no heuristic fallback;
- a tag is cached by the hash of the content it was made from, with the model that made it, in a JSON
  file (0600): the same content is never asked twice;
- a session without recorded content cannot be tagged (the error says how to record it).

The HTTP call is stdlib `urllib` (one POST, JSON in and out): no client library needed for it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from openrtc.profile.stacks import ProfileError

DEFAULT_URL = "http://127.0.0.1:8080"
WORD = re.compile(r"[a-z]+")
CONTENT_CHARS = 6000
"""Content sent per session at most (its start: what the session was about)."""
PROMPT = (
    "Here is an AI agent's conversation. Answer with exactly one lowercase English word naming what it "
    "is about (for example: billing, refund, weather). No punctuation, no explanation.\n\n"
)
STRICT = "Your last answer was not one lowercase word. Reply with one word of letters a-z only, nothing else."

Post = Callable[[str, dict[str, Any], float], dict[str, Any]]


def content_text(contents: Iterable[Any]) -> str:
    """The recorded content of a session's LLM calls as one text, cut to `CONTENT_CHARS`."""
    parts: list[str] = []
    for content in contents:
        if not isinstance(content, Mapping):
            continue
        for key in ("input", "output"):
            value = content.get(key)
            if value:
                parts.append(value if isinstance(value, str) else json.dumps(value, default=str))
    return "\n".join(parts)[:CONTENT_CHARS]


def validate(answer: Any) -> str | None:
    """The tag in an answer, or None when it is not one lowercase word."""
    if not isinstance(answer, str):
        return None
    word = answer.strip().rstrip(".").strip()
    return word if WORD.fullmatch(word) else None


def post_json(url: str, body: dict[str, Any], timeout: float) -> dict[str, Any]:
    # The scheme is checked by `Tagger`: http or https only.
    request = urllib.request.Request(  # noqa: S310
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
        doc = json.loads(response.read())
    if not isinstance(doc, dict):
        raise ValueError("the reply is not a JSON object")
    return doc


class Tagger:
    """Tags sessions through the server at `url`, with the cache in `cache_path`."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        cache_path: Path | None = None,
        model: str | None = None,
        timeout: float = 60.0,
        post: Post = post_json,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ProfileError(f"the tagger's URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self.cache_path = cache_path
        self.model = model
        self.timeout = timeout
        self._post = post
        self.asked = 0
        """Questions sent to the server (retries included)."""
        self._cache: dict[str, dict[str, Any]] = self._load()

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.cache_path is None or not self.cache_path.exists():
            return {}
        try:
            doc = json.loads(self.cache_path.read_text())
        except (OSError, ValueError) as exc:
            raise ProfileError(f"the tags file {self.cache_path} is unreadable ({exc}); remove it") from None
        return (
            {k: v for k, v in doc.items() if isinstance(v, dict) and validate(v.get("tag"))}
            if isinstance(doc, dict)
            else {}
        )

    def _save(self) -> None:
        if self.cache_path is None:
            return
        tmp = self.cache_path.with_name(self.cache_path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(self._cache, f, indent=1, sort_keys=True)
        os.replace(tmp, self.cache_path)

    def tag(self, text: str) -> str:
        """The tag of one session's content (from the cache when the same content was tagged)."""
        if not text.strip():
            raise ProfileError("no recorded content to tag")
        digest = hashlib.sha256(text.encode()).hexdigest()
        cached = self._cache.get(digest)
        if cached is not None:
            return str(cached["tag"])
        messages = [{"role": "user", "content": PROMPT + text}]
        answers = []
        for attempt in range(2):
            answer, model = self._ask(messages)
            word = validate(answer)
            if word is not None:
                self._cache[digest] = {"tag": word, "model": model, "at": round(time.time(), 3)}
                self._save()
                return word
            answers.append(answer)
            if attempt == 0:
                messages.append({"role": "assistant", "content": str(answer)})
                messages.append({"role": "user", "content": STRICT})
        raise ProfileError(
            f"the tagger at {self.url} did not answer with one lowercase word twice "
            f"(answers: {', '.join(repr(str(a)[:40]) for a in answers)})"
        )

    def _ask(self, messages: list[dict[str, str]]) -> tuple[Any, str]:
        body: dict[str, Any] = {"messages": messages, "temperature": 0, "max_tokens": 8}
        if self.model:
            body["model"] = self.model
        self.asked += 1
        try:
            doc = self._post(f"{self.url}/v1/chat/completions", body, self.timeout)
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ProfileError(
                f"no tagger at {self.url} ({reason}); start an OpenAI-compatible server there "
                "(llama.cpp: llama-server -m MODEL.gguf --port 8080) or pass --tag-with URL"
            ) from None
        try:
            answer = doc["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ProfileError(f"the tagger at {self.url} sent a reply of an unexpected shape") from None
        return answer, str(doc.get("model") or self.model or "unknown")
