"""Reliability, endpoints: an outage is never a result, and the API key never reaches a file or a log.

Against real loopback servers: the project's own ``serve.py`` over a tiny model where a real
server can play the part (bad credentials), and a small server of this module where a real one
cannot (a "200 OK" that is not a chat completion, a server that echoes the key it was sent).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from engine_fixtures import build_tiny_chat_model
from method_fixtures import expert_rewards, expert_sft, explored_fixture

from eval_agent.agents.policy import SamplingParams
from eval_agent.agents.errors import FatalPolicyError
from eval_agent.types import Message
from steca.records import write_records

pytest.importorskip("openai")
from eval_agent.agents.openai_backend import OpenAIPolicy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
KEY = "sk-test-3f9a1c7e5b2d4680"
GOOD_TEXT = "Thought: I look around.\nAction: look"


class ScriptedServer(ThreadingHTTPServer):
    """Answers each chat request with the next behaviour of ``script`` (then ``then`` forever)."""

    daemon_threads = True

    def __init__(self, script: list[str], then: str = "ok"):
        super().__init__(("127.0.0.1", 0), ScriptedHandler)
        self.script = list(script)
        self.then = then
        self.lock = threading.Lock()
        self.requests = 0

    def next_behaviour(self) -> str:
        with self.lock:
            self.requests += 1
            return self.script.pop(0) if self.script else self.then

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


def _completion(model: str, content: str) -> dict:
    return {"id": "c", "object": "chat.completion", "created": 0, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}


class ScriptedHandler(BaseHTTPRequestHandler):
    server: ScriptedServer
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:  # noqa: N802
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = self.headers.get("Authorization", "")
        b = self.server.next_behaviour()
        if b == "ok":
            self._send(200, json.dumps(_completion(req["model"], GOOD_TEXT)).encode())
        elif b == "empty_choices":
            self._send(200, json.dumps({**_completion(req["model"], ""), "choices": []}).encode())
        elif b == "not_json":
            self._send(200, b'{"id": "c", "choices": [{"mess')
        elif b == "html":
            self._send(200, b"<html><body>502 Bad Gateway (proxy)</body></html>", "text/html")
        elif b == "surrogate":  # json.dumps writes the lone surrogate as \ud800, which decodes back to it
            self._send(200, json.dumps(_completion(req["model"], "Action: look \ud800")).encode())
        elif b in ("echo_400", "echo_500"):
            msg = {"error": {"message": f"bad request from client with header {auth!r} (key {auth[7:]})",
                             "type": "invalid_request_error"}}
            self._send(400 if b == "echo_400" else 500, json.dumps(msg).encode())
        else:
            raise AssertionError(b)


@pytest.fixture()
def scripted():
    servers = []

    def start(script: list[str], then: str = "ok") -> ScriptedServer:
        srv = ScriptedServer(script, then)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def _policy(url: str, retries: int = 2) -> OpenAIPolicy:
    return OpenAIPolicy("m", base_url=url, max_retries=retries, backoff_base=0.0, backoff_max=0.0, timeout=30)


MALFORMED = ["empty_choices", "not_json", "html", "surrogate"]
CONV = [Message("user", "You are in a room.")]


@pytest.mark.parametrize("kind", MALFORMED)
def test_a_malformed_200_answer_is_retried(scripted, kind: str) -> None:
    """Failure 2: malformed "200 OK" answers were not retried but recorded as ``generation_error``."""
    srv = scripted([kind, kind])
    pol = _policy(srv.base_url)
    try:
        assert pol.generate([CONV], SamplingParams()) == [GOOD_TEXT]
        assert pol.n_retries == 2 and srv.requests == 3
    finally:
        pol.close()


@pytest.mark.parametrize("kind", MALFORMED)
def test_malformed_answers_until_retries_run_out_stop_the_run(scripted, kind: str) -> None:
    srv = scripted([], then=kind)
    pol = _policy(srv.base_url)
    try:
        with pytest.raises(FatalPolicyError, match="still failing after 2 retries"):
            pol.generate([CONV, CONV], SamplingParams())
    finally:
        pol.close()


def _agent_config(tmp_path: Path, retries: int) -> Path:
    cfg = tmp_path / "agent.json"
    cfg.write_text(json.dumps({"backend": "openai", "max_retries": retries, "backoff_base": 0.0, "backoff_max": 0.0,
                               "timeout": 30, "max_concurrency": 2,
                               "generation": {"temperature": 0.0, "max_new_tokens": 32}}))
    return cfg


def _eval_args(tmp_path: Path, url: str, data: Path, out: Path) -> list[str]:
    return ["--exp_config", "alfworld", "--split", "dev", "--data_dir", str(data), "--max_tasks", "2",
            "--max_steps", "2", "--num_workers", "0", "--agent_config", str(_agent_config(tmp_path, 2)),
            "--model_name", "m", "--base_url", url, "--output_path", str(out)]


def test_an_outage_writes_no_episode_and_a_rerun_finishes_them(scripted, tmp_path: Path,
                                                               alfworld_data: Path) -> None:
    """Failure 2: episodes of an outage were written as finished and a rerun skipped them as done."""
    from eval_agent.main import main as eval_main

    dead = scripted([], then="html")
    out = tmp_path / "eval"
    with pytest.raises(FatalPolicyError):
        eval_main(_eval_args(tmp_path, dead.base_url, alfworld_data, out))
    assert not out.exists() or not list(out.glob("*.json"))
    healthy = scripted([])
    summary = eval_main(_eval_args(tmp_path, healthy.base_url, alfworld_data, out))
    assert summary["n_tasks"] == 2 and "generation_error" not in summary["terminate_reasons"]
    assert not list(out.rglob("*.tmp"))


def test_an_echoed_key_reaches_no_file_and_no_log(scripted, tmp_path: Path, alfworld_data: Path) -> None:
    """Failure 10: a server that echoed the API key got it copied into ``meta.error`` and stderr."""
    env = {**os.environ, "OPENAI_API_KEY": KEY, "PYTHONPATH": str(REPO)}
    texts = []
    for behaviour in ("echo_400", "echo_500"):  # a per-row failure (stored), then an outage (logged, fatal)
        srv = scripted([], then=behaviour)
        out = tmp_path / behaviour
        proc = subprocess.run([sys.executable, "-m", "eval_agent.main", *_eval_args(tmp_path, srv.base_url,
                                                                                      alfworld_data, out),
                               "--log_level", "INFO"], cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=600)
        texts += [proc.stdout, proc.stderr]
        texts += [p.read_text(errors="replace") for p in out.rglob("*") if p.is_file()]
        if behaviour == "echo_400":
            assert proc.returncode == 0
            episodes = [json.loads(p.read_text()) for p in out.glob("*.json") if p.name != "summary.json"]
            assert episodes and all("[redacted]" in json.dumps(e) for e in episodes)
        else:
            assert proc.returncode != 0 and "[redacted]" in proc.stderr
    assert texts and not any(KEY in t for t in texts)


def test_reflection_against_a_refusing_server_exits_nonzero(tmp_path: Path, alfworld_sft_sample: Path) -> None:
    """Failure 11: reflection against a dead endpoint (401) exited 0 with 0 pairs."""
    from eval_agent.agents.hf import HFPolicy
    from eval_agent.agents.serve import make_server, serve_in_thread

    model = build_tiny_chat_model(tmp_path / "tiny", alfworld_sft_sample)
    server = make_server(HFPolicy(str(model), device="cpu"), "reflector", api_key="the-right-key")
    serve_in_thread(server)
    try:
        write_records(tmp_path / "sft.json", [expert_sft()])
        write_records(tmp_path / "expert.jsonl", expert_rewards())
        write_records(tmp_path / "explore.jsonl", list(explored_fixture().values()))
        out = tmp_path / "cali.json"
        proc = subprocess.run([sys.executable, "data_collection/data_cali_alfworld.py", "--sft",
                               str(tmp_path / "sft.json"), "--expert_steps", str(tmp_path / "expert.jsonl"),
                               "--explore_steps", str(tmp_path / "explore.jsonl"), "--output", str(out),
                               "--reflector", "openai", "--reflection_model", "reflector", "--api_base",
                               server.base_url], cwd=REPO, capture_output=True, text=True, timeout=600,
                              env={**os.environ, "OPENAI_API_KEY": "a-wrong-key", "PYTHONPATH": str(REPO)})
    finally:
        server.close()
    assert proc.returncode != 0 and "refused the credentials (HTTP 401)" in proc.stderr
    assert not out.exists() and "a-wrong-key" not in proc.stderr
