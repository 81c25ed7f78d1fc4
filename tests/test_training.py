"""Unit tests of the training code: bootstrap, assistant-only label masks, STeCa's loss, bad records.

Real tokenizers trained by the bootstrap on the shared ALFWorld trajectories; tiny random Llama models.
"""
from __future__ import annotations

import copy
import json
import logging
import math
from pathlib import Path

import pytest
import torch

from training_fixtures import nano_model

from steca.records import RecordError, load_sft
from steca.training.bootstrap import EOT
from steca.training.chat import IGNORE_INDEX, encode_chat, encode_prompt_continuation
from steca.training.losses import sequence_logprobs, steca_loss
from steca.training.reinforced import PairCollator, build_pair_dataset, make_reinforced_trainer
from steca.training.sft import build_sft_dataset

# A Llama-2-chat style template written for this test (prefix-stable, eos after each assistant turn).
LLAMA2_STYLE_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + ' ' + eos_token }}"
    "{% endif %}{% endfor %}"
)


@pytest.fixture(scope="module")
def nano_dir(alfworld_sft_sample: Path, tmp_path_factory) -> Path:
    return nano_model(tmp_path_factory, alfworld_sft_sample)


@pytest.fixture(scope="module")
def tokenizer(nano_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(nano_dir)


@pytest.fixture(scope="module")
def records(alfworld_sft_sample: Path):
    return load_sft(alfworld_sft_sample, strict=True).records


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    """Contiguous [start, end) runs of trained positions."""
    runs, start = [], None
    for i, x in enumerate(labels + [IGNORE_INDEX]):
        if x != IGNORE_INDEX and start is None:
            start = i
        elif x == IGNORE_INDEX and start is not None:
            runs.append((start, i))
            start = None
    return runs


def test_bootstrap_dir_loads_offline_and_renders_chat(nano_dir: Path, tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = AutoModelForCausalLM.from_pretrained(nano_dir)
    assert model.config.model_type == "llama"
    assert tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id
    assert tokenizer.eos_token == EOT
    assert model.config.vocab_size == len(tokenizer)
    msgs = [{"role": "user", "content": "go"}, {"role": "assistant", "content": "Action: look"}]
    text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert text.count(EOT) == 2 and "Action: look" + EOT in text
    gen = tokenizer.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True)
    assert gen.endswith("<|assistant|>\n") and text.startswith(gen)
    # byte-level BPE round-trips arbitrary text
    s = "Thought: the cd 2 is in drawer 1 (ünïcode).\nAction: go to drawer 1"
    assert tokenizer.decode(tokenizer.encode(s, add_special_tokens=False)) == s
    ids = tokenizer.apply_chat_template(msgs[:1], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=3, do_sample=False)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3 or tokenizer.eos_token_id in out[0].tolist()


def test_sft_label_mask_token_by_token(tokenizer, records):
    """Only assistant tokens of every assistant turn, each with its end-of-turn token, are trained."""
    for rec in records[:10]:
        enc = encode_chat(tokenizer, rec.conversations)
        # reference mask from transformers' own {% generation %} handling of the bootstrap template
        ref = tokenizer.apply_chat_template([{"role": m.role, "content": m.content} for m in rec.conversations],
                                            return_assistant_tokens_mask=True, return_dict=True)
        assert enc.input_ids == ref["input_ids"]
        for tok_id, label, bit in zip(enc.input_ids, enc.labels, ref["assistant_masks"]):
            assert (label != IGNORE_INDEX) == bool(bit)
            if label != IGNORE_INDEX:
                assert label == tok_id
        # and per turn: each trained run is exactly one assistant turn's text plus <|eot|>
        assistant = [m.content for m in rec.conversations if m.role == "assistant"]
        runs = _runs(enc.labels)
        assert len(runs) == len(assistant)
        for (s, e), content in zip(runs, assistant):
            assert tokenizer.decode(enc.input_ids[s:e]) == content + EOT
            assert enc.input_ids[e - 1] == tokenizer.eos_token_id
            # the token before the run is the newline after the <|assistant|> marker: never trained
            assert enc.labels[s - 1] == IGNORE_INDEX


def test_label_mask_with_llama2_style_template(tokenizer, records):
    """Prefix rendering locates assistant turns for a template without generation markers."""
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = LLAMA2_STYLE_TEMPLATE
    rec = records[0]
    enc = encode_chat(tok, rec.conversations)
    assistant = [m.content for m in rec.conversations if m.role == "assistant"]
    runs = _runs(enc.labels)
    assert len(runs) == len(assistant)
    for (s, e), content in zip(runs, assistant):
        assert tok.decode(enc.input_ids[s:e]).strip() == content + " " + EOT
        assert "[/INST]" not in tok.decode(enc.input_ids[s:e])


def test_prompt_continuation_trains_only_continuation_assistant_turns(tokenizer, records):
    conv = records[0].conversations
    prompt, chosen = conv[:5], conv[5:]
    enc = encode_prompt_continuation(tokenizer, prompt, chosen)
    runs = _runs(enc.labels)
    cont_assistant = [m.content for m in chosen if m.role == "assistant"]
    assert [tokenizer.decode(enc.input_ids[s:e]) for s, e in runs] == [c + EOT for c in cont_assistant]
    short = encode_prompt_continuation(tokenizer, prompt, chosen, max_prompt_length=16, max_target_length=40)
    f0 = runs[0][0]  # first trained token of the untruncated encoding
    assert short.input_ids == [tokenizer.bos_token_id] + enc.input_ids[f0 - 15:f0] + enc.input_ids[f0:f0 + 40]
    assert short.labels[16:] == enc.labels[f0:f0 + 40] and set(short.labels[:16]) == {IGNORE_INDEX}


def _tiny_llama(vocab: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048)
    return LlamaForCausalLM(cfg).float()


def _pair_file(tmp_path: Path, records, rewards: list[float]) -> Path:
    p = tmp_path / "pairs.jsonl"
    with p.open("w") as f:
        for i, w in enumerate(rewards):
            conv = [m.to_dict() for m in records[i].conversations]
            other = [m.to_dict() for m in records[i + 5].conversations]
            f.write(json.dumps({"id": f"p{i}", "prompt": conv[:3], "chosen": conv[3:9], "rejected": other[3:7],
                                "reward": w}) + "\n")
    return p


def _hand_logp(model, ids: list[int], labels: list[int]) -> torch.Tensor:
    """sum over trained positions t of log p(ids[t] | ids[:t]), one sequence, computed position by position."""
    logits = model(input_ids=torch.tensor([ids])).logits[0]
    total = torch.zeros(())
    for t in range(1, len(ids)):
        if labels[t] != IGNORE_INDEX:
            total = total + torch.log_softmax(logits[t - 1], -1)[ids[t]]
    return total


def _grads(loss: torch.Tensor, model) -> list[torch.Tensor]:
    params = [p for p in model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, params, allow_unused=False))


@pytest.mark.parametrize("beta", [0.0, 0.5])
def test_reinforced_loss_and_grads_match_formula(tokenizer, records, tmp_path, beta):
    from transformers import TrainingArguments

    rewards = [0.5, 2.0, 1.3]
    ds = build_pair_dataset(_pair_file(tmp_path, records, rewards), tokenizer, max_prompt_length=64,
                            max_target_length=96, with_rejected=beta > 0, strict=True)
    model = _tiny_llama(len(tokenizer), seed=1)
    ref = _tiny_llama(len(tokenizer), seed=2) if beta > 0 else None
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    trainer = make_reinforced_trainer(model, tokenizer, ds, args, beta=beta, ref_model=ref)
    batch = PairCollator(tokenizer.pad_token_id)([ds[i] for i in range(len(ds))])
    model.train(False)  # no dropout in either computation
    loss = trainer.compute_loss(model, batch)

    terms = []
    for i, w in enumerate(rewards):
        lp_c = _hand_logp(model, ds[i]["chosen_input_ids"], ds[i]["chosen_labels"])
        term = -lp_c
        if beta > 0:
            lp_r = _hand_logp(model, ds[i]["rejected_input_ids"], ds[i]["rejected_labels"])
            with torch.no_grad():
                ref_c = _hand_logp(ref, ds[i]["chosen_input_ids"], ds[i]["chosen_labels"])
                ref_r = _hand_logp(ref, ds[i]["rejected_input_ids"], ds[i]["rejected_labels"])
            delta = (lp_c - lp_r) - (ref_c - ref_r)
            term = term - torch.log(torch.sigmoid(beta * delta))
        terms.append(w * term)
    hand = torch.stack(terms).mean()
    assert torch.allclose(loss, hand, rtol=1e-4, atol=1e-3), (loss.item(), hand.item())
    for g1, g2 in zip(_grads(loss, model), _grads(hand, model)):
        assert torch.allclose(g1, g2, rtol=1e-3, atol=1e-4)
    if ref is not None:
        assert all(p.grad is None and not p.requires_grad for p in ref.parameters())


def test_no_reward_weighting_and_pure_loss():
    lp_c = torch.tensor([-10.0, -4.0], requires_grad=True)
    w = torch.tensor([2.0, 0.5])
    out = steca_loss(lp_c, w)
    assert out.loss.item() == pytest.approx((2 * 10 + 0.5 * 4) / 2)
    assert steca_loss(lp_c, w, reward_weighting=False).loss.item() == pytest.approx(7.0)
    lp_r, ref_c, ref_r = torch.tensor([-12.0, -3.0]), torch.tensor([-11.0, -4.0]), torch.tensor([-11.0, -3.5])
    out = steca_loss(lp_c, w, 0.1, lp_r, ref_c, ref_r)
    deltas = [(-10 + 12) - (-11 + 11), (-4 + 3) - (-4 + 3.5)]
    want = [wi * (-math.log(1 / (1 + math.exp(-0.1 * d))) + nll) for wi, d, nll in zip([2, 0.5], deltas, [10, 4])]
    assert out.loss.item() == pytest.approx(sum(want) / 2, rel=1e-6)
    with pytest.raises(ValueError):
        steca_loss(lp_c, w, 0.1)


def test_sequence_logprobs_ignores_masked_positions():
    logits = torch.randn(1, 4, 7)
    labels = torch.tensor([[IGNORE_INDEX, 3, IGNORE_INDEX, 5]])
    lp = torch.log_softmax(logits, -1)
    assert torch.allclose(sequence_logprobs(logits, labels), lp[0, 0, 3] + lp[0, 2, 5])


def test_lora_disabled_adapter_is_the_reference(tokenizer, records, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import TrainingArguments

    ds = build_pair_dataset(_pair_file(tmp_path, records, [1.0, 1.0]), tokenizer, 48, 64, with_rejected=True)
    base = _tiny_llama(len(tokenizer), seed=3)
    frozen = copy.deepcopy(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    with torch.no_grad():  # move the adapter away from zero so policy != reference
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True)
    trainer = make_reinforced_trainer(model, tokenizer, ds, args, beta=0.1)
    batch = PairCollator(tokenizer.pad_token_id)([ds[0], ds[1]])
    ref_lp = trainer._reference_logps(model, batch)
    with torch.no_grad():
        want = sequence_logprobs(frozen(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                 batch["labels"])
        pol = sequence_logprobs(model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits,
                                batch["labels"])
    assert torch.allclose(ref_lp, want, atol=1e-4)
    assert not torch.allclose(pol, want, atol=1e-2)


def test_malformed_sft_file_names_the_record(tokenizer, alfworld_sft_sample, tmp_path, caplog):
    data = json.loads(alfworld_sft_sample.read_text())[:3]
    data[1] = {"id": "broken_one", "game_file": "x", "conversations": [{"role": "user", "content": 5}]}
    p = tmp_path / "bad_sft.json"
    p.write_text(json.dumps(data))
    with pytest.raises(RecordError) as e:
        build_sft_dataset(p, tokenizer, 2048, strict=True)
    msg = str(e.value)
    assert "bad_sft.json" in msg and "record 1" in msg and "broken_one" in msg and "conversations[0].content" in msg
    with caplog.at_level(logging.WARNING):
        ds = build_sft_dataset(p, tokenizer, 2048, strict=False)
    assert len(ds) == 2
    assert "broken_one" in caplog.text
    # a record with nothing left to train after truncation is named with its position in the file
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        with pytest.raises(ValueError, match="no usable SFT record"):
            build_sft_dataset(p, tokenizer, 8)
    assert "record 2 (id='alfworld_2')" in caplog.text


def test_malformed_pair_file_names_the_record(tokenizer, records, tmp_path, caplog):
    p = _pair_file(tmp_path, records, [1.0, 1.0, 1.0])
    lines = p.read_text().splitlines()
    bad = json.loads(lines[2])
    bad["reward"] = "high"
    lines[2] = json.dumps(bad)
    lines.insert(1, "{not json")
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordError) as e:
        build_pair_dataset(p, tokenizer, 64, 64, strict=True)
    assert "pairs.jsonl" in str(e.value) and "record 1" in str(e.value)
    with caplog.at_level(logging.WARNING):
        ds = build_pair_dataset(p, tokenizer, 64, 64)
    assert len(ds) == 2
    assert "record 3 (id='p2'), field 'reward'" in caplog.text and "record 1: line 2 is not valid JSON" in caplog.text
