"""The vllm backend's calls against the pinned vLLM release's own signatures, read from its source.

vLLM needs CUDA and is hundreds of MB, so CI does not install it. scripts/extract_vllm_signatures.py
parsed the pinned release's wheel (no import) into tests/vllm_signatures.json; here every call
eval_agent/agents/vllm_backend.py makes into vLLM is parsed from our source and checked against it:
each keyword exists, positional arguments fit, the prompt dict's keys are ``TokensPrompt`` keys and
the attribute chain we read exists.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
SIGS = json.loads((REPO / "tests" / "vllm_signatures.json").read_text())
SOURCE = (REPO / "eval_agent" / "agents" / "vllm_backend.py").read_text()
TREE = ast.parse(SOURCE)


def _calls(func_name: str) -> list[ast.Call]:
    """Calls whose callee is the name ``func_name`` or an attribute named ``func_name``."""
    out = []
    for node in ast.walk(TREE):
        if isinstance(node, ast.Call):
            f = node.func
            if (isinstance(f, ast.Name) and f.id == func_name) or (isinstance(f, ast.Attribute) and f.attr == func_name):
                out.append(node)
    return out


def _keywords(call: ast.Call) -> list[str]:
    return [k.arg for k in call.keywords if k.arg is not None]


def test_signatures_are_from_the_pinned_release():
    pins = {}
    for line in (REPO / "requirements-gpu.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            pins[req.name] = str(req.specifier).lstrip("=")
    assert SIGS["vllm"] == pins["vllm"], "rerun scripts/extract_vllm_signatures.py on the pinned vLLM wheel"


def test_llm_constructor_keywords_exist():
    init = SIGS["LLM.__init__"]
    accepted = set(init["positional"]) | set(init["keyword_only"])
    (call,) = _calls("LLM")
    assert not call.args
    for kw in _keywords(call):
        # LLM passes keywords it does not name to EngineArgs
        assert kw in accepted or (init["var_keyword"] and kw in SIGS["EngineArgs"]), f"LLM(..., {kw}=) is unknown"
    assert "enable_prefix_caching" in SIGS["EngineArgs"] and init["var_keyword"]


def test_sampling_params_keywords_exist():
    (call,) = _calls("VSP")  # vllm.SamplingParams, imported as VSP
    assert not call.args
    for kw in _keywords(call):
        assert kw in SIGS["SamplingParams"], f"SamplingParams(..., {kw}=) is not a field"
    assert {"seed", "max_tokens", "stop"} <= set(_keywords(call))  # per-request seeds


def test_generate_call_fits():
    gen = SIGS["LLM.generate"]
    (call,) = [c for c in _calls("generate") if isinstance(c.func.value, ast.Attribute) and c.func.value.attr == "llm"]
    assert len(call.args) <= len(gen["positional"]) and gen["positional"][:2] == ["prompts", "sampling_params"]
    for kw in _keywords(call):
        assert kw in gen["positional"] or kw in gen["keyword_only"], f"generate(..., {kw}=) is unknown"


def test_token_prompts_and_attributes_exist():
    keys = [k.value for node in ast.walk(TREE) if isinstance(node, ast.Dict)
            for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)]
    assert "prompt_token_ids" in keys
    assert set(keys) <= set(SIGS["TokensPrompt"])
    assert "llm_engine" in SIGS["LLM.attributes"] and "model_config" in SIGS["LLMEngine.attributes"]
    assert "self.llm.llm_engine.model_config.max_model_len" in SOURCE
    assert _calls("get_tokenizer") and SIGS["LLM.get_tokenizer"]["positional"] == []


def test_the_batch_invariance_switch_is_a_variable_the_pinned_release_reads():
    (name,) = [node.value.value for node in TREE.body if isinstance(node, ast.Assign)
               and getattr(node.targets[0], "id", None) == "BATCH_INVARIANT_ENV"]
    assert name == "VLLM_BATCH_INVARIANT" and name in SIGS["envs"]
