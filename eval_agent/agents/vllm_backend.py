"""``vllm`` backend: vLLM's offline engine (GPU only; import-guarded).

``pip install -r requirements-gpu.txt`` installs vLLM. The engine is created with
``enable_prefix_caching=True``: conversations that share a prefix (the instruction and in-context
example of every episode, the expert prefix of the N Monte Carlo rollouts of one state, the
history of an episode from one turn to the next) reuse its KV blocks instead of recomputing them.
``tensor_parallel_size`` shards the model over that many GPUs of the node.

Prompts are rendered with the tokenizer's chat template exactly as the ``hf`` backend renders
them, so both backends see the same tokens. Sampling follows the ``SamplingParams`` of each row
(``temperature == 0`` is greedy); row ``i`` of a call with seed ``s`` uses seed ``s + i``
(see :func:`eval_agent.agents.backend_utils.params_per_row`).

Batch invariance (``batch_invariant=True``; the sampling stages set it when they sample, see
``steca/sampling/sampling_cli.py``). By default vLLM's kernels pick their tiling and reduction
order from the batch, so a sampled episode can depend on what else is in flight. vLLM 0.32.0 has a
batch-invariant mode, switched on by the environment variable ``VLLM_BATCH_INVARIANT=1`` (read in
``vllm/envs.py``; ``vllm/model_executor/determinism/batch_invariant.py`` then installs
batch-invariant matmul, attention and reduction kernels, fixes the all-reduce order under tensor
parallelism and turns TF32 off). Its documentation lists NVIDIA GPUs of compute capability 8.0 or
higher (and Intel XPUs with Triton attention), warns that it may be slower, and asks for an
explicit seed per request, which every row here has. The option sets the variable in this process
before the engine starts (its workers inherit it); it cannot be switched off again in the same
process. For an OpenAI-compatible ``vllm serve`` behind the ``openai`` backend, start the server
with ``VLLM_BATCH_INVARIANT=1`` yourself.

Example::

    python -m eval_agent.main --agent_config vllm --model_name /models/steca-llama2-7b \\
        --exp_config alfworld --split dev
"""
from __future__ import annotations

import logging
import os
from typing import Any, Sequence

from eval_agent.agents.policy import Policy
from eval_agent.agents.backend_utils import RowParams, params_per_row, to_chat, truncate_at_stop
from eval_agent.agents.errors import FatalPolicyError, RowErrors
from eval_agent.types import Message

logger = logging.getLogger(__name__)

BATCH_INVARIANT_ENV = "VLLM_BATCH_INVARIANT"  # vllm/envs.py of the pinned release


def vllm_available() -> bool:
    """True when ``import vllm`` works (a CUDA machine with vLLM installed)."""
    try:
        import vllm  # noqa: F401
    except Exception:  # ImportError, or a CUDA/driver error raised at import
        return False
    return True


class VLLMPolicy(Policy):
    """vLLM offline ``LLM`` over a local model directory or hub name."""

    supports_row_params = True

    def __init__(self, model_path: str, tensor_parallel_size: int = 1, dtype: str = "auto",
                 gpu_memory_utilization: float = 0.9, max_model_len: int | None = None, seed: int = 0,
                 enable_prefix_caching: bool = True, trust_remote_code: bool = False, batch_invariant: bool = False,
                 **engine_kwargs: Any):
        if batch_invariant:
            os.environ[BATCH_INVARIANT_ENV] = "1"  # vLLM's switch; read when the engine starts
        try:
            from vllm import LLM
        except ImportError as e:
            raise FatalPolicyError("the vllm backend needs vLLM on a CUDA machine: "
                                   "pip install -r requirements-gpu.txt (or use --agent_config hf)") from e
        self.llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size, dtype=dtype,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, seed=seed,
                       enable_prefix_caching=enable_prefix_caching, trust_remote_code=trust_remote_code,
                       **engine_kwargs)
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)
        logger.info("vllm policy: %s, tensor_parallel_size=%d, prefix caching %s, context %d, batch invariant %s",
                    model_path, tensor_parallel_size, enable_prefix_caching, self.max_model_len,
                    os.environ.get(BATCH_INVARIANT_ENV, "0") == "1")

    def render(self, messages: Sequence[Message]) -> str:
        return self.tokenizer.apply_chat_template(to_chat(messages), add_generation_prompt=True, tokenize=False)

    def generate(self, batch: Sequence[Sequence[Message]], params: RowParams) -> list[str]:
        from vllm import SamplingParams as VSP

        rows = params_per_row(params, len(batch))
        outputs: list[str | None] = [None] * len(batch)
        errors: dict[int, str] = {}
        prompts, sps, keep = [], [], []
        for i, (conv, p) in enumerate(zip(batch, rows)):
            ids = self.tokenizer(self.render(conv), add_special_tokens=False)["input_ids"]
            if len(ids) + p.max_new_tokens > self.max_model_len:
                errors[i] = (f"prompt of {len(ids)} tokens + max_new_tokens {p.max_new_tokens} exceeds the "
                             f"model context of {self.max_model_len} tokens")
                continue
            prompts.append({"prompt_token_ids": ids})
            sps.append(VSP(temperature=p.temperature, top_p=p.top_p if p.temperature > 0 else 1.0,
                           max_tokens=p.max_new_tokens, stop=list(p.stop) or None, seed=p.seed))
            keep.append(i)
        if prompts:
            results = self.llm.generate(prompts, sps, use_tqdm=False)
            for i, res, p in zip(keep, results, (rows[k] for k in keep)):
                outputs[i] = truncate_at_stop(res.outputs[0].text, p.stop).strip()
        if errors:
            raise RowErrors(outputs, errors)
        return [o or "" for o in outputs]

    def close(self) -> None:
        self.llm = None  # type: ignore[assignment]
