"""A small OpenAI-compatible chat server over any policy backend, built on the standard library.

For machines where ``vllm serve`` cannot run and ``transformers serve`` lacks its FastAPI
dependencies: it serves a local model directory on CPU, so the ``openai`` backend (and tools that
speak the OpenAI protocol) can use it. Requests that arrive together are answered in one batched
``generate`` call (micro-batching: the batcher waits ``batch_wait_s`` for more requests, up to
``max_batch``).

Endpoints: ``POST /v1/chat/completions`` (non-streaming), ``GET /v1/models``, ``GET /health``.
When ``api_key`` is set, requests must carry ``Authorization: Bearer <key>`` or get HTTP 401.

CLI::

    python -m eval_agent.agents.serve --model_path models/tiny --port 8000 [--api_key_env MY_KEY]
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import queue
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.errors import RowErrors
from eval_agent.types import Message

logger = logging.getLogger(__name__)


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

    def _answer(self, items: list[_Pending]) -> None:
        try:
            outs: list[str | None] = list(self.policy.generate([it.messages for it in items],
                                                                [it.params for it in items]))
            errs: dict[int, str] = {}
        except RowErrors as e:
            outs, errs = e.outputs, e.errors
        except Exception as e:  # answer every waiting request rather than hang them
            logger.exception("generation failed")
            outs, errs = [None] * len(items), {i: f"{type(e).__name__}: {e}" for i in range(len(items))}
        for i, it in enumerate(items):
            it.text, it.error = outs[i], errs.get(i)
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

    def do_POST(self) -> None:  # noqa: N802
        length = int(self.headers.get("Content-Length", 0))
        raw = self.rfile.read(length) if length else b""
        if self.path.rstrip("/") != "/v1/chat/completions":
            self.send_error_json(404, f"no route {self.path}")
            return
        if not self._authorized():
            return
        try:
            req = json.loads(raw)
            if req.get("model") != self.server.model_name:
                self.send_error_json(404, f"The model {req.get('model')!r} does not exist.")
                return
            if req.get("stream"):
                raise ValueError("streaming is not supported")
            messages = [Message(m["role"], m["content"]) for m in req["messages"]]
            stop = req.get("stop") or ()
            params = SamplingParams(temperature=float(req.get("temperature", 1.0)), top_p=float(req.get("top_p", 1.0)),
                                    max_new_tokens=int(req.get("max_completion_tokens") or req.get("max_tokens") or 256),
                                    stop=(stop,) if isinstance(stop, str) else tuple(stop), seed=req.get("seed"))
        except (ValueError, KeyError, TypeError) as e:
            self.send_error_json(400, f"bad request: {e}")
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
                 model_name: str, api_key: str | None):
        super().__init__(address, handler)
        self.batcher = batcher
        self.model_name = model_name
        self.api_key = api_key

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
                handler: type[ChatHandler] = ChatHandler) -> ChatServer:
    """A server (not yet serving) on ``host:port`` (port 0: any free port); call ``serve_forever``."""
    return ChatServer((host, port), handler, Batcher(policy, max_batch, batch_wait_s), model_name, api_key)


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
