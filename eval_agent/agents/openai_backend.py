"""``openai`` backend: any OpenAI-compatible chat endpoint through the ``openai`` v1 client.

Works with ``vllm serve`` on GPUs, the OpenAI API (GPT-4o), ``transformers serve`` or the
standard-library server of :mod:`eval_agent.agents.serve` over a local model directory on a CPU.

* Concurrency: the conversations of a batch are sent as separate requests by a pool of
  ``max_concurrency`` threads; answers come back in order.
* Retries: HTTP 429, 5xx, timeouts, connection errors and answers that are not a valid completion
  (a body that is not JSON or not a chat completion, an empty ``choices`` list, a text that
  cannot be encoded as UTF-8) are retried up to ``max_retries`` times, waiting ``min(backoff_max, backoff_base * 2**attempt)`` seconds times a random factor in
  [0.5, 1]. When the retries run out the server is treated as unavailable and the run stops
  (:class:`~eval_agent.agents.errors.FatalPolicyError`), so no episode is recorded as failed
  because of an outage and a rerun continues where the run stopped.
* 401/403 (bad credentials) and 404 (unknown model or wrong URL) stop the run at once with a
  message that names the environment variable holding the key, never the key.
* 400 and 422 (for example a prompt longer than the model's context) fail that conversation only
  (:class:`~eval_agent.agents.errors.RowErrors`).
* The key comes from the environment variable ``api_key_env`` (default ``OPENAI_API_KEY``); a
  local server that needs no key gets the placeholder ``EMPTY``. It is never logged or written:
  every text from the server that reaches a log, an error or an episode goes through
  :meth:`OpenAIPolicy.redact`, which masks the key and any ``Bearer`` token a server echoes.
"""
from __future__ import annotations

import logging
import os
import random
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.backend_utils import RowParams, params_per_row, to_chat, truncate_at_stop
from eval_agent.agents.errors import FatalPolicyError, RowErrors
from eval_agent.types import Message

logger = logging.getLogger(__name__)


class _RowFailed(Exception):
    pass


class MalformedAnswer(Exception):
    """A 200 answer that is not a usable chat completion; retried like a 5xx."""


REDACTED = "[redacted]"
_BEARER = re.compile(r"(Bearer\s+)[^\s\"',;]+", re.IGNORECASE)


def completion_text(resp: Any) -> str:
    """The first choice's text of a chat-completion answer; :class:`MalformedAnswer` for anything else."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        kind = "no choices" if isinstance(choices, list) else f"not a chat completion ({type(resp).__name__})"
        raise MalformedAnswer(f"malformed answer: {kind}")
    message = getattr(choices[0], "message", None)
    text = getattr(message, "content", None)
    if text is None:
        text = ""
    if not isinstance(text, str):
        raise MalformedAnswer(f"malformed answer: message content is {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise MalformedAnswer(f"malformed answer: text cannot be encoded as UTF-8 ({e.reason})") from None
    return text


class OpenAIPolicy(Policy):
    """Chat completions from ``model`` at ``base_url`` (None: the OpenAI API)."""

    supports_row_params = True

    def __init__(self, model: str, base_url: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 max_concurrency: int = 8, max_retries: int = 6, timeout: float = 120.0,
                 backoff_base: float = 1.0, backoff_max: float = 60.0, send_seed: bool = True):
        import openai

        self._openai = openai
        key = os.environ.get(api_key_env)
        if not key:
            if base_url is None:
                raise FatalPolicyError(f"the openai backend needs an API key in the environment variable "
                                       f"{api_key_env} (or a --base_url of a local server)")
            key = "EMPTY"
        self._secret = key if key != "EMPTY" else None
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.client = openai.OpenAI(api_key=key, base_url=base_url, max_retries=0, timeout=timeout)
        self.max_concurrency = max(1, max_concurrency)
        self.max_retries = max_retries
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.send_seed = send_seed
        self._pool = ThreadPoolExecutor(max_workers=self.max_concurrency, thread_name_prefix="openai")
        self._rng = random.Random(0)
        self._lock = threading.Lock()
        self.n_requests = 0
        self.n_retries = 0
        logger.info("openai policy: model %s at %s, %d concurrent requests", model, base_url or "api.openai.com",
                    self.max_concurrency)

    def generate(self, batch: Sequence[Sequence[Message]], params: RowParams) -> list[str]:
        rows = params_per_row(params, len(batch))
        futures = [self._pool.submit(self._complete, conv, p) for conv, p in zip(batch, rows)]
        outputs: list[str | None] = []
        errors: dict[int, str] = {}
        fatal: FatalPolicyError | None = None
        for i, f in enumerate(futures):
            try:
                outputs.append(f.result())
            except FatalPolicyError as e:
                fatal = fatal or e
                outputs.append(None)
            except _RowFailed as e:
                errors[i] = str(e)
                outputs.append(None)
        if fatal is not None:
            raise fatal
        if errors:
            raise RowErrors(outputs, errors)
        return [o or "" for o in outputs]

    def _complete(self, conv: Sequence[Message], p: SamplingParams) -> str:
        oa = self._openai
        kwargs: dict[str, Any] = {"model": self.model, "messages": to_chat(conv), "temperature": p.temperature,
                                  "max_tokens": p.max_new_tokens}
        if p.temperature > 0:
            kwargs["top_p"] = p.top_p
        if p.stop:
            kwargs["stop"] = list(p.stop)
        if self.send_seed and p.seed is not None:
            kwargs["seed"] = int(p.seed)
        where = self.base_url or "the OpenAI API"
        for attempt in range(self.max_retries + 1):
            try:
                with self._lock:
                    self.n_requests += 1
                resp = self.client.chat.completions.create(**kwargs)
                return truncate_at_stop(completion_text(resp), p.stop).strip()
            except (oa.AuthenticationError, oa.PermissionDeniedError) as e:
                raise FatalPolicyError(f"{where} refused the credentials (HTTP {e.status_code}); check the key in "
                                       f"${self.api_key_env}") from None
            except oa.NotFoundError as e:
                raise FatalPolicyError(f"{where} answered 404 for model {self.model!r}: wrong model name or "
                                       f"base_url ({self._short(e)})") from None
            except (oa.BadRequestError, oa.UnprocessableEntityError) as e:
                raise _RowFailed(f"HTTP {e.status_code}: {self._short(e)}") from None
            except (oa.RateLimitError, oa.InternalServerError, oa.APITimeoutError, oa.APIConnectionError) as e:
                retryable = e
            except oa.APIStatusError as e:
                if e.status_code < 500 and e.status_code not in (408, 409, 429):
                    raise _RowFailed(f"HTTP {e.status_code}: {self._short(e)}") from None
                retryable = e
            except (MalformedAnswer, oa.APIResponseValidationError, ValueError, TypeError, AttributeError) as e:
                retryable = e  # a 200 answer that is no completion (a proxy's HTML page, a truncated body, ...)
            if attempt == self.max_retries:
                raise FatalPolicyError(f"{where} still failing after {self.max_retries} retries: "
                                       f"{type(retryable).__name__}: {self._short(retryable)}") from None
            with self._lock:
                self.n_retries += 1
                delay = min(self.backoff_max, self.backoff_base * 2 ** attempt) * (0.5 + 0.5 * self._rng.random())
            logger.warning("%s: %s (attempt %d/%d); retrying in %.1fs", where, type(retryable).__name__,
                           attempt + 1, self.max_retries + 1, delay)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def redact(self, text: str) -> str:
        """``text`` with the API key and any echoed ``Bearer`` token masked."""
        if self._secret:
            text = text.replace(self._secret, REDACTED)
        return _BEARER.sub(lambda m: m.group(1) + REDACTED, text)

    def _short(self, e: Exception, limit: int = 300) -> str:
        """The redacted text of a server error, cut to ``limit`` characters."""
        text = self.redact(str(e))
        return text if len(text) <= limit else text[:limit] + "..."

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
