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
:func:`~eval_agent.agents.hf_decode.decode_loop`, a loop of our own that does what ``model.generate`` does for
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

Where each part lives: :class:`HFPolicy` (this module) tokenises, groups rows into chunks and runs
them; :mod:`eval_agent.agents.hf_kv_store` keeps the prompt and conversation KV caches between calls;
:mod:`eval_agent.agents.hf_batch_layout` lays out a chunk whose rows have cached parts;
:mod:`eval_agent.agents.hf_decode` holds :class:`RowSampler` and the decode loop.

A prompt whose length plus ``max_new_tokens`` exceeds the model's context
(``max_model_len``, default the config's ``max_position_embeddings``) is not generated: the
call raises :class:`~eval_agent.agents.errors.RowErrors` carrying the other rows' answers.
"""
from __future__ import annotations

import copy
import itertools
import logging
from typing import Any, Sequence

import numpy as np

from eval_agent.agents.backend_utils import RowParams, group_key, params_per_row, to_chat, truncate_at_stop
from eval_agent.agents.errors import FatalPolicyError, RowErrors
from eval_agent.agents.hf_batch_layout import BatchLayout, lay_out, shared_prefix_len
from eval_agent.agents.hf_decode import RowSampler, decode_loop, row_sampler
from eval_agent.agents.hf_kv_store import KVEntry, KVStore, common_prefix_len, row_kv
from eval_agent.agents.hf_memory import DEFAULT_MAX_BATCH_SIZE, KVShape, rows_for_memory
from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.shared_prefix import ATTENTION_NAME, shared_prefix_attention
from eval_agent.agents.transformers_adapter import cache_kwargs, internals
from eval_agent.bounded_cache import BoundedCache
from eval_agent.types import Message

__all__ = ["HFPolicy", "RowSampler", "common_prefix_len"]  # the last two re-exported for callers of this module

logger = logging.getLogger(__name__)


def _torch():
    import torch

    return torch


class HFPolicy(Policy):
    """A local Hugging Face causal LM answering batches of conversations.

    ``model_path``: a model directory (or hub name when online). ``device``: ``cpu``, ``cuda``,
    ``cuda:1``... (default: cuda when available). ``dtype``: ``float32``, ``bfloat16``,
    ``float16`` or ``auto`` (float32 on CPU, bfloat16 on GPU). ``max_batch_size``: rows per
    chunk (default None: :data:`~eval_agent.agents.hf_memory.DEFAULT_MAX_BATCH_SIZE` on the CPU; on
    CUDA sized per call from the free memory, :func:`~eval_agent.agents.hf_memory.rows_for_memory`).
    ``max_model_len``: context limit (prompt + new tokens). ``reuse_cache``:
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

    def __init__(self, model_path: str, device: str | None = None, dtype: str = "auto", max_batch_size: int | None = None,
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
        self._prompt_tokens: BoundedCache[tuple[Message, ...], list[int]] = BoundedCache(64)
        self._kv_shape = KVShape.from_config(self.model.config, torch_dtype.itemsize)
        self._sized_rows: int | None = None
        if conv_cache_size is None:
            conv_cache_size = 2 * (max_batch_size or DEFAULT_MAX_BATCH_SIZE)
        self.conv_cache_size = conv_cache_size
        # the prompts' and the conversations' KV caches kept between calls (hf_kv_store.py)
        self.kv_store = KVStore(prefix_cache_size, self.conv_cache_size)
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
                n = self.chunk_rows(len(ids[members[-1]]), rows[members[-1]].max_new_tokens)
                for start in range(0, len(members), n):
                    chunk = members[start:start + n]
                    texts = self._generate_chunk([ids[i] for i in chunk], [rows[i] for i in chunk], len(prefix))
                    for i, t in zip(chunk, texts):
                        outputs[i] = t
        if errors:
            raise RowErrors(outputs, errors)
        return [o if o is not None else "" for o in outputs]

    def chunk_rows(self, prompt_tokens: int, new_tokens: int) -> int:
        """Rows per chunk: ``max_batch_size`` when set; else on CUDA sized from the free memory (what the
        driver reports free plus what torch holds unused) by :func:`rows_for_memory`, elsewhere
        :data:`DEFAULT_MAX_BATCH_SIZE`."""
        if self.max_batch_size is not None:
            return self.max_batch_size
        if self.device.type != "cuda":
            return DEFAULT_MAX_BATCH_SIZE
        cuda = _torch().cuda
        free = cuda.mem_get_info(self.device)[0] + cuda.memory_reserved(self.device) - cuda.memory_allocated(self.device)
        rows = rows_for_memory(free, self._kv_shape, prompt_tokens, new_tokens)
        if rows != self._sized_rows:
            logger.info("hf policy: %d rows per chunk (%.1f GiB free, %d + %d tokens per row, %d bytes of cache "
                        "per token)", rows, free / 2**30, prompt_tokens, new_tokens, self._kv_shape.bytes_per_token)
            self._sized_rows = rows
        return rows

    def _fill_seed(self, p: SamplingParams) -> SamplingParams:
        if p.seed is not None or p.temperature <= 0:
            return p
        self._fallback_seed += 1
        return SamplingParams(p.temperature, p.top_p, p.max_new_tokens, p.stop, self._fallback_seed)

    def _forward_prefix(self, prefix: tuple[int, ...]) -> Any:
        """The KV cache of ``prefix`` (batch 1), by one forward pass (kept by :attr:`kv_store`)."""
        torch = _torch()
        with torch.inference_mode():
            out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True)
        return out.past_key_values

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
        prefix = self._prompt_tokens.peek(key)
        if prefix is None:
            text = self.tokenizer.apply_chat_template(to_chat(key), tokenize=False)
            prefix = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            self._prompt_tokens.put(key, prefix)
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
            cache = copy.deepcopy(self.kv_store.prefix_kv(tuple(ids[0][:shared]), self._forward_prefix))
            if len(ids) > 1:
                cache.batch_repeat_interleave(len(ids))
            kwargs.update(cache_kwargs(self.model, cache))
        config = GenerationConfig(max_new_tokens=p0.max_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=self.eos_token_id, num_beams=1, use_cache=True)
        if p0.temperature > 0:
            kwargs["logits_processor"] = LogitsProcessorList([row_sampler(rows, self.device)])
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
    def _generate_reusing(self, ids: list[list[int]], rows: list[SamplingParams], splits: list[int],
                          groups: dict[tuple[Any, ...], list[int]], outputs: list[str | None]) -> None:
        """Answer every grouped row, each reusing the longest cached KV of its tokens (see the module docstring)."""
        by_params: dict[tuple[Any, ...], list[int]] = {}
        for (gkey, _), members in groups.items():
            by_params.setdefault(gkey, []).extend(members)
        for members in by_params.values():
            members.sort(key=lambda i: len(ids[i]))
            n = self.chunk_rows(len(ids[members[-1]]), rows[members[-1]].max_new_tokens)
            for start in range(0, len(members), n):
                chunk = members[start:start + n]
                sources = [self.kv_store.best_source(ids[i], splits[i], self._forward_prefix) for i in chunk]
                chunk_ids = [ids[i] for i in chunk]
                kvs = self._prefill_shared(chunk_ids, [(n, kv) for n, kv, _ in sources])
                texts, entries = self._generate_chunk_reusing(chunk_ids, [rows[i] for i in chunk], kvs)
                for i, t in zip(chunk, texts):
                    outputs[i] = t
                self.kv_store.store([used for _, _, used in sources], entries)

    def _layout(self, ids: list[list[int]], sources: list[tuple[int, list[tuple[Any, Any]] | None]],
                reserve: int = 1) -> BatchLayout:
        """:func:`~eval_agent.agents.hf_batch_layout.lay_out` of a chunk, the shared prompt kept once when
        shared-prefix attention is on; counts the reused and prefilled tokens."""
        shared = (shared_prefix_len(ids, [c for c, _ in sources], self.min_prefix_tokens)
                  if self.shared_prefix else 0)
        batch = lay_out(ids, sources, self.tokenizer.pad_token_id, shared,
                        lambda room, prefix: self.internals.new_cache(self.model.config, room, prefix), reserve)
        self.n_reused_tokens += batch.reused
        self.n_prefilled_tokens += batch.prefilled
        return batch

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
        batch = self._layout(xs, sources)
        input_ids, mask, cache, width_c = batch.input_ids, batch.mask, batch.cache, batch.width_c
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
                prompt = self.kv_store.prefix_kv(tuple(x[:k]), self._forward_prefix)
                source = (k, [(layer.keys, layer.values) for layer in prompt.layers])
            if len(x) - 1 > source[0]:
                source = (len(x) - 1, self._prefill([x[:-1]], [source])[0])
            for i in members:
                texts, _ = self._generate_chunk_reusing([x], [rows[i]], [source], keep_entries=False)
                outputs[i] = texts[0]

    def _generate_chunk_reusing(self, ids: list[list[int]], rows: list[SamplingParams],
                                sources: list[tuple[int, list[tuple[Any, Any]] | None]], keep_entries: bool = True
                                ) -> tuple[list[str], list[KVEntry]]:
        """Generate one chunk whose row ``r`` has the KV of its first ``sources[r][0]`` tokens already.

        Layout of row ``r`` with ``c_r`` cached and ``s_r`` new tokens, ``C = max c``, ``S = max s``:
        columns ``[C - c_r, C)`` hold its cached keys/values, ``[C + S - s_r, C + S)`` its new
        tokens; all other columns are masked padding. Returns the texts and, per row, the entry
        holding the KV of its tokens plus the generated tokens whose KV was computed (none without ``keep_entries``).
        """
        torch = _torch()

        p0 = rows[0]
        batch = self._layout(ids, sources, reserve=p0.max_new_tokens)
        input_ids, mask, cache = batch.input_ids, batch.mask, batch.cache
        width = input_ids.shape[1]
        new = decode_loop(self.model, self.tokenizer, self.eos_token_id, input_ids, mask, cache, batch.width_c, rows,
                          self.device)
        self.n_generate_calls += 1
        computed = cache.get_seq_length() - width  # generated tokens whose KV is in the cache
        eos = set(self.eos_token_id if isinstance(self.eos_token_id, list) else [self.eos_token_id])
        texts, entries = [], []
        for r, seq in enumerate(new):
            text = self.tokenizer.decode(seq, skip_special_tokens=True)
            texts.append(truncate_at_stop(text, p0.stop).strip() if p0.stop else text.strip())
            if not keep_entries:
                continue
            real = next((j + 1 for j, t in enumerate(seq) if t in eos), len(seq))
            keep = max(0, min(real, computed))
            cols = torch.cat([mask[r].nonzero().flatten(), torch.arange(width, width + keep)]).to(self.device)
            kv = row_kv(cache, r, cols)
            entries.append(KVEntry(np.asarray(ids[r] + seq[:keep], dtype=np.int64), kv, len(ids[r])))
        return texts, entries

    def close(self) -> None:
        self.model = None  # type: ignore[assignment]
