"""Hand-built trajectories and step records for the method tests (pure-function fixtures)."""
from __future__ import annotations

import json
from pathlib import Path

from eval_agent.types import Message
from steca.records import SFTRecord, StepRecord

INSTRUCTION = "Interact with a household to solve a task. Output 'Thought: ...\\nAction: ...'."
FIRST_OBS = "You are in the middle of a room. You see a desk 1, a shelf 1 and a drawer 1.\n\nYour task is to: put a pen in drawer."
EXPERT_ACTIONS = ["go to desk 1", "take pen 1 from desk 1", "go to drawer 1", "open drawer 1", "put pen 1 in/on drawer 1"]
EXPERT_OBS = ["On the desk 1, you see a pen 1.", "You pick up the pen 1 from the desk 1.",
              "The drawer 1 is closed.", "You open the drawer 1. The drawer 1 is open.",
              "You put the pen 1 in/on the drawer 1."]


def turn(action: str, thought: str = "I act.") -> Message:
    return Message("assistant", f"Thought: {thought}\nAction: {action}")


def obs(text: str) -> Message:
    return Message("user", f"Observation: {text}")


def prompt() -> list[Message]:
    return [Message("user", INSTRUCTION), Message("assistant", "OK"), Message("user", FIRST_OBS)]


def expert_sft(task_id: str = "t1") -> SFTRecord:
    conv = prompt()
    for a, o in zip(EXPERT_ACTIONS, EXPERT_OBS):
        conv += [turn(a, f"expert thought for {a}"), obs(o)]
    return SFTRecord(task_id, f"games/{task_id}/game.tw-pddl", conv)


def expert_prefix(t: int) -> list[Message]:
    conv = prompt()
    for a, o in list(zip(EXPERT_ACTIONS, EXPERT_OBS))[:t]:
        conv += [turn(a, f"expert thought for {a}"), obs(o)]
    return conv


def expert_step(t: int, reward: float, task_id: str = "t1") -> StepRecord:
    conv = expert_prefix(t) + [turn(EXPERT_ACTIONS[t], f"expert thought for {EXPERT_ACTIONS[t]}"), obs(EXPERT_OBS[t])]
    return StepRecord(task_id, t, f"games/{task_id}/game.tw-pddl", conv[-2].content, conv, None, 1.0, None,
                      mc_step_reward=reward)


def explored_step(t: int, action: str, reward: float, final: float, task_id: str = "t1",
                  continuation: list[str] | None = None) -> StepRecord:
    step_conv = expert_prefix(t) + [turn(action, "my own idea"), obs("Nothing happens.")]
    full = list(step_conv)
    for a in continuation if continuation is not None else ["look", "inventory"]:
        full += [turn(a, "exploring"), obs("Nothing happens.")]
    return StepRecord(task_id, t, f"games/{task_id}/game.tw-pddl", step_conv[-2].content, step_conv, full, final, None,
                      mc_step_reward=reward)


def expert_rewards() -> list[StepRecord]:
    """r_expert(t) for t = 0..4."""
    return [expert_step(t, r) for t, r in enumerate([0.6, 0.8, 0.8, 1.0, 1.0])]


def explored_fixture() -> dict[int, StepRecord]:
    """One explored step per iteration, each built to pass or fail exactly one released condition.

    t=0: exploration succeeded from the start (D_e candidate), reward 1.0
    t=1: deviated by reward but t < 2                   -> step_too_early
    t=2: r 0.4 <= r_expert(1)=0.8, failed, different     -> SELECTED
    t=3: r 0.6 <= 0.8, failed, same action as expert     -> same_action
    t=4: r 0.2 <= 1.0, failed, very different action     -> SELECTED
    """
    return {
        0: explored_step(0, "go to desk 1", 1.0, 1.0, continuation=["take pen 1 from desk 1"]),
        1: explored_step(1, "go to shelf 1", 0.2, 0.0),
        2: explored_step(2, "go to shelf 1", 0.4, 0.0),
        3: explored_step(3, "open drawer 1", 0.6, 0.0),
        4: explored_step(4, "examine shelf 1", 0.2, 0.0),
    }


def write_action_pair_files(root: Path) -> None:
    """A tiny ``alfworld/alfworld_sft_sample.json`` and ``virtualhome/vh_seen_test.jsonl`` for ``steca.method.action_pairs``:
    ALFWorld actions go to desk 1 / desk 2 / shelf 1 and open drawer 1; VirtualHome open dresser, walk to bedroom
    and walk to kitchen."""
    (root / "alfworld").mkdir(parents=True)
    (root / "virtualhome").mkdir(parents=True)
    sft = [{"id": "a", "conversations": [
               {"from": "human", "value": "Observation: ok\nAction: take pen 1"},  # a user turn: not an action
               {"from": "gpt", "value": "Thought: t\nAction: go to desk 1"},
               {"from": "gpt", "value": "Thought: t\nAction: Go to desk 2"},
               {"from": "gpt"},                                                   # no text at all
               {"from": "gpt", "value": "Thought: no action line"}]},
           {"id": "b", "conversations": [
               {"role": "assistant", "content": "Thought: t\nAction: go to desk 1"},
               {"role": "assistant", "content": "Action: go to shelf 1"},
               {"role": "assistant", "content": "Action: open drawer 1"}]}]
    (root / "alfworld" / "alfworld_sft_sample.json").write_text(json.dumps(sft))
    (root / "virtualhome" / "vh_seen_test.jsonl").write_text(
        json.dumps({"action_list": ["Walk to bedroom", " walk to BEDROOM ", "Open dresser", " "]}) + "\n\n"
        + json.dumps({"action_list": ["Walk to kitchen"]}) + "\n")
