"""Every use of transformers' (and torch's) internals by the ``hf`` backend, in one place.

The pinned transformers (requirements.txt) takes a model's KV cache as ``past_key_values=``;
releases from 5.24 on name it ``cache=`` and keep ``past_key_values=`` as a deprecated alias until
5.40. :func:`cache_kwargs` picks the name from the model's own ``forward`` signature.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any


@functools.lru_cache(maxsize=None)
def _cache_argument(forward: Any) -> str:
    params = inspect.signature(forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_kwargs(model: Any, cache: Any) -> dict[str, Any]:
    """``{name: cache}`` for ``model(...)`` and ``model.generate(...)``: ``cache`` or ``past_key_values``."""
    return {_cache_argument(type(model).forward): cache}
