"""The episode driver: turns model outputs into environment steps and keeps the chat history.

Rules (as the STeCa evaluation applies them): the action is the ``Action:`` line of the model's
output; output without one gets an error observation and still costs a step; an episode ends on
success or after ``max_steps`` steps. The functions here are pure bookkeeping on
:class:`~eval_agent.types.EpisodeState`, so the rollout engine can keep episodes in one process
and run environments in others.
"""
from __future__ import annotations

from typing import Sequence

from eval_agent.envs.task_env import TaskEnv
from eval_agent.types import EndReason, EpisodeState, Message, StepOutcome, parse_action

INVALID_FORMAT_OBSERVATION = (
    "Observation: Invalid format. Your output must contain a line 'Action: <action>' with one of the "
    "available actions."
)


def format_observation(outcome: StepOutcome) -> str:
    """The user turn the agent sees after an action."""
    return f"Observation: {outcome.observation}"


def new_episode(task_id: str, game_file: str, prompt: Sequence[Message], first_observation: str) -> EpisodeState:
    """An episode whose history is the prompt (instruction, example) plus the first observation."""
    messages = list(prompt) + [Message("user", first_observation)]
    return EpisodeState(task_id=task_id, game_file=game_file, messages=messages, n_prompt_messages=len(prompt))


def record_step(state: EpisodeState, model_output: str, outcome: StepOutcome | None, max_steps: int) -> EpisodeState:
    """Append one assistant turn and what followed it; ``outcome`` is None when no action was parsed."""
    state.messages.append(Message("assistant", model_output))
    state.steps += 1
    if outcome is None:
        state.messages.append(Message("user", INVALID_FORMAT_OBSERVATION))
    else:
        state.messages.append(Message("user", format_observation(outcome)))
        if outcome.won:
            state.success, state.reward = True, 1.0
            state.finished, state.terminate_reason = True, EndReason.SUCCESS
            return state
        if outcome.done:
            state.finished, state.terminate_reason = True, EndReason.ENV_DONE
            return state
    if state.steps >= max_steps:
        state.finished, state.terminate_reason = True, EndReason.MAX_STEPS
    return state


def step_episode(env: TaskEnv, state: EpisodeState, model_output: str) -> EpisodeState:
    """Parse ``model_output``, execute its action in ``env`` (already at this episode's state), record it."""
    action = parse_action(model_output)
    outcome = env.execute(action) if action is not None else None
    return record_step(state, model_output, outcome, env.max_steps)


def start_episode(env: TaskEnv, task_id: str, prompt: Sequence[Message]) -> EpisodeState:
    """Reset ``env`` to ``task_id`` and open its episode."""
    first = env.reset(task_id)
    return new_episode(task_id, env.game_file(task_id), prompt, first)
