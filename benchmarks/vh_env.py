"""VirtualHome env speed: step latency and reset-to-prefix latency, ours vs the released way, in one run.

The released way (as STeCa's environment does it, re-implemented here from its description): for
every reset, read the task's initial graph, run a quadratic duplicate-edge clean-up (every edge
against every later edge; an edge goes when an identical one or its reverse ``INSIDE`` exists),
build a fresh ``EnvironmentGraph`` and replay the prefix with copying steps (``in_place=False``).
Ours: :meth:`VirtualHomeEnv.reset_to_prefix` (cached task graph, copy-on-write overlay, snapshot of
the longest executed prefix), in the Monte Carlo pattern of several rollouts from each prefix.

Usage: python benchmarks/vh_env.py [--data_dir DIR] [--tasks 3] [--rollouts 5]
Last line: ``ratio=<released reset-to-prefix seconds / ours>``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import time
from pathlib import Path

from eval_agent.envs.virtualhome import VirtualHomeEnv
from eval_agent.envs.virtualhome.graph import build_initial_graph, load_scene
from eval_agent.envs.virtualhome.evolving_graph_adapter import load_simulator


def quadratic_cleanup(edges: list[dict]) -> list[dict]:
    """The released clean-up's cost model: O(E^2) pairwise scan, dropping duplicates and reverse-INSIDE pairs."""
    drop = set()
    for i, e in enumerate(edges):
        for j in range(i + 1, len(edges)):
            f = edges[j]
            same = e["from_id"] == f["from_id"] and e["to_id"] == f["to_id"] and e["relation_type"] == f["relation_type"]
            reverse_inside = (e["from_id"] == f["to_id"] and e["to_id"] == f["from_id"]
                              and "INSIDE" in (e["relation_type"], f["relation_type"]))
            if same or reverse_inside:
                drop.add(j)
                if reverse_inside:
                    drop.add(i)
    return [e for k, e in enumerate(edges) if k not in drop]


def released_reset_to_prefix(env: VirtualHomeEnv, graph_json: str, lines: list, cleanup: bool = True) -> float:
    """Seconds for one released-style reset: parse, quadratic clean-up, build, replay (copying)."""
    sim = load_simulator()
    t0 = time.perf_counter()
    g = json.loads(graph_json)
    if cleanup:
        g["edges"] = quadratic_cleanup(g["edges"])
    graph = sim.environment.EnvironmentGraph(g)
    state = sim.environment.EnvironmentState(graph, env.resources.name_equivalence, instance_selection=True)
    executor = sim.execution.ScriptExecutor(graph, env.resources.name_equivalence)
    for line in lines:
        ok, state = executor.execute_one_step(sim.scripts.Script([line]), state, in_place=False)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default = Path(os.environ.get("STECA_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "virtualhome"
    ap.add_argument("--data_dir", default=str(default))
    ap.add_argument("--tasks", type=int, default=3)
    ap.add_argument("--rollouts", type=int, default=5, help="resets per prefix (Monte Carlo rollouts)")
    ap.add_argument("--released_prefixes", type=int, default=2, help="released resets measured per task")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    data = Path(args.data_dir)
    env = VirtualHomeEnv(data / "vh_seen_test.jsonl", data)
    sim = load_simulator()
    tids = [t for t in env.task_ids() if env.is_reachable(t)][: args.tasks]

    # step latency
    ours_steps, released_steps = [], []
    for tid in tids:
        env.reset(tid)
        for a in env.expert_actions(tid):
            t0 = time.perf_counter()
            env.execute(a)
            ours_steps.append(time.perf_counter() - t0)
        prep = env._prepare(tid)
        state = sim.environment.EnvironmentState(prep.graph, env.resources.name_equivalence, instance_selection=True)
        executor = sim.execution.ScriptExecutor(prep.graph, env.resources.name_equivalence)
        for line in _script_lines(sim, prep.task):
            t0 = time.perf_counter()
            ok, state = executor.execute_one_step(sim.scripts.Script([line]), state, in_place=False)
            released_steps.append(time.perf_counter() - t0)
    print(f"step latency: ours {1e3 * statistics.mean(ours_steps):.3f} ms "
          f"(includes parsing, resolution, goal check, observation), "
          f"released-style simulator step {1e3 * statistics.mean(released_steps):.3f} ms")

    # reset-to-prefix latency
    ours, released, rebuild_only = [], [], []
    for tid in tids:
        task = env.task(tid)
        actions = env.expert_actions(tid)
        graph = build_initial_graph(task, load_scene(str(data / "scene_graphs" / f"{task.scene}_graph.json")),
                                    env.resources)
        graph_json = json.dumps(graph)
        lines = _script_lines(sim, task)
        for t in range(len(actions)):
            for _ in range(args.rollouts):
                t0 = time.perf_counter()
                env.reset_to_prefix(tid, actions[:t])
                ours.append(time.perf_counter() - t0)
        n = len(actions)
        for t in sorted({n // 3, (2 * n) // 3})[: args.released_prefixes]:
            released.append(released_reset_to_prefix(env, graph_json, lines[:t]))
            rebuild_only.append(released_reset_to_prefix(env, graph_json, lines[:t], cleanup=False))
    o, r = statistics.mean(ours), statistics.mean(released)
    print(f"reset-to-prefix: ours {1e3 * o:.3f} ms over {len(ours)} resets; "
          f"released way {1e3 * r:.1f} ms over {len(released)} resets ({len(tids)} tasks)")
    print(f"without the quadratic clean-up (rebuild + replay only): {1e3 * statistics.mean(rebuild_only):.1f} ms, "
          f"ratio {statistics.mean(rebuild_only) / o:.1f}")
    print(f"ratio={r / o:.1f}")


def _script_lines(sim, task):
    S = sim.scripts
    return [S.ScriptLine(S.Action[line.action], [S.ScriptObject(n, i) for n, i in line.params], k)
            for k, line in enumerate(task.program)]


if __name__ == "__main__":
    main()
