"""Building the environment a sampling stage plays, by name (through :func:`eval_agent.envs.make_env`)."""
from __future__ import annotations

from eval_agent.envs import make_env as registry_make_env
from eval_agent.envs.base import TaskEnv


def make_env(env_name: str, data_dir: str | None, split: str = "train", max_steps: int = 40,
             task_file: str | None = None) -> TaskEnv:
    """A fresh ``alfworld`` or ``virtualhome`` environment over ``data_dir`` for ``split``.

    ``task_file`` (VirtualHome only) overrides the split's task file. Picklable through
    ``functools.partial``, so engine worker processes can build their own.
    """
    kwargs = {"max_steps": max_steps}
    if task_file is not None:
        kwargs["test_path"] = task_file
    return registry_make_env(env_name, split, data_dir=data_dir, **kwargs)
