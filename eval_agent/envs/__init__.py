"""Environments behind the :class:`~eval_agent.envs.task_env.TaskEnv` interface, and their registry."""
from __future__ import annotations

import os
from typing import Any

from eval_agent.envs.task_env import TaskEnv
from eval_agent.types import MAX_STEPS, parse_action

ENVIRONMENTS = ("alfworld", "virtualhome")


def make_env(env_name: str, split: str, data_dir: str | os.PathLike | None = None, *, max_steps: int = MAX_STEPS,
             task_file: str | os.PathLike | None = None, **kwargs: Any) -> TaskEnv:
    """The one way to build an environment: ``env_name`` (``alfworld`` or ``virtualhome``) for ``split``.

    ALFWorld: ``data_dir`` (or ``$ALFWORLD_DATA``) holds ``json_2.1.1/``; splits ``train``, ``dev``
    (valid_seen), ``test`` (valid_unseen). VirtualHome: ``data_dir`` holds scene graphs and
    resources; ``task_file`` (VirtualHome only) overrides the split's task file. Other keyword
    arguments go to the environment's class; those that are None are dropped. Picklable through
    ``functools.partial``, so engine worker processes can build their own.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if env_name == "alfworld":
        from eval_agent.envs.alfworld_env import AlfWorldEnv

        return AlfWorldEnv(data_dir, split, max_steps=max_steps, **kwargs)
    if env_name == "virtualhome":
        from eval_agent.envs.virtualhome import make_virtualhome_env

        return make_virtualhome_env(split, data_dir=data_dir, test_path=task_file, max_steps=max_steps, **kwargs)
    raise ValueError(f"unknown environment {env_name!r}; expected one of {ENVIRONMENTS}")


__all__ = ["TaskEnv", "make_env", "parse_action", "ENVIRONMENTS"]
