"""Monte Carlo rollouts per second: the released flow against ours, on real ALFWorld games, in one run.

A fixed set of Monte Carlo states (every expert step of the first ``--num_traj`` shared
trajectories) gets ``--num_rollouts`` rollouts each, with the same tiny model and sampling, in two ways:

* released flow: for every rollout, a fresh reset of the stock TextWorld engine (an
  ``AlfWorldEnv`` that caches no game and memoises nothing: the game file is loaded again, its
  PDDL translated by fast-downward and its state rebuilt, as ``PddlEnv.load`` + ``reset`` do in the
  released code; every step re-derives the text of every applicable command), the expert prefix
  replayed action by action, then one ``generate`` call per turn for this rollout alone, with no
  cache kept between calls (``--baseline_memo`` gives this side our memo of translations and
  engine texts, the comparison earlier versions of this benchmark made);
* ours: :class:`eval_agent.engine.RolloutEngine` (environment in this process) with the jobs of
  :func:`steca.sampling.stages.mc_job`: all rollouts in flight, one ``generate`` call per turn for
  all of them (the N identical rows of a state prefilled once, conversation KV kept between
  turns), and every state reached by ``reset_to_prefix`` from cached engine snapshots.

Both sides share the environment code. Before either side is
timed, the TextWorld engine is imported and both policies answer one throwaway prompt, so neither
side pays the process's one-time start-up for the other.

Each rollout runs at most ``--extra_turns`` turns after its state. The model is a random nano Llama
(``--model_path`` to use another), so rollouts rarely act; the measured cost is reaching states
plus generation, which is what the two flows do differently. Prints both rates and, last,
``ratio=<ours / released>``.

    python benchmarks/mc_sampling.py [--data ../shared/data/alfworld] [--num_traj 2] [--num_rollouts 5]

Measured on the shared 2-core machine, idle, defaults (13 states, 65 rollouts): released flow
161.2 s (env 154.4 s: a fresh stock reset costs 0.4-3 s depending on the game, one stock step
20-100 ms; generate 6.7 s), ours 2.1 s (env 1.0 s, generate 1.1 s), ratio=75.0 (at load ~2:
ratio=80.9). With ``--baseline_memo`` (the released flow on our memoised engine, the comparison
earlier versions made): released 14.9 s (env 8.6 s, generate 6.2 s), ours 2.2 s, ratio=6.8.
What is left in ours is loading the two games (fast-downward's translation, ~0.2 s each with the
memo) and decoding.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from eval_agent.agents.policy import SamplingParams  # noqa: E402
from eval_agent.agents.hf import HFPolicy  # noqa: E402
from eval_agent.engine import RolloutEngine, RolloutJob  # noqa: E402
from eval_agent.envs.alfworld_env import AlfWorldEnv  # noqa: E402
from eval_agent.types import parse_action  # noqa: E402
from eval_agent.episode import new_episode, record_step  # noqa: E402
from eval_agent.types import Message  # noqa: E402
from steca.method.trajectories import split_expert  # noqa: E402
from steca.records import StepRecord, load_sft  # noqa: E402
from steca.sampling.stages import job_prompt, mc_job  # noqa: E402


def states(sft_path: Path, num_traj: int) -> list[StepRecord]:
    """One expert-step record per step of the first ``num_traj`` trajectories (prefix t + a*_t)."""
    out = []
    for rec in load_sft(sft_path, strict=True).records[:num_traj]:
        traj = split_expert(rec)
        for t, step in enumerate(traj.steps):
            out.append(StepRecord(rec.id, t, rec.game_file, step.action_turn.content, traj.prefix(t) + step.messages()))
    return out


def released_flow(recs: list[StepRecord], policy: HFPolicy, data: Path, n: int, params: SamplingParams,
                  extra_turns: int, timing: dict[str, float], stock_env: bool = True) -> int:
    """Fresh reset + replay + one generation call at a time, for every rollout. Returns rollouts done."""
    # the stock engine: no game cache (every reset loads and translates the game again), no memo (every
    # step re-derives the text of every applicable command), as the released code's AlfredTWEnv runs
    env = AlfWorldEnv(data, split="train", max_games=0, memoize=not stock_env)
    done = 0
    timing.update(env_s=0.0, generate_s=0.0)
    try:
        for r in recs:
            job = mc_job(r, n, params)
            turns = list(job.prefix) + [job.forced_output]
            for k in range(n):
                t0 = time.perf_counter()
                first = env.reset(r.game_file)
                state = new_episode(job.job_id, r.game_file, job_prompt(r.agent_step_conversations), first)
                for text in turns:
                    action = parse_action(text)
                    record_step(state, text, env.execute(action) if action else None, 10_000)
                timing["env_s"] += time.perf_counter() - t0
                limit = state.steps + extra_turns
                while not state.finished and state.steps < limit:
                    t0 = time.perf_counter()
                    out = policy.generate([state.messages], SamplingParams(params.temperature, params.top_p,
                                                                           params.max_new_tokens, seed=1000 * k + state.steps))[0]
                    t1 = time.perf_counter()
                    action = parse_action(out)
                    outcome = env.execute(action) if action else None
                    timing["generate_s"] += t1 - t0
                    timing["env_s"] += time.perf_counter() - t1
                    record_step(state, out, outcome, limit)
                done += 1
    finally:
        env.close()
    return done


def our_flow(recs: list[StepRecord], policy: HFPolicy, data: Path, n: int, params: SamplingParams,
             extra_turns: int, timing: dict[str, float]) -> int:
    """All rollouts through the engine (batched generation, snapshot-restored states)."""
    factory = partial(AlfWorldEnv, data, "train")
    jobs: list[RolloutJob] = []
    for r in recs:
        job = mc_job(r, n, params)
        job.max_steps = len(job.prefix) + 1 + extra_turns
        jobs.append(job)
    with RolloutEngine(policy, factory, num_workers=0, max_active=len(jobs) * n, show_progress=False) as eng:
        done = sum(1 for _ in eng.run_iter(jobs))
        timing.update(env_s=eng.stats.env_s, generate_s=eng.stats.generate_s)
        return done


def warm_up(policies: list[HFPolicy]) -> None:
    """One-time process start-up outside both timings: import the TextWorld engine, run each policy once."""
    from eval_agent.envs.alfworld_env import new_textworld

    new_textworld().close()
    for p in policies:
        p.generate([[Message("user", "warm up")]], SamplingParams(max_new_tokens=2))


def workload_parser(description: str | None) -> argparse.ArgumentParser:
    """The options of this Monte Carlo workload (also used by ``benchmarks/batch_invariance.py``)."""
    default_data = Path(os.environ.get("STECA_SHARED_DATA", REPO.parent / "shared" / "data")) / "alfworld"
    ap = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data, help="ALFWorld root with json_2.1.1/train")
    ap.add_argument("--sft", type=Path, default=None, help="default: <data>/alfworld_sft_sample.json")
    ap.add_argument("--model_path", default=None, help="default: a random nano model built here")
    ap.add_argument("--num_traj", type=int, default=2)
    ap.add_argument("--num_rollouts", type=int, default=5)
    ap.add_argument("--extra_turns", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a shared 2-core machine)")
    return ap


def setup(args: argparse.Namespace) -> tuple[Path, list[StepRecord]]:
    """Logging, torch threads; the SFT file and the states of the workload."""
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    sft = args.sft or args.data / "alfworld_sft_sample.json"
    return sft, states(sft, args.num_traj)


def model_or_nano(model_path: str | None, sft: Path, tmp: str) -> str:
    """``model_path``, or a random nano model bootstrapped from ``sft`` in ``tmp``."""
    if model_path is not None:
        return model_path
    from steca.training.bootstrap import bootstrap_model

    texts = [m.content for r in load_sft(sft).records[:5] for m in r.conversations]
    return str(bootstrap_model(texts, Path(tmp) / "nano", size="nano"))


def main() -> None:
    ap = workload_parser(__doc__)
    ap.add_argument("--baseline_memo", action="store_true",
                    help="released flow with our memo of translations and engine texts (stock engine otherwise)")
    ap.add_argument("--batch_invariant", choices=("true", "false"), default="true",
                    help="our side: sampled rows computed alone (the hf default; see batch_invariance.py) or batched")
    args = ap.parse_args()
    sft, recs = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_nano(args.model_path, sft, tmp)
        policy = HFPolicy(model, max_batch_size=256, batch_invariant=args.batch_invariant == "true")
        # the released flow: one request at a time, no cache kept between requests
        released_policy = HFPolicy(model, max_batch_size=1, reuse_cache=False, prefix_cache_size=0)
        params = SamplingParams(temperature=1.0, max_new_tokens=args.max_new_tokens)
        warm_up([policy, released_policy])
        total = len(recs) * args.num_rollouts
        print(f"states={len(recs)} rollouts={total} extra_turns={args.extra_turns} "
              f"max_new_tokens={args.max_new_tokens} model={'random nano' if args.model_path is None else model}")
        tm_ours: dict[str, float] = {}
        tm_rel: dict[str, float] = {}
        t0 = time.perf_counter()
        n_ours = our_flow(recs, policy, args.data, args.num_rollouts, params, args.extra_turns, tm_ours)
        t_ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        n_rel = released_flow(recs, released_policy, args.data, args.num_rollouts, params, args.extra_turns, tm_rel,
                              stock_env=not args.baseline_memo)
        t_rel = time.perf_counter() - t0
    r_ours, r_rel = n_ours / t_ours, n_rel / t_rel
    print(f"released flow: {n_rel} rollouts in {t_rel:.1f}s = {r_rel:.2f} rollouts/s "
          f"(env {tm_rel['env_s']:.1f}s, generate {tm_rel['generate_s']:.1f}s)")
    print(f"ours:          {n_ours} rollouts in {t_ours:.1f}s = {r_ours:.2f} rollouts/s "
          f"(env {tm_ours['env_s']:.1f}s, generate {tm_ours['generate_s']:.1f}s)")
    print(f"batch_invariant={args.batch_invariant} ratio={r_ours / r_rel:.1f}")


if __name__ == "__main__":
    main()
