"""Every use of transformers' (and torch's) internals by the ``hf`` backend, in one place.

Fast path, for the transformers releases in :data:`TESTED_TRANSFORMERS` (the pinned one among them):

- a ``DynamicLayer`` subclass that appends keys and values into preallocated room instead of
  concatenating the whole cache every token (it reads and replaces the layer's ``keys``/``values``
  and calls its ``lazy_initialization``);
- the shared-prefix (cascade) attention of :mod:`eval_agent.agents.shared_prefix`, registered with
  ``AttentionInterface`` / ``AttentionMaskInterface`` and switched on with
  ``set_attn_implementation``; plain calls go to transformers' own SDPA function (on a CPU without
  its copy of the keys per grouped query head: :func:`sdpa_attention`);
- PyTorch's CPU flash-attention op that also returns the log-sum-exp
  (``aten._scaled_dot_product_flash_attention_for_cpu``), for that attention on a CPU.

Fallback (another transformers, or an internal missing): one logged warning, then only public API:
plain ``DynamicCache`` layers, ordinary attention (no shared prefix), the matrix-product path. The
outputs are the same (``tests/test_transformers_adapter.py`` compares both paths); only speed differs.

Also here, for every release: the name under which a model takes its KV cache. The pinned
transformers takes ``past_key_values=``; releases from 5.24 name it ``cache=`` (``past_key_values=``
stays a deprecated alias until 5.40). :func:`cache_kwargs` reads it from the model's ``forward``.
"""
from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import dataclass
from typing import Any, Callable

logger = logging.getLogger(__name__)

TESTED_TRANSFORMERS = ">=5.19.0,<5.25"


@functools.lru_cache(maxsize=None)
def fast_path_supported() -> bool:
    """Whether the installed transformers is in :data:`TESTED_TRANSFORMERS` with every internal used (else one warning)."""
    import transformers
    from packaging.specifiers import SpecifierSet

    if transformers.__version__ not in SpecifierSet(TESTED_TRANSFORMERS):
        logger.warning("transformers %s is outside the tested range %s: the hf backend uses public API only "
                       "(plain KV cache, no shared-prefix attention; same outputs, slower)",
                       transformers.__version__, TESTED_TRANSFORMERS)
        return False
    try:
        from transformers import AttentionInterface  # noqa: F401
        from transformers.cache_utils import DynamicLayer
        from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa  # noqa: F401
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask  # noqa: F401
    except ImportError as e:
        logger.warning("transformers internals missing (%s): the hf backend uses public API only", e)
        return False
    if not all(hasattr(DynamicLayer, a) for a in ("lazy_initialization", "update", "get_seq_length")):
        logger.warning("transformers' DynamicLayer changed: the hf backend uses public API only")
        return False
    return True


@functools.lru_cache(maxsize=None)
def _cache_argument(forward: Any) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(...)`` and ``model.generate(...)``: ``cache`` or ``past_key_values``."""
    return {_cache_argument(type(model).forward): cache}


def attention_implementation(model: Any) -> str | None:
    """The attention implementation a loaded model runs (``sdpa``, ``eager``, ``flash_attention_2``...)."""
    return getattr(model.config, "_attn_implementation", None)


@functools.lru_cache(maxsize=None)
def growing_layer_class() -> Any:
    """A ``DynamicLayer`` that appends into a preallocated buffer instead of concatenating (fast path).

    ``DynamicLayer.update`` concatenates the whole cache with each new token (a copy of every key
    and value per layer per decoding step); this layer writes the new columns into spare capacity
    (``reserve`` columns, doubled when exhausted) and exposes ``keys``/``values`` as views of the
    filled part, so the values seen by attention are the same. Operations of the base class that
    replace ``keys``/``values`` (crop, batch selection) are picked up at the next update.
    """
    from transformers.cache_utils import DynamicLayer

    class GrowingLayer(DynamicLayer):
        def __init__(self, reserve: int = 64):
            super().__init__()
            self.reserve = max(1, int(reserve))
            self._kbuf: Any = None
            self._vbuf: Any = None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            n = self.keys.shape[-2] if self.keys is not None and self.keys.numel() else 0
            add = key_states.shape[-2]
            stale = (self._kbuf is None or self.keys.numel() == 0 or self.keys.data_ptr() != self._kbuf.data_ptr()
                     or self._kbuf.shape[:2] != key_states.shape[:2])
            if stale or n + add > self._kbuf.shape[-2]:
                cap = n + add + max(self.reserve, 0 if stale else self._kbuf.shape[-2])
                shape_k = (*key_states.shape[:2], cap, key_states.shape[-1])
                shape_v = (*value_states.shape[:2], cap, value_states.shape[-1])
                kbuf, vbuf = key_states.new_empty(shape_k), value_states.new_empty(shape_v)
                if n:
                    kbuf[:, :, :n] = self.keys
                    vbuf[:, :, :n] = self.values
                self._kbuf, self._vbuf = kbuf, vbuf
            self._kbuf[:, :, n:n + add] = key_states
            self._vbuf[:, :, n:n + add] = value_states
            self.keys = self._kbuf[:, :, :n + add]
            self.values = self._vbuf[:, :, :n + add]
            return self.keys, self.values

    return GrowingLayer


@functools.lru_cache(maxsize=None)
def prefixed_layer_class(growing_layer: type) -> type:
    """A cache layer (subclass of ``growing_layer``) holding a shared prefix once and each row's tokens.

    ``keys``/``values`` are the row part (what ``growing_layer`` stores); ``update`` returns
    ``PrefixedKV`` pairs for the shared-prefix attention function; the sequence length counts the prefix.
    """
    from eval_agent.agents.shared_prefix import PrefixedKV

    class PrefixedLayer(growing_layer):  # type: ignore[misc, valid-type]
        def __init__(self, prefix_keys: Any, prefix_values: Any, reserve: int = 64):
            super().__init__(reserve)
            self.prefix_keys = prefix_keys
            self.prefix_values = prefix_values

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            keys, values = super().update(key_states, value_states, *args, **kwargs)
            return PrefixedKV(self.prefix_keys, keys), PrefixedKV(self.prefix_values, values)

        def get_seq_length(self) -> int:
            return int(self.prefix_keys.shape[-2]) + super().get_seq_length()

    return PrefixedLayer


def sdpa_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any, **kwargs: Any) -> Any:
    """transformers' own SDPA attention function (what ``attn_implementation="sdpa"`` runs), on a CPU
    without its copy of the keys and values per query head.

    With grouped-query heads (``rep = heads / kv_heads > 1``) and a mask, transformers repeats each kv
    head ``rep`` times (``repeat_kv``: a copy of the whole cache per layer per decoding step, about a
    sixth of the demo model's evaluation time). Here query heads ``r, r + rep, r + 2 rep, ...`` (one per
    kv head) attend in one call to the unrepeated keys, for ``r < rep``, and the outputs are put back in
    head order. Each (row, head) is computed by the same kernel on the same numbers as after
    ``repeat_kv``, so the output is the same bit for bit (``tests/test_transformers_adapter.py``).
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward, use_gqa_in_sdpa

    rep = getattr(module, "num_key_value_groups", 1)
    if rep <= 1 or query.device.type != "cpu" or use_gqa_in_sdpa(attention_mask, key, value):
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    import torch

    one_group = _OneGroup(getattr(module, "is_causal", True))
    outs = [sdpa_attention_forward(one_group, query[:, r::rep], key, value, attention_mask, **kwargs)[0]
            for r in range(rep)]  # each [B, q, kv_heads, d]: query head g * rep + r at [:, :, g]
    return torch.stack(outs, dim=3).flatten(2, 3), None


@dataclass(frozen=True)
class _OneGroup:
    """The attributes of an attention module that ``sdpa_attention_forward`` reads, for one query head per kv head."""

    is_causal: bool
    num_key_value_groups: int = 1


@functools.lru_cache(maxsize=None)
def cpu_flash_with_lse() -> Any:
    """PyTorch's CPU flash-attention op returning ``(output, logsumexp)``, or None where it is missing."""
    import torch

    try:
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    except (AttributeError, RuntimeError):
        return None


@dataclass(frozen=True)
class TransformersInternals:
    """The hf backend's access to transformers' internals: ``enabled`` = the fast path (module docstring)."""

    enabled: bool

    def new_cache(self, config: Any, reserve: int, prefix: list[tuple[Any, Any]] | None = None) -> Any:
        """A ``DynamicCache`` for ``config``: growing layers (fast path) or plain ones.

        ``prefix``: per layer ``(keys, values)`` of ``[1, kv_heads, P, d]`` shared by every row, kept
        once (fast path with shared-prefix attention on only).
        """
        from transformers import DynamicCache

        cache = DynamicCache(config=config)
        if not self.enabled:
            if prefix is not None:
                raise ValueError("a shared-prefix cache needs the transformers fast path")
            return cache
        growing = growing_layer_class()
        if prefix is None:
            cache.layers = [growing(reserve) for _ in cache.layers]
        else:
            layer = prefixed_layer_class(growing)
            cache.layers = [layer(k, v, reserve) for k, v in prefix]
        return cache

    def plain_kv_cache(self, config: Any) -> bool:
        """Whether every layer of the model's cache is a plain key/value layer (no sliding window, no state)."""
        if not self.enabled:  # public config fields only
            types = getattr(config, "layer_types", None) or ["full_attention"]
            return all(t == "full_attention" for t in types) and not getattr(config, "sliding_window", None)
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        try:
            cache = DynamicCache(config=config)
        except Exception:  # noqa: BLE001 - an unusual config: no reuse rather than a crash
            return False
        return bool(cache.layers) and all(type(layer) is DynamicLayer for layer in cache.layers)

    def use_attention(self, model: Any, name: str, function: Callable[..., Any]) -> bool:
        """Register ``function`` (with SDPA's mask builder) as ``name`` and switch ``model`` to it.

        Only for models running ``sdpa`` or ``eager`` attention, and only on the fast path; returns
        False (model unchanged) otherwise.
        """
        current = attention_implementation(model)
        if current == name:
            return True
        if not self.enabled or current not in ("sdpa", "eager"):
            return False
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(name, function)
        AttentionMaskInterface.register(name, sdpa_mask)
        try:
            model.set_attn_implementation(name)
        except (ValueError, AttributeError) as e:
            logger.info("custom attention unavailable (%s); plain attention", e)
            return False
        return True


def internals(enabled: bool | None = None) -> TransformersInternals:
    """The hf backend's internals access: ``enabled=None`` follows :func:`fast_path_supported`."""
    return TransformersInternals(fast_path_supported() if enabled is None else bool(enabled))
