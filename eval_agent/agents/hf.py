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
4. each chunk is decoded with the KV cache (by ``model.generate``, or by the policy's own loop
   when conversation reuse is on, below). Decoding is greedy
   (``do_sample=False``); rows with ``temperature > 0`` are sampled by :class:`RowSampler`, a
   logits processor that draws each row's token with that row's own ``torch.Generator`` seeded
   from the row's ``SamplingParams.seed``. A row's sample therefore depends on its seed, not on
   which other rows share its batch;
5. stop strings end generation early (``stop_strings``) and are cut from the returned text.

Conversation KV reuse (``reuse_cache=True``, the default). The rollout engine asks for one turn per
call and each episode's next call repeats its whole history plus one reply and one observation.
After every call the KV cache of each row (its prompt and the tokens it generated) is kept in a
bounded LRU (``conv_cache_size`` entries, default ``2 x max_batch_size``) keyed by its token ids.
A new row takes the entry sharing the longest token prefix with it (or the prompt cache when
that is longer) and only its remaining tokens are prefilled, always at least one. The entry a
row continued from (one whose whole input the row starts with) is dropped once the row's new
entry, which holds the same prefix, is stored.
Rows with different cached lengths share one ``generate`` call with the layout
``[padding | own cached tokens | padding | own new tokens]``: the cached keys and values are
copied into a zero-padded batch cache and the padded slots are masked, so each row sees its own
positions (the cumulative sum of its mask) and nothing else. Entries live on the model's device;
each costs ``2 x layers x kv_heads x head_dim x tokens`` values, so on a GPU with a large model
lower ``conv_cache_size`` (or set ``reuse_cache=false``). Models whose cache is not a plain
per-layer key/value cache (sliding-window or linear-attention layers) fall back to the prompt
cache alone. ``prefix_cache_size=0`` turns every reuse across calls off (the released behaviour).
With reuse on, rows of one call with identical tokens (the N Monte Carlo rollouts of one state)
are prefilled once: one forward pass computes their KV up to the last token, and each row
starts decoding from it with its own seed. During decoding the batch cache appends new keys and
values into preallocated room instead of concatenating the whole cache every token.

Shared prompt, read once (``shared_prefix=True``, the default with reuse). When every row of a
chunk has the same cached prompt (the instruction and in-context example, about 60% of a row's
context in an ALFWorld rollout), the batch cache keeps that prompt's keys and values once and
each row's own tokens per row; the model's attention is switched to
:mod:`eval_agent.agents.shared_prefix`, which computes attention over the prompt with one matrix
product for all rows and merges it with each row's own part (cascade attention; outputs equal
ordinary attention up to rounding, tests compare the two). With reuse the chunk is decoded by
:meth:`HFPolicy._decode`, a loop of the policy's own that does what ``model.generate`` does for
this case (greedy or :class:`RowSampler` draws, EOS, stop strings, padding of stopped rows)
without its per-step bookkeeping; without reuse (the default on GPUs) ``model.generate`` decodes.

Padding. Rows are laid out as ``[shared prompt | padding | own suffix]`` (left padding of the
suffix when there is no cached prompt). ``generate`` derives position ids from the cumulative sum
of the attention mask, so padded rows see exactly the positions they would see alone, and the
padded slots are masked out of attention. What remains is floating-point rounding of different
matrix shapes: in float32 it never changed a greedy token in our tests (``tests/test_backends.py``
compares batched and one-at-a-time greedy outputs, and cached against uncached prompts). In bf16
on GPUs the rounding is coarser and a near-tie can flip; use ``dtype=float32`` when bit-exact
agreement matters more than speed.

Batch invariance (``batch_invariant=True``, the default). A row's numbers depend on the shapes
they are computed in: on a CPU a matrix product of ``M`` rows rounds each row differently for
different ``M`` (MKL picks its kernel by shape; ``M = 1`` is a matrix-vector product), and a padded
row's attention sums over columns at other offsets. So a batched row can differ in the last bits
from the same row alone, and a sampled token near a boundary of the inverse CDF can flip: the
episode would depend on ``--max_active``. Sampled rows (``temperature > 0``) therefore never share a
forward pass or a per-conversation cache entry: each is computed as the prompt's KV (batch 1,
cached: a function of the prompt alone), one forward pass at batch 1 over the rest but its last
token, then batch-1 decoding with its own seed. The N identical rows of a Monte Carlo state share
the first two steps (the same bits as computing them N times). Greedy rows keep every batching and
cache above, so evaluation keeps its speed; ``benchmarks/batch_invariance.py`` measures what
invariance costs sampling. On GPUs use the ``vllm`` backend for sampling (its own batch-invariant
mode: :mod:`eval_agent.agents.vllm_backend`).

A prompt whose length plus ``max_new_tokens`` exceeds the model's context
(``max_model_len``, default the config's ``max_position_embeddings``) is not generated: the
call raises :class:`~eval_agent.agents.errors.RowErrors` carrying the other rows' answers.
"""
from __future__ import annotations

import copy
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.backend_utils import RowParams, group_key, params_per_row, to_chat, truncate_at_stop
from eval_agent.agents.errors import FatalPolicyError, RowErrors
from eval_agent.agents.shared_prefix import ATTENTION_NAME, shared_prefix_attention
from eval_agent.agents.transformers_adapter import attention_implementation, cache_kwargs, internals
from eval_agent.types import Message

logger = logging.getLogger(__name__)


def _torch():
    import torch

    return torch


class RowSampler:
    """A logits processor that samples each row with its own generator (temperature + nucleus).

    For row ``i`` with temperature ``T_i > 0``: ``p = softmax(z / T_i)``, restricted to the
    smallest set of most likely tokens whose mass reaches ``top_p_i`` (renormalised), then one
    token drawn by inverse transform sampling: ``u ~ U[0, 1)`` from generator ``i`` and
    ``k = min{j : sum_{l <= j} p_l > u}``. The row's scores become ``0`` at ``k`` and ``-inf``
    elsewhere, so the greedy step of ``generate`` picks exactly ``k``. Rows with ``T_i == 0`` are
    left alone (greedy). The arithmetic runs on all sampled rows at once; only the uniform draws
    are per row, so a row's tokens depend on its seed and its logits, not on its batch.
    """

    def __init__(self, temperatures: Sequence[float], top_ps: Sequence[float], seeds: Sequence[int], device: Any):
        torch = _torch()
        self.temperatures = list(temperatures)
        self.top_ps = list(top_ps)
        self.rows = [i for i, t in enumerate(self.temperatures) if t > 0]
        self.generators = []
        for s in seeds:
            g = torch.Generator(device=device)
            g.manual_seed(int(s) % (2**63))
            self.generators.append(g)
        self._index = torch.tensor(self.rows, dtype=torch.long, device=device)
        self._temps = torch.tensor([self.temperatures[i] for i in self.rows], dtype=torch.float32, device=device)
        self._top_p = torch.tensor([self.top_ps[i] for i in self.rows], dtype=torch.float32, device=device)
        self._nucleus = any(self.top_ps[i] < 1.0 for i in self.rows)
        self._device = device

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        torch = _torch()
        if not self.rows:
            return scores
        idx = self._index
        probs = torch.softmax(scores.index_select(0, idx).float() / self._temps[:, None], dim=-1)
        if self._nucleus:
            sorted_p, order = torch.sort(probs, dim=-1, descending=True)
            keep_sorted = (torch.cumsum(sorted_p, dim=-1) - sorted_p) < self._top_p[:, None]
            keep_sorted[:, 0] = True
            keep = torch.zeros_like(keep_sorted).scatter(1, order, keep_sorted)
            probs = torch.where(keep, probs, torch.zeros_like(probs))
        cdf = torch.cumsum(probs, dim=-1)
        u = torch.stack([torch.rand((), generator=self.generators[i], device=self._device) for i in self.rows])
        k = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1).contiguous(), right=True).clamp_(max=cdf.shape[1] - 1)
        out = scores.clone()
        out[idx] = float("-inf")
        out[idx, k.squeeze(1)] = 0.0
        return out


def row_kv(cache: Any, r: int, cols: Any) -> list[tuple[Any, Any]]:
    """Per layer ``(keys, values)`` ``[1, kv_heads, len(cols), d]`` of row ``r`` at batch columns ``cols``.

    ``cols`` are columns of the whole batch layout (ascending). With a shared prefix of ``P``
    columns (every row sees all of them, so ``cols`` starts with ``0 .. P-1``) the prefix comes
    from the layer's single copy and the other columns from the row part, shifted by ``P``.
    """
    torch = _torch()
    out = []
    for layer in cache.layers:
        p = int(layer.prefix_keys.shape[-2]) if hasattr(layer, "prefix_keys") else 0
        own = cols[p:] - p
        k = layer.keys[r:r + 1].index_select(2, own)
        v = layer.values[r:r + 1].index_select(2, own)
        if p:
            k = torch.cat([layer.prefix_keys, k], dim=2)
            v = torch.cat([layer.prefix_values, v], dim=2)
        out.append((k, v))
    return out


@dataclass
class _KVEntry:
    """The KV cache of one token sequence: ``kv[layer] = (keys, values)``, each ``[1, heads, len, dim]``."""

    tokens: np.ndarray
    kv: list[tuple[Any, Any]]
    prompt_len: int  # tokens that were the row's input (the rest were generated)


def common_prefix_len(a: np.ndarray, b: np.ndarray) -> int:
    """Length of the longest common prefix of two token arrays: the largest ``l`` with ``a[:l] == b[:l]``."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    eq = a[:n] == b[:n]
    return n if bool(eq.all()) else int(np.argmin(eq))


class HFPolicy(Policy):
    """A local Hugging Face causal LM answering batches of conversations.

    ``model_path``: a model directory (or hub name when online). ``device``: ``cpu``, ``cuda``,
    ``cuda:1``... (default: cuda when available). ``dtype``: ``float32``, ``bfloat16``,
    ``float16`` or ``auto`` (float32 on CPU, bfloat16 on GPU). ``max_batch_size``: rows per
    ``generate`` call. ``max_model_len``: context limit (prompt + new tokens). ``reuse_cache``:
    keep each conversation's KV cache between calls (``conv_cache_size`` entries, default
    ``2 x max_batch_size``); ``shared_prefix``: with reuse, keep a chunk's common prompt once and
    attend to it with shared-prefix attention (models using ``sdpa`` or ``eager`` attention); see
    the module docstring. ``batch_invariant`` (default on): answer every *sampled* row
    (``temperature > 0``) by a computation of its own (see "Batch invariance" in the module
    docstring), so that a sampled reply depends only on the conversation and its seed, bit for
    bit, whatever else is in flight; greedy rows keep the batched path. Off: sampled rows are
    batched too (faster; batched rows round differently from single rows, which can flip a sampled
    token now and then).
    ``transformers_internals``: use transformers' internals for speed
    (:mod:`eval_agent.agents.transformers_adapter`; default: on the tested releases only); the
    outputs are the same either way.
    """

    supports_row_params = True

    def __init__(self, model_path: str, device: str | None = None, dtype: str = "auto", max_batch_size: int = 64,
                 max_model_len: int | None = None, trust_remote_code: bool = False,
                 attn_implementation: str | None = None, seed: int = 0, prefix_cache_size: int = 4,
                 min_prefix_tokens: int = 64, reuse_cache: bool | str = "auto", conv_cache_size: int | None = None,
                 shared_prefix: bool = True, batch_invariant: bool = True,
                 transformers_internals: bool | None = None):
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
        self.batch_invariant = batch_invariant
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
        self.conv_cache_size = conv_cache_size if conv_cache_size is not None else 2 * max_batch_size
        if reuse_cache == "auto":  # on for CPU; on a GPU the stored caches of a 7B model can exceed its memory
            reuse_cache = self.device.type == "cpu"
        self.reuse_cache = bool(reuse_cache) and prefix_cache_size > 0 and self.conv_cache_size > 0
        # transformers' internals (growing cache layers, shared-prefix attention) only on the tested releases
        self.internals = internals(transformers_internals)
        if self.reuse_cache and not self.internals.plain_kv_cache(self.model.config):
            logger.warning("hf policy: the model's cache is not a plain key/value cache; conversation reuse is off")
            self.reuse_cache = False
        # rows of a batch share the instruction prompt's KV once (cascade attention); see shared_prefix.py
        self.shared_prefix = bool(self.reuse_cache and shared_prefix
                                  and self.internals.use_attention(self.model, ATTENTION_NAME, shared_prefix_attention))
        self._conv_store: "OrderedDict[int, _KVEntry]" = OrderedDict()
        self._entry_ids = itertools.count()
        self.n_reused_tokens = 0
        self.n_prefilled_tokens = 0
        logger.info("hf policy: %s on %s (%s), context %d", model_path, self.device, torch_dtype, self.max_model_len)

    # ------------------------------------------------------------------ prompts
    def render(self, messages: Sequence[Message]) -> str:
        """The prompt text: the chat template with the assistant generation prompt."""
        return self.tokenizer.apply_chat_template(to_chat(messages), add_generation_prompt=True, tokenize=False)

    def encode(self, messages: Sequence[Message]) -> list[int]:
        return self.tokenizer(self.render(messages), add_special_tokens=False)["input_ids"]

    def encode_batch(self, batch: Sequence[Sequence[Message]]) -> list[list[int]]:
        """:meth:`encode` of every conversation, tokenized in one call (the same ids, row by row)."""
        if not batch:
            return []
        return list(self.tokenizer([self.render(m) for m in batch], add_special_tokens=False)["input_ids"])

    # ------------------------------------------------------------------ generation
    def generate(self, batch: Sequence[Sequence[Message]], params: RowParams) -> list[str]:
        """One assistant reply per conversation. ``params``: one for all rows or one per row."""
        rows = params_per_row(params, len(batch))
        rows = [self._fill_seed(p) for p in rows]
        ids = self.encode_batch(batch)
        outputs: list[str | None] = [None] * len(batch)
        errors: dict[int, str] = {}
        splits = [self._prompt_split(m, x) for m, x in zip(batch, ids)]
        groups: dict[tuple[Any, ...], list[int]] = {}
        alone: list[int] = []
        for i, p in enumerate(rows):
            if len(ids[i]) + p.max_new_tokens > self.max_model_len:
                errors[i] = (f"prompt of {len(ids[i])} tokens + max_new_tokens {p.max_new_tokens} exceeds the "
                             f"model context of {self.max_model_len} tokens")
                continue
            if self.batch_invariant and p.temperature > 0:
                alone.append(i)
                continue
            groups.setdefault((group_key(p), tuple(ids[i][:splits[i]])), []).append(i)
        self._generate_invariant(ids, rows, splits, alone, outputs)
        if self.reuse_cache:
            self._generate_reusing(ids, rows, splits, groups, outputs)
        else:
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
            kwargs.update(cache_kwargs(self.model, cache))
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

    # ------------------------------------------------------------------ conversation KV reuse
    def _best_source(self, ids: list[int], split: int) -> tuple[int, list[tuple[Any, Any]] | None, int | None]:
        """The longest reusable KV for ``ids``: ``(length, kv, continued)``, at most ``len(ids) - 1`` tokens.

        ``continued`` is the id of the entry when ``ids`` continues that entry's conversation (it
        starts with the entry's whole input), else None: only such an entry is superseded by the
        row's new one. An entry sharing just the instruction prompt stays for its own conversation.
        """
        x = np.asarray(ids, dtype=np.int64)
        best, kv, key = 0, None, None
        for k, entry in self._conv_store.items():
            n = common_prefix_len(entry.tokens, x)
            if n > best:
                best, kv, key = n, entry.kv, (k if n >= entry.prompt_len else None)
        if split > best:
            cache = self._prefix_kv(tuple(ids[:split]))
            best, kv, key = split, [(layer.keys, layer.values) for layer in cache.layers], None
        return min(best, len(ids) - 1), kv, key

    def _generate_reusing(self, ids: list[list[int]], rows: list[SamplingParams], splits: list[int],
                          groups: dict[tuple[Any, ...], list[int]], outputs: list[str | None]) -> None:
        """Answer every grouped row, each reusing the longest cached KV of its tokens (see the module docstring)."""
        by_params: dict[tuple[Any, ...], list[int]] = {}
        for (gkey, _), members in groups.items():
            by_params.setdefault(gkey, []).extend(members)
        for members in by_params.values():
            members.sort(key=lambda i: len(ids[i]))
            for start in range(0, len(members), self.max_batch_size):
                chunk = members[start:start + self.max_batch_size]
                sources = [self._best_source(ids[i], splits[i]) for i in chunk]
                chunk_ids = [ids[i] for i in chunk]
                kvs = self._prefill_shared(chunk_ids, [(n, kv) for n, kv, _ in sources])
                texts, entries = self._generate_chunk_reusing(chunk_ids, [rows[i] for i in chunk], kvs)
                for i, t in zip(chunk, texts):
                    outputs[i] = t
                for (_, _, used), entry in zip(sources, entries):
                    if used is not None:
                        self._conv_store.pop(used, None)
                    self._conv_store[next(self._entry_ids)] = entry
                while len(self._conv_store) > self.conv_cache_size:
                    self._conv_store.popitem(last=False)

    def _layout(self, ids: list[list[int]], sources: list[tuple[int, list[tuple[Any, Any]] | None]],
                reserve: int = 1) -> tuple[Any, Any, Any, int]:
        """Input ids, attention mask and batch KV cache of rows whose first ``sources[r][0]`` tokens are cached.

        ``P``: the tokens every row has cached and shares with every other row (the instruction
        prompt), kept once when shared-prefix attention is on (else ``P = 0``). Row ``r`` with
        ``c_r`` cached and ``s_r`` new tokens, ``C = P + max (c - P)``, ``S = max s``: columns
        ``[0, P)`` hold the shared prefix, ``[C - c_r + P, C)`` the rest of its cached keys/values,
        ``[C + S - s_r, C + S)`` its new tokens; all other columns are masked padding. Returns
        ``(input_ids, mask, cache, C)``; the cache has room for ``S + reserve`` more columns
        before it reallocates.
        """
        torch = _torch()

        pad = self.tokenizer.pad_token_id
        n = len(ids)
        cached = [c for c, _ in sources]
        shared = self._shared_prefix_len(ids, cached)
        width_c = shared + max(c - shared for c in cached)
        width_s = max(len(x) - c for x, c in zip(ids, cached))
        width = width_c + width_s
        input_ids = torch.full((n, width), pad, dtype=torch.long)
        mask = torch.zeros((n, width), dtype=torch.long)
        for r, (x, c) in enumerate(zip(ids, cached)):
            input_ids[r, :shared] = torch.tensor(x[:shared], dtype=torch.long)
            mask[r, :shared] = 1
            if c > shared:
                input_ids[r, width_c - (c - shared):width_c] = torch.tensor(x[shared:c], dtype=torch.long)
                mask[r, width_c - (c - shared):width_c] = 1
            suffix = x[c:]
            input_ids[r, width - len(suffix):] = torch.tensor(suffix, dtype=torch.long)
            mask[r, width - len(suffix):] = 1
        self.n_reused_tokens += sum(cached)
        self.n_prefilled_tokens += sum(len(x) for x in ids) - sum(cached)
        ref = next((kv for c, kv in sources if c), None)
        if shared:
            prefix = [(k0[:, :, :shared], v0[:, :, :shared]) for k0, v0 in ref]
            cache = self.internals.new_cache(self.model.config, width_s + reserve, prefix)
        else:
            cache = self.internals.new_cache(self.model.config, width_s + reserve)
        own = width_c - shared
        if own:
            for layer, (k0, v0) in enumerate(ref):
                keys = k0.new_zeros((n, k0.shape[1], own, k0.shape[3]))
                values = v0.new_zeros((n, v0.shape[1], own, v0.shape[3]))
                for r, (c, kv) in enumerate(sources):
                    if c > shared:
                        keys[r, :, own - (c - shared):] = kv[layer][0][0, :, shared:c]
                        values[r, :, own - (c - shared):] = kv[layer][1][0, :, shared:c]
                cache.update(keys, values, layer)
        return input_ids, mask, cache, width_c

    def _shared_prefix_len(self, ids: list[list[int]], cached: list[int]) -> int:
        """Leading tokens that every row has cached and that are the same in every row (0: none or off)."""
        if not self.shared_prefix or len(ids) < 2:
            return 0
        first = np.asarray(ids[0], dtype=np.int64)
        n = min(cached)
        for x in ids[1:]:
            if n == 0:
                break
            n = min(n, common_prefix_len(first, np.asarray(x, dtype=np.int64)))
        return n if n >= self.min_prefix_tokens else 0

    def _prefill_shared(self, ids: list[list[int]], sources: list[tuple[int, list[tuple[Any, Any]] | None]]
                        ) -> list[tuple[int, list[tuple[Any, Any]] | None]]:
        """Rows with identical tokens (the N rollouts of one state): their KV is computed once.

        For every group of two or more identical rows, one forward pass (batched over the groups)
        computes the KV of all but the last token from the group's cached source; every row of the
        group then starts ``generate`` from that KV with one token left to prefill, and samples
        with its own seed from there. Other rows keep their sources.
        """
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, x in enumerate(ids):
            groups.setdefault(tuple(x), []).append(r)
        shared = [rows for rows in groups.values()
                  if len(rows) > 1 and len(ids[rows[0]]) - 1 - sources[rows[0]][0] >= 2]
        if not shared:
            return sources
        lead = [rows[0] for rows in shared]
        xs = [ids[r][:-1] for r in lead]
        kvs = self._prefill(xs, [sources[r] for r in lead])
        out = list(sources)
        for i, rows in enumerate(shared):
            for r in rows:
                out[r] = (len(xs[i]), kvs[i])
        # the lead rows' tokens were counted here (cached + prefilled); the generate call would count them
        # again as reused
        self.n_reused_tokens -= sum(len(x) for x in xs)
        return out

    def _prefill(self, xs: list[list[int]], sources: list[tuple[int, list[tuple[Any, Any]] | None]]
                 ) -> list[list[tuple[Any, Any]]]:
        """Per row, the KV of all of ``xs[r]``, computed by one forward pass over the tokens after its source."""
        torch = _torch()
        input_ids, mask, cache, width_c = self._layout(xs, sources)
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)
        with torch.inference_mode():
            self.model(input_ids=input_ids[:, width_c:].to(self.device), attention_mask=mask.to(self.device),
                       position_ids=positions[:, width_c:].to(self.device), use_cache=True,
                       logits_to_keep=1, **cache_kwargs(self.model, cache))
        return [row_kv(cache, i, mask[i].nonzero().flatten().to(self.device)) for i in range(len(xs))]

    # ------------------------------------------------------------------ batch invariance (sampled rows)
    def _generate_invariant(self, ids: list[list[int]], rows: list[SamplingParams], splits: list[int],
                            alone: list[int], outputs: list[str | None]) -> None:
        """Answer rows ``alone`` each by the same computation whatever else is in the call or in flight.

        Row ``x`` with prompt split ``k`` (a function of its conversation alone): the prompt's KV
        (batch 1, cached), then one forward pass at batch 1 over ``x[k:-1]``, then decoding at
        batch 1 from the last token with the row's own seed. Rows with identical tokens (the N
        Monte Carlo rollouts of one state) compute the first two steps once: the bits are the same
        as computing them per row, since the steps do not depend on the row's seed.
        """
        if not alone:
            return
        if not self.internals.plain_kv_cache(self.model.config):  # no KV to copy: generate() per row
            for i in alone:
                outputs[i] = self._generate_chunk([ids[i]], [rows[i]], splits[i])[0]
            return
        for _, same in itertools.groupby(sorted(alone, key=lambda i: ids[i]), key=lambda i: ids[i]):
            members = list(same)
            x, k = ids[members[0]], splits[members[0]]
            source: tuple[int, list[tuple[Any, Any]] | None] = (0, None)
            if k:
                source = (k, [(layer.keys, layer.values) for layer in self._prefix_kv(tuple(x[:k])).layers])
            if len(x) - 1 > source[0]:
                source = (len(x) - 1, self._prefill([x[:-1]], [source])[0])
            for i in members:
                texts, _ = self._generate_chunk_reusing([x], [rows[i]], [source], keep=False)
                outputs[i] = texts[0]

    def _generate_chunk_reusing(self, ids: list[list[int]], rows: list[SamplingParams],
                                sources: list[tuple[int, list[tuple[Any, Any]] | None]], keep: bool = True
                                ) -> tuple[list[str], list[_KVEntry]]:
        """Generate one chunk whose row ``r`` has the KV of its first ``sources[r][0]`` tokens already.

        Layout of row ``r`` with ``c_r`` cached and ``s_r`` new tokens, ``C = max c``, ``S = max s``:
        columns ``[C - c_r, C)`` hold its cached keys/values, ``[C + S - s_r, C + S)`` its new
        tokens; all other columns are masked padding. Returns the texts and, per row, the entry
        holding the KV of its tokens plus the generated tokens whose KV was computed (none when not ``keep``).
        """
        torch = _torch()

        p0 = rows[0]
        input_ids, mask, cache, width_c = self._layout(ids, sources, reserve=p0.max_new_tokens)
        width = input_ids.shape[1]
        new = self._decode(input_ids, mask, cache, width_c, rows)
        self.n_generate_calls += 1
        computed = cache.get_seq_length() - width  # generated tokens whose KV is in the cache
        eos = set(self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id])
        texts, entries = [], []
        for r, seq in enumerate(new):
            text = self.tokenizer.decode(seq, skip_special_tokens=True)
            texts.append(truncate_at_stop(text, p0.stop).strip() if p0.stop else text.strip())
            if not keep:
                continue
            real = next((j + 1 for j, t in enumerate(seq) if t in eos), len(seq))
            keep = max(0, min(real, computed))
            cols = torch.cat([mask[r].nonzero().flatten(), torch.arange(width, width + keep)]).to(self.device)
            kv = row_kv(cache, r, cols)
            entries.append(_KVEntry(np.asarray(ids[r] + seq[:keep], dtype=np.int64), kv, len(ids[r])))
        return texts, entries

    def _decode(self, input_ids: Any, mask: Any, cache: Any, width_c: int, rows: list[SamplingParams]) -> list[list[int]]:
        """Prefill each row's new columns, then decode one token per row per step; the generated ids per row.

        What ``model.generate`` does for this case (greedy, or :class:`RowSampler` draws; a row
        stops at EOS or at a stop string and is padded from there; the call ends when every row
        stopped or ``max_new_tokens`` were drawn; the last drawn token is not fed back), in a loop
        of its own: per step it feeds one token per row with positions and a boolean mask kept
        up to date in place, which saves ``generate``'s per-step bookkeeping (a large share of a
        small model's decoding time on a CPU).
        """
        torch = _torch()
        p0 = rows[0]
        n, width = input_ids.shape
        steps = p0.max_new_tokens
        dev = self.device
        pad = self.tokenizer.pad_token_id
        eos = torch.tensor(self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id], device=dev)
        sampler = (RowSampler([p.temperature for p in rows], [p.top_p for p in rows], [int(p.seed or 0) for p in rows], dev)
                   if p0.temperature > 0 else None)
        full = torch.zeros((n, width + steps), dtype=torch.bool, device=dev)
        full[:, :width] = mask.to(dev).bool()
        positions = (mask.cumsum(-1) - 1).clamp(min=0).to(dev)
        # a 4D boolean mask is passed through as is by sdpa-style attention; other implementations get the 2D mask
        four_d = attention_implementation(self.model) in ("sdpa", ATTENTION_NAME)
        out = torch.full((n, steps), pad, dtype=torch.long, device=dev)
        running = torch.ones(n, dtype=torch.bool, device=dev)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids[:, width_c:].to(dev), attention_mask=full[:, :width].long(),
                                position_ids=positions[:, width_c:], use_cache=True,
                                logits_to_keep=1, **cache_kwargs(self.model, cache)).logits[:, -1, :]
            last = positions[:, -1:]
            for t in range(steps):
                scores = logits.float()
                if sampler is not None:
                    scores = sampler(None, scores)
                tok = torch.where(running, scores.argmax(-1), torch.full_like(running, pad, dtype=torch.long))
                out[:, t] = tok
                running &= ~torch.isin(tok, eos)
                if p0.stop:
                    self._stop_at_strings(out[:, :t + 1], running, p0.stop)
                if t == steps - 1 or not bool(running.any()):
                    break
                full[:, width + t] = True
                last = last + 1
                step_mask = full[:, None, None, :width + t + 1] if four_d else full[:, :width + t + 1].long()
                logits = self.model(input_ids=tok[:, None], attention_mask=step_mask, position_ids=last,
                                    use_cache=True, **cache_kwargs(self.model, cache)).logits[:, -1, :]
        return out[:, :t + 1].tolist()

    def _stop_at_strings(self, generated: Any, running: Any, stop: Sequence[str]) -> None:
        """Stop the running rows whose generated text now ends a stop string.

        Called after every token, so a stop string that appears must end in the newest token: only
        the last ``max bytes of a stop string + 1`` tokens are decoded (a token holds at least one byte).
        """
        window = max(len(x.encode("utf-8")) for x in stop) + 1
        tail = generated[:, -window:]
        for r in running.nonzero().flatten().tolist():
            text = self.tokenizer.decode(tail[r].tolist(), skip_special_tokens=True)
            if any(x in text for x in stop):
                running[r] = False

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
