"""Sequence lengths in reinforced training and DPO, as the released trainer has them: prompt + chosen
kept whole, the concatenation cut on the right at ``max_length``, a prompt longer than that reported
and skipped (never cut)."""
from __future__ import annotations

import logging
from pathlib import Path

import pytest

from eval_agent.types import Message
from steca.method.reflection import calibrated_turn
from steca.method.trajectories import split_expert
from steca.records import PairRecord, RecordError, load_sft
from steca.training.chat import RELEASED_MAX_LENGTH, render
from steca.training.reinforced import ReinforcedArguments, encode_pairs
from training_fixtures import nano_model


@pytest.fixture(scope="module")
def tokenizer(alfworld_sft_sample: Path, tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(nano_model(tmp_path_factory, alfworld_sft_sample))


def _calibrated_pair(record, t: int) -> PairRecord:
    """A D_c record as :func:`steca.method.datasets.build_calibrated` lays it out: the expert prefix of
    step ``t``, a deviated turn and its observation; then the calibrated turn and the expert suffix."""
    traj = split_expert(record)
    expert_action = traj.steps[t].action
    prompt = traj.prefix(t) + [Message("assistant", "Thought: I look elsewhere first.\nAction: inventory"),
                               Message("user", "Observation: You are not carrying anything.")]
    chosen = [Message("assistant", calibrated_turn("That did not help; back to the plan.", expert_action))]
    chosen += traj.steps[t].messages()[1:] + traj.suffix(t + 1)
    return PairRecord(f"{record.id}_calibrated_{t}", prompt, chosen, traj.suffix(t), 1.0)


def test_calibrated_record_keeps_the_whole_instruction_and_goal(tokenizer, alfworld_sft_sample):
    records = load_sft(alfworld_sft_sample, strict=True).records
    longest = max(records, key=lambda r: len(r.conversations))
    pair = _calibrated_pair(longest, len(split_expert(longest).steps) - 2)
    instruction = longest.conversations[0].content
    goal = next(line for line in longest.conversations[2].content.splitlines() if line.startswith("Your task is to:"))
    assert ReinforcedArguments().max_length == RELEASED_MAX_LENGTH == 4096

    (row,) = encode_pairs([pair], tokenizer, None, None, with_rejected=False, max_length=RELEASED_MAX_LENGTH)
    text = tokenizer.decode(row["chosen_input_ids"])
    assert len(tokenizer(instruction, add_special_tokens=False)["input_ids"]) >= 300  # a long first turn
    assert instruction in text and goal in text
    assert text.index(instruction) < text.index(goal) < text.index("That did not help")
    # the option that is not the released behaviour (the prompt's last 512 tokens) loses the instruction
    (cut,) = encode_pairs([pair], tokenizer, 512, None, with_rejected=False, max_length=RELEASED_MAX_LENGTH)
    assert instruction not in tokenizer.decode(cut["chosen_input_ids"])


def test_concatenation_is_cut_on_the_right(tokenizer, alfworld_sft_sample):
    record = load_sft(alfworld_sft_sample, strict=True).records[0]
    pair = _calibrated_pair(record, 1)
    (whole,) = encode_pairs([pair], tokenizer, None, None, with_rejected=False, max_length=None)
    n = len(whole["chosen_input_ids"])
    (cut,) = encode_pairs([pair], tokenizer, None, None, with_rejected=False, max_length=n - 7)
    assert cut["chosen_input_ids"] == whole["chosen_input_ids"][:n - 7]
    assert cut["chosen_labels"] == whole["chosen_labels"][:n - 7]


def test_prompt_longer_than_max_length_is_reported_and_skipped(tokenizer, alfworld_sft_sample, caplog):
    records = load_sft(alfworld_sft_sample, strict=True).records
    long_pair = _calibrated_pair(max(records, key=lambda r: len(r.conversations)), 8)
    short_pair = PairRecord("short", [], [Message("user", "Hi"), Message("assistant", "Thought: ok\nAction: look")],
                            [], 1.0)
    n_prompt = len(tokenizer(render(tokenizer, long_pair.prompt), add_special_tokens=False)["input_ids"])
    limit = n_prompt - 5  # the prompt alone is longer than the limit
    assert limit > 300
    with caplog.at_level(logging.WARNING):
        rows = encode_pairs([long_pair, short_pair], tokenizer, None, None, False, path="pairs.json",
                            max_length=limit)
    assert len(rows) == 1 and len(rows[0]["chosen_input_ids"]) < limit  # only the short pair is left
    assert long_pair.id in caplog.text and "skipped" in caplog.text
    with pytest.raises(RecordError) as err:
        encode_pairs([long_pair], tokenizer, None, None, False, path="pairs.json", strict=True, max_length=limit)
    assert err.value.record_id == long_pair.id and err.value.field_name == "prompt"
