"""Fast unit tests of the chat label masks, the reinforced loss and the episode driver.

They need no shared data and no model (a byte-level BPE tokenizer trained on a few sentences, random
logits), so the mutation script (``scripts/mutation.py``) can run them for every mutant. The episode
driver's environment-facing functions are checked on the real VirtualHome simulator.
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eval_agent.episode import (INVALID_FORMAT_OBSERVATION, format_observation, new_episode, record_step,
                                start_episode, step_episode)
from eval_agent.types import Message, StepOutcome
from steca.training.bootstrap import BOS, EOT, train_tokenizer, wrap_tokenizer
from steca.training.chat import (FALLBACK_CHAT_TEMPLATE, IGNORE_INDEX, ChatTemplateError, EncodedChat,
                                 PromptTooLongError, assistant_spans, encode_chat, encode_prompt_continuation, ensure_chat_template,
                                 render, truncate_keep_start)
from steca.training.losses import sequence_logprobs, steca_loss
from tests.method_fixtures import EXPERT_ACTIONS, EXPERT_OBS, FIRST_OBS, INSTRUCTION, expert_sft

LLAMA2_STYLE = ("{% for message in messages %}"
                "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
                "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
                "{% endif %}{% endfor %}")
# no end-of-turn token: the trained span ends where the turn's text ends (trailing whitespace not trained)
PLAIN = ("{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\n\n' }}{% endfor %}"
         "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
# renders the number of messages first: rendering fewer turns is not a prefix of rendering all
NOT_PREFIX_STABLE = "{{ messages|length }}" + PLAIN


@pytest.fixture(scope="module")
def tok():
    texts = [INSTRUCTION, FIRST_OBS, *EXPERT_ACTIONS, *EXPERT_OBS] * 3
    return wrap_tokenizer(train_tokenizer(texts, 400))


def _chat() -> list[Message]:
    return expert_sft().conversations[:7]  # instruction, OK, first observation, two steps


def _trained_runs(enc: EncodedChat) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, x in enumerate(enc.labels + [IGNORE_INDEX]):
        if x != IGNORE_INDEX and start is None:
            start = i
        elif x == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def _with_template(tok, template: str):
    import copy

    t = copy.deepcopy(tok)
    t.chat_template = template
    return t


# ------------------------------------------------------------------ chat masks
def test_labels_are_the_assistant_tokens_as_transformers_marks_them(tok):
    conv = _chat()
    enc = encode_chat(tok, conv)
    ref = tok.apply_chat_template([m.to_dict() for m in conv], return_assistant_tokens_mask=True, return_dict=True)
    assert enc.input_ids == ref["input_ids"]
    assert [x != IGNORE_INDEX for x in enc.labels] == [bool(b) for b in ref["assistant_masks"]]
    assert all(x == i for x, i in zip(enc.labels, enc.input_ids) if x != IGNORE_INDEX)
    runs = _trained_runs(enc)
    assert [tok.decode(enc.input_ids[s:e]) for s, e in runs] == [m.content + EOT for m in conv if m.role == "assistant"]
    assert enc.n_trained == sum(e - s for s, e in runs)


def test_first_trained_skips_earlier_assistant_turns(tok):
    conv = _chat()
    enc = encode_chat(tok, conv, first_trained=4)  # turn 1 ("OK") and turn 3 are prompt
    runs = _trained_runs(enc)
    assert [tok.decode(enc.input_ids[s:e]) for s, e in runs] == [conv[5].content + EOT]
    assert encode_chat(tok, conv, first_trained=5).labels == enc.labels
    assert _trained_runs(encode_chat(tok, conv, first_trained=6)) == []


def test_spans_with_a_template_without_generation_markers(tok):
    t = _with_template(tok, LLAMA2_STYLE)
    conv = _chat()
    text, spans = assistant_spans(t, conv)
    # the span starts right after the user turn's ' [/INST]': the template's space before the turn is trained
    assert [text[s:e] for s, e in spans] == [f" {m.content} {EOT}" for m in conv if m.role == "assistant"]
    enc = encode_chat(t, conv)
    assert [t.decode(enc.input_ids[s:e]).strip() for s, e in _trained_runs(enc)] == \
        [f"{m.content} {EOT}" for m in conv if m.role == "assistant"]


def test_spans_end_at_the_text_when_the_template_writes_no_eos(tok):
    t = _with_template(tok, PLAIN)
    conv = _chat()
    text, spans = assistant_spans(t, conv)
    assert [text[s:e] for s, e in spans] == [m.content for m in conv if m.role == "assistant"]
    assert text[spans[0][1]:spans[0][1] + 2] == "\n\n"


def test_a_template_that_is_not_prefix_stable_is_refused(tok):
    with pytest.raises(ChatTemplateError, match="turn 1"):
        assistant_spans(_with_template(tok, NOT_PREFIX_STABLE), _chat())


def test_render_of_no_messages_is_empty(tok):
    assert render(tok, []) == ""
    assert render(tok, [{"role": "user", "content": "hi"}], add_generation_prompt=True).endswith("<|assistant|>\n")


def test_truncate_keep_start():
    enc = EncodedChat([1, 2, 3, 4], [-100, 2, 3, -100])
    assert truncate_keep_start(enc, None) is enc and truncate_keep_start(enc, 4) is enc
    cut = truncate_keep_start(enc, 3)
    assert (cut.input_ids, cut.labels) == ([1, 2, 3], [-100, 2, 3])


def test_prompt_continuation_truncation_keeps_bos_and_the_prompt_end(tok):
    conv = _chat()
    full = encode_prompt_continuation(tok, conv[:5], conv[5:])
    first = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX)
    assert set(full.labels[:first]) == {IGNORE_INDEX} and full.input_ids[0] == tok.convert_tokens_to_ids(BOS)
    assert [tok.decode(full.input_ids[s:e]) for s, e in _trained_runs(full)] == [conv[5].content + EOT]
    cut = encode_prompt_continuation(tok, conv[:5], conv[5:], max_prompt_length=6, max_target_length=5)
    assert cut.input_ids == [full.input_ids[0]] + full.input_ids[first - 5:first] + full.input_ids[first:first + 5]
    assert cut.labels == [IGNORE_INDEX] * 6 + full.labels[first:first + 5]
    one = encode_prompt_continuation(tok, conv[:5], conv[5:], max_prompt_length=1)
    assert one.input_ids == full.input_ids[first - 1:]  # no room for bos: the prompt's last token only
    same = encode_prompt_continuation(tok, conv[:5], conv[5:], max_prompt_length=first, max_target_length=10 ** 6)
    assert same == full


def test_text_after_the_eos_token_is_not_trained(tok):
    t = _with_template(tok, LLAMA2_STYLE.replace("' ' + eos_token", "' ' + eos_token + ' (end)'"))
    conv = _chat()
    text, spans = assistant_spans(t, conv)
    assert [text[s:e] for s, e in spans] == [f" {m.content} {EOT}" for m in conv if m.role == "assistant"]
    assert text[spans[0][1]:spans[0][1] + 6] == " (end)"


def test_the_last_eos_of_a_turn_ends_its_span_and_an_empty_turn_trains_its_eos(tok):
    t = _with_template(tok, LLAMA2_STYLE.replace("' ' + eos_token", "' ' + eos_token + ' (end)'"))
    conv = [Message("user", FIRST_OBS), Message("assistant", f"Thought: stop{EOT} no, go on\nAction: look"),
            Message("user", "Observation: ok"), Message("assistant", "")]
    text, spans = assistant_spans(t, conv)
    assert [text[s:e] for s, e in spans] == [f" {conv[1].content} {EOT}", f"  {EOT}"]
    # a template that writes the turn right after the previous one: the empty turn's span is its eos alone
    bare = _with_template(tok, "{% for m in messages %}{% if m['role'] == 'assistant' %}"
                               "{{ m['content'] + eos_token + ' (end)' + '\n' }}{% else %}"
                               "{{ m['role'] + ': ' + m['content'] + '\n' }}{% endif %}{% endfor %}")
    text, spans = assistant_spans(bare, conv)
    assert [text[s:e] for s, e in spans] == [f"{conv[1].content}{EOT}", EOT]


def test_without_an_eos_token_the_span_ends_at_the_turn_text(tok):
    t = _with_template(tok, PLAIN)
    t.eos_token = None
    conv = _chat()
    text, spans = assistant_spans(t, conv)
    assert t.eos_token is None and [text[s:e] for s, e in spans] == [m.content for m in conv if m.role == "assistant"]


def test_a_generation_prompt_that_differs_from_the_turn_header_is_refused(tok):
    # prefix-stable chat, but the generation prompt ("assistant:" + newline) is not how a turn starts
    t = _with_template(tok, PLAIN.replace("{{ 'assistant: ' }}", "{{ 'assistant:\n' }}"))
    with pytest.raises(ChatTemplateError, match="^chat template is not prefix-stable at turn 1: rendering the first 1 "
                                                r"turns \(with the generation prompt\) is not a prefix of rendering "
                                                "the whole chat$"):
        assistant_spans(t, _chat())


def test_two_assistant_turns_in_a_row_are_both_trained_whole(tok):
    t = _with_template(tok, LLAMA2_STYLE)
    conv = [Message("user", FIRST_OBS), Message("assistant", EXPERT_ACTIONS[0]), Message("assistant", EXPERT_ACTIONS[1])]
    text, spans = assistant_spans(t, conv)
    assert spans[0][1] == spans[1][0] and spans[1][1] == len(text)
    enc = encode_chat(t, conv)
    first = next(i for i, x in enumerate(enc.labels) if x != IGNORE_INDEX)
    assert t.decode(enc.input_ids[:first]) == t.decode(t(text[:spans[0][0]], add_special_tokens=False)["input_ids"])
    assert enc.labels[first:] == enc.input_ids[first:]  # every token of both turns, none left out between them


def test_a_tokenizer_that_adds_bos_itself_gets_no_second_bos(tok):
    from tokenizers.processors import TemplateProcessing

    t = _with_template(tok, tok.chat_template)
    t._tokenizer.post_processor = TemplateProcessing(single=f"{BOS} $A", special_tokens=[(BOS, t.bos_token_id)])
    assert t("go")["input_ids"][0] == t.bos_token_id  # a Llama-style tokenizer: its own bos on every call
    conv = _chat()
    assert encode_chat(t, conv) == encode_chat(tok, conv)
    assert encode_chat(t, conv).input_ids.count(t.bos_token_id) == 1


def test_prompt_continuation_limits_at_their_edges(tok):
    conv = _chat()
    full = encode_prompt_continuation(tok, conv[:5], conv[5:])
    first = next(i for i, x in enumerate(full.labels) if x != IGNORE_INDEX)
    prompt_ids = encode_chat(tok, conv[:5]).input_ids
    assert encode_prompt_continuation(tok, conv[:5], []) == EncodedChat(prompt_ids, [IGNORE_INDEX] * len(prompt_ids))
    two = encode_prompt_continuation(tok, conv[:5], conv[5:], max_prompt_length=2)
    assert two.input_ids == [full.input_ids[0], full.input_ids[first - 1]] + full.input_ids[first:]
    capped = encode_prompt_continuation(tok, conv[:5], conv[5:], max_length=first + 3)
    assert capped == EncodedChat(full.input_ids[:first + 3], full.labels[:first + 3])
    with pytest.raises(PromptTooLongError, match=f"^the prompt alone has {first} tokens, more than max_length {first}$") as e:
        encode_prompt_continuation(tok, conv[:5], conv[5:], max_length=first)
    assert (e.value.n_prompt, e.value.max_length) == (first, first)


def test_ensure_chat_template_fills_template_and_pad(tok, caplog):
    t = _with_template(tok, "")
    t.pad_token = None
    with caplog.at_level("WARNING", logger="steca.training.chat"):
        ensure_chat_template(t)
    assert caplog.messages == ["tokenizer has no chat template; using the project's fallback template"]
    assert t.chat_template == FALLBACK_CHAT_TEMPLATE and t.pad_token == t.unk_token
    kept = _with_template(tok, LLAMA2_STYLE)
    ensure_chat_template(kept)
    assert kept.chat_template == LLAMA2_STYLE and kept.pad_token == tok.pad_token


# ------------------------------------------------------------------ losses
def test_sequence_logprobs_sums_shifted_trained_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g)
    labels = torch.tensor([[3, 1, IGNORE_INDEX, 6, 2], [IGNORE_INDEX] * 4 + [0]])
    lp = torch.log_softmax(logits, -1)
    want = torch.stack([lp[0, 0, 1] + lp[0, 2, 6] + lp[0, 3, 2], lp[1, 3, 0]])  # labels[:, 0] never counts
    assert torch.allclose(sequence_logprobs(logits, labels), want)
    with pytest.raises(ValueError, match="disagree"):
        sequence_logprobs(logits, labels[:, :4])


def test_steca_loss_beta_zero_is_weighted_nll():
    lp_c = torch.tensor([-10.0, -4.0, -1.0])
    w = torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64)
    out = steca_loss(lp_c, w)
    assert out.loss.dtype == torch.float32
    assert out.per_pair.tolist() == [20.0, 2.0, 1.0] and out.loss.item() == pytest.approx(23.0 / 3)
    assert out.nll.tolist() == [10.0, 4.0, 1.0] and out.preference is None and out.margin is None
    plain = steca_loss(lp_c, w, reward_weighting=False)
    assert plain.per_pair.tolist() == [10.0, 4.0, 1.0] and plain.loss.item() == pytest.approx(5.0)


def test_steca_loss_beta_positive_matches_the_formula():
    lp_c, lp_r = torch.tensor([-10.0, -4.0]), torch.tensor([-12.0, -3.0])
    ref_c, ref_r = torch.tensor([-11.0, -4.0]), torch.tensor([-11.0, -3.5])
    w = torch.tensor([2.0, 0.5])
    out = steca_loss(lp_c, w, 0.3, lp_r, ref_c, ref_r)
    margins = [(-10 + 12) - (-11 + 11), (-4 + 3) - (-4 + 3.5)]  # 2.0, -0.5
    pref = [math.log1p(math.exp(-0.3 * m)) for m in margins]
    assert out.margin.tolist() == pytest.approx(margins)
    assert out.preference.tolist() == pytest.approx(pref)
    assert out.per_pair.tolist() == pytest.approx([2 * (pref[0] + 10), 0.5 * (pref[1] + 4)])
    assert out.loss.item() == pytest.approx((2 * (pref[0] + 10) + 0.5 * (pref[1] + 4)) / 2)
    assert torch.equal(out.preference, -F.logsigmoid(0.3 * out.margin))


@pytest.mark.parametrize("missing", [0, 1, 2])
def test_steca_loss_beta_positive_needs_every_side(missing):
    sides = [torch.zeros(1), torch.zeros(1), torch.zeros(1)]
    sides[missing] = None
    with pytest.raises(ValueError, match="^beta > 0 needs rejected log-probs and the reference model's log-probs$"):
        steca_loss(torch.zeros(1), torch.ones(1), 0.1, *sides)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        steca_loss(torch.zeros(1), torch.ones(1), -0.1)
    assert steca_loss(torch.tensor([-2.0]), torch.ones(1), 0.0, *sides).loss.item() == 2.0  # beta 0 needs none


# ------------------------------------------------------------------ episode driver
def _ep():
    return new_episode("t", "g.json", [Message("user", "instr"), Message("assistant", "OK")], "first obs")


def test_new_episode_and_observation_format():
    ep = _ep()
    assert [m.content for m in ep.messages] == ["instr", "OK", "first obs"] and ep.messages[-1].role == "user"
    assert (ep.task_id, ep.game_file, ep.n_prompt_messages, ep.steps, ep.finished, ep.terminate_reason) == (
        "t", "g.json", 2, 0, False, None)
    assert format_observation(StepOutcome("You see a desk.", won=False)) == "Observation: You see a desk."


def test_record_step_outcomes():
    ep = _ep()
    assert record_step(ep, "Action: look", StepOutcome("dark", won=False), max_steps=3) is ep
    assert (ep.steps, ep.finished, ep.terminate_reason, ep.success, ep.reward) == (1, False, None, False, 0.0)
    assert [m.role for m in ep.messages[-2:]] == ["assistant", "user"]
    assert ep.messages[-2].content == "Action: look" and ep.messages[-1].content == "Observation: dark"
    record_step(ep, "no action here", None, max_steps=3)
    assert ep.messages[-1] == Message("user", INVALID_FORMAT_OBSERVATION) and ep.steps == 2 and not ep.finished
    record_step(ep, "Action: open box", StepOutcome("opened", won=False), max_steps=3)
    assert (ep.steps, ep.finished, ep.terminate_reason, ep.success) == (3, True, "max_steps", False)


def test_record_step_win_beats_the_step_limit_and_done_ends_without_success():
    ep = _ep()
    record_step(ep, "Action: win", StepOutcome("done!", won=True, done=True), max_steps=1)
    assert (ep.success, ep.reward, ep.finished, ep.terminate_reason, ep.steps) == (True, 1.0, True, "success", 1)
    ep = _ep()
    record_step(ep, "Action: die", StepOutcome("game over", won=False, done=True), max_steps=5)
    assert (ep.success, ep.reward, ep.finished, ep.terminate_reason) == (False, 0.0, True, "env_done")
    ep = _ep()
    record_step(ep, "no action", None, max_steps=1)
    assert (ep.finished, ep.terminate_reason, ep.success) == (True, "max_steps", False)


def test_start_and_step_on_the_real_virtualhome_simulator(virtualhome_data):
    from eval_agent.envs.virtualhome import NOTHING_HAPPENS, VirtualHomeEnv

    env = VirtualHomeEnv(virtualhome_data / "vh_seen_test.jsonl", virtualhome_data)
    prompt = [Message("user", "instr"), Message("assistant", "OK")]
    ep = start_episode(env, "418", prompt)
    assert ep.messages[2].content == env.reset("418") and ep.game_file == env.game_file("418") and ep.task_id == "418"
    ep = start_episode(env, "418", prompt)
    step_episode(env, ep, "Thought: hmm\nAction: dance with the dresser")
    assert ep.messages[-1].content == f"Observation: {NOTHING_HAPPENS}" and ep.steps == 1
    assert ep.messages[-2] == Message("assistant", "Thought: hmm\nAction: dance with the dresser")
    step_episode(env, ep, "Thought: no action line")
    assert ep.messages[-1].content == INVALID_FORMAT_OBSERVATION and ep.steps == 2
    env.reset("418")
    first_win = next(i for i, a in enumerate(env.expert_actions("418")) if env.execute(a).won)
    ep = start_episode(env, "418", prompt)
    for a in env.expert_actions("418"):
        if ep.finished:
            break
        step_episode(env, ep, f"Thought: go\nAction: {a}")
    assert ep.success and ep.reward == 1.0 and ep.terminate_reason == "success" and ep.steps == first_win + 1
