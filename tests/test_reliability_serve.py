"""Reliability of ``serve.py`` (failure 11): one bad request gets its own error, every malformed body
gets a JSON answer, and a body that never arrives in full does not hold the connection.

The server is the project's own, over a tiny real model, on loopback.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
from pathlib import Path

import pytest

from engine_fixtures import build_tiny_chat_model


@pytest.fixture(scope="module")
def server(tmp_path_factory, alfworld_sft_sample: Path):
    from eval_agent.agents.hf import HFPolicy
    from eval_agent.agents.serve import make_server, serve_in_thread

    model = build_tiny_chat_model(tmp_path_factory.mktemp("serve") / "tiny", alfworld_sft_sample)
    # a long batching window, so that requests sent together are answered in one micro-batch
    srv = make_server(HFPolicy(str(model), device="cpu"), "tiny", batch_wait_s=0.5, read_timeout_s=1.0)
    serve_in_thread(srv)
    yield srv
    srv.close()


def _post(srv, body: bytes, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    host, port = srv.server_address[:2]
    conn = http.client.HTTPConnection(host, port, timeout=120)
    try:
        conn.request("POST", "/v1/chat/completions", body=body,
                     headers={"Content-Type": "application/json", **(headers or {})})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


def _chat(**extra) -> bytes:
    req = {"model": "tiny", "messages": [{"role": "user", "content": "You are in a room."}], "max_tokens": 4,
           "temperature": 0.0}
    req.update(extra)
    return json.dumps(req).encode()


BAD_REQUESTS = {
    "json_array": json.dumps([{"model": "tiny"}]).encode(),
    "not_json": b"{\"model\": \"tiny\", ",
    "not_utf8": b"\xff\xfe{}",
    "tool_role": _chat(messages=[{"role": "tool", "content": "x"}]),
    "content_list": _chat(messages=[{"role": "user", "content": [{"type": "text", "text": "hi"}]}]),
    "no_messages": _chat(messages=[]),
    "negative_max_tokens": _chat(max_tokens=-3),
    "nan_temperature": _chat().replace(b'"temperature": 0.0', b'"temperature": NaN'),
    "stop_number": _chat(stop=[5]),
}


def test_a_mixed_batch_serves_the_good_requests(server) -> None:
    """One bad request in a micro-batch used to fail every request of the batch."""
    bodies = [_chat(), BAD_REQUESTS["tool_role"], _chat(seed=1, temperature=1.0), BAD_REQUESTS["negative_max_tokens"]]
    answers: list[tuple[int, dict] | None] = [None] * len(bodies)

    def send(i: int) -> None:
        answers[i] = _post(server, bodies[i])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [a[0] for a in answers] == [200, 400, 200, 400]
    assert isinstance(answers[0][1]["choices"][0]["message"]["content"], str)
    assert "messages[0]" in answers[1][1]["error"]["message"]
    assert "max_tokens" in answers[3][1]["error"]["message"]


@pytest.mark.parametrize("kind", sorted(BAD_REQUESTS))
def test_every_malformed_body_gets_a_json_error(server, kind: str) -> None:
    status, body = _post(server, BAD_REQUESTS[kind])
    assert status == 400 and body["error"]["type"] == "invalid_request_error"


def _raw_exchange(srv, head: bytes, body: bytes) -> bytes:
    host, port = srv.server_address[:2]
    with socket.create_connection((host, port), timeout=120) as s:
        s.sendall(head + body)
        chunks = []
        while chunk := s.recv(65536):  # the server answers and closes the connection
            chunks.append(chunk)
    return b"".join(chunks)


def test_a_short_body_times_out_with_408_and_closes(server) -> None:
    """A ``Content-Length`` larger than the body used to hold the connection forever."""
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n")
    answer = _raw_exchange(server, head, _chat())
    status_line, _, rest = answer.partition(b"\r\n")
    assert b" 408 " in status_line
    assert "did not arrive in full" in json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"]["message"]
    assert _post(server, _chat())[0] == 200  # the server still serves


@pytest.mark.parametrize("length,status", [(b"abc", 400), (b"-5", 400), (b"99999999999", 413)])
def test_a_bad_content_length_gets_a_json_error(server, length: bytes, status: int) -> None:
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + length + b"\r\n\r\n")
    answer = _raw_exchange(server, head, b"")
    assert f" {status} ".encode() in answer.partition(b"\r\n")[0]
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == status
