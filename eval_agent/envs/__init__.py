"""Environments behind the :class:`~eval_agent.envs.base.TaskEnv` interface, and their registry."""
from __future__ import annotations

import os
from typing import Any

from eval_agent.envs.base import TaskEnv, parse_action

ENVIRONMENTS = ("alfworld", "virtualhome")


def make_env(exp_config: str, split: str, data_dir: str | os.PathLike | None = None, **kwargs: Any) -> TaskEnv:
    """Build the environment ``exp_config`` (``alfworld`` or ``virtualhome``) for ``split``.

    ALFWorld: ``data_dir`` (or ``$ALFWORLD_DATA``) holds ``json_2.1.1/``; splits ``train``, ``dev``
    (valid_seen), ``test`` (valid_unseen). VirtualHome: ``data_dir`` holds scene graphs and resources,
    ``test_path`` (optional) the task file. Keyword arguments that do not apply are ignored when None.
    """
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if exp_config == "alfworld":
        from eval_agent.envs.alfworld_env import AlfWorldEnv

        kwargs.pop("test_path", None)
        return AlfWorldEnv(data_dir, split, **kwargs)
    if exp_config == "virtualhome":
        from eval_agent.envs.virtualhome import make_virtualhome_env

        return make_virtualhome_env(split, data_dir=data_dir, **kwargs)
    raise ValueError(f"unknown environment {exp_config!r}; expected one of {ENVIRONMENTS}")


__all__ = ["TaskEnv", "make_env", "parse_action", "ENVIRONMENTS"]
