"""Success rates of VirtualHome's ground-truth programs: the seen split and held-out-style generated sets.

For the shared ``vh_seen_test.jsonl`` and, per ``--seeds``, a set written by
:func:`steca.generators.virtualhome_scene_tasks.generate_scene_tasks` (sitting or lying before an
act, standing acts on objects that no observation lists, objects with ids from 1000, all seven
scene graphs), every task's program is played in :class:`~eval_agent.envs.virtualhome.VirtualHomeEnv`
with the initial graphs rebuilt from the records; the generated sets are played on their reference
initial graphs too. Prints one line per set: tasks, reachable tasks, the reachable and the overall
rate, and the failed task ids. Deterministic: the same code and data give the same numbers.

    python benchmarks/vh_expert_rates.py [--data ../shared/data/virtualhome] [--seeds 0 1 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from eval_agent.envs.virtualhome import VirtualHomeEnv
from steca.generators.virtualhome_scene_tasks import REFERENCE_DIR, TASK_FILE, generate_scene_tasks


def rates(env: VirtualHomeEnv) -> tuple[int, int, float, float, list[str]]:
    """(tasks, reachable tasks, reachable rate, overall rate, failed ids) of the expert programs."""
    wins: dict[str, bool] = {}
    for tid in env.task_ids():
        env.reset(tid)
        wins[tid] = any(env.execute(a).won for a in env.expert_actions(tid)[: env.max_steps])
    reach = [t for t in wins if env.is_reachable(t)]
    return (len(wins), len(reach), sum(wins[t] for t in reach) / max(1, len(reach)),
            sum(wins.values()) / max(1, len(wins)), sorted(t for t, w in wins.items() if not w and t in reach))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "virtualhome"))
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--per_family_and_scene", type=int, default=6)
    ap.add_argument("--out", default=None, help="where the generated sets go (default: a temporary folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data)
    out_root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="vh_expert_rates_"))
    print("set | tasks | reachable | reachable rate | overall rate | reachable failures")
    n, r, rr, ov, failed = rates(VirtualHomeEnv(data / "vh_seen_test.jsonl", data))
    print(f"seen | {n} | {r} | {rr:.4f} | {ov:.4f} | {' '.join(failed)}")
    for seed in args.seeds:
        out = out_root / f"seed{seed}"
        generate_scene_tasks(data, out, args.per_family_and_scene, seed)
        for label, graphs in (("rebuilt graphs", None), ("reference graphs", out / REFERENCE_DIR)):
            n, r, rr, ov, failed = rates(VirtualHomeEnv(out / TASK_FILE, data, init_graph_dir=graphs))
            print(f"generated seed {seed}, {label} | {n} | {r} | {rr:.4f} | {ov:.4f} | {' '.join(failed)}")


if __name__ == "__main__":
    main()
