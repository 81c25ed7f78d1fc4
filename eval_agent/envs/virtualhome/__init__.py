"""VirtualHome on the symbolic evolving-graph simulator: env, tasks, graph reconstruction, import shim."""
from eval_agent.envs.virtualhome.env import NOTHING_HAPPENS, VirtualHomeEnv, make_virtualhome_env
from eval_agent.envs.virtualhome.task_files import TaskFileError, VHTask, load_tasks

__all__ = ["VirtualHomeEnv", "make_virtualhome_env", "TaskFileError", "VHTask", "load_tasks", "NOTHING_HAPPENS"]
