"""Persistent LLM response cache: one SQLite file, separate from the run database.

Key = SHA-256 of (endpoint URL, model, the full :class:`LLMRequest`), never the API key. A re-run
of a search therefore replays every model call for free.

Semantics for sampling: the key includes ``temperature``, ``n`` and ``seed``. A request with
``temperature > 0`` (and any ``n``) is cached like any other: the same request with the same seed
(``None`` included) replays the same stored choices. To draw fresh samples, change the seed (or
disable the cache). This is what makes searches reproducible; it also means that two identical
calls inside one workflow return the same samples, so workflows that want diversity should vary
the prompt, the temperature or the seed.

Cached responses come back with ``cached=True`` and ``cost=0.0`` (nothing was spent); token counts
are kept so that token statistics stay comparable between fresh and replayed runs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sqlite3
import threading
from pathlib import Path

from operators.base import LLMChoice, LLMRequest, LLMResponse

DEFAULT_CACHE_PATH = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "workflow-rl" / "llm.sqlite"
"""Default cache file (override with a path option or ``WORKFLOW_RL_LLM_CACHE``)."""


def default_cache_path() -> Path:
    """The cache path: ``$WORKFLOW_RL_LLM_CACHE`` if set, else :data:`DEFAULT_CACHE_PATH`."""
    env = os.environ.get("WORKFLOW_RL_LLM_CACHE")
    return Path(env) if env else DEFAULT_CACHE_PATH


def request_key(endpoint: str, model: str, request: LLMRequest) -> str:
    """Stable hex key of one request to one model at one endpoint (no credentials involved)."""
    payload = {"endpoint": endpoint, "model": model, "request": dataclasses.asdict(request)}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def response_to_json(response: LLMResponse) -> str:
    """Serialise a response (choices, tokens, model) for storage."""
    return json.dumps(dataclasses.asdict(response), separators=(",", ":"))


def response_from_json(text: str) -> LLMResponse:
    """Inverse of :func:`response_to_json`."""
    data = json.loads(text)
    choices = tuple(
        LLMChoice(
            text=c["text"],
            token_ids=None if c.get("token_ids") is None else tuple(c["token_ids"]),
            logprobs=None if c.get("logprobs") is None else tuple(c["logprobs"]),
            finish_reason=c.get("finish_reason"),
        )
        for c in data["choices"]
    )
    return LLMResponse(
        choices=choices,
        prompt_tokens=int(data.get("prompt_tokens", 0)),
        completion_tokens=int(data.get("completion_tokens", 0)),
        cost=data.get("cost"),
        cached=bool(data.get("cached", False)),
        model=data.get("model", ""),
    )


class ResponseCache:
    """SQLite-backed map from request key to response; safe to share between threads."""

    def __init__(self, path: str | Path | None = None):
        """Open (creating if needed) the cache file at ``path`` (default :func:`default_cache_path`)."""
        self.path = Path(path) if path is not None else default_cache_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        with self._lock:
            # WAL lets several processes (parallel searches) read while one writes.
            self._conn.execute("PRAGMA journal_mode=WAL")
            # A cache may lose its last writes on power loss (they are re-fetched), never its integrity.
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.execute(
                "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model TEXT, response TEXT NOT NULL)"
            )
            self._conn.commit()

    def get(self, key: str) -> LLMResponse | None:
        """The stored response for ``key`` marked ``cached=True, cost=0.0``, or None."""
        with self._lock:
            row = self._conn.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        return dataclasses.replace(response_from_json(row[0]), cached=True, cost=0.0)

    def put(self, key: str, response: LLMResponse) -> None:
        """Store ``response`` under ``key`` (the cost is stored as observed on the fresh call)."""
        with self._lock:
            self._conn.execute(
                "INSERT OR REPLACE INTO responses (key, model, response) VALUES (?, ?, ?)",
                (key, response.model, response_to_json(dataclasses.replace(response, cached=False))),
            )
            self._conn.commit()

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        """Close the SQLite connection."""
        with self._lock:
            self._conn.close()
