"""Play the ground-truth programs of a VirtualHome task file and report the success rates.

    python -m eval_agent.envs.virtualhome --test_path FILE --data_dir DIR [--failures]

Prints ``Reachable success rate: X.XXXX (N tasks)`` and, last, ``Success rate: X.XXXX`` (the lines
``python -m eval_agent.main --agent_config expert`` prints), and with ``--failures`` one line per
failed task. A check of the environment and the graph reconstruction, without any model.
"""
from __future__ import annotations

import argparse
import logging

from tqdm import tqdm

from eval_agent.envs.virtualhome.env import VirtualHomeEnv


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--test_path", default=None, help="task jsonl (default: the split's file in data_dir)")
    ap.add_argument("--data_dir", required=True, help="folder with scene_graphs/ and resources/")
    ap.add_argument("--split", default="test")
    ap.add_argument("--init_graph_dir", default=None)
    ap.add_argument("--failures", action="store_true", help="list every failed task")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    env = VirtualHomeEnv(args.test_path, args.data_dir, split=args.split, init_graph_dir=args.init_graph_dir)
    wins: dict[str, bool] = {}
    for tid in tqdm(env.task_ids(), desc="expert"):
        env.reset(tid)
        wins[tid] = any(env.execute(a).won for a in env.expert_actions(tid)[: env.max_steps])
    reachable = [t for t in wins if env.is_reachable(t)]
    if args.failures:
        for t, won in wins.items():
            if not won:
                print(f"failed {t}: {env.unreachable_reason(t) or 'reachable, goal not met'}")
    rate = sum(wins[t] for t in reachable) / max(1, len(reachable))
    print(f"Reachable success rate: {rate:.4f} ({len(reachable)} tasks)")
    print(f"Success rate: {sum(wins.values()) / max(1, len(wins)):.4f}")


if __name__ == "__main__":
    main()
