"""Cutting expert and explored conversations into prompt, steps and continuations.

An STeCa conversation is ``prompt + [a_0, o_0, a_1, o_1, ...]``: the prompt is the instruction, the
``OK`` reply, the in-context example's turns where there are any, and the first observation; each step is one assistant turn and the user turn that
answers it (see :func:`prompt_length`).
Step indices ``t`` are 0-based: the expert prefix of step ``t`` is ``a_0 .. a_{t-1}``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

from eval_agent.types import parse_action
from eval_agent.types import Message
from steca.records import SFTRecord, StepRecord


@dataclass(frozen=True)
class Step:
    """One assistant turn and the observation that followed it (None at the end of a chat)."""

    action_turn: Message
    observation: Message | None

    @property
    def action(self) -> str | None:
        return parse_action(self.action_turn.content)

    def messages(self) -> list[Message]:
        return [self.action_turn] + ([self.observation] if self.observation is not None else [])


@dataclass(frozen=True)
class SplitTrajectory:
    """A conversation cut into its prompt and its steps."""

    prompt: list[Message]
    steps: list[Step]

    def prefix(self, t: int) -> list[Message]:
        """``prompt + steps[0..t-1]``: the chat an agent sees before choosing step ``t``."""
        return self.prompt + flatten(self.steps[:t])

    def suffix(self, t: int) -> list[Message]:
        """``steps[t..]`` as messages."""
        return flatten(self.steps[t:])

    def actions(self) -> list[str | None]:
        return [s.action for s in self.steps]


def flatten(steps: Sequence[Step]) -> list[Message]:
    out: list[Message] = []
    for s in steps:
        out.extend(s.messages())
    return out


# How the first observation of a task states its goal: ALFWorld and our VirtualHome ("Your task is
# to: ..."), the released VirtualHome environment ("The task is ...").
GOAL_MARKERS = ("Your task is to", "The task is ")


def prompt_length(messages: Sequence[Message]) -> int:
    """Number of prompt messages before the first step: up to and including the task's first observation.

    The task's first observation is found from the chat's own structure: the last user turn that
    states a goal (:data:`GOAL_MARKERS`; later observations never do). That covers our SFT
    layout ``[instruction, "OK", first observation, ...]`` (3), the released sampling records'
    ``[instruction, "OK", 10 turns of the in-context example, first observation, ...]`` (13; the
    example's own first observation also states a goal, but the task's comes later) and prompts with
    the example inside the instruction turn. A chat with no goal-stating user turn: the index of the
    first assistant turn with an ``Action:`` line, or 3 for ``[user, assistant without action, user]``.
    """
    goal_turns = [i for i, m in enumerate(messages) if m.role == "user" and any(g in m.content for g in GOAL_MARKERS)]
    if goal_turns:
        return goal_turns[-1] + 1
    if (len(messages) >= 3 and [m.role for m in messages[:3]] == ["user", "assistant", "user"]
            and parse_action(messages[1].content) is None):
        return 3
    for i, m in enumerate(messages):
        if m.role == "assistant" and parse_action(m.content) is not None:
            return i
    return len(messages)


def split_steps(messages: Sequence[Message]) -> list[Step]:
    """Pair every assistant turn with the user turn right after it (None when the chat ends)."""
    steps: list[Step] = []
    i = 0
    while i < len(messages):
        m = messages[i]
        if m.role == "assistant":
            obs = messages[i + 1] if i + 1 < len(messages) and messages[i + 1].role == "user" else None
            steps.append(Step(m, obs))
            i += 2 if obs is not None else 1
        else:
            i += 1
    return steps


def split_trajectory(messages: Sequence[Message]) -> SplitTrajectory:
    """Cut a full conversation at :func:`prompt_length` and pair up the rest into steps."""
    n = prompt_length(messages)
    return SplitTrajectory(list(messages[:n]), split_steps(messages[n:]))


def split_expert(record: SFTRecord) -> SplitTrajectory:
    return split_trajectory(record.conversations)


def step_turns(record: StepRecord) -> tuple[Message, Message | None]:
    """The scored step's assistant turn and its observation: the tail of ``agent_step_conversations``.

    Raises ValueError naming the field when the tail is not ``assistant`` (+ optional ``user``).
    """
    conv = record.agent_step_conversations
    if len(conv) >= 2 and conv[-2].role == "assistant" and conv[-1].role == "user":
        return conv[-2], conv[-1]
    if conv and conv[-1].role == "assistant":
        return conv[-1], None
    raise ValueError(f"record {record.id!r} iteration {record.iteration}: field 'agent_step_conversations' "
                     "does not end with the step's assistant turn (and its observation)")


def exploration_continuation(record: StepRecord) -> list[Message]:
    """The explored steps after the scored step's observation (``â_{t+1}, o, ...``).

    ``agent_conversations`` holds the whole exploration chat (it starts with
    ``agent_step_conversations``); a record whose ``agent_conversations`` holds only the
    continuation is accepted as it is.
    """
    conv = record.agent_conversations or []
    head = record.agent_step_conversations
    if len(conv) >= len(head) and list(conv[:len(head)]) == list(head):
        return list(conv[len(head):])
    return list(conv)


def exploration_from_step(record: StepRecord) -> list[Message]:
    """The scored step's turns followed by :func:`exploration_continuation` (``â_t, o_t, â_{t+1}, ...``)."""
    turn, obs = step_turns(record)
    return [turn] + ([obs] if obs is not None else []) + exploration_continuation(record)


Problem = Callable[[str, str, int | None, str], None]
"""Where a builder reports a record it passes over: ``problem(kind, task_id, t, message)``."""


def expert_of(sft: Mapping[str, SFTRecord], task_id: str, t: int, problem: Problem) -> SplitTrajectory | None:
    """The expert trajectory of ``task_id``, or ``None`` after reporting ``missing_expert_trajectory``."""
    exp = sft.get(task_id)
    if exp is None:
        problem("missing_expert_trajectory", task_id, t, "no expert trajectory with this id in the SFT file")
        return None
    return split_expert(exp)


def expert_at(sft: Mapping[str, SFTRecord], task_id: str, t: int, problem: Problem) -> SplitTrajectory | None:
    """The expert trajectory of ``task_id`` when it has a step ``t``; otherwise ``None``, after reporting
    ``missing_expert_trajectory`` or ``step_out_of_range`` through ``problem(kind, task_id, t, message)``."""
    traj = expert_of(sft, task_id, t, problem)
    if traj is not None and t >= len(traj.steps):
        problem("step_out_of_range", task_id, t, f"expert trajectory has only {len(traj.steps)} steps")
        return None
    return traj


def explorations_from_start(steps: Iterable[StepRecord]) -> list[StepRecord]:
    """The explorations that start at ``t = 0`` (iteration 0), in task-id order."""
    return sorted((r for r in steps if r.iteration == 0), key=lambda r: r.id)


def expert_and_exploration(sft: Mapping[str, SFTRecord], rec: StepRecord,
                           problem: Problem) -> tuple[SplitTrajectory, list[Message]] | None:
    """For an exploration from ``t = 0`` (ETO's rejected side, D_e's chosen side): the task's expert
    trajectory and the exploration's turns (:func:`exploration_from_step`); ``None`` after reporting
    ``missing_expert_trajectory`` or ``bad_step_record``."""
    traj = expert_of(sft, rec.id, 0, problem)
    if traj is None:
        return None
    try:
        return traj, exploration_from_step(rec)
    except ValueError as e:
        problem("bad_step_record", rec.id, 0, str(e))
        return None
