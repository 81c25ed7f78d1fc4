"""Render chats with the tokenizer's own chat template and mark the tokens that are trained.

Works with any tokenizer whose chat template is *prefix-stable* (rendering the first k turns is a
prefix of rendering k+1 turns), which holds for the bootstrap template and for Llama-2-chat's.
A tokenizer without a chat template gets :data:`FALLBACK_CHAT_TEMPLATE`.

The trained span of an assistant turn i is found in characters:

* ``start = len(render(messages[:i], add_generation_prompt=True))``
* ``end``   = the end of the tokenizer's ``eos_token`` inside ``render(messages[:i+1])[start:]``
  (the end-of-turn token is trained; anything the template writes after it, e.g. a newline, is not),
  or the end of the turn's rendering without trailing whitespace when the template writes no eos.

A token is trained when its first character lies inside a trained span (offsets from the fast
tokenizer); its label is its id, every other label is ``-100``.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Sequence

from eval_agent.types import Message

logger = logging.getLogger(__name__)

IGNORE_INDEX = -100
RELEASED_MAX_LENGTH = 4096  # tokens of prompt + continuation in the released reinforced trainer (GPU profile)

FALLBACK_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|assistant|>\n' }}{% generation %}{{ message['content'] + eos_token }}{% endgeneration %}{{ '\n' }}"
    "{% else %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)


class ChatTemplateError(ValueError):
    """The tokenizer's chat template cannot be used to locate assistant turns."""


@dataclass
class EncodedChat:
    """Token ids of a rendered chat and its labels (``-100`` where no loss is taken)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def n_trained(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def ensure_chat_template(tokenizer) -> None:
    """Give a tokenizer without a chat template the fallback template, and a pad token if it lacks one."""
    if not getattr(tokenizer, "chat_template", None):
        logger.warning("tokenizer has no chat template; using the project's fallback template")
        tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token


def _as_dicts(messages: Sequence[Message | dict]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        if isinstance(m, Message):
            out.append({"role": m.role, "content": m.content})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def render(tokenizer, messages: Sequence[Message | dict], add_generation_prompt: bool = False) -> str:
    """The chat template's text for ``messages`` (empty string for no messages)."""
    if not messages:
        return ""
    return tokenizer.apply_chat_template(_as_dicts(messages), tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: Sequence[Message | dict], first_trained: int = 0) -> tuple[str, list[tuple[int, int]]]:
    """The rendered text and the character spans of the assistant turns with index >= ``first_trained``."""
    msgs = _as_dicts(messages)
    full = render(tokenizer, msgs)
    eos = tokenizer.eos_token or ""
    spans: list[tuple[int, int]] = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant" or i < first_trained:
            continue
        before = render(tokenizer, msgs[:i], add_generation_prompt=True)
        upto = render(tokenizer, msgs[: i + 1])
        if not (upto.startswith(before) and full.startswith(upto)):
            raise ChatTemplateError(
                f"chat template is not prefix-stable at turn {i}: rendering the first {i} turns "
                "(with the generation prompt) is not a prefix of rendering the whole chat")
        seg = upto[len(before):]
        k = seg.rfind(eos) if eos else -1
        end = len(before) + (k + len(eos) if k >= 0 else len(seg.rstrip()))
        spans.append((len(before), end))
    return full, spans


def encode_chat(tokenizer, messages: Sequence[Message | dict], first_trained: int = 0) -> EncodedChat:
    """Tokenise a chat; labels are the ids of assistant-turn tokens (turn index >= ``first_trained``,
    each with its end-of-turn token) and ``-100`` elsewhere."""
    text, spans = assistant_spans(tokenizer, messages, first_trained)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(enc["input_ids"])
    labels = [IGNORE_INDEX] * len(ids)
    j = 0
    for t, (s, e) in enumerate(enc["offset_mapping"]):
        if e <= s:
            continue
        while j < len(spans) and spans[j][1] <= s:
            j += 1
        if j < len(spans) and spans[j][0] <= s < spans[j][1]:
            labels[t] = ids[t]
    return EncodedChat(ids, labels)


def truncate_keep_start(enc: EncodedChat, max_length: int | None) -> EncodedChat:
    """Keep the first ``max_length`` tokens."""
    if max_length is None or len(enc.input_ids) <= max_length:
        return enc
    return EncodedChat(enc.input_ids[:max_length], enc.labels[:max_length])


class PromptTooLongError(ValueError):
    """The prompt alone has more tokens than the training sequence may hold."""

    def __init__(self, n_prompt: int, max_length: int):
        self.n_prompt = n_prompt
        self.max_length = max_length
        super().__init__(f"the prompt alone has {n_prompt} tokens, more than max_length {max_length}")


def encode_prompt_continuation(tokenizer, prompt: Sequence[Message | dict], continuation: Sequence[Message | dict],
                               max_prompt_length: int | None = None,
                               max_target_length: int | None = None,
                               max_length: int | None = None) -> EncodedChat:
    """Tokenise ``prompt + continuation`` training only the continuation's assistant turns.

    Released behaviour (``max_prompt_length = max_target_length = None``): prompt and continuation
    are kept whole and the concatenation is cut on the right at ``max_length``; a prompt that alone
    is longer than ``max_length`` raises :class:`PromptTooLongError` (the caller reports and skips
    the record: a prompt is never cut silently).

    Option (not the released trainer's behaviour): the prompt part (tokens before the first trained
    token) keeps its last ``max_prompt_length`` tokens (a leading bos token is kept); the rest keeps
    its first ``max_target_length`` tokens; ``max_length`` then still caps the total.
    """
    enc = encode_chat(tokenizer, list(prompt) + list(continuation), first_trained=len(prompt))
    first = next((i for i, x in enumerate(enc.labels) if x != IGNORE_INDEX), len(enc.labels))
    p_ids, p_lab = enc.input_ids[:first], enc.labels[:first]
    t_ids, t_lab = enc.input_ids[first:], enc.labels[first:]
    if max_prompt_length is not None and len(p_ids) > max_prompt_length:
        bos = tokenizer.bos_token_id
        keep_bos = bos is not None and p_ids and p_ids[0] == bos and max_prompt_length > 1
        n = max_prompt_length - (1 if keep_bos else 0)
        p_ids = ([bos] if keep_bos else []) + p_ids[len(p_ids) - n:]
        p_lab = [IGNORE_INDEX] * len(p_ids)
    if max_target_length is not None:
        t_ids, t_lab = t_ids[:max_target_length], t_lab[:max_target_length]
    if max_length is not None and len(p_ids) >= max_length:
        raise PromptTooLongError(len(p_ids), max_length)
    return truncate_keep_start(EncodedChat(p_ids + t_ids, p_lab + t_lab), max_length)
