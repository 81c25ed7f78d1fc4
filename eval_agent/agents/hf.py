"""``hf`` backend: any local ``AutoModelForCausalLM`` directory, batched generation on CPU or GPU.

How a batch is answered:

1. every conversation is rendered with the tokenizer's chat template
   (``add_generation_prompt=True``) and tokenized without extra special tokens (the template
   carries them);
2. rows are grouped by sampling settings (temperature, top_p, max_new_tokens, stop strings) and by
   their *prompt* (the turns up to the first assistant turn: instruction, in-context example,
   "OK"), sorted by length and cut into chunks of ``max_batch_size``;
3. prompt caching: the KV cache of each distinct prompt is computed once (batch 1) and kept in a
   small LRU; a chunk copies it, repeats it over its rows and only the rest of each conversation
   is prefilled. Every episode of an evaluation shares the instruction and example (~850 tokens
   with the nano tokenizer), so this removes most of the prefill. The split point depends on the
   conversation alone, never on the batch;
4. each chunk is decoded by ``model.generate`` with the KV cache. Decoding is greedy
   (``do_sample=False``); rows with ``temperature > 0`` are sampled by :class:`RowSampler`, a
   logits processor that draws each row's token with that row's own ``torch.Generator`` seeded
   from the row's ``SamplingParams.seed``. A row's sample therefore depends on its seed, not on
   which other rows share its batch;
5. stop strings end generation early (``stop_strings``) and are cut from the returned text.

Padding. Rows are laid out as ``[shared prompt | padding | own suffix]`` (left padding of the
suffix when there is no cached prompt). ``generate`` derives position ids from the cumulative sum
of the attention mask, so padded rows see exactly the positions they would see alone, and the
padded slots are masked out of attention. What remains is floating-point rounding of different
matrix shapes: in float32 it never changed a greedy token in our tests (``tests/test_backends.py``
compares batched and one-at-a-time greedy outputs, and cached against uncached prompts). In bf16
on GPUs the rounding is coarser and a near-tie can flip; use ``dtype=float32`` when bit-exact
agreement matters more than speed.

A prompt whose length plus ``max_new_tokens`` exceeds the model's context
(``max_model_len``, default the config's ``max_position_embeddings``) is not generated: the
call raises :class:`~eval_agent.agents.errors.RowErrors` carrying the other rows' answers.
"""
from __future__ import annotations

import copy
import logging
from collections import OrderedDict
from typing import Any, Sequence

from eval_agent.agents.base import Policy, SamplingParams
from eval_agent.agents.common import RowParams, group_key, params_per_row, to_chat, truncate_at_stop
from eval_agent.agents.errors import FatalPolicyError, RowErrors
from eval_agent.types import Message

logger = logging.getLogger(__name__)


def _torch():
    import torch

    return torch


class RowSampler:
    """A logits processor that samples each row with its own generator (temperature + nucleus).

    For row ``i`` with temperature ``T_i > 0``: ``p = softmax(z / T_i)``, restricted to the
    smallest set of most likely tokens whose mass reaches ``top_p_i`` (renormalised), then one
    token ``k ~ p`` drawn with generator ``i``. The row's scores become ``0`` at ``k`` and
    ``-inf`` elsewhere, so the greedy step of ``generate`` picks exactly ``k``. Rows with
    ``T_i == 0`` are left alone (greedy).
    """

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float], seeds: Sequence[int], device: Any):
        torch = _torch()
        self.temperatures = list(temperatures)
        self.top_ps = list(top_ps)
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s) % (2**63))
            self.generators.append(g)

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = _torch()
        out = scores.clone()
        for i, t in enumerate(self.temperatures):
            if t <= 0:
                continue
            logits = scores[i].float() / t
            probs = torch.softmax(logits, dim=-1)
            top_p = self.top_ps[i]
            if top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                keep_sorted = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < top_p
                keep_sorted[0] = True
                mask = torch.zeros_like(probs, dtype=torch.bool)
                mask[order[keep_sorted]] = True
                probs = torch.where(mask, probs, torch.zeros_like(probs))
                probs = probs / probs.sum()
            k = torch.multinomial(probs, 1, generator=self.generators[i])
            row = torch.full_like(out[i], float("-inf"))
            row[k] = 0.0
            out[i] = row
        return out


class HFPolicy(Policy):
    """A local Hugging Face causal LM answering batches of conversations.

    ``model_path``: a model directory (or hub name when online). ``device``: ``cpu``, ``cuda``,
    ``cuda:1``... (default: cuda when available). ``dtype``: ``float32``, ``bfloat16``,
    ``float16`` or ``auto`` (float32 on CPU, bfloat16 on GPU). ``max_batch_size``: rows per
    ``generate`` call. ``max_model_len``: context limit (prompt + new tokens).
    """

    supports_row_params = True

    def __init__(self, model_path: str, device: str | None = None, dtype: str = "auto", max_batch_size: int = 64,
                 max_model_len: int | None = None, trust_remote_code: bool = False,
                 attn_implementation: str | None = None, seed: int = 0, prefix_cache_size: int = 4,
                 min_prefix_tokens: int = 64):
        torch = _torch()
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if dtype == "auto":
            torch_dtype = torch.float32 if self.device.type == "cpu" else torch.bfloat16
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_path, trust_remote_code=trust_remote_code)
            kwargs: dict[str, Any] = {"dtype": torch_dtype, "trust_remote_code": trust_remote_code}
            if attn_implementation:
                kwargs["attn_implementation"] = attn_implementation
            self.model = AutoModelForCausalLM.from_pretrained(model_path, **kwargs).to(self.device).eval()
        except OSError as e:
            raise FatalPolicyError(f"cannot load a model from {model_path!r}: {e}") from e
        if self.tokenizer.chat_template is None:
            raise FatalPolicyError(f"{model_path}: the tokenizer has no chat template")
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len or int(getattr(self.model.config, "max_position_embeddings", 4096))
        gc = self.model.generation_config
        eos = gc.eos_token_id if gc is not None and gc.eos_token_id is not None else self.tokenizer.eos_token_id
        self.eos_token_id = eos
        self.seed = seed
        self._fallback_seed = seed
        self.n_generate_calls = 0
        self.prefix_cache_size = prefix_cache_size
        self.min_prefix_tokens = min_prefix_tokens
        self._prefix_store: "OrderedDict[tuple[int, ...], Any]" = OrderedDict()
        self._prompt_tokens: "OrderedDict[tuple[Message, ...], list[int]]" = OrderedDict()
        logger.info("hf policy: %s on %s (%s), context %d", model_path, self.device, torch_dtype, self.max_model_len)

    # ------------------------------------------------------------------ prompts
    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text: the chat template with the assistant generation prompt."""
        return self.tokenizer.apply_chat_template(to_chat(messages), add_generation_prompt=True, tokenize=False)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    # ------------------------------------------------------------------ generation
    def generate(self, batch: Sequence[Sequence[Message]], params: RowParams) -> list[str]:
        """One assistant reply per conversation. ``params``: one for all rows or one per row."""
        rows = params_per_row(params, len(batch))
        rows = [self._fill_seed(p) for p in rows]
        ids = [self.encode(m) for m in batch]
        outputs: list[str | None] = [None] * len(batch)
        errors: dict[int, str] = {}
        splits = [self._prompt_split(m, x) for m, x in zip(batch, ids)]
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, p in enumerate(rows):
            if len(ids[i]) + p.max_new_tokens > self.max_model_len:
                errors[i] = (f"prompt of {len(ids[i])} tokens + max_new_tokens {p.max_new_tokens} exceeds the "
                             f"model context of {self.max_model_len} tokens")
                continue
            groups.setdefault((group_key(p), tuple(ids[i][:splits[i]])), []).append(i)
        for (_, prefix), members in groups.items():
            members.sort(key=lambda i: len(ids[i]))
            for start in range(0, len(members), self.max_batch_size):
                chunk = members[start:start + self.max_batch_size]
                texts = self._generate_chunk([ids[i] for i in chunk], [rows[i] for i in chunk], len(prefix))
                for i, t in zip(chunk, texts):
                    outputs[i] = t
        if errors:
            raise RowErrors(outputs, errors)
        return [o if o is not None else "" for o in outputs]

    def _fill_seed(self, p: SamplingParams) -> SamplingParams:
        if p.seed is not None or p.temperature <= 0:
            return p
        self._fallback_seed += 1
        return SamplingParams(p.temperature, p.top_p, p.max_new_tokens, p.stop, self._fallback_seed)

    def _prefix_kv(self, prefix: tuple[int, ...]) -> Any:
        """The KV cache of ``prefix`` (batch 1), computed once and kept in a small LRU."""
        torch = _torch()
        cache = self._prefix_store.get(prefix)
        if cache is None:
            with torch.inference_mode():
                out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
            cache = out.past_key_values
            self._prefix_store[prefix] = cache
            while len(self._prefix_store) > self.prefix_cache_size:
                self._prefix_store.popitem(last=False)
        self._prefix_store.move_to_end(prefix)
        return cache

    def _prompt_split(self, messages: Sequence[Message], ids: list[int]) -> int:
        """Tokens of the conversation's prompt (the turns up to its first assistant turn) when cacheable.

        The split depends on the conversation alone, never on the batch, so a conversation is
        computed the same way whichever rows share its call. 0 means no prefix caching.
        """
        if self.prefix_cache_size <= 0:
            return 0
        first_assistant = next((i for i, m in enumerate(messages) if m.role == "assistant"), None)
        if first_assistant is None or first_assistant == len(messages) - 1:
            return 0
        key = tuple(messages[: first_assistant + 1])
        prefix = self._prompt_tokens.get(key)
        if prefix is None:
            text = self.tokenizer.apply_chat_template(to_chat(key), tokenize=False)
            prefix = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompt_tokens[key] = prefix
            while len(self._prompt_tokens) > 64:
                self._prompt_tokens.popitem(last=False)
        k = len(prefix)
        if k < self.min_prefix_tokens or k >= len(ids) or ids[:k] != prefix:
            return 0
        return k

    def _generate_chunk(self, ids: list[list[int]], rows: list[SamplingParams], shared: int = 0) -> list[str]:
        torch = _torch()
        from transformers import GenerationConfig, LogitsProcessorList

        p0 = rows[0]
        pad = self.tokenizer.pad_token_id
        # layout per row: [shared prefix | padding | own suffix]; positions come from the mask's cumsum
        width_suffix = max(len(x) - shared for x in ids)
        width = shared + width_suffix
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for r, x in enumerate(ids):
            if shared:
                input_ids[r, :shared] = torch.tensor(x[:shared], dtype=torch.long)
                mask[r, :shared] = 1
            suffix = x[shared:]
            input_ids[r, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
            mask[r, width - len(suffix):] = 1
        kwargs: dict[str, Any] = {}
        if shared:
            cache = copy.deepcopy(self._prefix_kv(tuple(ids[0][:shared])))
            if len(ids) > 1:
                cache.batch_repeat_interleave(len(ids))
            kwargs["cache"] = cache
        config = GenerationConfig(max_new_tokens=p0.max_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=self.eos_token_id, num_beams=1, use_cache=True)
        if p0.temperature > 0:
            kwargs["logits_processor"] = LogitsProcessorList(
                [RowSampler([p.temperature for p in rows], [p.top_p for p in rows],
                            [int(p.seed or 0) for p in rows], self.device)])
        if p0.stop:
            config.stop_strings = list(p0.stop)
            kwargs["tokenizer"] = self.tokenizer
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                      generation_config=config, **kwargs)
        self.n_generate_calls += 1
        new = out[:, width:].tolist()
        texts = []
        for seq in new:
            text = self.tokenizer.decode(seq, skip_special_tokens=True)
            texts.append(truncate_at_stop(text, p0.stop).strip() if p0.stop else text.strip())
        return texts

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
