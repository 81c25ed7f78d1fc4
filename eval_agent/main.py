"""Evaluate an agent on a split: ``python -m eval_agent.main --exp_config alfworld --split dev --agent_config expert``.

Writes one JSON per task (STeCa's per-task output: ``meta`` + ``conversations``) and a
``summary.json`` into ``--output_path``; tasks whose file already holds a finished episode are not
run again unless ``--override``, so a killed evaluation resumes where it stopped. The last line
printed is ``Success rate: X.XXXX`` over all tasks of the split.

Agents: ``expert`` plays the environment's own expert plan; ``hf``/``vllm``/``openai`` (or a JSON
config file) run a model (``--model_name``: a local directory or a served model name). Both run
through the batched rollout engine.
"""
from __future__ import annotations

import argparse
import functools
import logging
import re
import sys
from pathlib import Path
from typing import Callable, Sequence

from eval_agent.envs import ENVIRONMENTS, make_env
from eval_agent.envs.task_env import TaskEnv
from eval_agent.storage import OutputLockedError, lock_output, write_json_atomic
from eval_agent.types import MAX_STEPS, EpisodeState, Message

logger = logging.getLogger("eval_agent.main")


def task_file_name(task_id: str) -> str:
    """A file name for a task id (ids may contain ``/``)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "__", task_id) + ".json"


def run_expert(env_factory: Callable[[], TaskEnv], task_ids: Sequence[str], prompt: Sequence[Message],
               out_dir: Path, override: bool, num_workers: int = 0) -> dict[str, EpisodeState]:
    """Play every task with the scripted expert through the rollout engine (plans computed by the
    ``num_workers`` environment processes), writing one JSON per task as it finishes.

    Two episodes per worker are in flight: an expert episode needs no generation, so a larger batch
    gains nothing, and a worker's answer (a plan can take seconds) stays well inside the engine's
    worker timeout."""
    from eval_agent.agents.expert_policy import ExpertPolicy
    from eval_agent.engine import RolloutEngine, run_evaluation

    with RolloutEngine(ExpertPolicy(), env_factory, num_workers=num_workers, max_active=2 * max(1, num_workers),
                       progress_desc="expert episodes") as engine:
        return run_evaluation(engine, task_ids, prompt, lambda t: out_dir / task_file_name(t), override=override,
                              expert=True)


def run_model(args: argparse.Namespace, env_factory: functools.partial, task_ids: Sequence[str],
              out_dir: Path) -> dict[str, EpisodeState]:
    """Evaluate a model backend through the batched rollout engine."""
    from eval_agent.agents.backend_args import policy_from_args
    from eval_agent.engine import RolloutEngine, run_evaluation
    from eval_agent.prompts import prompt_for

    policy, params = policy_from_args(args)
    prompt = prompt_for(args.exp_config, args.sft_file, args.icl_num, args.data_dir, args.prompt_layout)
    if args.exp_config == "alfworld":  # a worker multiplexes its games over one env: keep them all loaded
        env_factory = functools.partial(env_factory, max_games=max(128, args.max_active))
    with RolloutEngine(policy, env_factory, num_workers=args.num_workers, max_active=args.max_active,
                       seed=args.seed, action_parser=args.action_parser) as engine:
        return run_evaluation(engine, task_ids, prompt, lambda t: out_dir / task_file_name(t),
                              params=params, override=args.override)


def success_by_type(results: dict[str, EpisodeState], env: TaskEnv) -> dict[str, dict[str, float | int]]:
    """Success per task type (``env.task_type``): ``{type: {n_tasks, n_success, success_rate}}``.

    ALFWorld types come in the order pick, clean, heat, cool, look, pick two; other types (VirtualHome
    task categories) in alphabetical order. Tasks without a type are left out; empty when none has one.
    """
    from eval_agent.envs.alfworld_env import ALFWORLD_TASK_TYPES

    groups: dict[str, list[bool]] = {}
    for task_id, state in results.items():
        kind = env.task_type(task_id)
        if kind is not None:
            groups.setdefault(kind, []).append(bool(state.success))
    order = list(ALFWORLD_TASK_TYPES.values())
    ranked = sorted(groups, key=lambda k: (order.index(k) if k in order else len(order), k))
    return {k: {"n_tasks": len(groups[k]), "n_success": sum(groups[k]),
                "success_rate": sum(groups[k]) / len(groups[k])} for k in ranked}


def summarize(results: dict[str, EpisodeState], env: TaskEnv) -> dict[str, object]:
    """Success over all tasks, per task type (``success_by_type``), and over reachable tasks where the
    environment classifies them."""
    n = len(results)
    wins = sum(s.success for s in results.values())
    summary: dict[str, object] = {"n_tasks": n, "n_success": wins, "success_rate": wins / n if n else 0.0,
                                  "terminate_reasons": {}}
    reasons: dict[str, int] = {}
    for s in results.values():
        reasons[str(s.terminate_reason)] = reasons.get(str(s.terminate_reason), 0) + 1
    summary["terminate_reasons"] = reasons
    summary["success_by_type"] = success_by_type(results, env)
    is_reachable = getattr(env, "is_reachable", None)
    if callable(is_reachable):
        reach = [t for t in results if is_reachable(t)]
        rw = sum(results[t].success for t in reach)
        summary.update(n_reachable=len(reach), reachable_success_rate=rw / len(reach) if reach else 0.0)
    return summary


def type_table(by_type: dict[str, dict[str, float | int]]) -> str:
    """A plain-text table of :func:`success_by_type`: one line per type (rate, successes / tasks)."""
    if not by_type:
        return ""
    width = max(len("task type"), *(len(k) for k in by_type))
    lines = [f"{'task type':<{width}}  success  n_success/n_tasks"]
    for kind, row in by_type.items():
        lines.append(f"{kind:<{width}}  {row['success_rate']:.4f}   {row['n_success']}/{row['n_tasks']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--exp_config", required=True, choices=ENVIRONMENTS)
    p.add_argument("--split", default="dev", help="train, dev (seen) or test (unseen)")
    p.add_argument("--agent_config", default="expert", help="expert, hf, vllm, openai or a JSON config path")
    p.add_argument("--model_name", default=None, help="model directory (hf/vllm) or served model name (openai)")
    p.add_argument("--data_dir", default=None, help="environment data root (ALFWorld: holds json_2.1.1/)")
    p.add_argument("--test_path", default=None, help="VirtualHome task file (jsonl)")
    p.add_argument("--sft_file", default=None, help="take the instruction from this SFT file's first turn")
    p.add_argument("--icl_num", type=int, default=1, help="in-context examples in the prompt (0 or 1)")
    p.add_argument("--action_parser", default="released", choices=["released", "last_line"],
                   help="released: all text after the first 'Action:'; last_line: the first line after the last one")
    p.add_argument("--prompt_layout", default="turns", choices=["turns", "inline"],
                   help="turns (released): the example as chat turns after 'OK'; inline: inside the instruction turn")
    p.add_argument("--output_path", default=None, help="folder for per-task JSON files and summary.json")
    p.add_argument("--override", action="store_true", help="rerun tasks that already have a finished output")
    p.add_argument("--max_tasks", type=int, default=None, help="only the first N tasks of the split")
    p.add_argument("--max_steps", type=int, default=MAX_STEPS)
    p.add_argument("--temperature", type=float, default=None, help="default: the agent config's (greedy)")
    p.add_argument("--max_new_tokens", type=int, default=None)
    p.add_argument("--num_workers", type=int, default=1,
                   help="environment worker processes (0: in-process); the expert's plans are computed in them")
    p.add_argument("--max_active", type=int, default=64, help="episodes in flight at once")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip_invalid", action="store_true",
                   help="score the playable tasks when the task file has unplayable ones (listed in summary.json)")
    p.add_argument("--log_level", default="WARNING")
    from eval_agent.agents.backend_args import add_backend_arguments

    add_backend_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> dict[str, object]:
    """Run the evaluation; the output folder is locked (``<folder>.lock``, :func:`lock_output`) while it
    runs, so a second evaluation writing the same folder exits with a message naming it."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    name = Path(args.model_name).name if args.model_name else args.agent_config
    out_dir = Path(args.output_path or Path("outputs") / f"{args.exp_config}_{name}_{args.split}")
    try:
        lock = lock_output(out_dir)
    except OutputLockedError as e:
        raise SystemExit(f"error: {e}") from None
    try:
        return evaluate(args, out_dir)
    finally:
        lock.close()


def evaluate(args: argparse.Namespace, out_dir: Path) -> dict[str, object]:
    """The evaluation of :func:`main` into ``out_dir``: episodes, ``summary.json`` and the printed rates."""
    env_factory = functools.partial(make_env, args.exp_config, args.split, data_dir=args.data_dir,
                                    task_file=args.test_path, max_steps=args.max_steps)
    env = env_factory()
    invalid = [str(e) for e in getattr(env, "load_errors", None) or []]
    if invalid and not args.skip_invalid:
        raise SystemExit(f"{len(invalid)} task(s) of the task file cannot be played, and a success rate without "
                         f"them would not be over the whole split (first: {invalid[0]}); fix the file or pass "
                         f"--skip_invalid to score the others")
    task_ids = env.task_ids()[: args.max_tasks] if args.max_tasks else env.task_ids()
    if not task_ids:
        raise SystemExit(f"no tasks in split {args.split!r} of {args.exp_config}")
    if args.agent_config == "expert":
        from eval_agent.prompts import prompt_for

        prompt = prompt_for(args.exp_config, args.sft_file, args.icl_num, args.data_dir, args.prompt_layout)
        results = run_expert(env_factory, task_ids, prompt, out_dir, args.override, args.num_workers)
    else:
        results = run_model(args, env_factory, task_ids, out_dir)
    summary = summarize(results, env)
    summary.update(exp_config=args.exp_config, split=args.split, agent=args.agent_config, model=args.model_name,
                   invalid_tasks_skipped=invalid)
    write_json_atomic(out_dir / "summary.json", summary)
    env.close()
    print(f"Output folder: {out_dir}")
    table = type_table(summary["success_by_type"])
    if table:
        print(table)
    if "reachable_success_rate" in summary:
        print(f"Reachable success rate: {summary['reachable_success_rate']:.4f} ({summary['n_reachable']} tasks)")
    print(f"Success rate: {summary['success_rate']:.4f}")
    sys.stdout.flush()
    return summary


if __name__ == "__main__":
    main()
