"""Reflection: a thought that notices the last step was a mistake and leads to the expert action.

A reflector is shown the interaction history (ending with the deviated action and what it
produced), told that this action was not a good one and what the right next action is, and asked
for the agent's next thought in the style of the history. The calibrated turn is then
``Thought: <reflection>\\nAction: <expert action>`` (the expert action always wins, whatever
action the model wrote).

Reflectors: :class:`PolicyReflector` wraps any :class:`eval_agent.agents.policy.Policy` (an OpenAI-
compatible server, a local HF model, the base agent itself) with an on-disk response cache;
:class:`OfflineReflector` is a deterministic template, a stand-in for runs without any LLM, and
labels its output as such.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from eval_agent.agents.policy import Policy, SamplingParams
from eval_agent.agents.errors import FatalPolicyError
from eval_agent.types import Message
from eval_agent.storage import JsonlSink, read_jsonl_objects

logger = logging.getLogger(__name__)

REFLECTION_INSTRUCTION = """You are helping to correct the trajectory of an agent that acts in a text environment.
Below is the agent's interaction history so far. Each agent turn has a "Thought" and an "Action"; each environment turn starts with "Observation".

{history}

The agent's most recent action, "{deviated_action}", was a poor choice: it moved the agent away from a good way to finish the task. The right next action is "{expert_action}".

Write the agent's next thought, in the first person and in the same style as the thoughts in the history. The thought should notice that the previous step was a mistake, say briefly why, and lead naturally to the action "{expert_action}". Do not mention that you were told the right action.

Answer in exactly this format:
Thought: <the thought>
Action: {expert_action}"""


@dataclass(frozen=True)
class ReflectionRequest:
    """What a reflector needs: the history up to and including the deviated step, and ``a*_t``."""

    key: str
    history: tuple[Message, ...]
    deviated_action: str
    expert_action: str


@dataclass(frozen=True)
class ReflectionResult:
    """A reflection thought, or the reason there is none (``ok`` False)."""

    key: str
    thought: str | None
    source: str
    ok: bool
    error: str | None = None
    cached: bool = False


def render_history(history: Sequence[Message], skip_instruction: bool = True) -> str:
    """The history as plain text; the leading instruction turn (and its ``OK``) is left out."""
    msgs = list(history)
    if skip_instruction and len(msgs) >= 2 and msgs[0].role == "user" and msgs[1].role == "assistant" \
            and "Action:" not in msgs[1].content:
        msgs = msgs[2:]
    lines = []
    for m in msgs:
        who = "Agent" if m.role == "assistant" else "Environment"
        lines.append(f"[{who}]\n{m.content.strip()}")
    return "\n\n".join(lines)


def reflection_prompt(req: ReflectionRequest) -> list[Message]:
    """The one-turn chat sent to a reflection model."""
    text = REFLECTION_INSTRUCTION.format(history=render_history(req.history),
                                         deviated_action=req.deviated_action, expert_action=req.expert_action)
    return [Message("user", text)]


def parse_reflection(text: str) -> str | None:
    """The thought of a reflection reply: text after the last ``Thought:`` and before ``Action:``.

    Returns None when nothing is left (an empty or action-only reply).
    """
    body = text.strip()
    idx = body.rfind("Thought:")
    if idx >= 0:
        body = body[idx + len("Thought:"):]
    cut = body.find("Action:")
    if cut >= 0:
        body = body[:cut]
    body = " ".join(body.split())
    return body or None


def calibrated_turn(thought: str, expert_action: str) -> str:
    """``Thought: <thought>\\nAction: <expert action>``."""
    return f"Thought: {thought}\nAction: {expert_action}"


class Reflector:
    """Turns reflection requests into results; never raises for one bad request."""

    source: str = "reflector"

    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[ReflectionResult]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class OfflineReflector(Reflector):
    """Deterministic template reflection: a STAND-IN for runs without any LLM, not the method's reflection.

    Every result carries ``source == "offline-stand-in"`` so it can be told apart downstream.
    """

    source = "offline-stand-in"

    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[ReflectionResult]:
        out = []
        for r in requests:
            last_obs = next((m.content for m in reversed(r.history) if m.role == "user"), "")
            last_obs = " ".join(last_obs.replace("Observation:", "").split())[:160]
            thought = (f"My last action, \"{r.deviated_action}\", did not bring me closer to the goal"
                       + (f" (the result was: {last_obs})" if last_obs else "")
                       + f". That was a mistake; the better next step is to {r.expert_action}.")
            out.append(ReflectionResult(r.key, thought, self.source, True))
        return out


class ReflectionCache:
    """On-disk JSONL cache of raw reflection replies keyed by a hash of (model label, prompt, params).

    Only successful replies are stored, so a rerun repeats nothing that worked and retries what failed.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._entries: dict[str, str] = {}
        for obj in read_jsonl_objects(self.path):
            if isinstance(obj, dict) and isinstance(obj.get("key"), str) and isinstance(obj.get("reply"), str):
                self._entries[obj["key"]] = obj["reply"]
        self._sink = JsonlSink(self.path)

    @staticmethod
    def make_key(model: str, prompt: Sequence[Message], params: SamplingParams) -> str:
        payload = json.dumps({"model": model, "prompt": [m.to_dict() for m in prompt],
                              "temperature": params.temperature, "top_p": params.top_p,
                              "max_new_tokens": params.max_new_tokens}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        return self._entries.get(key)

    def put(self, key: str, reply: str) -> None:
        if key not in self._entries:
            self._entries[key] = reply
            self._sink.write({"key": key, "reply": reply})

    def __len__(self) -> int:
        return len(self._entries)

    def close(self) -> None:
        self._sink.close()


class PolicyReflector(Reflector):
    """Reflection by any :class:`Policy` (openai / hf / the base agent), with an optional disk cache.

    Requests go to the policy in batches of ``batch_size``; when a batch call raises, its
    requests are retried one by one so one failing request does not sink the others. Retrying a
    failed HTTP call is the backend's job; a request that still fails comes back with
    ``ok=False`` and the error, for the caller to report. After ``max_consecutive_failures``
    failures in a row (the endpoint is down) the remaining requests are not sent and come back
    failed; since failures are never cached, a rerun asks for exactly those again.
    A :class:`~eval_agent.agents.errors.FatalPolicyError` (bad credentials, a server still down
    after the backend's retries) is not a failed reflection: it stops the run, so the stage exits
    non-zero instead of writing a training file without calibrations.
    """

    def __init__(self, policy: Policy, model_label: str, params: SamplingParams | None = None,
                 cache: ReflectionCache | None = None, batch_size: int = 8, max_consecutive_failures: int = 5):
        self.max_consecutive_failures = max(1, max_consecutive_failures)
        self._consecutive_failures = 0
        self._last_error: str | None = None
        self.policy = policy
        self.source = model_label
        self.params = params or SamplingParams(temperature=0.0, max_new_tokens=256)
        self.cache = cache
        self.batch_size = max(1, batch_size)

    def _generate_one_by_one(self, prompts: list[list[Message]]) -> list[str | Exception]:
        out: list[str | Exception] = []
        for p in prompts:
            if self._consecutive_failures >= self.max_consecutive_failures:
                out.append(RuntimeError(f"not attempted: {self.max_consecutive_failures} reflections in a row "
                                        f"failed (last: {self._last_error})"))
                continue
            try:
                out.append(self.policy.generate([p], self.params)[0])
                self._consecutive_failures = 0
            except FatalPolicyError:
                raise
            except Exception as e:  # noqa: BLE001 - reported per record
                logger.warning("reflection request failed: %s", e)
                self._consecutive_failures += 1
                self._last_error = f"{type(e).__name__}: {e}"
                out.append(e)
        return out

    def _generate_batch(self, prompts: list[list[Message]]) -> list[str | Exception]:
        """Replies for a batch; per-row failures (``RowErrors``) stay per row; other errors retry row by row."""
        if self._consecutive_failures >= self.max_consecutive_failures:
            return self._generate_one_by_one(prompts)
        try:
            replies = list(self.policy.generate(prompts, self.params))
            if len(replies) != len(prompts):
                raise RuntimeError(f"policy returned {len(replies)} replies for {len(prompts)} prompts")
            self._consecutive_failures = 0
            return replies
        except FatalPolicyError:
            raise
        except Exception as e:  # noqa: BLE001
            outputs = getattr(e, "outputs", None)
            errors = getattr(e, "errors", None)
            if isinstance(outputs, list) and isinstance(errors, dict) and len(outputs) == len(prompts):
                return [o if o is not None else RuntimeError(str(errors.get(i, "generation failed")))
                        for i, o in enumerate(outputs)]
            logger.warning("reflection batch failed (%s); retrying its %d requests one by one", e, len(prompts))
            return self._generate_one_by_one(prompts)

    def reflect(self, requests: Sequence[ReflectionRequest]) -> list[ReflectionResult]:
        results: dict[str, ReflectionResult] = {}
        todo: list[tuple[ReflectionRequest, list[Message], str]] = []
        for r in requests:
            prompt = reflection_prompt(r)
            ckey = ReflectionCache.make_key(self.source, prompt, self.params)
            reply = self.cache.get(ckey) if self.cache is not None else None
            if reply is not None:
                results[r.key] = self._result(r, reply, cached=True)
            else:
                todo.append((r, prompt, ckey))
        if todo:
            logger.info("reflection: %d cached, %d to request from %s", len(requests) - len(todo), len(todo), self.source)
        for i in tqdm(range(0, len(todo), self.batch_size), desc="reflections", unit="batch", disable=not todo):
            chunk = todo[i:i + self.batch_size]
            replies = self._generate_batch([p for _, p, _ in chunk])
            for (r, _, ckey), reply in zip(chunk, replies):
                if isinstance(reply, Exception):
                    results[r.key] = ReflectionResult(r.key, None, self.source, False, f"{type(reply).__name__}: {reply}")
                    continue
                res = self._result(r, reply)
                if res.ok and self.cache is not None:
                    self.cache.put(ckey, reply)
                results[r.key] = res
        return [results[r.key] for r in requests]

    def _result(self, r: ReflectionRequest, reply: str, cached: bool = False) -> ReflectionResult:
        thought = parse_reflection(reply)
        if thought is None:
            return ReflectionResult(r.key, None, self.source, False, f"reply has no thought: {reply[:200]!r}", cached)
        return ReflectionResult(r.key, thought, self.source, True, None, cached)

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
