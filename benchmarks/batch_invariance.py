"""What batch-invariant sampling costs: generated tokens per second of the ``hf`` backend with
``batch_invariant`` on (the default: every sampled row computed alone) and off (sampled rows batched),
on the Monte Carlo workload of :mod:`benchmarks.mc_sampling` (all rollouts of every expert step of the
first ``--num_traj`` shared ALFWorld trajectories in flight, real games), and the same for greedy turns
(evaluation and exploration), which the option leaves batched.

Prints one line per setting, the greedy pass's time ratio (on / off; the random nano model often
ends a greedy reply at once, so its tokens/s says little) and, last, ``ratio=<sampled tokens/s on / off>``.

    python benchmarks/batch_invariance.py [--data ../shared/data/alfworld] [--num_traj 2] [--num_rollouts 5]
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mc_sampling import our_flow, states, warm_up  # noqa: E402

from eval_agent.agents.hf import HFPolicy  # noqa: E402
from eval_agent.agents.policy import SamplingParams  # noqa: E402
from eval_agent.types import Message  # noqa: E402
from steca.records import load_sft  # noqa: E402


class CountingPolicy:
    """An :class:`HFPolicy` that also counts the tokens of the replies it returns."""

    def __init__(self, policy: HFPolicy):
        self.policy = policy
        self.tokens = 0

    def generate(self, batch: Sequence[Sequence[Message]], params: Any) -> list[str]:
        out = self.policy.generate(batch, params)
        self.tokens += sum(len(self.policy.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.policy, name)


def measure(policy: HFPolicy, recs, args: argparse.Namespace, temperature: float) -> tuple[float, int, float]:
    """``(tokens/s, tokens, seconds)`` of one Monte Carlo pass at ``temperature``."""
    counting = CountingPolicy(policy)
    params = SamplingParams(temperature=temperature, max_new_tokens=args.max_new_tokens)
    t0 = time.perf_counter()
    our_flow(recs, counting, args.data, args.num_rollouts, params, args.extra_turns, {})  # type: ignore[arg-type]
    seconds = time.perf_counter() - t0
    return counting.tokens / seconds, counting.tokens, seconds


def main() -> None:
    default_data = Path(os.environ.get("STECA_SHARED_DATA", REPO.parent / "shared" / "data")) / "alfworld"
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=default_data, help="ALFWorld root with json_2.1.1/train")
    ap.add_argument("--model_path", default=None, help="default: a random nano model built here")
    ap.add_argument("--num_traj", type=int, default=2)
    ap.add_argument("--num_rollouts", type=int, default=5)
    ap.add_argument("--extra_turns", type=int, default=4)
    ap.add_argument("--max_new_tokens", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    torch.set_num_threads(args.threads)
    sft = args.data / "alfworld_sft_sample.json"
    recs = states(sft, args.num_traj)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model_path
        if model is None:
            from steca.training.bootstrap import bootstrap_model
            texts = [m.content for r in load_sft(sft).records[:5] for m in r.conversations]
            model = str(bootstrap_model(texts, Path(tmp) / "nano", size="nano"))
        on, off = HFPolicy(model, max_batch_size=256), HFPolicy(model, max_batch_size=256, batch_invariant=False)
        warm_up([on, off])
        print(f"states={len(recs)} rollouts={len(recs) * args.num_rollouts} extra_turns={args.extra_turns} "
              f"max_new_tokens={args.max_new_tokens} threads={args.threads}")
        rates, times = {}, {}
        for temperature in (1.0, 0.0):
            for name, policy in (("on", on), ("off", off)):
                rate, tokens, seconds = measure(policy, recs, args, temperature)
                rates[temperature, name], times[temperature, name] = rate, seconds
                print(f"temperature={temperature} batch_invariant={name}: {tokens} tokens in {seconds:.1f}s "
                      f"= {rate:.1f} tokens/s")
    print(f"greedy time ratio (on / off)={times[0.0, 'on'] / times[0.0, 'off']:.2f}")
    print(f"ratio={rates[1.0, 'on'] / rates[1.0, 'off']:.2f}")


if __name__ == "__main__":
    main()
