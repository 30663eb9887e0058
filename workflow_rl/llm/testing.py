"""A scripted OpenAI-compatible HTTP server on 127.0.0.1, for tests and offline demos.

It speaks ``POST /v1/chat/completions`` and ``POST /v1/completions`` well enough for
:class:`~workflow_rl.llm.openai.OpenAICompatibleClient`: replies come first from a queue of
scripted :class:`ScriptedReply` items (429s, 500s, slow replies, malformed bodies), then from a
``responder(request_json) -> str | ScriptedReply`` callable (default: echo the last user message).
It records every request body and header, the request count and the maximum number of requests
in flight at once (to check a client's concurrency bound). With ``slots=N`` it produces at most N
replies at a time and the other requests wait inside the server, as llama.cpp's server does with
its slots: a reply's ``delay_s`` then holds a slot, so latency grows with the requests in flight.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class ScriptedReply:
    """One scripted HTTP reply: a completion ``text`` wrapped as OpenAI JSON, or a raw ``body``."""

    text: str = ""
    status: int = 200
    body: str | None = None  # raw response body (overrides text), e.g. malformed JSON
    delay_s: float = 0.0  # sleep before answering (longer than the client timeout = a timeout)
    headers: dict[str, str] = field(default_factory=dict)
    logprobs: list[float] | None = None  # per-token logprobs; default -0.5 per whitespace token


Responder = Callable[[dict[str, Any]], "str | ScriptedReply"]


def _last_user_text(request: dict[str, Any]) -> str:
    if "messages" in request:
        users = [m["content"] for m in request["messages"] if m.get("role") == "user"]
        return users[-1] if users else ""
    return str(request.get("prompt", ""))


def _prompt_text(request: dict[str, Any]) -> str:
    if "messages" in request:
        return " ".join(str(m.get("content", "")) for m in request["messages"])
    return str(request.get("prompt", ""))


class ScriptedOpenAIServer:
    """Threaded local server; use as a context manager or call :meth:`start` / :meth:`stop`."""

    def __init__(self, responder: Responder | None = None, slots: int | None = None):
        """Create a server whose unscripted replies come from ``responder`` (default: echo).

        ``slots``: most requests served at once (None: as many as arrive); the rest queue in the server.
        """
        self.responder: Responder = responder or _last_user_text
        self.script: deque[ScriptedReply] = deque()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.in_flight_at_arrival: list[int] = []
        """Requests the server held when each request arrived, itself included (queueing in the server)."""
        self._lock = threading.Lock()
        self._slots = threading.Semaphore(slots) if slots else None
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        """Base URL including ``/v1``, e.g. ``http://127.0.0.1:40123/v1``."""
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    @property
    def request_count(self) -> int:
        """How many requests reached the server."""
        with self._lock:
            return len(self.requests)

    def enqueue(self, *replies: ScriptedReply | str) -> None:
        """Queue replies that are served, in order, before the responder is consulted."""
        for r in replies:
            self.script.append(r if isinstance(r, ScriptedReply) else ScriptedReply(text=r))

    def start(self) -> ScriptedOpenAIServer:
        """Bind to a free port on 127.0.0.1 and serve in a daemon thread."""
        server = self

        class Handler(BaseHTTPRequestHandler):
            """Routes every POST to the owning server's scripted replies."""

            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: clients pool connections

            def setup(self) -> None:
                """Disable Nagle on the connection."""
                super().setup()
                # Headers and body go out as two writes; without TCP_NODELAY delayed ACKs add ~40 ms.
                self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def log_message(self, *args: Any) -> None:
                """Silence per-request logging (keeps test output clean)."""
                pass

            def do_POST(self) -> None:  # noqa: N802 (http.server API)
                """Answer one completion request."""
                server._handle(self)

        class Server(ThreadingHTTPServer):
            """Threaded server with a deep listen backlog."""

            request_queue_size = 256  # the default backlog of 5 resets bursts of concurrent connects

            def handle_error(self, request, client_address) -> None:  # noqa: ANN001 (socketserver API)
                """Stay quiet when a client hung up (it gave up during an outage): socketserver would
                print a traceback to stderr, which is not the server failing."""
                if isinstance(sys.exc_info()[1], ConnectionError):
                    return
                super().handle_error(request, client_address)

        self._httpd = Server(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Shut the server down."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> ScriptedOpenAIServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving

    def _next_reply(self, request: dict[str, Any]) -> ScriptedReply:
        with self._lock:
            if self.script:
                return self.script.popleft()
        reply = self.responder(request)
        return reply if isinstance(reply, ScriptedReply) else ScriptedReply(text=str(reply))

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length)
        try:
            request = json.loads(raw or b"{}")
        except ValueError:
            request = {"_unparsable": raw.decode("utf-8", "replace")}
        with self._lock:
            self.requests.append(request)
            self.headers.append(dict(handler.headers.items()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.in_flight_at_arrival.append(self.in_flight)
        try:
            with self._slots if self._slots is not None else contextlib.nullcontext():
                reply = self._next_reply(request)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
            body = reply.body if reply.body is not None else json.dumps(self._completion(request, reply))
            data = body.encode("utf-8")
            handler.send_response(reply.status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(data)))
            for k, v in reply.headers.items():
                handler.send_header(k, v)
            handler.end_headers()
            handler.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (timeout test); nothing to answer
        finally:
            with self._lock:
                self.in_flight -= 1

    @staticmethod
    def _completion(request: dict[str, Any], reply: ScriptedReply) -> dict[str, Any]:
        """OpenAI-shaped JSON for ``reply.text`` repeated over ``n`` choices; tokens = whitespace words."""
        words = reply.text.split()
        logprobs = reply.logprobs if reply.logprobs is not None else [-0.5] * len(words)
        chat = "messages" in request
        n = int(request.get("n", 1))
        choices = []
        for i in range(n):
            choice: dict[str, Any] = {"index": i, "finish_reason": "stop"}
            if chat:
                choice["message"] = {"role": "assistant", "content": reply.text}
                if request.get("logprobs"):
                    choice["logprobs"] = {"content": [{"token": w, "logprob": lp} for w, lp in zip(words, logprobs, strict=False)]}
            else:
                choice["text"] = reply.text
                if request.get("logprobs") is not None:
                    choice["logprobs"] = {"tokens": words, "token_logprobs": list(logprobs)}
            choices.append(choice)
        prompt_tokens = len(_prompt_text(request).split())
        return {
            "id": "cmpl-scripted",
            "object": "chat.completion" if chat else "text_completion",
            "model": request.get("model", ""),
            "choices": choices,
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(words) * n,
                      "total_tokens": prompt_tokens + len(words) * n},
        }
