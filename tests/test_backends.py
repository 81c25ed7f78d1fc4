"""Policy backends on a real (tiny, random-weights) transformers model built in the test.

The model is a Llama from ``steca.training.bootstrap`` whose non-embedding weights are redrawn
with a large scale: with the bootstrap's small init and tied embeddings a random model only
repeats its last input token, which would make "batched equals one-at-a-time" trivially true.
"""
from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

import pytest

from eval_agent.agents import load_agent_config, make_policy, sampling_from_config
from eval_agent.agents.policy import SamplingParams
from eval_agent.agents.errors import FatalPolicyError, RowErrors
from eval_agent.types import Message

from engine_fixtures import build_tiny_chat_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, alfworld_sft_sample) -> Path:
    return build_tiny_chat_model(tmp_path_factory.getbasetemp() / "tiny_chat_model", alfworld_sft_sample)


@pytest.fixture(scope="module")
def hf_policy(tiny_model):
    from eval_agent.agents.hf import HFPolicy

    return HFPolicy(str(tiny_model), device="cpu", max_batch_size=16)


@pytest.fixture(scope="module")
def conversations(alfworld_sft_sample) -> list[list[Message]]:
    """Eight real chat prefixes of different lengths (ending on a user turn)."""
    records = json.loads(Path(alfworld_sft_sample).read_text())[:8]
    out = []
    for i, r in enumerate(records):
        msgs = [Message(m["role"], m["content"]) for m in r["conversations"]]
        out.append(msgs[: 3 + 2 * (i % 4)])
    return out


def test_hf_batched_greedy_equals_one_at_a_time(tiny_model, hf_policy, conversations):
    from eval_agent.agents.hf import HFPolicy

    params = SamplingParams(max_new_tokens=12)
    batched = hf_policy.generate(conversations, params)
    single = [hf_policy.generate([c], params)[0] for c in conversations]
    assert batched == single
    assert len(set(batched)) > len(batched) // 2, "outputs should differ between prompts"
    assert all(batched)
    # the shared instruction turn is served from the prompt KV cache; without it, the same tokens
    assert hf_policy._prompt_split(conversations[0], hf_policy.encode(conversations[0])) > 0
    uncached = HFPolicy(str(tiny_model), device="cpu", prefix_cache_size=0)
    assert uncached.generate(conversations, params) == batched
    # rows per chunk: the set max_batch_size; unset on the CPU, the default (sized from memory on CUDA only)
    from eval_agent.agents.hf_memory import DEFAULT_MAX_BATCH_SIZE

    assert hf_policy.chunk_rows(2048, 512) == 16
    assert uncached.chunk_rows(2048, 512) == DEFAULT_MAX_BATCH_SIZE and uncached.conv_cache_size == 2 * DEFAULT_MAX_BATCH_SIZE


def test_hf_sampling_is_seeded_per_row(hf_policy, conversations):
    convs = conversations[:4]
    rows = [SamplingParams(temperature=1.0, max_new_tokens=8, seed=100 + i) for i in range(len(convs))]
    a = hf_policy.generate(convs, rows)
    b = [hf_policy.generate([c], [p])[0] for c, p in zip(convs, rows)]
    assert a == b  # a row's sample depends on its seed, not on its batch
    shared = SamplingParams(temperature=1.0, max_new_tokens=8, seed=7)
    same_prompt = [convs[0]] * 4
    outs = hf_policy.generate(same_prompt, shared)  # rows get seeds 7, 8, 9, 10
    assert len(set(outs)) == 4
    assert hf_policy.generate(same_prompt, shared) == outs
    greedy = hf_policy.generate(same_prompt, SamplingParams(max_new_tokens=8))
    assert len(set(greedy)) == 1


def test_hf_stop_strings_cut_the_text(hf_policy, conversations):
    full = hf_policy.generate(conversations[:1], SamplingParams(max_new_tokens=16))[0]
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip()
    cut = hf_policy.generate(conversations[:1], SamplingParams(max_new_tokens=16, stop=(stop,)))[0]
    assert stop not in cut
    assert full.startswith(cut)
    assert len(cut) < len(full)


def test_hf_prompt_too_long_fails_only_that_row(tiny_model, hf_policy, conversations):
    from eval_agent.agents.hf import HFPolicy

    lengths = [len(hf_policy.encode(c)) for c in conversations]
    long_i = max(range(len(lengths)), key=lengths.__getitem__)
    short_i = min(range(len(lengths)), key=lengths.__getitem__)
    limit = (lengths[long_i] + lengths[short_i]) // 2 + 16
    policy = HFPolicy(str(tiny_model), device="cpu", max_model_len=limit)
    with pytest.raises(RowErrors) as info:
        policy.generate([conversations[short_i], conversations[long_i]], SamplingParams(max_new_tokens=16))
    err = info.value
    assert set(err.errors) == {1} and "exceeds the model context" in err.errors[1]
    assert err.outputs[0] and err.outputs[1] is None


def test_make_policy_from_config(tiny_model):
    cfg = load_agent_config("hf")
    assert sampling_from_config(cfg).temperature == 0.0
    assert sampling_from_config(cfg, max_new_tokens=5).max_new_tokens == 5
    policy = make_policy(cfg, str(tiny_model), device="cpu")
    assert policy.generate([[Message("user", "go to desk 1")]], SamplingParams(max_new_tokens=4))[0]
    with pytest.raises(FileNotFoundError, match="no_such_backend"):
        load_agent_config("no_such_backend")


def test_vllm_backend_is_import_guarded():
    from eval_agent.agents.vllm_backend import VLLMPolicy, vllm_available

    if vllm_available():
        pytest.skip("vLLM is installed here; this checks the guard on machines without it")
    with pytest.raises(FatalPolicyError, match="requirements-gpu"):
        VLLMPolicy("/nonexistent")


# ------------------------------------------------------------------------------------ openai
@pytest.fixture()
def served(hf_policy):
    """The tiny model behind the standard-library OpenAI-compatible server, on loopback."""
    from eval_agent.agents.serve import make_server, serve_in_thread

    servers = []

    def start(api_key=None, handler=None):
        kwargs = {"handler": handler} if handler else {}
        server = make_server(hf_policy, "tiny", port=0, api_key=api_key, **kwargs)
        serve_in_thread(server)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


def test_openai_backend_matches_hf_through_a_real_server(served, hf_policy, conversations, monkeypatch):
    from eval_agent.agents.openai_backend import OpenAIPolicy

    server = served(api_key="sk-test-secret")
    monkeypatch.setenv("TINY_KEY", "sk-test-secret")
    client = OpenAIPolicy("tiny", base_url=server.base_url, api_key_env="TINY_KEY", max_concurrency=4)
    params = SamplingParams(max_new_tokens=16)
    assert client.generate(conversations[:6], params) == hf_policy.generate(conversations[:6], params)
    client.close()


def test_openai_bad_key_is_a_clear_fatal_error_without_the_key(served, conversations, monkeypatch, caplog):
    from eval_agent.agents.openai_backend import OpenAIPolicy

    server = served(api_key="sk-right")
    monkeypatch.setenv("TINY_KEY", "sk-wrong-key-123")
    client = OpenAIPolicy("tiny", base_url=server.base_url, api_key_env="TINY_KEY", max_retries=3)
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(FatalPolicyError) as info:
            client.generate(conversations[:2], SamplingParams(max_new_tokens=4))
    assert "401" in str(info.value) and "$TINY_KEY" in str(info.value)
    assert "sk-wrong-key-123" not in str(info.value) and "sk-wrong-key-123" not in caplog.text
    assert client.n_retries == 0
    client.close()


def _flaky_handler(statuses: list[int]):
    """A handler that answers the first requests with the given HTTP errors, then serves normally."""
    from eval_agent.agents.serve import ChatHandler

    lock = threading.Lock()
    remaining = list(statuses)

    class Flaky(ChatHandler):
        def do_POST(self):  # noqa: N802
            with lock:
                status = remaining.pop(0) if remaining else None
            if status is None:
                return super().do_POST()
            self.rfile.read(int(self.headers.get("Content-Length", 0)))
            self.send_error_json(status, f"failing on purpose with {status}")

    return Flaky


def test_openai_retries_429_and_5xx_then_succeeds(served, hf_policy, conversations):
    from eval_agent.agents.openai_backend import OpenAIPolicy

    server = served(handler=_flaky_handler([429, 503, 500]))
    client = OpenAIPolicy("tiny", base_url=server.base_url, max_concurrency=1, backoff_base=0.01, max_retries=4)
    params = SamplingParams(max_new_tokens=8)
    assert client.generate(conversations[:1], params) == hf_policy.generate(conversations[:1], params)
    assert client.n_retries == 3
    client.close()


def test_openai_gives_up_after_max_retries(served, conversations):
    from eval_agent.agents.openai_backend import OpenAIPolicy

    server = served(handler=_flaky_handler([503] * 10))
    client = OpenAIPolicy("tiny", base_url=server.base_url, max_concurrency=1, backoff_base=0.01, max_retries=2)
    with pytest.raises(FatalPolicyError, match="after 2 retries"):
        client.generate(conversations[:1], SamplingParams(max_new_tokens=4))
    client.close()


def test_openai_unknown_model_is_fatal(served, conversations):
    from eval_agent.agents.openai_backend import OpenAIPolicy

    server = served()
    client = OpenAIPolicy("not-served", base_url=server.base_url, backoff_base=0.01)
    with pytest.raises(FatalPolicyError, match="404"):
        client.generate(conversations[:1], SamplingParams(max_new_tokens=4))
    client.close()


def test_openai_needs_a_key_for_the_public_api(monkeypatch):
    from eval_agent.agents.openai_backend import OpenAIPolicy

    monkeypatch.delenv("STECA_TEST_NO_KEY", raising=False)
    with pytest.raises(FatalPolicyError, match="STECA_TEST_NO_KEY"):
        OpenAIPolicy("gpt-4o", api_key_env="STECA_TEST_NO_KEY")
