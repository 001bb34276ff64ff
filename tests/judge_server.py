"""A real OpenAI-compatible chat-completions server for the judge tests and bench (stdlib, real sockets).

`JudgeServer(reply_fn, faults=..., latency_s=...)` listens on 127.0.0.1:<free port> in a daemon thread and
answers `POST /v1/chat/completions`. `reply_fn(body) -> str` scripts the judge's text from the request
(e.g. read which seat holds the model and return a verdict). Faults are drawn per request from a seeded RNG:

- `5xx`: HTTP 500/502/503 with a JSON error body;
- `429`: HTTP 429 with `Retry-After: <retry_after_s>`;
- `hang`: sleep `hang_s` (past the client's timeout) before answering;
- `garbage`: HTTP 200 whose reply text has no verdict (the client must ask the judge to finish);
- `bad_json`: HTTP 200 whose body is not JSON.

With `api_key` set, a request without `Authorization: Bearer <api_key>` gets 401; paths other than
`/v1/chat/completions` get 404.

Every request is logged (`calls`) with the fault it got, so tests can count calls per item. A call the client
gave up on before the server had it whole — a connection closed before a complete request (a connect timeout
under CPU load: the socket opens, no request follows), or a body cut short — goes to `gone` with the fault
`client_gone`, so `calls` + `gone` is every call the client made. `wait_idle()` waits until every connection is
closed, so a test reads both lists only after the server has seen all of them.
"""

from __future__ import annotations

import json
import random
import select
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable


@dataclass
class Call:
    path: str
    body: dict
    fault: str | None
    t: float = field(default_factory=time.monotonic)


class _Handler(BaseHTTPRequestHandler):
    """One connection: keep-alive requests until the client closes it."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits for the client's delayed ACK
    # (~40 ms on Linux) on every keep-alive request. Real servers (uvicorn, vLLM) set TCP_NODELAY too.
    disable_nagle_algorithm = True
    server: "_Server"

    def log_message(self, *args) -> None:  # keep test output clean
        return

    def setup(self) -> None:
        super().setup()
        self.requests_seen = 0  # requests on this connection that got as far as do_POST

    def handle(self) -> None:
        """Serve the connection; one that closes before any request arrives was a call the client abandoned."""
        try:
            super().handle()
        finally:
            if self.requests_seen == 0:
                self.server.owner.record_gone(Call(getattr(self, "path", ""), {}, "client_gone"))

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.owner.closed()

    def _send(self, status: int, payload: bytes, headers: dict[str, str] | None = None) -> None:
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        self.requests_seen += 1
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length)
        owner: JudgeServer = self.server.owner
        if len(raw) < length:  # the client closed mid-send (gave up, or was killed): nobody reads an answer
            owner.record_gone(Call(self.path, {}, "client_gone"))
            self.close_connection = True
            return
        try:
            body = json.loads(raw)
        except json.JSONDecodeError:
            self._send(400, b'{"error": {"message": "bad json"}}')
            return
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            self._send(400, b'{"error": {"message": "messages required"}}')
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self._send(404, b'{"error": {"message": "not found"}}')
            return
        if owner.api_key and self.headers.get("Authorization") != f"Bearer {owner.api_key}":
            self._send(401, b'{"error": {"message": "invalid api key"}}')
            return
        fault = owner.draw_fault()
        owner.record(Call(self.path, body, fault))
        owner.enter()
        try:
            self._answer(owner, body, fault)
        finally:
            owner.leave()

    def _answer(self, owner: "JudgeServer", body: dict, fault: str | None) -> None:
        if owner.latency_s:
            time.sleep(owner.latency_s)
        if fault == "5xx":
            self._send(owner.rng_choice([500, 502, 503]), b'{"error": {"message": "server error"}}')
        elif fault == "429":
            self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": str(owner.retry_after_s)})
        elif fault == "bad_json":
            self._send(200, b"<html>oops</html>")
        else:
            if fault == "hang":
                time.sleep(owner.hang_s)
            text = "Сложно сказать, обе стороны хороши." if fault == "garbage" else owner.reply_fn(body)
            payload = {
                "id": f"chatcmpl-{len(owner.calls)}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "judge"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20},
            }
            self._send(200, json.dumps(payload, ensure_ascii=False).encode())


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256
    owner: "JudgeServer"

    def get_request(self):
        """Accept, and count the connection open in the same step (`wait_idle` checks both under this lock)."""
        with self.owner._accept_lock:
            accepted = super().get_request()
            self.owner.opened()
        return accepted


class JudgeServer:
    """Context manager: `with JudgeServer(reply_fn) as s: s.base_url` → `http://127.0.0.1:PORT/v1`."""

    def __init__(self, reply_fn: Callable[[dict], str], faults: dict[str, float] | None = None, seed: int = 0,
                 latency_s: float = 0.0, hang_s: float = 1.0, retry_after_s: float = 0.05,
                 api_key: str | None = None):
        self.reply_fn = reply_fn
        self.api_key = api_key
        self.faults = dict(faults or {})
        self.latency_s = latency_s
        self.hang_s = hang_s
        self.retry_after_s = retry_after_s
        self.calls: list[Call] = []  # requests received whole, with the fault each got
        self.gone: list[Call] = []  # calls the client abandoned before the request arrived whole (`client_gone`)
        self.in_flight = self.max_in_flight = 0  # requests being answered now / at most at once
        self.open_connections = 0
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._accept_lock = threading.Lock()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    def draw_fault(self) -> str | None:
        with self._lock:
            u = self._rng.random()
        acc = 0.0
        for name, share in self.faults.items():
            acc += share
            if u < acc:
                return name
        return None

    def rng_choice(self, options: list):
        with self._lock:
            return self._rng.choice(options)

    def enter(self) -> None:
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        with self._lock:
            self.in_flight -= 1

    def record(self, call: Call) -> None:
        with self._lock:
            self.calls.append(call)

    def record_gone(self, call: Call) -> None:
        with self._lock:
            self.gone.append(call)

    def opened(self) -> None:
        with self._lock:
            self.open_connections += 1

    def closed(self) -> None:
        with self._lock:
            self.open_connections -= 1

    def wait_idle(self, timeout_s: float = 10.0) -> None:
        """Block until every connection is closed and none waits to be accepted, so `calls` and `gone` are final.

        Call it after the client has closed its connections (a hung answer keeps its connection up to `hang_s`).
        AssertionError after `timeout_s`.
        """
        assert self._httpd is not None
        deadline = time.monotonic() + timeout_s
        while True:
            with self._accept_lock:  # no connection is between accept() and the count
                waiting = bool(select.select([self._httpd.socket], [], [], 0)[0])
                with self._lock:
                    open_now = self.open_connections
            if not waiting and open_now == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{open_now} connection(s) open, {int(waiting)} waiting, after {timeout_s} s")
            time.sleep(0.01)

    @property
    def base_url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def start(self) -> "JudgeServer":
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> "JudgeServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ---------------------------------------------------------------- scripted judges
def seat_of_model(body: dict, model_tag: str) -> str:
    """'A' or 'B': which seat's answer carries `model_tag` in the judge's user message."""
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    a_part = user.split("Assistant A's Answer|>", 1)[1].split("<|The End of Assistant A", 1)[0]
    return "A" if model_tag in a_part else "B"


def question_of(body: dict) -> str:
    user = next(m["content"] for m in body["messages"] if m["role"] == "user")
    return user.split("<|User Prompt|>", 1)[1].split("<|The Start of Assistant A", 1)[0].strip()


def verdict_for(model_result: str, model_seat: str) -> str:
    """The label a judge writes for `model_result` in {'>>', '>', '=', '<', '<<'} with the model in `model_seat`."""
    other = "B" if model_seat == "A" else "A"
    return {">>": f"{model_seat}>>{other}", ">": f"{model_seat}>{other}", "=": "A=B",
            "<": f"{other}>{model_seat}", "<<": f"{other}>>{model_seat}"}[model_result]


def run_as_script() -> None:  # pragma: no cover - used by bench/judge.py in a separate process
    """`python tests/judge_server.py PORT_FILE LATENCY_S`: serve a fixed verdict until killed."""
    import sys

    server = JudgeServer(lambda body: "Ответ B лучше. Мой итоговый вердикт: [[B>A]]", latency_s=float(sys.argv[2]))
    server.start()
    with open(sys.argv[1], "w") as f:
        f.write(server.base_url)
    while True:
        time.sleep(3600)


if __name__ == "__main__":  # pragma: no cover
    run_as_script()
