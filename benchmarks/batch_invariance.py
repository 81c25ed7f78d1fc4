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
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Sequence

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from mc_sampling import model_or_nano, our_flow, setup, warm_up, workload_parser  # noqa: E402

from eval_agent.agents.hf import HFPolicy  # noqa: E402
from eval_agent.agents.policy import SamplingParams  # noqa: E402
from eval_agent.types import Message  # noqa: E402


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
    args = workload_parser(__doc__).parse_args()
    sft, recs = setup(args)
    with tempfile.TemporaryDirectory() as tmp:
        model = model_or_nano(args.model_path, sft, tmp)
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
