"""Several OpenAI-compatible servers behind one policy: the project's own ``serve.py`` over two tiny models
with different weights (so each answer shows which server gave it), through the real openai backend."""
from __future__ import annotations

import pytest

from engine_fixtures import build_tiny_chat_model

from eval_agent.agents.policy import SamplingParams
from eval_agent.agents.errors import RowErrors
from eval_agent.types import Message

pytest.importorskip("openai")

PARAMS = SamplingParams(temperature=0.0, max_new_tokens=8)


@pytest.fixture(scope="module")
def servers(tmp_path_factory, alfworld_sft_sample):
    """Two ``serve.py`` servers (ports chosen by the OS at bind time) and each one's own greedy answers."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from eval_agent.agents.hf import HFPolicy
    from eval_agent.agents.serve import make_server, serve_in_thread

    root = tmp_path_factory.mktemp("two_servers")
    a = build_tiny_chat_model(root / "a", alfworld_sft_sample)
    model = AutoModelForCausalLM.from_pretrained(a)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 2 and "embed" not in name:
                p.normal_(0.0, 0.3, generator=g)
    model.save_pretrained(root / "b")
    AutoTokenizer.from_pretrained(a).save_pretrained(root / "b")
    policies = [HFPolicy(str(a), device="cpu"), HFPolicy(str(root / "b"), device="cpu")]
    batch = [[Message("user", f"You are in room {i}. Your task is to: find the key {i}.")] for i in range(5)]
    own = [p.generate(batch, PARAMS) for p in policies]
    srvs = [make_server(p, "tiny") for p in policies]
    for s in srvs:
        serve_in_thread(s)
    yield srvs, batch, own
    for s in srvs:
        s.close()
    for p in policies:
        p.close()


def test_batch_is_spread_over_servers_and_answers_keep_their_order(servers):
    from steca.sampling.policies import MultiServerPolicy, build_policy

    srvs, batch, (own_a, own_b) = servers
    assert own_a != own_b  # the two models answer differently, so the answers tell the servers apart
    policy = build_policy("openai", "tiny", ",".join(s.base_url for s in srvs))
    assert isinstance(policy, MultiServerPolicy) and len(policy.policies) == 2
    try:
        # row i goes to server i % 2
        assert policy.generate(batch, PARAMS) == [own_a[0], own_b[1], own_a[2], own_b[3], own_a[4]]
        # a request the server refuses (a role it does not know: HTTP 400) fails its own row only
        with pytest.raises(RowErrors) as err:
            policy.generate([batch[0], [Message("tool", "bad")]], PARAMS)
        assert err.value.outputs == [own_a[0], None] and set(err.value.errors) == {1}
        assert "400" in err.value.errors[1] or "role" in err.value.errors[1]
    finally:
        policy.close()
