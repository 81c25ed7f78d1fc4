"""A small OpenAI-compatible chat server over any policy backend, built on the standard library.

For machines where ``vllm serve`` cannot run and ``transformers serve`` lacks its FastAPI
dependencies: it serves a local model directory on CPU, so the ``openai`` backend (and tools that
speak the OpenAI protocol) can use it. Requests that arrive together are answered in one batched
``generate`` call (micro-batching: the batcher waits ``batch_wait_s`` for more requests, up to
``max_batch``).

Endpoints: ``POST /v1/chat/completions`` (non-streaming), ``GET /v1/models``, ``GET /health``.
When ``api_key`` is set, requests must carry ``Authorization: Bearer <key>`` or get HTTP 401.

Every request is checked on its own before it joins a batch (:func:`parse_chat_request`), and
every error is answered with an OpenAI-style JSON error body: a malformed request gets its own
400 and the other requests of its batch are served; a batch whose ``generate`` call fails is
answered one request at a time, so only the request that fails gets the error. A body that does
not arrive in full within ``read_timeout_s`` (a wrong ``Content-Length``) gets 408, one over
``max_body_bytes`` gets 413.

CLI::

    python -m eval_agent.agents.serve --model_path models/tiny --port 8000 [--api_key_env MY_KEY]
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import queue
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.errors import RowErrors
from eval_agent.types import Message

logger = logging.getLogger(__name__)

ROLES = ("system", "user", "assistant")
MAX_BODY_BYTES = 16 * 1024 * 1024
READ_TIMEOUT_S = 30.0


class BadRequest(ValueError):
    """A request the server answers with HTTP ``status`` and ``message``."""

    def __init__(self, message: str, status: int = 400):
        self.status = status
        super().__init__(message)


def _number(req: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = req.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not low <= value <= high:
        raise BadRequest(f"'{key}' must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def parse_chat_request(req: Any, model_name: str) -> tuple[list[Message], SamplingParams]:
    """The messages and sampling parameters of one chat-completions request, or :class:`BadRequest`."""
    if not isinstance(req, dict):
        raise BadRequest(f"the body must be a JSON object, got a JSON {type(req).__name__}")
    if req.get("model") != model_name:
        raise BadRequest(f"The model {req.get('model')!r} does not exist.", 404)
    if req.get("stream"):
        raise BadRequest("streaming is not supported")
    raw = req.get("messages")
    if not isinstance(raw, list) or not raw:
        raise BadRequest("'messages' must be a non-empty list")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}] must be an object with 'role' in {ROLES} and a string 'content'")
        messages.append(Message(m["role"], m["content"]))
    stop = req.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else stop
    if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings")
    max_tokens = req.get("max_completion_tokens") or req.get("max_tokens") or 256
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest(f"'max_tokens' must be a positive integer, got {max_tokens!r}")
    seed = req.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise BadRequest(f"'seed' must be an integer, got {seed!r}")
    params = SamplingParams(temperature=_number(req, "temperature", 1.0, 0.0, 100.0),
                            top_p=_number(req, "top_p", 1.0, 1e-9, 1.0), max_new_tokens=max_tokens,
                            stop=tuple(stop), seed=seed)
    return messages, params


@dataclass
class _Pending:
    messages: list[Message]
    params: SamplingParams
    done: threading.Event = field(default_factory=threading.Event)
    text: str | None = None
    error: str | None = None


class Batcher:
    """Collects concurrent requests and answers them with one ``policy.generate`` call per batch."""

    def __init__(self, policy: Policy, max_batch: int = 32, batch_wait_s: float = 0.01):
        self.policy = policy
        self.max_batch = max_batch
        self.batch_wait_s = batch_wait_s
        self._q: queue.Queue[_Pending | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="batcher", daemon=True)
        self._thread.start()

    def submit(self, messages: list[Message], params: SamplingParams) -> _Pending:
        item = _Pending(messages, params)
        self._q.put(item)
        item.done.wait()
        return item

    def close(self) -> None:
        self._q.put(None)
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while True:
            first = self._q.get()
            if first is None:
                return
            items = [first]
            deadline = time.monotonic() + self.batch_wait_s
            while len(items) < self.max_batch:
                try:
                    nxt = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._q.put(None)
                    break
                items.append(nxt)
            self._answer(items)

    def _generate(self, items: list[_Pending]) -> tuple[list[str | None], dict[int, str]]:
        try:
            return list(self.policy.generate([it.messages for it in items], [it.params for it in items])), {}
        except RowErrors as e:
            return e.outputs, e.errors
        except Exception as e:
            if len(items) == 1:
                logger.warning("generation failed: %s: %s", type(e).__name__, e)
                return [None], {0: f"{type(e).__name__}: {e}"}
        logger.warning("batched generation failed; answering its %d requests one at a time", len(items))
        outs: list[str | None] = []
        errs: dict[int, str] = {}
        for i, it in enumerate(items):
            o, e1 = self._generate([it])
            outs.append(o[0])
            if 0 in e1:
                errs[i] = e1[0]
        return outs, errs

    def _answer(self, items: list[_Pending]) -> None:
        try:
            outs, errs = self._generate(items)
        except BaseException as e:  # answer every waiting request rather than hang them
            outs, errs = [None] * len(items), {i: f"{type(e).__name__}: {e}" for i in range(len(items))}
            raise
        finally:
            for i, it in enumerate(items):
                it.text, it.error = outs[i] if i < len(outs) else None, errs.get(i)
                it.done.set()


class ChatHandler(BaseHTTPRequestHandler):
    """OpenAI chat-completions protocol over ``self.server.batcher``."""

    server: "ChatServer"
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), fmt % args)

    def send_json(self, status: int, obj: dict[str, Any]) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_error_json(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        self.send_json(status, {"error": {"message": message, "type": kind, "code": status}})

    def _authorized(self) -> bool:
        key = self.server.api_key
        if key is None:
            return True
        if self.headers.get("Authorization", "") == f"Bearer {key}":
            return True
        self.send_error_json(401, "Incorrect API key provided.", "authentication_error")
        return False

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        if self.path.rstrip("/") == "/health":
            self.send_json(200, {"status": "ok"})
        elif self.path.rstrip("/") == "/v1/models":
            if self._authorized():
                self.send_json(200, {"object": "list", "data": [{"id": self.server.model_name, "object": "model"}]})
        else:
            self.send_error_json(404, f"no route {self.path}")

    def _read_body(self) -> bytes:
        """The request body, per ``Content-Length``; :class:`BadRequest` for a missing, bad or short one."""
        value = self.headers.get("Content-Length")
        try:
            length = int(value) if value is not None else 0
        except ValueError:
            raise BadRequest(f"bad Content-Length {value!r}") from None
        if length < 0:
            raise BadRequest(f"bad Content-Length {value!r}")
        if length > self.server.max_body_bytes:
            raise BadRequest(f"body of {length} bytes is over the limit of {self.server.max_body_bytes}", 413)
        self.connection.settimeout(self.server.read_timeout_s)
        try:
            raw = self.rfile.read(length) if length else b""
        except (socket.timeout, TimeoutError):
            raw = None
        if raw is None or len(raw) < length:
            self.close_connection = True
            raise BadRequest(f"the body did not arrive in full ({length} bytes announced by Content-Length)", 408)
        return raw

    def do_POST(self) -> None:  # noqa: N802
        try:
            raw = self._read_body()
        except BadRequest as e:
            self.close_connection = True
            self.send_error_json(e.status, str(e))
            return
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_error_json(404, f"no route {self.path}")
            return
        if not self._authorized():
            return
        try:
            try:
                req = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as e:
                raise BadRequest(f"the body is not JSON: {e}") from None
            messages, params = parse_chat_request(req, self.server.model_name)
        except BadRequest as e:
            self.send_error_json(e.status, f"bad request: {e}" if e.status == 400 else str(e))
            return
        item = self.server.batcher.submit(messages, params)
        if item.error is not None:
            self.send_error_json(400, item.error)
            return
        self.send_json(200, {
            "id": f"chatcmpl-{id(item):x}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server.model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": item.text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        })


class ChatServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], batcher: Batcher,
                 model_name: str, api_key: str | None, read_timeout_s: float = READ_TIMEOUT_S,
                 max_body_bytes: int = MAX_BODY_BYTES):
        super().__init__(address, handler)
        self.batcher = batcher
        self.model_name = model_name
        self.api_key = api_key
        self.read_timeout_s = read_timeout_s
        self.max_body_bytes = max_body_bytes

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/v1"

    def close(self) -> None:
        self.shutdown()
        self.server_close()
        self.batcher.close()


def make_server(policy: Policy, model_name: str, host: str = "127.0.0.1", port: int = 0,
                api_key: str | None = None, max_batch: int = 32, batch_wait_s: float = 0.01,
                handler: type[ChatHandler] = ChatHandler, read_timeout_s: float = READ_TIMEOUT_S) -> ChatServer:
    """A server (not yet serving) on ``host:port`` (port 0: any free port); call ``serve_forever``."""
    return ChatServer((host, port), handler, Batcher(policy, max_batch, batch_wait_s), model_name, api_key,
                      read_timeout_s)


def serve_in_thread(server: ChatServer) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, name="chat-server", daemon=True)
    t.start()
    return t


def main(argv: list[str] | None = None) -> None:
    from eval_agent.agents.hf import HFPolicy

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model_path", required=True)
    ap.add_argument("--model_name", default=None, help="name clients must send (default: --model_path)")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--api_key_env", default=None, help="environment variable holding the key clients must send")
    ap.add_argument("--max_batch", type=int, default=32)
    ap.add_argument("--device", default=None)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.api_key_env and not key:
        raise SystemExit(f"environment variable {args.api_key_env} is empty")
    server = make_server(HFPolicy(args.model_path, device=args.device), args.model_name or args.model_path,
                         args.host, args.port, key, args.max_batch)
    logger.info("serving %s at %s", server.model_name, server.base_url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()


if __name__ == "__main__":
    main()
