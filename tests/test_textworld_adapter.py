"""The TextWorld adapter: the fast path (engine internals: snapshots, memo, oracle expert) and the public-API
fallback give the same episodes; untested engine versions switch to the fallback."""
from __future__ import annotations

from pathlib import Path

from eval_agent.envs import textworld_adapter
from eval_agent.envs.alfworld_env import AlfWorldEnv
from eval_agent.types import parse_action
from steca.data.datacheck import episode_turns
from steca.records import load_sft


def _actions(rec) -> list[str]:
    _, pairs = episode_turns(rec)
    return [a for a in (parse_action(t) for t, _ in pairs) if a is not None]


def test_fast_path_and_public_fallback_play_the_same_episodes(alfworld_data: Path, alfworld_sft_sample: Path):
    records = load_sft(alfworld_sft_sample, strict=True).records
    fast, public = AlfWorldEnv(alfworld_data, "train"), AlfWorldEnv(alfworld_data, "train", internals=False)
    assert fast.fast and not public.fast
    for rec in (records[0], records[3], records[0]):  # a game again after another (restored from a snapshot)
        actions = _actions(rec) + ["take nothing from nowhere"]
        for t in (0, len(actions) // 2, len(actions)):
            assert fast.reset_to_prefix(rec.game_file, actions[:t]) == public.reset_to_prefix(rec.game_file, actions[:t])
            assert fast.admissible_commands() == public.admissible_commands()
    fast.close()
    public.close()


def test_public_fallback_expert_wins(alfworld_data: Path):
    env = AlfWorldEnv(alfworld_data, "dev", internals=False)
    task = env.task_ids()[0]
    plan = env.expert_actions(task)
    _, outcomes = env.reset_to_prefix(task, plan)
    assert outcomes and outcomes[-1].won and not any(o.won for o in outcomes[:-1])
    env.close()


def test_untested_engine_versions_take_the_public_path(alfworld_data: Path, monkeypatch, caplog):
    assert textworld_adapter.internals_supported()  # the pinned versions are the tested ones
    monkeypatch.setitem(textworld_adapter.TESTED_VERSIONS, "textworld", ("0.0.1",))
    textworld_adapter.internals_supported.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="eval_agent.envs.textworld_adapter"):
            env = AlfWorldEnv(alfworld_data, "dev")
        assert not env.fast and env._memo is None
        assert "textworld 1.7.0 (tested: 0.0.1)" in caplog.text
    finally:
        monkeypatch.undo()
        textworld_adapter.internals_supported.cache_clear()
    assert AlfWorldEnv(alfworld_data, "dev").fast
