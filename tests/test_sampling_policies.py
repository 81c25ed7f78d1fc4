"""Several OpenAI-compatible servers behind one policy: real local HTTP servers, the real openai backend."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval_agent.agents.policy import SamplingParams
from eval_agent.agents.errors import RowErrors
from eval_agent.types import Message

pytest.importorskip("openai")


class EchoServer(ThreadingHTTPServer):
    """Answers ``<name>: <last user message>``; HTTP 400 when the message is ``bad``."""

    def __init__(self, name: str):
        super().__init__(("127.0.0.1", 0), EchoHandler)
        self.name = name
        self.requests = 0


class EchoHandler(BaseHTTPRequestHandler):
    server: EchoServer

    def log_message(self, *args) -> None:
        pass

    def do_POST(self) -> None:  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests += 1
        text = req["messages"][-1]["content"]
        if text == "bad":
            status, obj = 400, {"error": {"message": "prompt too long", "type": "invalid_request_error"}}
        else:
            status, obj = 200, {"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                                "choices": [{"index": 0, "finish_reason": "stop",
                                             "message": {"role": "assistant", "content": f"{self.server.name}: {text}"}}]}
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture()
def servers():
    srvs = [EchoServer("A"), EchoServer("B")]
    for s in srvs:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    yield srvs
    for s in srvs:
        s.shutdown()
        s.server_close()


def test_batch_is_spread_over_servers_and_answers_keep_their_order(servers):
    from steca.sampling.policies import MultiServerPolicy, build_policy

    urls = ",".join(f"http://127.0.0.1:{s.server_address[1]}/v1" for s in servers)
    policy = build_policy("openai", "m", urls)
    assert isinstance(policy, MultiServerPolicy) and len(policy.policies) == 2
    batch = [[Message("user", f"q{i}")] for i in range(5)]
    try:
        out = policy.generate(batch, SamplingParams(temperature=0.0, max_new_tokens=8))
        assert out == ["A: q0", "B: q1", "A: q2", "B: q3", "A: q4"]
        assert [s.requests for s in servers] == [3, 2]
        with pytest.raises(RowErrors) as err:
            policy.generate([[Message("user", "ok")], [Message("user", "bad")]], SamplingParams())
        assert err.value.outputs == ["A: ok", None] and set(err.value.errors) == {1}
    finally:
        policy.close()
