"""Reflection through the real ``openai`` backend against a real local HTTP server that we make fail.

The server (standard-library ``http.server`` on 127.0.0.1) answers OpenAI chat completions. It
rate-limits (HTTP 429) the first request of every prompt, so each reflection needs a retry, and
while it is "down" it fails (HTTP 500) the prompt whose deviated action is ``go to shelf 1``: when
the backend's retries run out the stage stops (an outage is not a failed reflection) and a rerun
against the recovered server builds every pair, answering the others from the disk cache.
"""
from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from eval_agent.agents.policy import SamplingParams
from steca.method.datasets import build_calibrated
from steca.method.deviation import RELEASED_RULE
from steca.method.encoders import HashingEncoder
from steca.method.reflection import PolicyReflector, ReflectionCache
from steca.method.rewards import ALFWORLD_WEIGHTS
from tests.method_fixtures import EXPERT_ACTIONS, explored_fixture, expert_rewards, expert_sft

pytest.importorskip("openai")
OpenAIPolicy = pytest.importorskip("eval_agent.agents.openai_backend").OpenAIPolicy


class FlakyChatServer(ThreadingHTTPServer):
    def __init__(self):
        super().__init__(("127.0.0.1", 0), FlakyHandler)
        self.hits: Counter = Counter()
        self.lock = threading.Lock()
        self.down = True


class FlakyHandler(BaseHTTPRequestHandler):
    server: FlakyChatServer

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = req["messages"][-1]["content"]
        deviated = prompt.split('most recent action, "')[1].split('"')[0]
        with self.server.lock:
            self.server.hits[deviated] += 1
            n = self.server.hits[deviated]
        if deviated == "go to shelf 1" and self.server.down:
            self._send(500, {"error": {"message": "internal error", "type": "server_error"}})
        elif n == 1:
            self._send(429, {"error": {"message": "rate limited", "type": "rate_limit_error"}})
        else:
            text = f"Thought: Going for {deviated} was a detour; I should get back on track.\nAction: whatever"
            self._send(200, {"id": "x", "object": "chat.completion", "created": 0, "model": req["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": text}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})


@pytest.fixture()
def server():
    srv = FlakyChatServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _build(server, cache_path):
    policy = OpenAIPolicy("reflector", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1",
                          max_retries=2, backoff_base=0.01, backoff_max=0.02, timeout=10)
    refl = PolicyReflector(policy, "openai:reflector", SamplingParams(temperature=0.0, max_new_tokens=64),
                           ReflectionCache(cache_path), batch_size=4)
    try:
        return build_calibrated({"t1": expert_sft()}, expert_rewards(), list(explored_fixture().values()),
                                RELEASED_RULE, HashingEncoder(), refl, ALFWORLD_WEIGHTS), policy
    finally:
        refl.close()
        policy.close()


def test_rate_limited_reflection_is_retried_and_an_outage_stops_the_stage(server, tmp_path):
    from eval_agent.agents.errors import FatalPolicyError

    # step 2 (deviated action "go to shelf 1"): HTTP 500 every time -> retried, then the run stops
    with pytest.raises(FatalPolicyError, match="still failing after 2 retries"):
        _build(server, tmp_path / "cache.jsonl")
    assert server.hits["go to shelf 1"] >= 3
    # step 4 (deviated action "examine shelf 1"): rate-limited once, retried, then answered
    assert server.hits["examine shelf 1"] >= 2

    # the server recovers: the rerun builds both calibrations, and no problem is left
    server.down = False
    res, policy = _build(server, tmp_path / "cache.jsonl")
    assert [p.id for p in res.pairs] == ["t1_calibrated_2", "t1_calibrated_4"] and res.problems == []
    assert res.pairs[1].chosen[0].content == ("Thought: Going for examine shelf 1 was a detour; I should get back "
                                              f"on track.\nAction: {EXPERT_ACTIONS[4]}")
    assert res.pairs[1].extra["reflection_source"] == "openai:reflector"
    assert res.pairs[1].extra["reflection_stand_in"] is False

    # a third run costs no request: every reply comes from the cache
    before = Counter(server.hits)
    res2, _ = _build(server, tmp_path / "cache.jsonl")
    assert server.hits == before
    assert [p.to_dict() for p in res2.pairs] == [p.to_dict() for p in res.pairs]
