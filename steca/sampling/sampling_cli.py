"""Command line of the sampling stages (``sampling/*/*.sh`` call this through ``sampling/run_sampling.py``).

Stages::

    expert_steps   --sft F --output F                       (no model: expert turns + replayed outcome)
    explore_steps  --sft F --output F --model_path M        (greedy exploration from every expert prefix)
    mc             --steps F --output F --model_path M      (N rollouts at temperature 1 per step record)

Common: ``--env alfworld|virtualhome --env_data DIR --split train``, ``--part_num/--part_idx``
(sharding), ``--backend hf|vllm|openai`` (``--api_base`` may list several servers, comma-separated),
``--num_workers`` (environment processes), ``--max_active`` (rollouts in flight).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict
from functools import partial
from typing import Sequence

from eval_agent.agents.policy import SamplingParams
from eval_agent.envs import make_env
from eval_agent.storage import check_not_input
from steca.records import load_sft, load_steps, nonempty
from steca.sampling.stages import Shard, expert_steps, explore_steps, monte_carlo, problems_path
from eval_agent.types import MAX_STEPS
from steca.stage_config import EXPLORE_TEMPERATURE, MAX_NEW_TOKENS, MC_TEMPERATURE, NUM_ROLLOUTS

logger = logging.getLogger(__name__)


def evaluation_stop(agent_config: str) -> tuple[str, ...]:
    """The stop strings evaluation uses with this backend config (its ``generation.stop``), so that
    sampling and evaluation end a turn at the same place, as the released code's one agent does."""
    from eval_agent.agents import load_agent_config, sampling_from_config

    try:
        return sampling_from_config(load_agent_config(agent_config)).stop
    except FileNotFoundError:
        return ()


def records_instruction(records, sft_file: str | None) -> str | None:
    """Without ``--sft``, Monte Carlo takes the instruction its step records were sampled with: their
    first turn (the instruction turn in the SFT layout and in the released one)."""
    if sft_file or not records:
        return None
    first = records[0].agent_step_conversations[0] if records[0].agent_step_conversations else None
    return first.content if first is not None and first.role == "user" else None


def backend_overrides(args: argparse.Namespace, temperature: float) -> dict[str, object]:
    """Constructor options of the ``--backend`` policy that the command line sets.

    ``batch_invariant``: hf takes it as given (None: the agent config's, which is on; it only
    concerns sampled rows); vllm by default only when the stage samples (``temperature > 0``), since
    its batch-invariant mode covers every row and may be slower (:mod:`eval_agent.agents.vllm_backend`).
    None values leave the config's option as it is.
    """
    invariant = None if args.batch_invariant is None else args.batch_invariant == "true"
    if args.backend == "hf":
        return {"max_batch_size": args.max_batch_size, "batch_invariant": invariant}
    if args.backend == "vllm":
        return {"tensor_parallel_size": args.tensor_parallel_size,
                "batch_invariant": temperature > 0 if invariant is None else invariant}
    return {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="STeCa sampling stages (step records and Monte Carlo step rewards)")
    p.add_argument("stage", choices=["expert_steps", "explore_steps", "mc"])
    p.add_argument("--env", default="alfworld", choices=["alfworld", "virtualhome"])
    p.add_argument("--env_data", default=None, help="environment data root (ALFWorld: holds json_2.1.1/)")
    p.add_argument("--split", default="train")
    p.add_argument("--task_file", default=None, help="VirtualHome: task file overriding the split's")
    p.add_argument("--sft", help="expert trajectories (expert_steps, explore_steps); explore_steps and mc "
                   "take the prompt's instruction from its first turn")
    p.add_argument("--icl_num", type=int, default=1,
                   help="in-context examples in the sampling prompt, as at evaluation (released: 1)")
    p.add_argument("--prompt_layout", default="turns", choices=["turns", "inline"],
                   help="as eval_agent.main's: turns (released) or inline")
    p.add_argument("--action_parser", default="released", choices=["released", "last_line"],
                   help="as eval_agent.main's: released (all text after the first 'Action:') or last_line")
    p.add_argument("--record_prompt", action="store_true",
                   help="option, not released: sample with each record's own prompt instead of the evaluation prompt")
    p.add_argument("--steps", help="step records to score (mc)")
    p.add_argument("--output", required=True, help="JSONL output; an existing file is resumed")
    p.add_argument("--part_num", type=int, default=1)
    p.add_argument("--part_idx", type=int, default=0)
    p.add_argument("--backend", default="hf", choices=["hf", "vllm", "openai"])
    p.add_argument("--agent_config", default=None, help="backend config name or JSON path (default: --backend)")
    p.add_argument("--model_path", help="model dir (hf/vllm) or served model name (openai)")
    p.add_argument("--api_base", default=None, help="OpenAI-compatible base URL(s), comma-separated")
    p.add_argument("--tensor_parallel_size", type=int, default=None, help="vllm: GPUs to shard the model over")
    p.add_argument("--max_batch_size", type=int, default=None, help="hf: rows per generation call")
    p.add_argument("--batch_invariant", default=None, choices=["true", "false"],
                   help="a sampled episode depends only on its seed, not on --max_active (hf: sampled rows computed "
                        "alone, default: the agent config's, true; vllm: VLLM_BATCH_INVARIANT=1, default: when the "
                        "stage samples); false: faster, batch-dependent")
    p.add_argument("--num_rollouts", type=int, default=NUM_ROLLOUTS)
    p.add_argument("--temperature", type=float, default=None,
                   help=f"default: {EXPLORE_TEMPERATURE} (explore_steps), {MC_TEMPERATURE} (mc)")
    p.add_argument("--top_p", type=float, default=1.0)
    p.add_argument("--max_new_tokens", type=int, default=MAX_NEW_TOKENS)
    p.add_argument("--max_steps", type=int, default=None, help=f"default: the environment's ({MAX_STEPS})")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num_workers", type=int, default=0, help="environment worker processes (0: in-process)")
    p.add_argument("--max_active", type=int, default=256, help="rollouts in flight (generation batch)")
    p.add_argument("--save_rollouts", action="store_true", help="mc: keep each rollout's generated turns")
    p.add_argument("--failed_generation", default="failure", choices=["failure", "exclude"],
                   help="mc: a rollout whose generation fails counts as outcome 0 (released) or is left out")
    p.add_argument("--skip_invalid", action="store_true",
                   help="drop input records with a reward out of range or not finite (counted) instead of stopping")
    p.add_argument("--log_level", default="INFO")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    inputs_given = [args.sft, args.steps, args.task_file]
    for out in (args.output, problems_path(args.output)):
        check_not_input(out, inputs_given)
    shard = Shard(args.part_num, args.part_idx)
    logger.info("part %d of %d, CUDA_VISIBLE_DEVICES=%s", args.part_idx, args.part_num,
                os.environ.get("CUDA_VISIBLE_DEVICES", "(unset)"))
    factory = partial(make_env, args.env, args.split, args.env_data, task_file=args.task_file)
    # inputs are read (and refused) before any model is loaded
    if args.stage in ("expert_steps", "explore_steps"):
        if not args.sft:
            raise SystemExit(f"{args.stage} needs --sft")
        inputs = nonempty(load_sft(args.sft, skip_invalid=args.skip_invalid), args.sft, "SFT record")
    else:
        if not args.steps:
            raise SystemExit("mc needs --steps")
        inputs = nonempty(load_steps(args.steps, skip_invalid=args.skip_invalid), args.steps, "step record")
    if args.stage == "expert_steps":
        env = factory()
        try:
            report = expert_steps(inputs, env, args.output, shard)
        finally:
            env.close()
    else:
        from eval_agent.engine import RolloutEngine
        from steca.sampling.policies import build_policy

        if not args.model_path:
            raise SystemExit(f"{args.stage} needs --model_path")
        default_temperature = EXPLORE_TEMPERATURE if args.stage == "explore_steps" else MC_TEMPERATURE
        temperature = args.temperature if args.temperature is not None else default_temperature
        params = SamplingParams(temperature=temperature, top_p=args.top_p, max_new_tokens=args.max_new_tokens,
                                stop=evaluation_stop(args.agent_config or args.backend))
        from eval_agent.prompts import prompt_for

        records = inputs if args.stage == "mc" else []
        prompt = None if args.record_prompt else prompt_for(args.env, args.sft, args.icl_num, args.env_data,
                                                            args.prompt_layout, records_instruction(records, args.sft))
        policy = build_policy(args.backend, args.model_path, args.api_base, args.agent_config,
                              **backend_overrides(args, temperature))
        engine = RolloutEngine(policy, factory, num_workers=args.num_workers, max_active=args.max_active,
                               default_params=params, seed=args.seed, progress_desc=args.stage,
                               action_parser=args.action_parser)
        try:
            if args.stage == "explore_steps":
                report = explore_steps(inputs, engine, args.output, params, shard, args.max_steps, prompt)
            else:
                report = monte_carlo(inputs, engine, args.output, args.num_rollouts, params,
                                     shard, args.max_steps, args.save_rollouts, prompt, args.failed_generation)
            logger.info("engine: %s", engine.stats)
        finally:
            engine.close()
            policy.close()
    summary = {"stage": args.stage, "input": args.steps if args.stage == "mc" else args.sft, "model": args.model_path,
               "output": args.output, **asdict(report)}
    logger.info("%s", json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
